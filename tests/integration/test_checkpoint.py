"""Sharded checkpoints: save on 2 ranks, reload into a fresh model, compare every table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_distributed
from test_sharded_equivalence import SCHEMA, SHARDING, _columns  # noqa: E402  (same small model)

from raytrain.errors import CheckpointError
from raytrain.spec.job import JobSpec
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
    # the manifest lists every rank's shard and the metadata with their sizes
    from pathlib import Path
    assert set(info["files"]) == {"__0_0.distcp", "__1_0.distcp", ".metadata"}
    assert all(info["files"][n] == (Path(directory) / n).stat().st_size for n in info["files"])
    tables = [k for k in saved if "embedding_bags" in k]
    assert len(tables) == 4
    for key in saved:
        np.testing.assert_array_equal(loaded[key], saved[key], err_msg=key)
    assert any(not np.array_equal(before[k], saved[k]) for k in tables)
    assert opt_keys  # optimizer state was part of the checkpoint
    for key in after[0]:
        np.testing.assert_allclose(after[1][key], after[0][key], rtol=1e-6, atol=1e-7, err_msg=key)


def _manifest(d, **files) -> None:
    sizes = {n: (d / n).stat().st_size for n in files or ("__0_0.distcp", "__1_0.distcp", ".metadata")}
    (d / "raytrain.json").write_text(json.dumps({"epoch": 0, "files": sizes}))


def test_incomplete_checkpoint_is_never_loaded(tmp_path):
    d = tmp_path / "epoch_0001"
    d.mkdir()
    (d / "__0_0.distcp").write_bytes(b"partial")
    with pytest.raises(CheckpointError) as info:
        ckpt.read_marker(d)
    assert str(info.value) == f"{d}: incomplete checkpoint (no raytrain.json); refusing to load it"
    (d / ".metadata").write_bytes(b"x")
    (d / "raytrain.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="raytrain.json: corrupt"):
        ckpt.read_marker(d)
    (d / "raytrain.json").write_text(json.dumps({"epoch": 0}))
    with pytest.raises(CheckpointError, match="raytrain.json: no file manifest"):
        ckpt.read_marker(d)
    (d / "__1_0.distcp").write_bytes(b"rank one")
    _manifest(d)
    assert ckpt.read_marker(d)["epoch"] == 0
    # another rank's shard that never arrived, or arrived cut short
    (d / "__1_0.distcp").unlink()
    with pytest.raises(CheckpointError) as info:
        ckpt.read_marker(d)
    assert str(info.value) == (f"{d}: incomplete checkpoint: __1_0.distcp is missing (8 bytes expected; a rank's "
                               "files never arrived); refusing to load it")
    (d / "__1_0.distcp").write_bytes(b"rank")
    with pytest.raises(CheckpointError, match="__1_0.distcp has 4 bytes, its manifest says 8"):
        ckpt.read_marker(d)
    # a manifest naming files outside the checkpoint is refused too
    (d / "raytrain.json").write_text(json.dumps({"epoch": 0, "files": {".metadata": 1, "../x": 1}}))
    with pytest.raises(CheckpointError, match="corrupt manifest"):
        ckpt.read_marker(d)


def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    for name, epoch, step in (("epoch_0001", 0, None), ("mid_epoch_0002_step_0000100", 1, 100),
                              ("epoch_0002", 1, None)):
        d = tmp_path / "ray" / name
        d.mkdir(parents=True)
        for f in ("__0_0.distcp", "__1_0.distcp", ".metadata"):
            (d / f).write_bytes(b"bytes")
        sizes = {f: 5 for f in ("__0_0.distcp", "__1_0.distcp", ".metadata")}
        (d / "raytrain.json").write_text(json.dumps({"epoch": epoch, "files": sizes,
                                                     **({"step": step} if step else {})}))
    newest = tmp_path / "ray" / "epoch_0002"
    assert ckpt.latest_complete(newest)[0] == str(newest)
    (newest / "__1_0.distcp").unlink()
    where, info = ckpt.latest_complete(newest)
    assert where == str(tmp_path / "ray" / "mid_epoch_0002_step_0000100") and info["step"] == 100
    (tmp_path / "ray" / "mid_epoch_0002_step_0000100" / "raytrain.json").unlink()
    assert ckpt.latest_complete(newest)[0] == str(tmp_path / "ray" / "epoch_0001")
    (tmp_path / "ray" / "epoch_0001" / ".metadata").write_bytes(b"")
    assert ckpt.latest_complete(newest) is None


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.path}",))


def _save_only(rank, world, directory):
    from raytrain.train.distributed import shard_model

    a = shard_model(JobSpec.model_validate(_spec(1)), SCHEMA, torch.device("cpu"))
    ckpt.save(a, directory, epoch=0, metrics={})
    return True


def test_a_crafted_checkpoint_cannot_run_code_in_the_reader(tmp_path):
    """A foreign bucket's checkpoint whose .metadata would run code when unpickled: its manifest agrees (whoever
    wrote it wrote both), and loading is refused with the name of what it tried to call; the code never ran."""
    import pickle

    from raytrain.train.export import load_model

    d = tmp_path / "run" / "ray" / "epoch_0001"
    assert run_distributed(_save_only, 2, str(d)) == [True, True]
    ran = tmp_path / "code-ran"
    (d / ".metadata").write_bytes(pickle.dumps(_RunsCode(ran)))
    marker = json.loads((d / "raytrain.json").read_text())
    marker["files"][".metadata"] = (d / ".metadata").stat().st_size
    (d / "raytrain.json").write_text(json.dumps(marker))
    assert ckpt.read_marker(d)["epoch"] == 0  # complete as far as its manifest says
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state({"model": {}}, d)
    assert "refusing to load it: its .metadata names posix.system" in str(info.value)
    doc = _spec(1)
    doc["train"]["sharding"]["tables"] = {}  # the spec's checks know the synthetic source's features, not SCHEMA's
    (tmp_path / "run" / "spec.yaml").write_text(__import__("yaml").safe_dump(doc))
    (tmp_path / "run" / "schema.json").write_text(SCHEMA.to_json())
    with pytest.raises(CheckpointError, match="posix.system, which is not part of DCP checkpoint metadata"):
        load_model(tmp_path / "run", d)
    assert not ran.exists()
    # what the refusal prevented: a plain unpickling of that file runs the code
    pickle.loads((d / ".metadata").read_bytes())
    assert ran.exists()
