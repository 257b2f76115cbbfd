"""tune -> ensemble -> distill on a real local Ray, small: the ensemble is fitted on validation, the student
is trained on the teacher's scores by Ray Train and then loads and scores on its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_pipeline_tune_ensemble_distill(pipeline_out, record_property):
    from raytrain.ensemble.members import load_member, score

    out = pipeline_out
    steps = out["steps"]
    assert list(steps) == ["tune", "ensemble", "distill"]
    assert json.loads((Path(out["run_dir"]) / "pipeline.json").read_text()).keys() == steps.keys()

    report = pd.DataFrame(steps["ensemble"]["report"])
    assert list(report["model"])[-3:] == ["ensemble:mean", "ensemble:weighted", "ensemble:stacked"]
    record_property("ensemble_report_test_auc_min", float(report["test_auc"].min()))
    assert (report["test_auc"] > 0.745).all()  # one run: 0.770 at least; 0.025 below for noise
    ens = json.loads((Path(steps["ensemble"]["run_dir"]) / "ensemble.json").read_text())
    assert len(ens["members"]) == 2 and set(ens["combiners"]) == {"mean", "weighted", "stacked"}

    d = steps["distill"]
    student_dir = Path(d["run_dir"])
    teacher_rows = pd.read_parquet(student_dir / "teacher" / "train.parquet")
    assert "teacher_logit" in teacher_rows and np.isfinite(teacher_rows["teacher_logit"]).all()
    record_property("parameter_ratio", float(d["parameter_ratio"]))
    record_property("student_test_auc", float(d["student_test_auc"]))
    # the parameter ratio is arithmetic (0.123 for this student against this ensemble): the goal itself, 0.2;
    # the student's AUC: one run reached 0.759, 0.03 below for noise
    assert d["parameter_ratio"] <= 0.2 and d["student_test_auc"] > 0.73
    # the student loads and scores alone, from its run directory
    student = load_member(student_dir, "student")
    logits, labels = score(student, "test")
    assert len(logits) == len(labels) > 9000 and np.isfinite(logits).all()
    summary = json.loads((student_dir / "distill.json").read_text())
    assert summary["student"]["test_auc"] == pytest.approx(d["student_test_auc"])
    assert summary["teacher"]["latency_ms_batch512"] > 0 and summary["student"]["latency_ms_batch1"] > 0
