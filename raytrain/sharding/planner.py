"""Sharding: per-table constraints from the spec, a Topology from the workers, TorchRec's planner.

``auto`` leaves the choice to TorchRec's planner; anything else pins that table to one sharding type.
The same code plans for a cluster that does not exist (``raytrain plan --world-size 64 --device cuda``):
the model is built on the meta device so even billion-row tables cost no memory here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints, PlannerError
from torchrec.distributed.types import ShardingPlan

from ..data.schema import FeatureSchema
from ..errors import PlanError
from ..models.build import table_name

GIB = 1024**3

# bytes of optimizer state per embedding row, as a multiple of (4 bytes) x (1 or dim)
_OPT_STATE = {"rowwise_adagrad": ("row", 1), "adagrad": ("dim", 1), "adam": ("dim", 2), "sgd": ("dim", 0)}


def build_constraints(schema: FeatureSchema, sharding_spec) -> dict[str, ParameterConstraints]:
    """Pinned tables get exactly one sharding type (and the kernel that type needs)."""
    out: dict[str, ParameterConstraints] = {}
    for f in schema.sparse:
        st = sharding_spec.tables.get(f.name, sharding_spec.default)
        if st == "auto":
            continue
        kernel = EmbeddingComputeKernel.DENSE if st == "data_parallel" else EmbeddingComputeKernel.FUSED
        out[table_name(f.name)] = ParameterConstraints(sharding_types=[st], compute_kernels=[kernel.value])
    return out


def make_topology(
    world_size: int,
    device: str,
    hbm_gb: float | None = None,
    ddr_gb: float | None = None,
    local_world_size: int | None = None,
) -> Topology:
    kwargs = {}
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
    return [EmbeddingBagCollectionSharder()]


def make_plan(
    model: nn.Module,
    topology: Topology,
    constraints: dict[str, ParameterConstraints],
    pg: dist.ProcessGroup | None = None,
) -> ShardingPlan:
    """Plan with TorchRec's planner. With a process group every rank gets the same plan (rank 0 plans)."""
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
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


def meta_model(spec, schema: FeatureSchema) -> nn.Module:
    """The spec's model with unallocated tables, for planning."""
    from ..models import build_model

    return build_model(spec.model, schema, device="cpu", ebc_device=torch.device("meta"))
