"""Kind ``distill``: a smaller student trained on a teacher's scores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .base import Kind, StepContext

if TYPE_CHECKING:
    from ..spec.job import JobSpec


def run(spec: JobSpec, address: Optional[str]) -> dict:
    from ..distill.runner import run_distill

    return run_distill(spec, address=address)


def step(ctx: StepContext) -> tuple[dict, dict[str, str]]:
    assert ctx.spec.distill is not None
    dist = ctx.spec.distill.model_dump(mode="json")
    if ctx.source:
        dist["teacher"] = {"combine": ctx.spec.distill.teacher.combine, **ctx.source}
    out = run(ctx.step_spec("distill", distill=dist), ctx.address)
    record = {k: out[k] for k in ("parameter_ratio", "auc_retained_pct", "latency_ratio_batch1",
                                  "latency_ratio_batch512")}
    record.update(teacher_test_auc=out["teacher"]["test_auc"], student_test_auc=out["student"]["test_auc"],
                  run_dir=out["student"]["run_dir"])
    return record, ctx.source


KIND = Kind(
    name="distill", run=run, step=step,
    outputs=("distill.json", "teacher/train.parquet", "the student's train run"),
)
