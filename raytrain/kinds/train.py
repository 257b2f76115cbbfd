"""Kind ``train``: one training run (or k of them, with ``train.cross_validation``). Its sections are the common
ones (``spec.training``); its rule is in ``spec.job``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .base import Kind, StepContext

if TYPE_CHECKING:
    from ..spec.job import JobSpec


def run(spec: JobSpec, address: Optional[str]) -> dict:
    if spec.model.arch == "content":  # fitted on the driver, no workers
        from ..train.content import run_content

        return run_content(spec, address=address)
    if spec.model.arch in ("sasrec", "hstu"):  # pretraining by next-item prediction
        from ..train.sequential.run import run_sequential

        return run_sequential(spec, address=address)
    if spec.train.cross_validation is not None:
        from ..train.crossval import run_cross_validation

        return run_cross_validation(spec, address=address)
    from ..train.runner import run_train

    return run_train(spec, address=address)


def step(ctx: StepContext) -> tuple[dict, dict[str, str]]:
    spec = ctx.step_spec("train")
    if spec.model.arch == "content":
        from ..train.content import run_content

        out = run_content(spec, address=ctx.address)
    else:
        from ..train.runner import run_train

        out = run_train(spec, address=ctx.address)
    return {"run_dir": out["run_dir"], "test_auc": out.get("test_auc")}, {"run": out["run_dir"]}


KIND = Kind(
    name="train", run=run, step=step,
    outputs=("spec.yaml", "schema.json", "result.json", "metrics/", "metrics.parquet", "checkpoints/", "logs/",
             "(cross-validation: cv.json, one run per fold)"),
)
