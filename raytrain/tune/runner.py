"""A tune run: Ray Tune drives trials, each trial a TorchTrainer with its own sharded workers.

Ray Train V2 pattern: the trial is a small function that builds a ``TorchTrainer`` and calls
``fit()``; ``TuneReportCallback`` forwards each epoch's metrics to Tune, where the scheduler reads
``epoch`` as its clock. A trial keeps its own run directory (spec, metrics, checkpoints) at
``<run>/tune/<trial>/run`` on the run's storage (a shared path or a pyarrow.fs URI, not Tune's staging
directory on the driver's node), so a trial on any node writes where the driver reads, and an
interrupted trial resumes from its last checkpoint when the experiment is restored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .. import console
from ..data import prepare
from ..errors import RaytrainError, SpecError
from ..log import get_logger
from ..spec import resolved_yaml
from ..spec.job import JobSpec
from ..spec.training import SEQUENTIAL
from ..spec.tune_space import to_param_space, tune_of
from ..storage import Mirror, Store, filesystem, is_uri, mirror_of, redact
from .factories import scheduler, searcher
from .resources import ResourceError, preflight, release_callback, release_run
from .trial import pbt_trial, trial

log = get_logger(__name__)


def _progress(metric: str, mode: str, epochs: int) -> Any:
    """A Tune callback showing live progress: on a terminal a table of the trials (status, epoch, metric) redrawn
    in place; elsewhere a line per result (trials running / done / pending, and the best so far)."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.best: tuple[float, str] | None = None
            self.t0 = time.time()
            self.seen: dict[str, tuple[int, float]] = {}  # trial -> (epoch, metric) of its last result

        def _better(self, v):
            return self.best is None or (v > self.best[0] if mode == "max" else v < self.best[0])

        def on_trial_result(self, iteration, trials, trial, result, **info):
            v = result.get(metric)
            if v is None:
                return
            if self.best is None or self._better(v):
                self.best = (v, trial.trial_id)
            best = self.best
            self.seen[trial.trial_id] = (int(result.get("epoch", 0)), float(v))
            states = [t.status for t in trials]
            line = (f"trial {trial.trial_id} epoch {result.get('epoch')}/{epochs} {metric} {v:.4f} | "
                    f"running {states.count('RUNNING')} done {states.count('TERMINATED')} "
                    f"pending {states.count('PENDING')} | best {best[0]:.4f} ({best[1]}) "
                    f"| {time.time() - self.t0:.0f}s")
            rows = [f"{'trial':<16} {'status':<11} {'epoch':>7} {metric:>9}"]
            for t in trials:
                epoch, value = self.seen.get(t.trial_id, (0, float("nan")))
                star = " *" if t.trial_id == best[1] else ""
                rows.append(f"{t.trial_id:<16} {t.status:<11} {epoch:>3}/{epochs:<3} {value:>9.4f}{star}")
            rows.append(f"best {best[0]:.4f} ({best[1]}) | {time.time() - self.t0:.0f}s")
            console.live_table("[raytrain] " + line, rows)

    return Progress()


def _tuner(spec: JobSpec, data: dict, location: str, restore: bool = False):
    """The Tuner for a run at ``location`` (a path or a pyarrow.fs URI): Tune's experiment in ``<location>/tune``.
    ``data``: the prepared data as a dict (with ``folds``, each fold's, for a cross-validated search)."""
    from ray import tune

    from ..tracking import tune_callbacks

    base = spec.model_dump(mode="json")
    trial_fn = pbt_trial if tune_of(spec).scheduler.name == "pbt" else trial
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, base=base, data=data, location=location),
        {"cpu": tune_of(spec).resources_per_trial.cpu},
    )
    fs, root = filesystem(location)
    storage: dict[str, Any] = {"storage_path": root, "storage_filesystem": fs} if is_uri(location) else \
        {"storage_path": location}
    if restore:
        return tune.Tuner.restore(f"{root}/tune", trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=fs if is_uri(location) else None)
    t = tune_of(spec)
    basic = t.search.algorithm in ("random", "grid")
    return tune.Tuner(
        trainable,
        param_space=to_param_space(spec),
        tune_config=tune.TuneConfig(
            metric=t.metric, mode=t.mode, search_alg=searcher(spec), scheduler=scheduler(spec),
            num_samples=t.num_samples, max_concurrent_trials=None if basic else t.max_concurrent_trials,
            time_budget_s=t.time_budget_s,
        ),
        run_config=tune.RunConfig(name="tune", **storage, verbose=0,
                                  callbacks=[_progress(t.metric, t.mode, spec.train.epochs), release_callback(location),
                                             *tune_callbacks(spec)]),
    )


def run_tune(spec: JobSpec, run_dir: Path | None = None, address: str | None = None, restore: bool = False,
             location: str | None = None) -> dict:
    """A tune run in a new run directory (or, restoring, in ``run_dir``; ``location``: its URI when it lives on
    one, ``run_dir`` being the local mirror)."""
    from ..runs import new_run_location
    from ..train.runner import init_ray

    if spec.tune is None:
        raise SpecError("tune: missing")
    if run_dir is None:
        run_dir, location = new_run_location(spec)
    location = location or str(run_dir)
    mirror = Mirror(run_dir, location)
    console.attach(Path(run_dir) / "logs")
    if not restore:
        mirror.put("spec.yaml", resolved_yaml(spec))
    log.info(f"run directory: {redact(location)}" + (f" (local mirror {run_dir})" if mirror.store else ""))
    t0 = time.time()
    init_ray(spec, address)  # first: validation, splitting and conversion fan out as Ray tasks
    if spec.model.arch in SEQUENTIAL:  # histories, written once; each trial copies them into its run
        from ..train.sequential.run import write_sequences

        data: dict = {"sequences": str(write_sequences(spec, Path(run_dir)))}
    else:
        prepared = mirror.share(prepare(spec.data, work_dir=str(run_dir)))  # on a URI run: data/ there too
        mirror.put("schema.json", prepared.schema.to_json())
        preflight(spec, prepared)
        data = prepared.to_dict()
    t = tune_of(spec)
    log.info(f"tuning {len(t.space)} parameter(s) with {t.search.algorithm} + {t.scheduler.name}: "
         f"{t.num_samples} trials, {t.max_concurrent_trials} at a time, {spec.train.workers} workers each")
    if spec.train.cross_validation is not None:
        from ..train.crossval import fold_data

        assert spec.model.arch not in SEQUENTIAL  # the spec's checks
        cv = spec.train.cross_validation
        data["folds"] = [f.to_dict() for f in fold_data(prepared, cv.folds, cv.seed, Path(run_dir) / "cv_data")]
        log.info(f"each trial runs {cv.folds} folds and reports their mean")
    results = _tuner(spec, data, location, restore=restore).fit()
    removed = release_run(location, [r.path for r in results if r.path])
    if removed:
        log.info(f"removed {len(removed)} placement group(s) left by this run's stopped trials")
    from .report import write_report

    summary = write_report(spec, results, run_dir, location)
    summary["wall_seconds"] = time.time() - t0
    summary["run_dir"] = location
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2, default=str))
    mirror.publish(skip_dirs=("data/", "tune/"))  # the report's files join a URI run (Tune wrote tune/ itself)
    return summary


def resume_tune(run_dir: str | Path, address: str | None = None) -> dict:
    """Restore an interrupted tune run (a path or a pyarrow.fs URI): finished trials are kept, the others resume."""
    from ..spec import load_spec

    location = str(run_dir)
    if is_uri(location):
        store = Store(location)
        if not store.exists("tune"):
            raise RaytrainError(f"{redact(location)}: no tune experiment to resume (no tune/ folder)")
        local = mirror_of(location)
        local.mkdir(parents=True, exist_ok=True)
        (local / "spec.yaml").write_text(store.read_text("spec.yaml"))
        return run_tune(load_spec(local / "spec.yaml"), run_dir=local, address=address, restore=True,
                        location=location)
    path = Path(location)
    if not (path / "tune").is_dir():
        raise RaytrainError(f"{path}: no tune experiment to resume (no tune/ folder)")
    return run_tune(load_spec(path / "spec.yaml"), run_dir=path, address=address, restore=True)


__all__ = ["run_tune", "resume_tune", "preflight", "ResourceError"]
