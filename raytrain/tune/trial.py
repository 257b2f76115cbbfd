"""What a tune trial runs: a training run (or one per cross-validation fold) as a ``TorchTrainer``, reporting each
epoch to Tune; under PBT, segments of epochs between exploit / explore steps."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..data import FeatureSchema, PreparedData
from ..spec import parse_spec, resolved_yaml
from ..spec.job import JobSpec
from ..spec.tune_space import apply_config
from ..storage import Store, is_uri, join


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
    if data.get("sequences"):  # a sequential model (path storage): its histories, as its own run keeps them
        import shutil

        shutil.copyfile(data["sequences"], Path(run) / "sequences.npz")
        return spec, run, PreparedData(FeatureSchema(sparse=()))
    prepared = PreparedData.from_dict(data)
    store.write_text("schema.json", prepared.schema.to_json())
    return spec, run, prepared


def trial(config: dict, base: dict, data: dict, location: str) -> None:
    """One trial: the base spec with this trial's values, trained by a TorchTrainer."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train.runner import make_trainer

    spec, run, prepared = _trial_setup(config, base, data, location)
    if data.get("folds"):
        return _cv_trial(spec, run, data["folds"])
    if data.get("sequences"):
        from ..train.sequential.run import sequential_trainer

        sequential_trainer(spec, run, join(run, "sequences.npz"), callbacks=[TuneReportCallback()]).fit()
        return None
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


def pbt_trial(config: dict, base: dict, data: dict, location: str) -> None:
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
