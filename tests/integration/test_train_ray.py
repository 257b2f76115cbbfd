"""End to end on a real local Ray: Ray Train workers, TorchRec sharding over gloo, Ray Data input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from raytrain.spec import load_spec
from raytrain.train.checkpoint import read_marker
from raytrain.train.runner import run_train

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_movielens_dcn_v2_on_two_workers(ray_local, tmp_path):
    # the demo job with its tables sharded three ways (as shipped they are all small enough to be replicated)
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml", [
        f"storage={tmp_path}", "train.epochs=2",
        "train.sharding.tables={item_id: column_wise, user_id: table_wise, genres: data_parallel}"])
    summary = run_train(spec)
    run_dir = Path(summary["run_dir"])
    for name in ("spec.yaml", "plan.txt", "schema.json", "metrics.parquet", "result.json"):
        assert (run_dir / name).exists(), name
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert metrics["epoch"].tolist() == [1, 2]
    assert (metrics["val_auc"] > 0.74).all()  # well above chance after one epoch on 80k rows
    assert summary["test_auc"] > 0.75 and 0.4 < summary["test_logloss"] < 0.7
    test = json.loads((run_dir / "metrics/test.json").read_text())
    assert test["test_rows"] == 10_000
    # test metrics are those of the checkpoint the model is used from: the best epoch by validation AUC
    best_epoch = int(metrics.loc[metrics["val_auc"].idxmax(), "epoch"])
    assert test["test_epoch"] == best_epoch and summary["test_epoch"] == best_epoch
    from sklearn.metrics import roc_auc_score

    from raytrain.ensemble.members import Member, best_checkpoint, score
    from raytrain.train.export import load_model

    best = best_checkpoint(run_dir)
    assert best.name == f"epoch_{best_epoch:04d}"
    member = Member("m", run_dir, best, load_model(run_dir, best))
    logits, labels = score(member, "test")
    assert roc_auc_score(labels, logits) == pytest.approx(test["test_auc"], abs=2e-4)
    plan = (run_dir / "plan.txt").read_text()
    assert "t_item_id" in plan and "column_wise" in plan and "data_parallel" in plan
    # both workers on this machine: DDP's buckets went through shared memory, not gloo (train/shm_allreduce.py)
    assert "gradients averaged through shared memory" in plan
    ckpts = sorted((run_dir / "ray").glob("epoch_*"))
    assert [c.name for c in ckpts] == ["epoch_0001", "epoch_0002"]  # keep: 2
    assert read_marker(ckpts[-1])["epoch"] == 1
    assert sorted(p.name for p in (run_dir / "workers").glob("*.pid")) == ["rank0.pid", "rank1.pid"]
    assert len((run_dir / "workers" / "placement_groups.txt").read_text().split()) == 1  # the worker group's
    # on raytrain's own local Ray, Ray Train ran without the helper actors only a cluster uses (train/lean.py)
    from ray._private.state import actors

    classes = {a["ActorClassName"] for a in actors().values()}
    assert {"TrainController", "RayTrainWorker"} <= classes
    assert not classes & {"_AutoscalingCoordinatorActor", "PlacementGroupCleaner", "DatasetManager"}, classes


def test_synthetic_mixed_sharding_learns(ray_local, tmp_path):
    spec = load_spec(ROOT / "jobs/train_synthetic.yaml",
                     [f"storage={tmp_path}", "data.synthetic.rows={train: 65536, validation: 16384, test: 16384}",
                      "train.epochs=2", "train.checkpoint.keep=1", "train.allreduce=gloo"])
    summary = run_train(spec)
    assert summary["test_auc"] > 0.6  # the hidden per-id weights are learnable
    assert "gradients averaged by gloo" in (Path(summary["run_dir"]) / "plan.txt").read_text()  # as asked
    ckpts = sorted((Path(summary["run_dir"]) / "ray").glob("epoch_*"))
    # keep 1: the best by validation AUC, and the latest (for resuming) when that is another one
    names = [c.name for c in ckpts]
    auc = {c.name: read_marker(c)["metrics"]["val_auc"] for c in ckpts}
    assert names in (["epoch_0002"], ["epoch_0001", "epoch_0002"])
    if len(names) == 2:
        assert auc["epoch_0001"] > auc["epoch_0002"]


def test_two_tower_reports_full_catalogue_retrieval(two_tower_summary):
    summary = two_tower_summary
    assert summary["catalogue_items"] == 1682
    assert 800 < summary["test_retrieval_users"] <= 943
    # random ranking of ~1,600 unseen items would give recall@50 of about 0.03
    assert summary["test_recall@50"] > 0.06
    assert 0 < summary["test_ndcg@10"] <= 1 and summary["test_recall@10"] <= summary["test_recall@50"]
    assert summary["test_auc"] > 0.65
