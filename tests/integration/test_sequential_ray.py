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
