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

import yaml

from .. import console
from ..data import PreparedData, prepare
from ..errors import RaytrainError, SpecError
from ..log import get_logger
from ..spec import parse_spec, resolved_yaml
from ..spec.schema import JobSpec
from ..storage import Mirror, Store, filesystem, is_uri, join, mirror_of, redact
from .space import apply_config, parse_dist, to_param_space, tune_of

log = get_logger(__name__)


class ResourceError(RaytrainError):
    """A trial cannot fit the cluster."""


def trial_location(location: str, trial_dir: str) -> str:
    """A trial's own run directory, ``<tune run>/tune/<trial directory name>/run``, on the run's storage.
    ``trial_dir``: any path ending in the trial's directory name (Tune's staging directory, or its storage path)."""
    return join(str(location), "tune", Path(str(trial_dir)).name, "run")


def _trial_setup(config: dict, base: dict, data: dict, location: str) -> tuple[JobSpec, str, PreparedData]:
    """The trial's train spec, and its own run directory on the tune run's storage."""
    import ray.tune

    spec = parse_spec(apply_config(base, config))
    run = trial_location(location, ray.tune.get_context().get_trial_dir())
    store = Store(run)
    store.write_text("spec.yaml", resolved_yaml(spec))
    prepared = PreparedData.from_dict(data)
    store.write_text("schema.json", prepared.schema.to_json())
    return spec, run, prepared


def _trial(config: dict, base: dict, data: dict, location: str) -> None:
    """One trial: the base spec with this trial's values, trained by a TorchTrainer."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train.runner import make_trainer

    spec, run, prepared = _trial_setup(config, base, data, location)
    if data.get("folds"):
        return _cv_trial(spec, run, data["folds"])
    # same storage path and name as an interrupted attempt of this trial: Ray Train restores its
    # checkpoint manager from there, so the trial resumes from its last checkpoint
    make_trainer(spec, prepared, run, callbacks=[TuneReportCallback()]).fit()


def _cv_trial(spec: JobSpec, run: str, folds: list[dict]) -> None:
    """A cross-validated trial: every fold a TorchTrainer run in ``<trial run>/fold_<i>``, then each epoch's mean
    over folds reported to Tune (test metrics: the folds' mean at their best checkpoints, with the last epoch)."""
    import ray.tune

    from ..train.crossval import fold_epochs, summarize
    from ..train.runner import make_trainer

    runs = []
    for i, fold in enumerate(folds):
        fold_run = join(run, f"fold_{i}")
        result = make_trainer(spec, PreparedData.from_dict(fold), fold_run).fit()
        if result.error is not None:
            raise result.error
        runs.append(Path(fold_run))
    rows = fold_epochs(runs)
    tests = summarize([json.loads((r / "metrics" / "test.json").read_text()) for r in runs])
    for row in rows[:-1]:
        ray.tune.report(row)
    last = dict(rows[-1])
    for key in ("test_auc", "test_logloss"):
        last[key], last[f"{key}_std"] = tests[f"{key}_mean"], tests[f"{key}_std"]
    ray.tune.report(last)


def _pbt_trial(config: dict, base: dict, data: dict, location: str) -> None:
    """A PBT trial: train in segments of ``perturbation_interval`` epochs, each a TorchTrainer run
    starting from the previous segment's checkpoint, and report a checkpoint to Tune after each, so
    PBT can copy a better trial's weights into this one (exploit) with perturbed values (explore).

    The Tune checkpoint is a pointer (a small JSON naming the DCP checkpoint directory): the shards
    stay where their workers wrote them.
    """
    import tempfile

    import ray.tune

    from ..train.checkpoint import read_marker
    from ..train.runner import make_trainer

    spec, run, prepared = _trial_setup(config, base, data, location)
    interval = int(base["tune"]["scheduler"]["perturbation_interval"])  # the trial spec is a train spec
    start, init = 0, None
    given = ray.tune.get_checkpoint()
    if given is not None:
        with given.as_directory() as d:
            init = json.loads((Path(d) / "pointer.json").read_text())["path"]
        start = read_marker(init)["epoch"] + 1
    while start < spec.train.epochs:
        stop = min(start + interval, spec.train.epochs)
        seg = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": stop})})
        result = make_trainer(seg, prepared, run, name=f"segment_{stop:04d}_{time.time_ns()}",
                              init_checkpoint=init).fit()
        # a location the next segment (or another trial, after an exploit) can open: a URI on an object store
        init = Store(run).location_of(result.checkpoint.path) if is_uri(run) else result.checkpoint.path
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "pointer.json").write_text(json.dumps({"path": init}))
            ray.tune.report({k: v for k, v in result.metrics.items() if not k.startswith("test_")},
                            checkpoint=ray.tune.Checkpoint.from_directory(d))
        start = stop


def _searcher(spec: JobSpec):
    from ray.tune.search import BasicVariantGenerator

    s = tune_of(spec).search
    points = [dict(p) for p in s.points_to_evaluate] or None
    if s.algorithm in ("random", "grid"):
        # Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator (it warns and starts every
        # trial the CPUs allow), so the limit goes to the generator itself
        return BasicVariantGenerator(random_state=s.seed, points_to_evaluate=points,
                                     max_concurrent=tune_of(spec).max_concurrent_trials)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # Optuna samples its first 10 trials at random by default: a 9-trial "TPE" run would be random search
    startup = s.startup_trials if s.startup_trials is not None else max(2, tune_of(spec).num_samples // 3)
    sampler = (optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup) if s.algorithm == "optuna_tpe"
               else optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=startup))
    return OptunaSearch(sampler=sampler, points_to_evaluate=points)


def _scheduler(spec: JobSpec):
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    sc = tune_of(spec).scheduler
    if sc.name == "pbt":
        mutations = {key: parse_dist(text).to_tune() for key, text in tune_of(spec).space.items()}
        return PopulationBasedTraining(time_attr="epoch", perturbation_interval=sc.perturbation_interval,
                                       hyperparam_mutations=mutations, quantile_fraction=sc.quantile_fraction,
                                       resample_probability=sc.resample_probability)
    max_t = sc.max_t or spec.train.epochs
    if sc.name == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=sc.grace_period,
                             reduction_factor=sc.reduction_factor)
    if sc.name == "hyperband":
        return HyperBandScheduler(time_attr="epoch", max_t=max_t, reduction_factor=sc.reduction_factor)
    if sc.name == "median_stopping":
        return MedianStoppingRule(time_attr="epoch", grace_period=sc.grace_period,
                                  min_samples_required=sc.min_samples_required)
    return FIFOScheduler()


def _largest(spec: JobSpec, key: str, default):
    text = tune_of(spec).space.get(key)
    if text is None:
        return default
    return max(parse_dist(text).extremes())


def preflight(spec: JobSpec, prepared: PreparedData) -> None:
    """Refuse before launching when one trial cannot fit: CPUs, and the planner's memory estimate."""
    import ray
    import torch

    from ..models import build_model
    from ..sharding import describe_plan, make_plan, make_topology
    from ..sharding.planner import build_constraints, memory_per_rank

    total = ray.cluster_resources()
    workers = int(_largest(spec, "train.workers", spec.train.workers))
    cpu = spec.train.resources_per_worker.cpu
    need = tune_of(spec).resources_per_trial.cpu + workers * cpu
    if need > total.get("CPU", 0) + 1e-9:
        raise ResourceError(
            f"one trial needs {need:g} CPUs (trial driver {tune_of(spec).resources_per_trial.cpu:g} + {workers} workers x "
            f"{cpu:g}) but the cluster has {total.get('CPU', 0):g}; lower train.workers or resources_per_worker.cpu, "
            "or start Ray with more logical CPUs (ray.num_cpus)"
        )
    dim = int(_largest(spec, "model.embedding_dim", spec.model.embedding_dim))
    model_spec = spec.model.model_copy(update={"embedding_dim": dim})
    model = build_model(model_spec, prepared.schema, device="cpu", ebc_device=torch.device("meta"))
    min_workers = workers
    if "train.workers" in tune_of(spec).space:
        min_workers = int(min(parse_dist(tune_of(spec).space["train.workers"]).extremes()))
    constraints = build_constraints(prepared.schema, spec.train.sharding)
    plan = make_plan(model, make_topology(min_workers, spec.train.device), constraints)
    per_rank = memory_per_rank(describe_plan(plan, min_workers), prepared.schema, dim, spec.train.optimizer.sparse,
                               min_workers)
    memory = total.get("memory", 0)
    concurrent = tune_of(spec).max_concurrent_trials
    if memory and max(per_rank) * min_workers * concurrent > memory:
        raise ResourceError(
            f"the largest configuration (embedding_dim {dim}, {min_workers} workers) needs "
            f"{max(per_rank) / 2**30:.2f} GiB of tables and optimizer state per worker; {concurrent} concurrent "
            f"trials need {max(per_rank) * min_workers * concurrent / 2**30:.2f} GiB but Ray has "
            f"{memory / 2**30:.2f} GiB"
        )
    log.info(f"preflight: a trial needs {need:g} of {total.get('CPU', 0):g} CPUs; largest tables "
         f"{max(per_rank) / 2**20:.1f} MiB per worker")


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


def remove_trial_placement_groups(run: str) -> list[str]:
    """Remove the worker-group placement groups a trial's training runs recorded (in its run directory ``run``),
    if still there; returns the ids removed. Only groups this run recorded are touched: on a shared cluster the
    other placement groups belong to other jobs."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    store, record = Store(run), "workers/placement_groups.txt"
    if not store.exists(record):
        return []
    table = ray.util.placement_group_table()
    removed = []
    for pg_hex in sorted(set(store.read_text(record).split())):
        if table.get(pg_hex, {}).get("state") in ("CREATED", "PENDING", "RESCHEDULING"):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex))))
            removed.append(pg_hex)
    return removed


def _release(location: str) -> Any:
    """A Tune callback that frees a finished or stopped trial's worker placement group at once (ray issue 54305:
    a trial stopped by ASHA left it reserved, and after a few stops new trials waited forever for CPUs)."""
    from ray.tune import Callback

    class Release(Callback):
        def _free(self, trial) -> None:
            try:
                n = len(remove_trial_placement_groups(trial_location(location, trial.path)))
            except Exception as e:  # noqa: BLE001 - cleanup must never break the experiment
                log.warning(f"could not release trial {trial.trial_id}'s placement group: {e}")
                return
            if n:
                log.info(f"released {n} placement group(s) of trial {trial.trial_id}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._free(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._free(trial)

    return Release()


def release_run(location: str, trial_paths: list[str], timeout_s: float = 60) -> list[str]:
    """After the experiment: remove the placement groups this run's trials recorded and still hold (a trial stopped
    by the scheduler can leave its worker group's behind, ray issue 54305), then wait until Ray reports exactly
    those removed. Nothing else on the cluster is touched or waited on."""
    import ray

    removed: list[str] = []
    for path in trial_paths:
        try:
            removed += remove_trial_placement_groups(trial_location(location, path))
        except Exception as e:  # noqa: BLE001 - a trial that never started has no record; cleanup never fails a run
            log.warning(f"could not release the placement groups of {Path(str(path)).name}: {e}")
    deadline = time.time() + timeout_s
    while removed and time.time() < deadline:
        table = ray.util.placement_group_table()
        if all(table.get(pg, {}).get("state", "REMOVED") == "REMOVED" for pg in removed):
            break
        time.sleep(0.2)
    return removed


def _tuner(spec: JobSpec, data: dict, location: str, restore: bool = False):
    """The Tuner for a run at ``location`` (a path or a pyarrow.fs URI): Tune's experiment in ``<location>/tune``.
    ``data``: the prepared data as a dict (with ``folds``, each fold's, for a cross-validated search)."""
    from ray import tune

    from ..tracking import tune_callbacks

    base = spec.model_dump(mode="json")
    trial_fn = _pbt_trial if tune_of(spec).scheduler.name == "pbt" else _trial
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
            metric=t.metric, mode=t.mode, search_alg=_searcher(spec), scheduler=_scheduler(spec),
            num_samples=t.num_samples, max_concurrent_trials=None if basic else t.max_concurrent_trials,
            time_budget_s=t.time_budget_s,
        ),
        run_config=tune.RunConfig(name="tune", **storage, verbose=0,
                                  callbacks=[_progress(t.metric, t.mode, spec.train.epochs), _release(location),
                                             *tune_callbacks(spec)]),
    )


def run_tune(spec: JobSpec, run_dir: Path | None = None, address: str | None = None, restore: bool = False,
             location: str | None = None) -> dict:
    """A tune run in a new run directory (or, restoring, in ``run_dir``; ``location``: its URI when it lives on
    one, ``run_dir`` being the local mirror)."""
    from ..train.runner import init_ray, new_run_location

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
    prepared = mirror.share(prepare(spec.data, work_dir=str(run_dir)))  # on a URI run: data/ there too, for every node
    mirror.put("schema.json", prepared.schema.to_json())
    preflight(spec, prepared)
    t = tune_of(spec)
    log.info(f"tuning {len(t.space)} parameter(s) with {t.search.algorithm} + {t.scheduler.name}: "
         f"{t.num_samples} trials, {t.max_concurrent_trials} at a time, {spec.train.workers} workers each")
    data = prepared.to_dict()
    if spec.train.cross_validation is not None:
        from ..train.crossval import fold_data

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


def best_spec_yaml(spec: JobSpec, config: dict) -> str:
    doc = apply_config(spec.model_dump(mode="json"), config)
    doc["name"] = f"{spec.name}-best"
    return yaml.safe_dump(doc, sort_keys=False)


__all__ = ["run_tune", "resume_tune", "best_spec_yaml", "preflight", "ResourceError"]
