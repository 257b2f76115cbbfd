"""The job spec every kind shares (``JobSpec``: the common sections and one optional section per kind), and each
kind's rule: which section it has, what the section must hold, its cross-field checks, whether it reads data and
models through the common sections, may write to a URI, and can be a pipeline step.

This is the bottom of the house: the spec types import nothing above ``spec/``, so every runner depends on them
and the registry of runners (``raytrain.kinds``) stands above the runners it registers. Adding a kind: its
section module here, its ``Rule`` and field below, and its runner module in ``kinds/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from pydantic import Field

from . import bandit, distill, ensemble, pipeline, serve, tune
from .abtest import AbTestSpec
from .bandit import BanditSpec
from .distill import DistillSpec
from .ensemble import EnsembleSpec
from .pipeline import PipelineSpec
from .sections import DataSpec, Section
from .serve import ServeSpec
from .training import ModelSpec, RaySpec, TrackingSpec, TrainSpec
from .tune import TuneSpec


@dataclass(frozen=True)
class Rule:
    name: str
    section: Optional[str] = None
    """its own JobSpec field, named like the kind (None: it has none)"""
    needs: str = ""
    """what its section holds, for the error when it is missing"""
    checks: Optional[Callable[[Any, list[str]], list[str]]] = None
    """checks across its section and the rest of the spec; given the spec's steps (its kind, or a pipeline's)"""
    uses_models: bool = True
    """reads data and models through the data / model / train sections (their cross-field checks apply)"""
    uri_storage: bool = False
    """may write its runs to a URI (else a local or mounted path)"""
    step: bool = False
    """can be a pipeline step (in this order: the only order a pipeline runs them in)"""


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("train", uri_storage=True, step=True),
    Rule("tune", "tune", "metric, search, scheduler, space", tune.checks, uri_storage=True, step=True),
    Rule("ensemble", "ensemble", "tune_run and top_k, or runs", ensemble.checks, step=True),
    Rule("distill", "distill", "teacher, student, alpha, temperature", distill.checks, uri_storage=True, step=True),
    Rule("serve", "serve", "variants, traffic, replicas, batching", serve.checks, step=True),
    Rule("bandit", "bandit", checks=bandit.checks, uses_models=False),
    Rule("pipeline", "pipeline", checks=pipeline.checks),
    Rule("abtest", "abtest", "serve_run, ...", uses_models=False),
)}


class JobSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal[tuple(RULES)] = "train"  # type: ignore[valid-type]
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
