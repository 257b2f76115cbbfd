"""Kind ``ensemble``: combiners fitted over several trained models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field

from ..spec.sections import Section
from .base import Kind, StepContext

if TYPE_CHECKING:
    from . import JobSpec

Combine = Literal["mean", "weighted", "stacked"]
COMBINES: tuple[Combine, ...] = ("mean", "weighted", "stacked")


class EnsembleSpec(Section):
    """Members: the top_k trials of a finished tune run, or listed train run directories."""

    tune_run: Optional[str] = Field(None, description="a tune run directory, or <storage>/<name> for its newest")
    top_k: int = Field(3, ge=1, description="with tune_run: how many of its best trials")
    runs: list[str] = Field(default_factory=list, description="train run directories (instead of tune_run)")
    combine: list[Combine] = Field(
        default_factory=lambda: list(COMBINES), min_length=1,
        description="combiners to fit (on validation) and report")

    def source_problems(self) -> list[str]:
        """For kind ensemble (in a pipeline, the tune step gives the members)."""
        if (self.tune_run is None) == (not self.runs):
            return ["ensemble: give exactly one of 'tune_run' (with top_k) or 'runs'"]
        if self.runs and len(self.runs) < 2:
            return ["ensemble.runs: needs at least 2 run directories"]
        return []


def checks(spec: JobSpec, steps: list[str]) -> list[str]:
    assert spec.ensemble is not None
    if spec.kind == "pipeline" and "tune" in steps:
        if spec.ensemble.tune_run is not None or spec.ensemble.runs:
            return ["ensemble: in a pipeline with a tune step the members are its top trials; remove tune_run / runs"]
        return []
    return spec.ensemble.source_problems()


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
    name="ensemble", section="ensemble", needs="tune_run and top_k, or runs", checks=checks, run=run, step=step,
    outputs=("spec.yaml", "ensemble.json", "report.parquet"),
)
