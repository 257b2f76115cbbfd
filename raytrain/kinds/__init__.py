"""The registry of job kinds, and the job spec they share.

Each kind is one module here that declares its spec section (a pydantic class), its cross-field checks, its runner,
what its run directory holds and, if it can be a pipeline step, how it runs as one (``base.Kind``). The CLI, the
pipeline, submitted jobs and the spec loader look kinds up in ``KINDS``. Adding a kind: a module with its ``KIND``,
then its line in ``KINDS`` and its section's field in ``JobSpec`` below.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..spec.sections import DataSpec, Section
from ..spec.training import ModelSpec, RaySpec, TrackingSpec, TrainSpec
from . import abtest, bandit, distill, ensemble, pipeline, serve, train, tune
from .abtest import AbTestSpec
from .bandit import BanditSpec
from .base import Kind, StepContext
from .distill import DistillSpec
from .ensemble import EnsembleSpec
from .pipeline import PipelineSpec
from .serve import ServeSpec
from .tune import TuneSpec

KINDS: dict[str, Kind] = {k.name: k for k in (train.KIND, tune.KIND, ensemble.KIND, distill.KIND, serve.KIND,
                                              bandit.KIND, pipeline.KIND, abtest.KIND)}


class JobSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal[tuple(KINDS)] = "train"  # type: ignore[valid-type]
    storage: str = "./runs"
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    # each kind's own section
    tune: Optional[TuneSpec] = None
    bandit: Optional[BanditSpec] = None
    ensemble: Optional[EnsembleSpec] = None
    distill: Optional[DistillSpec] = None
    pipeline: Optional[PipelineSpec] = None
    serve: Optional[ServeSpec] = None
    abtest: Optional[AbTestSpec] = None
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    ray: RaySpec = Field(default_factory=RaySpec)


def kind_of(spec: JobSpec) -> Kind:
    return KINDS[spec.kind]


__all__ = ["KINDS", "JobSpec", "Kind", "StepContext", "kind_of"]
