"""HSTU pretraining on Ray Train: 2 workers, the item table sharded, checkpoints, the leave-one-out evaluation merged
across ranks equal to the same model evaluated in one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(ray_local, tmp_path_factory):
    from raytrain.train.sequential_run import run_sequential

    spec = load_spec(ROOT / "jobs/pretrain_hstu_ml100k.yaml", [
        f"storage={tmp_path_factory.mktemp('seq')}", "train.epochs=2", "model.embedding_dim=16",
        "model.sequence.max_len=50", "train.batch_size=128", "train.resources_per_worker.cpu=0.5",
        "train.threads_per_worker=1"])
    return run_sequential(spec)


def test_hstu_pretrains_on_two_workers_and_its_metrics_merge_across_ranks(pretrained):
    summary = pretrained
    run_dir = Path(summary["run_dir"])
    rows = [json.loads(f.read_text()) for f in sorted((run_dir / "metrics").glob("epoch_*.json"))]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    for r in rows:
        for k in ("ndcg@10", "hr@10", "ndcg@50", "hr@50", "mrr"):
            assert 0.0 <= r[f"val_{k}"] <= 1.0 and 0.0 <= r[f"test_{k}"] <= 1.0
        assert r["val_ndcg@10"] <= r["val_hr@10"] and r["val_hr@10"] <= r["val_hr@50"]
    best = max(rows, key=lambda r: r["val_ndcg@10"])
    assert summary["best_epoch"] == best["epoch"] and summary["test_ndcg@10"] == best["test_ndcg@10"]
    checkpoints = sorted((run_dir / "ray").glob("epoch_*/raytrain.json"))
    assert len(checkpoints) == 2
    # the item table was sharded over the two ranks' plan: the checkpoint holds each rank's shard files
    shards = {p.name for p in checkpoints[-1].parent.glob("*.distcp")}
    assert len(shards) == 2, shards
    data = np.load(run_dir / "sequences.npz")
    assert int(data["num_items"]) == 1683 and len(data["offsets"]) == 944
    # the last epoch's checkpoint in one process (DCP reshards the two ranks' files): the same test metrics as the
    # two ranks measured and merged
    from raytrain.data.sequences import leave_one_out
    from raytrain.train.sequential import evaluate
    from raytrain.train.sequential_run import load_sequential

    _, model, seqs = load_sequential(run_dir, checkpoints[-1].parent)
    alone = evaluate(model, leave_one_out(seqs), "test")
    for k, v in alone.items():
        assert v == pytest.approx(rows[-1][f"test_{k}"], abs=1e-5), k


def test_a_ctr_model_starts_from_the_pretrained_item_embeddings(pretrained, tmp_path):
    """DCN-v2 (item table column-wise over 2 workers) with train.init_from: after one epoch at a negligible sparse
    learning rate its item table is HSTU's, however the two runs sharded it."""
    from raytrain.data import prepare
    from raytrain.spec import parse_spec
    from raytrain.train.export import load_model
    from raytrain.train.runner import run_train
    from raytrain.train.sequential_run import load_sequential

    base = load_spec(ROOT / "jobs/train_ml100k.yaml", ["data.history=null"])
    prepared = prepare(base.data)
    schema = prepared.schema
    doc = base.model_dump(mode="json")
    doc.update(name="warm", storage=str(tmp_path), data={
        "source": "parquet", "paths": {s: prepared.paths[s][0] for s in ("train", "validation", "test")},
        "label": {"column": "label"},
        "columns": {"sparse": {f.name: f.cardinality for f in schema.sparse if not f.multi_valued},
                    "multi_valued": {f.name: f.cardinality for f in schema.sparse if f.multi_valued},
                    "dense": list(schema.dense)}})
    doc["model"]["embedding_dim"] = 16
    doc["train"].update(epochs=1, batch_size=2048, resources_per_worker={"cpu": 0.5},
                        optimizer={**doc["train"]["optimizer"], "sparse_lr": 1e-9},
                        init_from={"run": pretrained["run_dir"], "tables": {"t_item_id": "t_item"}})
    out = run_train(parse_spec(doc))
    ctr = load_model(out["run_dir"]).module.state_dict()
    item = next(v for k, v in ctr.items() if k.endswith("t_item_id.weight"))
    _, hstu, _ = load_sequential(pretrained["run_dir"])
    source = hstu.item_table.embeddings["t_item"].weight.detach()
    assert item.shape == source.shape
    assert torch.allclose(item, source, atol=1e-4)
    user = next(v for k, v in ctr.items() if k.endswith("t_user_id.weight"))
    assert user.shape[0] == 944  # the other tables start fresh
    with pytest.raises(Exception, match="train.init_from.tables.t_item_id: width 32 here, 16 in the run's t_item"):
        doc["model"]["embedding_dim"] = 32
        run_train(parse_spec({**doc, "name": "too-wide"}))


def test_tune_over_hstu_ranks_trials_by_validation_ndcg(ray_local, tmp_path):
    """kind tune over a sequential model: every trial a 2-worker pretraining run, the leaderboard by val_ndcg@10 with
    each trial's test NDCG@10 at its best epoch, and a best checkpoint that load_sequential opens."""
    import pandas as pd

    from raytrain.train.sequential_run import load_sequential
    from raytrain.tune.runner import run_tune

    spec = load_spec(ROOT / "jobs/tune_hstu_ml100k.yaml", [
        f"storage={tmp_path}", "train.epochs=2", "model.embedding_dim=16", "model.sequence.max_len=50",
        "train.batch_size=128", "train.resources_per_worker.cpu=0.5", "train.threads_per_worker=1",
        "tune.num_samples=2", "tune.scheduler={name: fifo}", "tune.search={algorithm: random, seed: 0}",
        "tune.space={model.sequence.blocks: 'choice([1, 2])'}"])
    summary = run_tune(spec)
    run_dir = Path(summary["run_dir"])
    board = pd.read_parquet(run_dir / "leaderboard.parquet")
    assert len(board) == 2 and (board["status"] == "completed").all()
    assert board["val_ndcg@10"].is_monotonic_decreasing
    for _, row in board.iterrows():
        rows = [json.loads(f.read_text()) for f in sorted((Path(row["path"]) / "run" / "metrics").glob("epoch_*.json"))]
        best = max(rows, key=lambda r: r["val_ndcg@10"])
        assert row["val_ndcg@10"] == pytest.approx(best["val_ndcg@10"])
        assert row["test_ndcg@10"] == pytest.approx(best["test_ndcg@10"]) and row["test_epoch"] == best["epoch"]
    assert summary["best_test_ndcg@10"] == pytest.approx(board["test_ndcg@10"].iloc[0])
    from raytrain.data.sequences import leave_one_out
    from raytrain.train.sequential import evaluate

    # the best checkpoint, opened in one process, scores what the leaderboard says on test
    _, model, seqs = load_sequential(Path(board["path"].iloc[0]) / "run", summary["best_checkpoint"])
    assert evaluate(model, leave_one_out(seqs), "test")["ndcg@10"] == pytest.approx(summary["best_test_ndcg@10"],
                                                                                     abs=1e-5)
    assert (run_dir / "best_spec.yaml").exists() and load_spec(run_dir / "best_spec.yaml").model.arch == "hstu"
