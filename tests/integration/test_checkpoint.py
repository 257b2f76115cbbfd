"""Sharded checkpoints: save on 2 ranks, reload into a fresh model, compare every table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_distributed
from test_sharded_equivalence import SCHEMA, SHARDING, _columns  # noqa: E402  (same small model)

from raytrain.errors import CheckpointError
from raytrain.spec.schema import JobSpec
from raytrain.train import checkpoint as ckpt


def _spec(seed: int) -> dict:
    return JobSpec.model_validate({
        "name": "ckpt", "data": {"source": "synthetic"},
        "model": {"arch": "dcn_v2", "embedding_dim": 8, "dense_arch": [16], "over_arch": [16],
                  "dcn": {"num_layers": 1, "low_rank_dim": 4}},
        "train": {"workers": 2, "batch_size": 32, "seed": seed, "sharding": {"tables": SHARDING},
                  "optimizer": {"sparse": "rowwise_adagrad", "dense": "adam"}},
    }).model_dump(mode="json")


def _save_then_load(rank, world, directory):
    from raytrain.train.distributed import gather_full_state, shard_model

    a = shard_model(JobSpec.model_validate(_spec(1)), SCHEMA, torch.device("cpu"))
    batch = _columns().batch(torch.arange(rank * 16, rank * 16 + 16))
    for _ in range(2):  # non-trivial optimizer state
        loss, _ = a.module(batch)
        a.optimizer.zero_grad()
        loss.backward()
        a.optimizer.step()
    ckpt.save(a, directory, epoch=4, metrics={"val_auc": 0.5})
    saved = gather_full_state(a.module)
    saved_opt_keys = sorted(a.optimizer.state_dict()["state"].keys())

    b = shard_model(JobSpec.model_validate(_spec(2)), SCHEMA, torch.device("cpu"))  # other seed: other weights
    before = gather_full_state(b.module)
    info = ckpt.load(b, directory)
    loaded = gather_full_state(b.module)
    # one more identical step on both must give identical results (optimizer state came back too)
    outs = []
    for m in (a, b):
        loss, _ = m.module(batch)
        m.optimizer.zero_grad()
        loss.backward()
        m.optimizer.step()
        outs.append(gather_full_state(m.module))
    return ({k: v.numpy() for k, v in saved.items()}, {k: v.numpy() for k, v in before.items()},
            {k: v.numpy() for k, v in loaded.items()}, info, saved_opt_keys,
            [{k: v.numpy() for k, v in o.items()} for o in outs])


def test_sharded_checkpoint_round_trip(tmp_path):
    directory = str(tmp_path / "epoch_0005")
    saved, before, loaded, info, opt_keys, after = run_distributed(_save_then_load, 2, directory)[0]
    assert info["epoch"] == 4 and info["world_size"] == 2
    tables = [k for k in saved if "embedding_bags" in k]
    assert len(tables) == 4
    for key in saved:
        np.testing.assert_array_equal(loaded[key], saved[key], err_msg=key)
    assert any(not np.array_equal(before[k], saved[k]) for k in tables)
    assert opt_keys  # optimizer state was part of the checkpoint
    for key in after[0]:
        np.testing.assert_allclose(after[1][key], after[0][key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_incomplete_checkpoint_is_never_loaded(tmp_path):
    d = tmp_path / "epoch_0001"
    d.mkdir()
    (d / "__0_0.distcp").write_bytes(b"partial")
    with pytest.raises(CheckpointError) as info:
        ckpt.read_marker(d)
    assert str(info.value) == f"{d}: incomplete checkpoint (no raytrain.json or .metadata); refusing to load it"
    (d / ".metadata").write_bytes(b"x")
    (d / "raytrain.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="raytrain.json: corrupt"):
        ckpt.read_marker(d)
    (d / "raytrain.json").write_text(json.dumps({"epoch": 0}))
    assert ckpt.read_marker(d)["epoch"] == 0
