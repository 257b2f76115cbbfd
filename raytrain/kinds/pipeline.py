"""Kind ``pipeline``: train -> tune -> ensemble -> distill -> serve in one spec, each step an ordinary spec of its
kind built from the pipeline's sections (``<run>/<step>/<timestamp>`` is its run directory), reading the artifacts
of the step before it: the tune step's top trials are the ensemble's members, the ensemble (or the best trial, or
the trained model) is the distillation's teacher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .base import Kind, StepContext

if TYPE_CHECKING:
    from ..spec.job import JobSpec


def run_pipeline(spec: JobSpec, address: str | None = None, serve_block: bool = True) -> dict:
    """Run the steps in order, each as its kind runs as a step (``KINDS[step].step``); a serve step (last) deploys
    and, with ``serve_block``, serves until Ctrl-C. ``pipeline.json`` records each step's run directory, headline
    numbers and wall time."""
    import json
    import time

    from .. import console
    from ..log import get_logger
    from ..runs import new_run_dir
    from ..spec import resolved_yaml
    from ..spec.pipeline import steps_of
    from . import KINDS

    log = get_logger(__name__)
    steps = steps_of(spec)
    run_dir = new_run_dir(spec)
    (run_dir / "spec.yaml").write_text(resolved_yaml(spec))
    console.attach(run_dir / "logs")
    log.info(f"pipeline {spec.name}: {' -> '.join(steps)}; run directory {run_dir}")
    ctx = StepContext(spec=spec, run_dir=run_dir, address=address, source={}, done={}, serve_block=serve_block)
    for step in steps:
        t0 = time.time()
        log.info(f"=== step {step} ===")
        run_step = KINDS[step].step
        assert run_step is not None, step  # the loader lets only steps into pipeline.steps
        record, ctx.source = run_step(ctx)
        ctx.done[step] = {**record, "wall_s": time.time() - t0}
        log.info(f"step {step} done in {ctx.done[step]['wall_s']:.0f}s")
        (run_dir / "pipeline.json").write_text(json.dumps(ctx.done, indent=2, default=str))
    total = sum(d["wall_s"] for d in ctx.done.values())
    log.info(f"pipeline done in {total:.0f}s: " + ", ".join(f"{k} {v['wall_s']:.0f}s" for k, v in ctx.done.items()))
    return {"run_dir": str(run_dir), "steps": ctx.done}


def run(spec: JobSpec, address: Optional[str]) -> dict:
    return run_pipeline(spec, address=address)


KIND = Kind(
    name="pipeline", run=run,
    outputs=("spec.yaml", "pipeline.json", "<step>/<timestamp>/ (each step's run)", "logs/"),
)
