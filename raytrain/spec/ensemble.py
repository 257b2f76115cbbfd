"""The spec section of kind ``ensemble``: combiners fitted over several trained models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field

from .sections import Section

if TYPE_CHECKING:
    from .job import JobSpec

Combine = Literal["mean", "weighted", "stacked"]
COMBINES: tuple[Combine, ...] = ("mean", "weighted", "stacked")


class EnsembleSpec(Section):
    """Members: the top_k trials of a finished tune run, or listed train run directories."""

    tune_run: Optional[str] = Field(None, description="a tune run directory, or <storage>/<name> for its newest")
    top_k: int = Field(3, ge=1, description="with tune_run: how many of its best trials")
    runs: list[str] = Field(default_factory=list, description="train run directories, or directories above runs (the "
                                                              "newest finished run under each), instead of tune_run")
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


