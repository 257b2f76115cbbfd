"""Kind ``pipeline``: train -> tune -> ensemble -> distill in one spec, each step reading the artifacts of the
one before it from the pipeline's run directory.

Every step is an ordinary spec of its kind built from the pipeline's sections (``<run>/<step>/<timestamp>``
is its run directory): the tune step's top trials are the ensemble's members, the ensemble (or the best
trial, or the trained model) is the distillation's teacher. ``pipeline.json`` records each step's run
directory, headline numbers and wall time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .log import get_logger
from .spec import resolved_yaml
from .spec.loader import derived, parse_spec
from .spec.schema import JobSpec

log = get_logger(__name__)


def _step_spec(spec: JobSpec, kind: str, run_dir: Path, **sections) -> JobSpec:
    doc = derived(spec.model_dump(mode="json"), kind, name=kind, storage=str(run_dir), **sections)
    return parse_spec(doc, f"pipeline step {kind}")


def run_pipeline(spec: JobSpec, address: str | None = None, serve_block: bool = True) -> dict:
    """Run the steps in order; a serve step (last) deploys and, with ``serve_block``, serves until Ctrl-C."""
    from .train.runner import new_run_dir

    assert spec.pipeline is not None or spec.kind == "pipeline"
    steps = spec.pipeline.steps if spec.pipeline is not None else ["tune", "ensemble", "distill"]
    run_dir = new_run_dir(spec)
    (run_dir / "spec.yaml").write_text(resolved_yaml(spec))
    from . import console

    console.attach(run_dir / "logs")
    log.info(f"pipeline {spec.name}: {' -> '.join(steps)}; run directory {run_dir}")
    done: dict[str, dict] = {}
    source: dict[str, str] = {}  # what the next step reads: train run / tune run / ensemble run
    for step in steps:
        t0 = time.time()
        log.info(f"=== step {step} ===")
        if step == "train":
            from .train.runner import run_train

            out = run_train(_step_spec(spec, "train", run_dir), address=address)
            source = {"run": out["run_dir"]}
            done[step] = {"run_dir": out["run_dir"], "test_auc": out.get("test_auc")}
        elif step == "tune":
            from .tune.runner import run_tune

            tune_spec = _step_spec(spec, "tune", run_dir, tune=spec.tune.model_dump(mode="json") if spec.tune else None)
            out = run_tune(tune_spec, address=address)
            tune_dir = next(p.parent for p in sorted((run_dir / "tune").glob("*/leaderboard.parquet")))
            source = {"tune_run": str(tune_dir)}
            done[step] = {"run_dir": str(tune_dir), "best_val_auc": out.get("best_val_auc"),
                          "best_test_auc": out.get("best_test_auc"), "trials": out.get("trials")}
        elif step == "ensemble":
            from .ensemble.runner import run_ensemble

            assert spec.ensemble is not None
            ens = spec.ensemble.model_dump(mode="json")
            if "tune_run" in source:
                ens.update(tune_run=source["tune_run"], runs=[])
            out = run_ensemble(_step_spec(spec, "ensemble", run_dir, ensemble=ens))
            source = {"ensemble": out["run_dir"]}
            done[step] = {"run_dir": out["run_dir"], "report": out["report"]}
        elif step == "distill":
            from .distill.runner import run_distill

            assert spec.distill is not None
            dist = spec.distill.model_dump(mode="json")
            if source:
                dist["teacher"] = {"combine": spec.distill.teacher.combine, **source}
            out = run_distill(_step_spec(spec, "distill", run_dir, distill=dist), address=address)
            done[step] = {k: out[k] for k in ("parameter_ratio", "auc_retained_pct", "latency_ratio_batch1",
                                              "latency_ratio_batch512")}
            done[step].update(teacher_test_auc=out["teacher"]["test_auc"], student_test_auc=out["student"]["test_auc"],
                              run_dir=out["student"]["run_dir"])
        elif step == "serve":
            from .serve.runner import run_serve

            assert spec.serve is not None
            cfg = spec.serve.model_dump(mode="json", exclude_none=True)
            for name, v in spec.serve.variants.items():  # "step: X" -> that step's run directory
                if v.step is not None:
                    key = {"train": "run", "tune": "tune_run", "ensemble": "ensemble", "distill": "distill"}[v.step]
                    cfg["variants"][name] = {**v.model_dump(mode="json", exclude_none=True, exclude={"step"}),
                                             key: done[v.step]["run_dir"]}
            step_spec = _step_spec(spec, "serve", run_dir, serve=cfg)
            serve_dir = new_run_dir(step_spec)
            done[step] = {"run_dir": str(serve_dir), "wall_s": 0.0}
            (run_dir / "pipeline.json").write_text(json.dumps(done, indent=2, default=str))
            out = run_serve(step_spec.model_copy(update={"name": spec.name}),  # the application's name
                            address=address, block=serve_block, run_dir=serve_dir)
            done[step] = {"run_dir": out["run_dir"], "url": out["url"]}
        done[step]["wall_s"] = time.time() - t0
        log.info(f"step {step} done in {done[step]['wall_s']:.0f}s")
        (run_dir / "pipeline.json").write_text(json.dumps(done, indent=2, default=str))
    total = sum(d["wall_s"] for d in done.values())
    log.info(f"pipeline done in {total:.0f}s: " + ", ".join(f"{k} {v['wall_s']:.0f}s" for k, v in done.items()))
    return {"run_dir": str(run_dir), "steps": done}
