"""A model sharded over 2 gloo workers computes what the unsharded model computes in 1 process.

Same initial weights, same global batch: same loss, same updated embedding rows and dense weights
after two optimizer steps, with mixed sharding types (table-, column-, table-column-wise, data parallel),
with gradients averaged by gloo and through shared memory (raytrain.train.shm_allreduce).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_distributed

from raytrain.data.batches import Columns
from raytrain.data.schema import FeatureSchema, SparseFeature
from raytrain.spec.job import JobSpec

SCHEMA = FeatureSchema(
    sparse=(
        SparseFeature("user", 64, False, "user"),
        SparseFeature("item", 96, False, "item"),
        SparseFeature("tags", 20, True, "item"),
        SparseFeature("city", 12, False, "user"),
    ),
    dense=("d0", "d1", "d2"),
)
SHARDING = {"user": "table_wise", "item": "column_wise", "tags": "data_parallel", "city": "table_column_wise"}
GLOBAL_BATCH = 32
STEPS = 2  # the second step is the first without a DDP's first-pass special case


def _spec(arch: str, sparse_opt: str, dense_opt: str) -> JobSpec:
    return JobSpec.model_validate({
        "name": "equiv",
        "data": {"source": "synthetic"},
        "model": {"arch": arch, "embedding_dim": 8, "dense_arch": [16], "over_arch": [16],
                  "tower": [16, 8], "dcn": {"num_layers": 2, "low_rank_dim": 4}},
        "train": {"workers": 2, "batch_size": GLOBAL_BATCH, "seed": 3,
                  "optimizer": {"sparse": sparse_opt, "dense": dense_opt, "lr": 0.05, "sparse_lr": 0.3},
                  "sharding": {"tables": {}}},
    })


def _columns() -> Columns:
    g = torch.Generator().manual_seed(11)
    n = GLOBAL_BATCH
    ids = {f.name: torch.randint(0, f.cardinality, (n,), generator=g) for f in SCHEMA.sparse if not f.multi_valued}
    lens = torch.randint(1, 4, (n,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)])
    tags = torch.randint(0, 20, (int(lens.sum()),), generator=g)
    dense = torch.randn(n, 3, generator=g)
    label = (torch.rand(n, generator=g) > 0.5).float()
    return Columns(SCHEMA, ids, {"tags": (tags, offsets)}, dense, label)


def _reference(spec: JobSpec) -> tuple[dict, float, dict]:
    """One process, no sharding: the model every worker count must reproduce."""
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from raytrain.train.distributed import build_train_module, dense_optimizer_factory

    module = build_train_module(spec, SCHEMA, torch.device("cpu"), meta_tables=False)
    init = {k: v.detach().clone() for k, v in module.state_dict().items()}
    dense_opt = dense_optimizer_factory(spec.train.optimizer)(
        [p for _, p in in_backward_optimizer_filter(module.named_parameters())]
    )
    for _ in range(STEPS):
        loss, _ = module(_columns().batch(torch.arange(GLOBAL_BATCH)))
        dense_opt.zero_grad()
        loss.backward()
        dense_opt.step()
    return init, float(loss), {k: v.detach().clone() for k, v in module.state_dict().items()}


def _sharded_step(rank: int, world: int, spec_doc: dict, init: dict, sharding: dict, shm: bool = False):
    import torch.distributed as dist

    from raytrain.sharding.planner import describe_plan
    from raytrain.train.distributed import gather_full_state, load_full_state, shard_model
    from raytrain.train.shm_allreduce import ddp_modules

    spec = JobSpec.model_validate(spec_doc)
    spec.train.sharding.tables = sharding
    # Ray Train's local world size: every rank on this machine (shared memory), or unknown (gloo)
    sharded = shard_model(spec, SCHEMA, torch.device("cpu"), local_world_size=world if shm else None)
    assert (sharded.allreduce is not None) == shm
    load_full_state(sharded.module, init)
    b = GLOBAL_BATCH // world
    batch = _columns().batch(torch.arange(rank * b, (rank + 1) * b))
    exchanges = []  # shared-memory exchanges per step
    for _ in range(STEPS):
        before = sharded.allreduce.exchanges if shm else 0
        loss, _ = sharded.module(batch)
        sharded.optimizer.zero_grad()
        loss.backward()
        sharded.optimizer.step()
        exchanges.append(sharded.allreduce.exchanges - before if shm else 0)
    total = loss.detach().clone()
    dist.all_reduce(total)
    state = gather_full_state(sharded.module)
    types = {r.table: r.sharding_type for r in describe_plan(sharded.plan, world)}
    # both DDPs (dense layers, the data-parallel table's lookup) averaged through shared memory: each bucket at once
    # in their first backward pass (static-graph DDPs wait for every bucket there), together from the second on
    hooked = (len(ddp_modules(sharded.module)), exchanges) if shm else None
    return float(total) / world, {k: v.numpy() for k, v in state.items()}, types, hooked


@pytest.mark.parametrize(
    "arch,sparse_opt,dense_opt,shm",
    [("dcn_v2", "sgd", "sgd", False), ("dcn_v2", "rowwise_adagrad", "adam", True), ("two_tower", "adagrad", "adam", True)],
)
def test_two_sharded_workers_match_one_unsharded_process(arch, sparse_opt, dense_opt, shm):
    spec = _spec(arch, sparse_opt, dense_opt)
    init, ref_loss, ref_state = _reference(spec)
    results = run_distributed(_sharded_step, 2, spec.model_dump(mode="json"), init, SHARDING, shm)
    loss, state, types, hooked = results[0]
    assert hooked == ((2, [2, 1]) if shm else None)
    # the plan really mixes sharding types
    assert types == {"t_user": "table_wise", "t_item": "column_wise", "t_tags": "data_parallel",
                     "t_city": "table_column_wise"}
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    tables = [k for k in ref_state if "embedding_bags" in k]
    assert len(tables) == 4
    assert set(state) == set(ref_state), (set(ref_state) ^ set(state))  # every key compared, none skipped
    for key, ref in ref_state.items():
        np.testing.assert_allclose(state[key], ref.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
    # the step changed the rows it touched (a test of equality between two untrained copies proves nothing)
    for key in tables:
        assert not np.allclose(ref_state[key].numpy(), init[key].numpy()), key
    assert set(tables) <= set(state)


def _step_at_epoch(rank: int, world: int, spec_doc: dict, init: dict, sharding: dict, epoch: int):
    """One optimizer step with the learning rates ``train.lr_decay`` gives ``epoch``; returns the full state."""
    from raytrain.train.distributed import gather_full_state, load_full_state, shard_model
    from raytrain.train.loop import set_epoch_lr

    spec = JobSpec.model_validate(spec_doc)
    spec.train.sharding.tables = sharding
    sharded = shard_model(spec, SCHEMA, torch.device("cpu"))
    base = [g["lr"] for g in sharded.optimizer.param_groups]
    load_full_state(sharded.module, init)
    set_epoch_lr(sharded.optimizer, base, spec.train.lr_decay, epoch)  # before the forward, as the loop does
    b = GLOBAL_BATCH // world
    loss, _ = sharded.module(_columns().batch(torch.arange(rank * b, (rank + 1) * b)))
    sharded.optimizer.zero_grad()
    loss.backward()
    sharded.optimizer.step()
    return {k: v.numpy() for k, v in gather_full_state(sharded.module).items()}


def test_lr_decay_scales_the_first_step_of_fused_tables_and_dense_layers():
    """rowwise Adagrad's and Adam's first steps are proportional to the learning rate, so at epoch 2 of
    ``lr_decay: 0.5`` every parameter (fused sharded tables, data-parallel table, dense layers) moves
    exactly half as far as at epoch 1."""
    spec = _spec("dcn_v2", "rowwise_adagrad", "adam")
    spec.train.lr_decay = 0.5
    init, _, _ = _reference(spec)
    doc = spec.model_dump(mode="json")
    first = run_distributed(_step_at_epoch, 2, doc, init, SHARDING, 0)[0]
    second = run_distributed(_step_at_epoch, 2, doc, init, SHARDING, 1)[0]
    moved = 0
    for key, a in first.items():
        d1, d2 = a - init[key].numpy(), second[key] - init[key].numpy()
        if not np.any(d1):
            continue
        moved += 1
        np.testing.assert_allclose(d2, 0.5 * d1, rtol=1e-3, atol=1e-6, err_msg=key)
    assert moved >= 8  # the four tables and the dense layers all moved
