"""k-fold cross-validation: a train run of 3 folds (each a Ray Train run), and a tune search whose trial runs every
fold and reports their mean."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from raytrain.errors import SpecError
from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
SMALL = ["data.history=null", "train.workers=1", "train.batch_size=2048", "train.epochs=1"]


def test_three_fold_train_run_folds_every_row_once_and_summarises(ray_local, tmp_path):
    from raytrain.cli.main import run_spec

    spec = load_spec(ROOT / "jobs/train_ml100k.yaml", [f"storage={tmp_path}", *SMALL,
                                                        "train.cross_validation={folds: 3, seed: 1}"])
    run_spec(spec, None)
    (run_dir,) = list((tmp_path / "train-ml100k").iterdir())
    cv = json.loads((run_dir / "cv.json").read_text())
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3
    # the folds' validation rows partition the pooled training and validation rows (90,000), none twice
    ids = [pq.read_table(run_dir / "cv_data" / f"fold_{i}" / "validation" / "part-00000.parquet",
                         columns=["user_id", "item_id"]).to_pandas() for i in range(3)]
    pooled = pd.concat(ids)
    assert len(pooled) == 90_000 and not pooled.duplicated().any()
    assert all(29_000 < len(i) < 31_000 for i in ids)
    for i in range(3):  # each fold trains on the other two
        train_rows = pq.read_metadata(run_dir / "cv_data" / f"fold_{i}" / "train" / "part-00000.parquet").num_rows
        assert train_rows + len(ids[i]) == 90_000
        assert json.loads((run_dir / "folds" / f"fold_{i}" / "metrics" / "test.json").read_text())["test_rows"] == 10_000
    aucs = [f["test_auc"] for f in cv["per_fold"]]
    assert all(0.7 < a < 1 for a in aucs)
    assert cv["test_auc_mean"] == pytest.approx(sum(aucs) / 3) and 0 <= cv["test_auc_std"] < 0.02
    assert len(cv["epochs"]) == 1 and 0.7 < cv["epochs"][0]["val_auc"] < 1


def test_a_tune_trial_runs_every_fold_and_reports_their_mean(ray_local, tmp_path):
    from raytrain.tune.runner import run_tune

    spec = load_spec(ROOT / "jobs/tune_ml100k_asha.yaml", [
        f"storage={tmp_path}", *SMALL, "train.cross_validation={folds: 2}", "tune.num_samples=1",
        "tune.max_concurrent_trials=2", "tune.scheduler={name: fifo}", "tune.search={algorithm: random, seed: 0}",
        "tune.space={model.embedding_dim: 'choice([8, 16])'}"])
    summary = run_tune(spec)
    board = pd.read_parquet(Path(summary["run_dir"]) / "leaderboard.parquet")
    assert len(board) == 1 and (board["status"] == "completed").all()
    for path, val in zip(board["path"], board["val_auc"]):
        runs = [Path(path) / "run" / f"fold_{i}" for i in range(2)]
        folds = [json.loads((r / "metrics" / "epoch_0001.json").read_text())["val_auc"] for r in runs]
        assert val == pytest.approx(sum(folds) / 2)  # the trial's metric: the mean over its folds


def test_cross_validation_spec_errors():
    # history features come from held-out rows that no fold contains: allowed with cross-validation
    assert load_spec(ROOT / "jobs/train_ml100k.yaml", ["train.cross_validation={folds: 3}"]).data.history is not None
    with pytest.raises(SpecError, match="folds"):
        load_spec(ROOT / "jobs/train_ml100k.yaml", [*SMALL, "train.cross_validation={folds: 1}"])
    with pytest.raises(SpecError, match="is not folded"):
        load_spec(ROOT / "jobs/train_synthetic.yaml", ["train.cross_validation={folds: 3}"])
