"""A sharded model on a process group: plan, DistributedModelParallel, optimizers.

Shared by the Ray Train loop, the benchmark's hand-written loop and the tests, so all of them
train exactly the same thing. Sparse optimizers are fused into the backward pass (FBGEMM), dense
parameters get a regular optimizer; ``CombinedOptimizer`` steps both.

Gradient scale: each rank's loss is the mean over its local batch. TorchRec averages embedding
gradients across ranks and DDP averages dense ones, so N workers with global batch B train exactly
like one process with batch B (tests/integration/test_sharded_equivalence.py shows it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from ..data.batches import Batch
from ..data.schema import FeatureSchema
from ..models import RecModel, build_model
from ..models.build import embedding_collection
from ..sharding import build_constraints, make_plan, make_topology
from .shm_allreduce import ShmAllReduce, use_shared_memory

SPARSE_OPTIMIZERS = {
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}
DENSE_OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


OFFSET_SCALE = 10.0  # the ordinal offsets are this times their parameter: they move ~10x faster than the weights


class TrainModule(nn.Module):
    """Batch -> (loss, logits): the shape TorchRec's TrainPipelineSparseDist expects on CUDA.

    ``ordinal`` (data.label.ordinal: the cuts' rules, lowest first, and positive_if's share of the loss): batches
    that carry the cuts' labels also train ``logit + offset_k`` on cut k, a cumulative-logit model whose offsets are
    learned (started one logit apart, in the cuts' order). The logit itself is positive_if's.
    """

    def __init__(self, model: RecModel, distill: tuple[float, float] | None = None,
                 ordinal: tuple[tuple[str, ...], str, float] | None = None) -> None:
        super().__init__()
        self.model = model
        self.distill = distill  # (alpha, temperature): batches that carry teacher logits train on the KD loss
        self.ordinal_weight = 1.0
        if ordinal is not None:
            rules, main, self.ordinal_weight = ordinal
            below = sum(_cut(r) < _cut(main) for r in rules)  # cuts under positive_if's: more often positive
            start = torch.tensor([float(below - k) for k in range(len(rules))])
            start[below:] -= 1.0  # positive_if's own cut sits between, at 0
            self.ordinal_offsets = nn.Parameter(start / OFFSET_SCALE)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch.dense, batch.sparse)
        if self.distill is not None and batch.teacher is not None and self.training:
            from ..kernels.distill import distill_loss

            loss = distill_loss(logits, batch.teacher, batch.label, *self.distill)
        else:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.label)
        if batch.extra is not None and self.training and hasattr(self, "ordinal_offsets"):
            cuts = logits.unsqueeze(1) + OFFSET_SCALE * self.ordinal_offsets
            extra = nn.functional.binary_cross_entropy_with_logits(cuts, batch.extra)
            loss = self.ordinal_weight * loss + (1.0 - self.ordinal_weight) * extra
        penalty = self.model.penalty()
        if penalty is not None:
            loss = loss + penalty
        return loss, logits.detach()


def _cut(rule: str) -> float:
    return float(rule.lstrip("<>=! "))


@dataclass
class ShardedModel:
    module: DistributedModelParallel  # wraps a TrainModule
    plan: ShardingPlan
    optimizer: CombinedOptimizer
    allreduce: ShmAllReduce | None = None  # gradients averaged through shared memory (None: by the process group)


def _sparse_kwargs(opt_spec) -> dict:
    lr = opt_spec.sparse_lr or opt_spec.lr
    if opt_spec.sparse in ("rowwise_adagrad", "adagrad"):
        return {"lr": lr, "eps": opt_spec.eps}
    if opt_spec.sparse == "adam":
        return {"lr": lr, "eps": opt_spec.eps}
    return {"lr": lr}


def dense_optimizer_factory(opt_spec):
    cls = DENSE_OPTIMIZERS[opt_spec.dense]
    kwargs = {"lr": opt_spec.lr, "weight_decay": opt_spec.weight_decay}
    if opt_spec.dense in ("adam", "adagrad"):
        kwargs["eps"] = opt_spec.eps
    return lambda params: cls(params, **kwargs)


def build_train_module(spec, schema: FeatureSchema, device: torch.device, meta_tables: bool = True) -> TrainModule:
    """Unsharded model with the sparse optimizer attached for in-backward fusion.

    ``meta_tables``: leave the tables unallocated (DistributedModelParallel materialises each shard
    on its owner); False builds them in memory, for single-process reference runs.
    """
    torch.manual_seed(spec.train.seed)  # same dense init on every rank
    model = build_model(spec.model, schema, device=device, ebc_device=torch.device("meta") if meta_tables else device)
    d = getattr(spec, "distill", None)
    label = spec.data.label
    module = TrainModule(model, (d.alpha, d.temperature) if d is not None else None,
                         (label.extra_rules(), label.positive_if, label.ordinal_weight) if label.ordinal else None)
    opt = spec.train.optimizer
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[opt.sparse], embedding_collection(module).parameters(), _sparse_kwargs(opt))
    return module


def shard_model(
    spec,
    schema: FeatureSchema,
    device: torch.device,
    pg: dist.ProcessGroup | None = None,
    local_world_size: int | None = None,
    ddr_gb: float | None = None,
    hbm_gb: float | None = None,
) -> ShardedModel:
    pg = pg or dist.GroupMember.WORLD
    world = dist.get_world_size(pg)
    module = build_train_module(spec, schema, device)
    topology = make_topology(world, device.type, hbm_gb=hbm_gb, ddr_gb=ddr_gb, local_world_size=local_world_size)
    constraints = build_constraints(schema, spec.train.sharding, spec.model.embedding_dim, device.type)
    plan = make_plan(module, topology, constraints, pg)
    # meta tables are materialised shard by shard on their owner rank (each seeded per table)
    dmp = DistributedModelParallel(module, device=device, plan=plan, init_data_parallel=True, init_parameters=True)
    # Data-parallel tables use the dense (DDP) path, not the fused kernel: give them the sparse
    # optimizer and its learning rate explicitly, so a table trains the same whatever its sharding.
    rest = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dp_tables = {k: p for k, p in rest.items() if ".embedding_bags." in k}
    dense_params = {k: p for k, p in rest.items() if k not in dp_tables}
    opt = spec.train.optimizer
    optimizers = [dmp.fused_optimizer, KeyedOptimizerWrapper(dense_params, dense_optimizer_factory(opt))]
    if dp_tables:
        sparse_cls, sparse_kwargs = SPARSE_OPTIMIZERS[opt.sparse], _sparse_kwargs(opt)
        optimizers.append(KeyedOptimizerWrapper(dp_tables, lambda ps: sparse_cls(ps, **sparse_kwargs)))
    return ShardedModel(dmp, plan, CombinedOptimizer(optimizers), local_allreduce(dmp, spec, device, pg, local_world_size))


def train_step(sharded: ShardedModel, batch: Batch) -> torch.Tensor:
    """One optimizer step on a CPU batch (the loop's step; the benchmarks' too); the loss."""
    loss, _ = sharded.module(batch)
    sharded.optimizer.zero_grad()
    loss.backward()
    sharded.optimizer.step()
    return loss


def local_allreduce(dmp, spec, device: torch.device, pg, local_world_size: int | None) -> ShmAllReduce | None:
    """Gradients averaged through shared memory when ``train.allreduce`` is auto and every rank of ``pg`` is a CPU
    worker on this machine (``local_world_size`` ranks here, as Ray Train counts them); else the process group."""
    world = dist.get_world_size(pg)
    if device.type == "cpu" and world > 1 and local_world_size == world and spec.train.allreduce == "auto":
        return use_shared_memory(dmp, pg, spec.train.collective_timeout_s)
    return None


def load_full_state(dmp: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy an unsharded state dict into a sharded model (each rank copies the slices it owns)."""
    with torch.no_grad():
        for key, value in dmp.state_dict().items():
            if key not in full:
                continue
            src = full[key]
            if hasattr(value, "local_shards"):
                for shard in value.local_shards():
                    o, s = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(src[tuple(slice(a, a + b) for a, b in zip(o, s))])
            else:
                value.copy_(src)


def gather_full_state(dmp: nn.Module, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The unsharded values of ``keys`` (default: all) on every rank. Collective; for small models and tests."""
    out = {}
    for key, value in dmp.state_dict().items():
        if keys is not None and key not in keys:
            continue
        if hasattr(value, "local_shards"):
            full = torch.zeros(value.size(), dtype=value.dtype)
            for shard in value.local_shards():
                o, s = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                full[tuple(slice(a, a + b) for a, b in zip(o, s))] = shard.tensor.cpu()
            dist.all_reduce(full)
            out[key] = full
        else:
            out[key] = value.detach().cpu().clone()
    return out
