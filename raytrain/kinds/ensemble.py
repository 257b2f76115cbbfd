"""Kind ``ensemble``: combiners fitted over several trained models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .base import Kind, StepContext

if TYPE_CHECKING:
    from ..spec.job import JobSpec


def run(spec: JobSpec, address: Optional[str]) -> dict:
    from ..ensemble.runner import run_ensemble

    return run_ensemble(spec)


def step(ctx: StepContext) -> tuple[dict, dict[str, str]]:
    assert ctx.spec.ensemble is not None
    ens = ctx.spec.ensemble.model_dump(mode="json")
    if "tune_run" in ctx.source:
        ens.update(tune_run=ctx.source["tune_run"], runs=[])
    out = run(ctx.step_spec("ensemble", ensemble=ens), ctx.address)
    return {"run_dir": out["run_dir"], "report": out["report"]}, {"ensemble": out["run_dir"]}


KIND = Kind(
    name="ensemble", run=run, step=step,
    outputs=("spec.yaml", "ensemble.json", "report.parquet"),
)
