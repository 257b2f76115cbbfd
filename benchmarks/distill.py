"""Teacher vs student after a distillation: parameter ratio, test AUC retained, scoring latency ratio.

    python benchmarks/distill.py RUN       # RUN: one pipeline run, or one distill run (its directory)
                                           # (make one: raytrain run jobs/pipeline_ml100k.yaml)

Loads the teacher (the ensemble's members and combiner, or the single teacher model) and the student
from their run directories, scores the test split with both, and times scoring at batch 1 and 512
with teacher and student alternating round by round on this one process.
Goals (issue 4): student <= 0.2x the teacher's parameters, >= 99.5% of its test AUC; the stacked top-3
ensemble's test AUC above the best single member's, at 0.80 or more.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _the_one(base: Path, marker: str) -> Path:
    """The one run under ``base`` with ``marker``: a benchmark measures the run it is given, never whichever run
    happens to be newest (possibly made by an older build)."""
    found = sorted(p.parent for p in base.glob(f"**/{marker}"))
    if len(found) != 1:
        sys.exit(f"{len(found)} runs with {marker} under {base}: give one pipeline or distill run directory "
                 "(make one: raytrain run jobs/pipeline_ml100k.yaml)")
    return found[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="one pipeline run or one distill run (its directory)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import numpy as np
    import pandas as pd
    from scipy.special import expit

    from raytrain.data.batches import Columns
    from raytrain.distill.runner import latency
    from raytrain.distill.teacher import load_teacher
    from raytrain.ensemble.members import load_member, score, split_table
    from raytrain.spec import load_spec
    from raytrain.train.metrics import binary_metrics

    student_dir = _the_one(Path(args.run), "distill.json")
    spec = load_spec(student_dir / "spec.yaml")
    teacher = load_teacher(spec.distill.teacher)
    student = load_member(student_dir, "student")
    t_logits, labels = teacher.logits("test")
    s_logits, s_labels = score(student, "test")
    assert np.array_equal(labels, s_labels)
    t, s = binary_metrics(labels, expit(t_logits)), binary_metrics(labels, expit(s_logits))
    t_params = teacher.parameters()
    s_params = int(sum(p.numel() for p in student.model.module.parameters()))
    cols = Columns.from_arrow(student.model.schema, split_table(student, "test"), "test split")
    lat = {b: latency(teacher, student.model.module, cols, b, rounds=args.rounds) for b in (1, 512)}
    print(f"teacher: {teacher.source}")
    print(f"student: {student_dir}")
    rows = [("parameters", t_params, s_params, s_params / t_params),
            ("test AUC", t["auc"], s["auc"], s["auc"] / t["auc"]),
            ("test log loss", t["logloss"], s["logloss"], s["logloss"] / t["logloss"]),
            ("latency ms, batch 1", lat[1]["teacher"], lat[1]["student"], lat[1]["student"] / lat[1]["teacher"]),
            ("latency ms, batch 512", lat[512]["teacher"], lat[512]["student"],
             lat[512]["student"] / lat[512]["teacher"])]
    print(f"{'':<24}{'teacher':>14}{'student':>14}{'student/teacher':>18}")
    for name, a, b, r in rows:
        print(f"{name:<24}{a:>14.4f}{b:>14.4f}{r:>18.4f}" if isinstance(a, float) else
              f"{name:<24}{a:>14,}{b:>14,}{r:>18.4f}")
    goals = [("student_parameter_ratio", s_params / t_params, "<=0.200", s_params / t_params <= 0.2),
             ("student_auc_retained_pct", 100 * s["auc"] / t["auc"], ">=99.500", s["auc"] / t["auc"] >= 0.995)]
    ens_dir = Path(spec.distill.teacher.ensemble) if spec.distill.teacher.ensemble else None
    if ens_dir is not None and (ens_dir / "report.parquet").exists():
        rep = pd.read_parquet(ens_dir / "report.parquet")
        best_member = rep.loc[rep["role"] == "member", "test_auc"].max()
        print(rep.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        stacked = rep.loc[rep["model"] == "ensemble:stacked", "test_auc"]
        if len(stacked):
            a = float(stacked.iloc[0])
            print(f"stacked ensemble test AUC {a:.4f} vs best member {best_member:.4f} ({a - best_member:+.4f})")
            goals += [("stacked_minus_best_member_auc", a - best_member, ">0", a > best_member),
                      ("stacked_test_auc", a, ">=0.800", a >= 0.80)]
    if len(goals) == 2:  # the teacher is not a stacked ensemble: those goals are not measured, so not met
        print("the teacher is not a stacked ensemble: its goals are not measured")
        goals += [("stacked_minus_best_member_auc", None, ">0", False), ("stacked_test_auc", None, ">=0.800", False)]
    json.dump({"teacher": t, "student": s, "latency": lat}, sys.stderr)
    print(file=sys.stderr)
    for name, value, target, ok in goals:
        shown = "not_measured" if value is None else f"{value:.4f}"
        print(f"GOAL {name} {shown} {target} {'met' if ok else 'missed'}")


if __name__ == "__main__":
    main()
