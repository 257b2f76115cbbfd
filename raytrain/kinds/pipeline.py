"""Kind ``pipeline``: train -> tune -> ensemble -> distill -> serve in one spec."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field

from ..spec.sections import Section
from .base import Kind

if TYPE_CHECKING:
    from . import JobSpec

Step = Literal["train", "tune", "ensemble", "distill", "serve"]
STEPS: tuple[Step, ...] = ("train", "tune", "ensemble", "distill", "serve")


def _default_steps() -> list[Step]:
    return ["tune", "ensemble", "distill"]


class PipelineSpec(Section):
    """Steps run in this order, each reading the previous step's artifacts from the pipeline's run directory."""

    steps: list[Step] = Field(default_factory=_default_steps, min_length=1)


def steps_of(spec: JobSpec) -> list[str]:
    """The kinds a spec runs: a pipeline's steps, or its own kind."""
    if spec.kind != "pipeline":
        return [spec.kind]
    return [str(s) for s in (spec.pipeline.steps if spec.pipeline is not None else _default_steps())]


def checks(spec: JobSpec, steps: list[str]) -> list[str]:
    if len(set(steps)) != len(steps) or steps != sorted(steps, key=STEPS.index):
        return [f"pipeline.steps: {steps}: each step once, in the order {', '.join(STEPS)}"]
    return []


def run(spec: JobSpec, address: Optional[str]) -> dict:
    from ..pipeline import run_pipeline

    return run_pipeline(spec, address=address)


KIND = Kind(
    name="pipeline", section="pipeline", checks=checks, run=run,
    outputs=("spec.yaml", "pipeline.json", "<step>/<timestamp>/ (each step's run)", "logs/"),
)
