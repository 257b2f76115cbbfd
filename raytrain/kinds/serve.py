"""Kind ``serve``: variants on Ray Serve with a traffic split, batching and exploration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .base import Kind, StepContext

if TYPE_CHECKING:
    from ..spec.job import JobSpec


def run(spec: JobSpec, address: Optional[str]) -> None:
    from ..serve.runner import run_serve

    run_serve(spec, address=address)  # serves until stopped: no summary to track


_STEP_OUTPUT = {"train": "run", "tune": "tune_run", "ensemble": "ensemble", "distill": "distill"}


def step(ctx: StepContext) -> tuple[dict, dict[str, str]]:
    """Deploys the variants, an earlier step's output where a variant names one; serves until Ctrl-C when the
    pipeline blocks."""
    import json

    from ..runs import new_run_dir
    from ..serve.runner import run_serve

    spec = ctx.spec
    assert spec.serve is not None
    cfg = spec.serve.model_dump(mode="json", exclude_none=True)
    for name, v in spec.serve.variants.items():
        if v.step is not None:
            cfg["variants"][name] = {**v.model_dump(mode="json", exclude_none=True, exclude={"step"}),
                                     _STEP_OUTPUT[v.step]: ctx.done[v.step]["run_dir"]}
    step_spec = ctx.step_spec("serve", serve=cfg)
    serve_dir = new_run_dir(step_spec)
    (ctx.run_dir / "pipeline.json").write_text(json.dumps({**ctx.done, "serve": {"run_dir": str(serve_dir)}},
                                                          indent=2, default=str))
    out = run_serve(step_spec.model_copy(update={"name": spec.name}),  # the application's name
                    address=ctx.address, block=ctx.serve_block, run_dir=serve_dir)
    return {"run_dir": out["run_dir"], "url": out["url"]}, {}


KIND = Kind(
    name="serve", run=run, step=step,
    outputs=("spec.yaml", "serve.json", "logs/requests/", "logs/feedback/", "logs/decisions/"),
)
