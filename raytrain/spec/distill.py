"""The spec section of kind ``distill``: a smaller student trained on a teacher's scores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from pydantic import Field

from .sections import Section

if TYPE_CHECKING:
    from .job import JobSpec
from .ensemble import Combine


class TeacherSpec(Section):
    """The teacher: exactly one of an ensemble run, a train run, or a tune run (its best trial)."""

    ensemble: Optional[str] = Field(None, description="an ensemble run directory, or <storage>/<name> for its newest")
    combine: Combine = Field("stacked", description="with ensemble: which of its fitted combiners")
    run: Optional[str] = Field(None, description="a train run directory")
    tune_run: Optional[str] = Field(None, description="a tune run directory: its best trial")

    def given(self) -> list[str]:
        return [k for k in ("ensemble", "run", "tune_run") if getattr(self, k) is not None]


class DistillSpec(Section):
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    student: dict[str, Any] = Field(
        default_factory=dict, description="dotted spec path -> value, applied to the teacher's spec")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the label loss (1: plain training)")
    temperature: float = Field(2.0, gt=0.0)


def checks(spec: JobSpec, steps: list[str]) -> list[str]:
    assert spec.distill is not None
    problems = []
    if spec.train.checkpoint.every_steps is not None:
        problems.append("train.checkpoint.every_steps: mid-epoch checkpoints are for kind train only")
    given = spec.distill.teacher.given()
    fed = spec.kind == "pipeline" and any(s in steps for s in ("train", "tune", "ensemble"))
    if fed and given:
        problems.append(f"distill.teacher: the pipeline's earlier step is the teacher; remove {', '.join(given)}")
    elif not fed and len(given) != 1:
        problems.append("distill.teacher: give exactly one of 'ensemble', 'run' or 'tune_run' "
                        f"(got {', '.join(given) or 'none'})")
    return problems


