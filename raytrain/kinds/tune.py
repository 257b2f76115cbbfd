"""Kind ``tune``: hyper-parameter search with Ray Tune over training runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .base import Kind, StepContext

if TYPE_CHECKING:
    from ..spec.job import JobSpec


def run(spec: JobSpec, address: Optional[str]) -> dict:
    from ..tune.runner import run_tune

    return run_tune(spec, address=address)


def step(ctx: StepContext) -> tuple[dict, dict[str, str]]:
    from ..runs import newest_run

    tune = ctx.spec.tune.model_dump(mode="json") if ctx.spec.tune else None
    out = run(ctx.step_spec("tune", tune=tune), ctx.address)
    tune_dir = str(newest_run(ctx.run_dir / "tune", "leaderboard.parquet"))
    record = {"run_dir": tune_dir, "best_val_auc": out.get("best_val_auc"), "best_test_auc": out.get("best_test_auc"),
              "trials": out.get("trials")}
    return record, {"tune_run": tune_dir}


KIND = Kind(
    name="tune", run=run, step=step,
    outputs=("spec.yaml", "schema.json", "leaderboard.parquet", "best_spec.yaml", "result.json", "metric_per_epoch.png",
             "best_so_far.png"),
)
