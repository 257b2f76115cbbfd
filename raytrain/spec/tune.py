"""The spec section of kind ``tune``: hyper-parameter search with Ray Tune over training runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field

from .sections import Section

if TYPE_CHECKING:
    from .job import JobSpec


class SearchSpec(Section):
    """How trial configurations are chosen."""

    algorithm: Literal["random", "grid", "optuna_tpe", "optuna_gp"] = "random"
    seed: Optional[int] = 0
    startup_trials: Optional[int] = Field(
        None, ge=1, description="optuna_*: random trials before the model takes over (default: a third of "
                                "num_samples, at least 2; Optuna's own default of 10 would make short runs random)")
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="warm start: configs (space keys -> values) tried first"
    )


class SchedulerSpec(Section):
    """When trials stop early. Times are in epochs."""

    name: Literal["fifo", "asha", "hyperband", "median_stopping", "pbt"] = "fifo"
    grace_period: int = Field(1, ge=1, description="asha / median_stopping: epochs before a trial may stop")
    reduction_factor: float = Field(3.0, gt=1.0, description="asha / hyperband")
    max_t: Optional[int] = Field(None, ge=1, description="asha / hyperband: default train.epochs")
    min_samples_required: int = Field(3, ge=1, description="median_stopping")
    perturbation_interval: int = Field(1, ge=1, description="pbt: epochs between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="pbt: bottom fraction that copies the top")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="pbt: chance to resample, else perturb")
    synch: bool = Field(False, description="pbt: every trial waits at each interval until all have reported, then "
                                           "the bottom ones copy the top (slower, reproducible)")


class TrialResourcesSpec(Section):
    cpu: float = Field(0.25, gt=0.0, description="the trial's driver (its training workers come on top)")


class TuneSpec(Section):
    metric: str = "val_auc"
    mode: Literal["max", "min"] = "max"
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: int = Field(8, ge=1, description="trials (for grid: repetitions of the whole grid)")
    max_concurrent_trials: int = Field(2, ge=1)
    time_budget_s: Optional[float] = Field(None, gt=0)
    resources_per_trial: TrialResourcesSpec = Field(default_factory=TrialResourcesSpec)
    space: dict[str, Any] = Field(default_factory=dict, description="dotted spec path -> distribution")


def checks(spec: JobSpec, steps: list[str]) -> list[str]:
    from .tune_space import check_space

    problems = check_space(spec)
    if spec.train.checkpoint.every_steps is not None:  # a mid-epoch report would count as an iteration for Tune
        problems.append("train.checkpoint.every_steps: mid-epoch checkpoints are for kind train only")
    return problems


