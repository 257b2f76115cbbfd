"""A sequential model (SASRec, HSTU) with its item table sharded over 2 gloo workers computes what the unsharded model
computes in 1 process: same initial weights, same global batch of histories (each worker half of the users) and
the same sampled negatives give the same loss, item rows and dense weights after one optimizer step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_distributed

from raytrain.spec.job import JobSpec

NUM_ITEMS, USERS, LENGTH = 60, 8, 6


def _spec(arch: str, sparse_opt: str, dense_opt: str) -> dict:
    return JobSpec.model_validate({
        "name": "equiv-seq", "data": {"source": "movielens-100k", "history": None},
        "model": {"arch": arch, "embedding_dim": 8, "sequence": {"max_len": 10, "blocks": 2, "heads": 2,
                                                                 "dropout": 0.0}},
        "train": {"workers": 2, "batch_size": USERS, "seed": 3,
                  "optimizer": {"sparse": sparse_opt, "dense": dense_opt, "lr": 0.05, "sparse_lr": 0.3}},
    }).model_dump(mode="json")


def _batch(users: range):
    """Histories of equal length (each worker's loss is a mean over the same number of positions), fixed negatives."""
    from raytrain.train.sequential.ranking import _batch as make

    g = np.random.default_rng(5)
    items = g.integers(1, NUM_ITEMS, size=(USERS, LENGTH + 1))
    times = np.cumsum(g.integers(1, 10_000, size=(USERS, LENGTH)), axis=1)
    negatives = g.integers(1, NUM_ITEMS, size=12)
    return make([items[u, :-1] for u in users], [times[u] for u in users], [items[u, 1:] for u in users], negatives)


def _step(model, optimizer, batch, temperature=0.1) -> torch.Tensor:
    from raytrain.train.sequential.ranking import next_item_loss

    loss, _ = next_item_loss(model, batch, temperature)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def _reference(doc: dict) -> tuple[dict, float, dict]:
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from raytrain.models.sequential import SequentialModel
    from raytrain.train.distributed import SPARSE_OPTIMIZERS, _sparse_kwargs, dense_optimizer_factory

    spec = JobSpec.model_validate(doc)
    torch.manual_seed(0)
    model = SequentialModel(spec.model.arch, NUM_ITEMS, spec.model.embedding_dim, spec.model.sequence)
    with torch.no_grad():  # the sharded tables start from other values than a fresh module: give both these
        for p in model.item_table.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = spec.train.optimizer
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[opt.sparse], model.item_table.parameters(), _sparse_kwargs(opt))
    dense = dense_optimizer_factory(opt)([p for _, p in in_backward_optimizer_filter(model.named_parameters())])
    loss = _step(model.train(), dense, _batch(range(USERS)))
    return init, float(loss), {k: v.detach().clone() for k, v in model.state_dict().items()}


def _sharded(rank: int, world: int, doc: dict, init: dict):
    import torch.distributed as dist

    from raytrain.sharding.planner import describe_plan
    from raytrain.train.distributed import gather_full_state, load_full_state
    from raytrain.train.sequential.loop import shard

    spec = JobSpec.model_validate(doc)
    sharded = shard(spec, NUM_ITEMS, dist.GroupMember.WORLD)
    load_full_state(sharded.module, init)
    per = USERS // world
    loss = _step(sharded.module.train(), sharded.optimizer, _batch(range(rank * per, (rank + 1) * per)))
    dist.all_reduce(loss)
    types = {r.table: r.sharding_type for r in describe_plan(sharded.plan, world)}
    return float(loss) / world, {k: v.numpy() for k, v in gather_full_state(sharded.module).items()}, types


@pytest.mark.parametrize("arch,sparse_opt,dense_opt", [("hstu", "rowwise_adagrad", "adam"), ("sasrec", "sgd", "sgd")])
def test_two_sharded_workers_match_one_unsharded_process(arch, sparse_opt, dense_opt):
    doc = _spec(arch, sparse_opt, dense_opt)
    init, ref_loss, ref_state = _reference(doc)
    loss, state, types = run_distributed(_sharded, 2, doc, init)[0]
    assert set(types) == {"t_item"}
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    table = [k for k in ref_state if "item_table" in k]
    assert table and set(table) <= set(state)
    compared = 0
    for key, ref in ref_state.items():
        if key in state:
            np.testing.assert_allclose(state[key], ref.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
            compared += 1
    assert compared == len(ref_state)  # every tensor, the sharded table's rows and every dense layer
    for key in table:  # the step moved the table (equal untouched copies would prove nothing)
        assert not np.allclose(ref_state[key].numpy(), init[key].numpy()), key
