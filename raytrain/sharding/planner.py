"""Sharding: per-table constraints from the spec, a Topology from the workers, TorchRec's planner.

``auto`` leaves the choice to TorchRec's planner (on CPU, tables under 1 MiB are replicated first); anything else pins
that table to one sharding type.
The same code plans for a cluster that does not exist (``raytrain plan --world-size 64 --device cuda``):
the model is built on the meta device so even billion-row tables cost no memory here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints, PlannerError, Stats
from torchrec.distributed.types import ShardingPlan

from ..data.schema import FeatureSchema
from ..errors import PlanError
from ..models.build import table_name

GIB = 1024**3

# bytes of optimizer state per embedding row, as a multiple of (4 bytes) x (1 or dim)
_OPT_STATE = {"rowwise_adagrad": ("row", 1), "adagrad": ("dim", 1), "adam": ("dim", 2), "sgd": ("dim", 0)}


# On CPU an ``auto`` table under 1 MiB is replicated (data_parallel): every model-parallel sharding type adds input
# and output all-to-alls over gloo that make the ranks wait for each other several times a step, while a replicated
# table costs its share of the gradient all-reduce the dense layers need anyway. The demo model (9 tables of at most
# 0.4 MiB, 2 workers x 1 core) trained 31-35k examples/s replicated vs 18-20k sharded, the same test AUC.
# On CUDA TorchRec's planner decides (its cost model knows NVLink and NCCL).
CPU_REPLICATE_BELOW_MIB = 1.0


def replicate_below_bytes(sharding_spec, device: str) -> float:
    mib = sharding_spec.replicate_below_mib
    if mib is None:
        mib = CPU_REPLICATE_BELOW_MIB if device == "cpu" else 0.0
    return mib * 1024**2


def build_constraints(schema: FeatureSchema, sharding_spec, embedding_dim: int,
                      device: str) -> dict[str, ParameterConstraints]:
    """Pinned tables get exactly one sharding type (and the kernel that type needs); ``auto`` tables smaller than
    ``replicate_below_bytes`` (rows x dim x 4 bytes) are pinned to data_parallel; pooling factors (ids per sample)
    feed the planner's cost model."""
    out: dict[str, ParameterConstraints] = {}
    pooling = getattr(sharding_spec, "pooling_factors", {}) or {}
    small = replicate_below_bytes(sharding_spec, device)
    for f in schema.sparse:
        st = sharding_spec.tables.get(f.name, sharding_spec.default)
        if st == "auto" and f.cardinality * embedding_dim * 4 < small:
            st = "data_parallel"
        kw: dict = {"pooling_factors": [float(pooling[f.name])]} if f.name in pooling else {}
        if st != "auto":
            kernel = EmbeddingComputeKernel.DENSE if st == "data_parallel" else EmbeddingComputeKernel.FUSED
            kw.update(sharding_types=[st], compute_kernels=[kernel.value])
        if kw:
            out[table_name(f.name)] = ParameterConstraints(**kw)
    return out


# accelerators the cost model can be told about (TorchRec's Topology takes bandwidths in bytes/ms)
GPU_PRESETS = {
    # H100 SXM 80GB: HBM3 3.35 TB/s; NVLink 4 450 GB/s per direction; one 400 Gb/s NIC (50 GB/s) per GPU
    "h100-80gb": {"hbm_gb": 80.0, "hbm_mem_bw": 3.35e12 / 1000, "intra_host_bw": 450e9 / 1000,
                  "inter_host_bw": 50e9 / 1000},
}


def make_topology(
    world_size: int,
    device: str,
    hbm_gb: float | None = None,
    ddr_gb: float | None = None,
    local_world_size: int | None = None,
    gpu: str | None = None,
) -> Topology:
    kwargs: dict = {}
    if gpu is not None:
        preset = dict(GPU_PRESETS[gpu])
        hbm_gb = hbm_gb or preset.pop("hbm_gb")
        preset.pop("hbm_gb", None)
        kwargs.update(preset)
    if hbm_gb is not None:
        kwargs["hbm_cap"] = int(hbm_gb * GIB)
    if ddr_gb is not None:
        kwargs["ddr_cap"] = int(ddr_gb * GIB)
    return Topology(
        world_size=world_size,
        compute_device=device,
        local_world_size=local_world_size or (min(world_size, 8) if device == "cuda" else world_size),
        **kwargs,
    )


def sharders() -> list:
    """Pooled tables (the CTR models) and sequence tables (the sequential models' item table)."""
    return [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]


class _BestPlan(Stats):
    """Keeps the planner's chosen sharding options (each shard with TorchRec's cost-model estimate)."""

    def __init__(self) -> None:
        self.options: list = []
        self.batch_size = 0

    def log(self, sharding_plan, topology, batch_size, storage_reservation, num_proposals, num_plans, run_time,
            best_plan, *args, **kwargs) -> None:
        self.options, self.batch_size = list(best_plan), batch_size


@dataclass
class PerfEstimate:
    """TorchRec's cost-model estimate of one step's embedding work (forward + backward, compute + communication),
    per rank, for ``batch_per_rank`` samples per rank. Dense layers are not in the estimate."""

    per_rank_ms: list[float]
    batch_per_rank: int

    @property
    def step_ms(self) -> float:
        return max(self.per_rank_ms)

    @property
    def samples_per_s_per_device(self) -> float:
        return self.batch_per_rank / (self.step_ms / 1000.0)

    def describe(self) -> str:
        n = len(self.per_rank_ms)
        return (f"estimated embedding step (TorchRec cost model, batch {self.batch_per_rank:,} per rank): "
                f"{self.step_ms:.3f} ms on the slowest of {n} ranks (mean {sum(self.per_rank_ms) / n:.3f} ms) -> "
                f"{self.samples_per_s_per_device:,.0f} samples/s per device, "
                f"{self.samples_per_s_per_device * n:,.0f} for the cluster (embeddings only: an upper bound)")


def plan_with_estimate(model: nn.Module, topology: Topology, constraints: dict[str, ParameterConstraints],
                       batch_per_rank: int) -> tuple[ShardingPlan, PerfEstimate]:
    """A plan and the cost model's step time for it (``raytrain plan``)."""
    capture = _BestPlan()
    plan = make_plan(model, topology, constraints, batch_size=batch_per_rank, stats=capture)
    per_rank = [0.0] * topology.world_size
    for option in capture.options:
        for shard in option.shards:
            if shard.rank is not None and shard.perf is not None:
                per_rank[shard.rank] += float(shard.perf.total)
    return plan, PerfEstimate(per_rank, capture.batch_size or batch_per_rank)


def make_plan(
    model: nn.Module,
    topology: Topology,
    constraints: dict[str, ParameterConstraints],
    pg: dist.ProcessGroup | None = None,
    batch_size: int | None = None,
    stats: Stats | None = None,
) -> ShardingPlan:
    """Plan with TorchRec's planner. With a process group every rank gets the same plan (rank 0 plans)."""
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints, batch_size=batch_size,
                                       **({"stats": stats} if stats is not None else {}))
    try:
        if pg is not None:
            return planner.collective_plan(model, sharders(), pg)
        return planner.plan(model, sharders())
    except PlannerError as e:
        first = str(e).strip().splitlines()
        last = [ln.strip() for ln in first if "Couldn't find a rank" in ln]
        raise PlanError(
            f"no sharding plan fits {topology.world_size} x {topology.compute_device} ranks "
            f"(hbm {topology.devices[0].storage.hbm / GIB:.0f} GiB, ddr {topology.devices[0].storage.ddr / GIB:.0f} GiB "
            f"per rank) under the spec's sharding constraints. {last[0] if last else first[0]} "
            "Try more ranks, a smaller embedding_dim, or row_wise / auto sharding for the largest tables."
        ) from None


@dataclass
class PlanRow:
    table: str
    rows: int
    dim: int
    sharding_type: str
    compute_kernel: str
    ranks: list[int]
    shards: list[tuple[int, list[int], list[int]]]  # (rank, offsets, sizes)


def describe_plan(plan: ShardingPlan, world_size: int) -> list[PlanRow]:
    rows = []
    for _module, shardings in plan.plan.items():
        for table, ps in shardings.items():  # type: ignore[union-attr]
            shards = []
            spec = ps.sharding_spec
            if spec is not None and hasattr(spec, "shards"):
                for sh in spec.shards:
                    shards.append((sh.placement.rank(), list(sh.shard_offsets), list(sh.shard_sizes)))
                n_rows = max(o[0] + s[0] for _, o, s in shards)
                dim = max(o[1] + s[1] for _, o, s in shards)
            else:
                n_rows = dim = -1  # data parallel: every rank holds the whole table
            ranks = sorted({r for r, _, _ in shards}) if shards else list(range(world_size))
            rows.append(PlanRow(table, n_rows, dim, ps.sharding_type, ps.compute_kernel, ranks, shards))
    return rows


def memory_per_rank(rows: list[PlanRow], schema: FeatureSchema, dim: int, optimizer: str, world_size: int) -> list[int]:
    """Bytes of embedding weights + sparse optimizer state held by each rank (fp32)."""
    per_rank = [0] * world_size
    kind, mult = _OPT_STATE[optimizer]
    card = {table_name(f.name): f.cardinality for f in schema.sparse}
    for r in rows:
        shards = r.shards or [(rank, [0, 0], [card[r.table], dim]) for rank in r.ranks]
        for rank, _, (n, d) in shards:
            state = n * mult if kind == "row" else n * d * mult
            per_rank[rank] += 4 * (n * d + state)
    return per_rank


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _ranks(ranks: list[int]) -> str:
    if len(ranks) > 4 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))


def format_plan(rows: list[PlanRow], per_rank: list[int], schema: FeatureSchema, dim: int) -> str:
    card = {table_name(f.name): f.cardinality for f in schema.sparse}
    lines = [f"{'table':<24} {'rows':>14} {'dim':>5} {'sharding':<18} {'kernel':<8} ranks"]
    for r in sorted(rows, key=lambda r: r.table):
        lines.append(
            f"{r.table:<24} {card.get(r.table, r.rows):>14,} {dim:>5} {r.sharding_type:<18} {r.compute_kernel:<8} "
            f"{_ranks(r.ranks)}"
        )
    lines.append("")
    lines.append("embedding weights + sparse optimizer state per rank:")
    if len(per_rank) > 16:
        lo, hi = min(per_rank), max(per_rank)
        lines.append(f"  {len(per_rank)} ranks: min {_fmt_bytes(lo)}, max {_fmt_bytes(hi)}, total {_fmt_bytes(sum(per_rank))}")
        worst = sorted(range(len(per_rank)), key=lambda i: -per_rank[i])[:4]
        lines += [f"  rank {i:>4}: {_fmt_bytes(per_rank[i])}" for i in worst]
    else:
        lines += [f"  rank {i:>4}: {_fmt_bytes(b)}" for i, b in enumerate(per_rank)]
    return "\n".join(lines)


def summarize_plan(rows: list[PlanRow], per_rank: list[int]) -> str:
    """One line: tables per sharding type and the largest rank's memory (the whole plan is in plan.txt)."""
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r.sharding_type] = kinds.get(r.sharding_type, 0) + 1
    by_kind = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return (f"{len(rows)} tables over {len(per_rank)} rank(s): {by_kind}; largest rank "
            f"{_fmt_bytes(max(per_rank) if per_rank else 0)} of tables and optimizer state")


def meta_model(spec, schema: FeatureSchema) -> nn.Module:
    """The spec's model with unallocated tables, for planning."""
    from ..models import build_model

    return build_model(spec.model, schema, device="cpu", ebc_device=torch.device("meta"))
