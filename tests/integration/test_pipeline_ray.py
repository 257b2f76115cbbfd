"""tune -> ensemble -> distill on a real local Ray, small: the ensemble is fitted on validation, the student
is trained on the teacher's scores by Ray Train and then loads and scores on its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_pipeline_tune_ensemble_distill(ray_local, tmp_path):
    from raytrain.ensemble.members import load_member, score
    from raytrain.pipeline import run_pipeline

    spec = load_spec(ROOT / "jobs/pipeline_ml100k.yaml", [
        f"storage={tmp_path}", "train.workers=1", "train.batch_size=2048", "train.epochs=1", "tune.num_samples=2",
        "tune.max_concurrent_trials=2", "tune.scheduler={name: fifo}", "tune.search={algorithm: random, seed: 0}",
        "tune.space={model.embedding_dim: 'choice([8, 16, 32])'}", "ensemble.top_k=2", "distill.alpha=0.5"])
    out = run_pipeline(spec)
    steps = out["steps"]
    assert list(steps) == ["tune", "ensemble", "distill"]
    assert json.loads((Path(out["run_dir"]) / "pipeline.json").read_text()).keys() == steps.keys()

    report = pd.DataFrame(steps["ensemble"]["report"])
    assert list(report["model"])[-3:] == ["ensemble:mean", "ensemble:weighted", "ensemble:stacked"]
    assert (report["test_auc"] > 0.65).all()
    ens = json.loads((Path(steps["ensemble"]["run_dir"]) / "ensemble.json").read_text())
    assert len(ens["members"]) == 2 and set(ens["combiners"]) == {"mean", "weighted", "stacked"}

    d = steps["distill"]
    student_dir = Path(d["run_dir"])
    teacher_rows = pd.read_parquet(student_dir / "teacher" / "train.parquet")
    assert "teacher_logit" in teacher_rows and np.isfinite(teacher_rows["teacher_logit"]).all()
    assert d["parameter_ratio"] < 0.5 and d["student_test_auc"] > 0.65
    # the student loads and scores alone, from its run directory
    student = load_member(student_dir, "student")
    logits, labels = score(student, "test")
    assert len(logits) == len(labels) > 9000 and np.isfinite(logits).all()
    summary = json.loads((student_dir / "distill.json").read_text())
    assert summary["student"]["test_auc"] == pytest.approx(d["student_test_auc"])
    assert summary["teacher"]["latency_ms_batch512"] > 0 and summary["student"]["latency_ms_batch1"] > 0
