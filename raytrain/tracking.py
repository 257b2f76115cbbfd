"""Experiment tracking: runs, their parameters, metrics and artifacts in MLflow, and TensorBoard event files.

With ``tracking.mlflow: true`` every run a job makes is an MLflow run in the experiment ``tracking.experiment``
(default: the spec's name) at ``tracking.tracking_uri`` (default: a SQLite store beside the runs,
``<storage>/mlflow.db``, artifacts in ``<storage>/mlartifacts``; any tracking server's URI works). A run records
the resolved spec as parameters (dotted keys), each epoch's metrics as metric history (step = epoch), the final
numbers of its summary (test metrics, best trial, ensemble and distillation figures), its tags (kind, run
directory) and its small files as artifacts (spec, plan, result, leaderboard, reports, plots). A tune run's trials
are logged live, each as its own run, through Ray Tune's ``MLflowLoggerCallback``; the tune run itself is one more
run with the leaderboard. Nothing is logged for kind serve.

With ``tracking.tensorboard: true`` a train run (and each tune trial's run) also writes its metrics as TensorBoard
event files to ``<run>/tensorboard/``, each epoch's as that epoch ends (rank 0, ``epoch_scalars``), so a long run
can be watched (``tensorboard --logdir runs``); a run on object storage gets its event files when it ends.

Tracking is recorded after the run's own files are complete, from them, so a tracking server that is down costs
a warning, never a run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .log import get_logger

ARTIFACT_SUFFIXES = (".json", ".yaml", ".txt", ".png", ".parquet")
MAX_ARTIFACT_BYTES = 20 * 2**20


log = get_logger(__name__)


def tracking_uri(spec) -> str:
    cfg = spec.tracking
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return f"sqlite:///{Path(spec.storage).expanduser().resolve() / 'mlflow.db'}"


def _experiment(client, spec) -> str:
    """The experiment's id, created (with its artifacts beside the runs for the default store) if new."""
    name = spec.tracking.experiment or spec.name
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if spec.tracking.tracking_uri else \
        (Path(spec.storage).expanduser().resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten(doc: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> text values (MLflow parameters), None left out, long values cut to MLflow's limit."""
    out: dict[str, str] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif doc is not None:
        out[prefix.rstrip(".")] = str(doc if not isinstance(doc, list) else json.dumps(doc))[:500]
    return out


def _numbers(doc: Any, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a summary, by dotted key (nested summaries included; lists left out)."""
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool) and math.isfinite(doc):
        out[prefix.rstrip(".").replace("@", "_at_")] = float(doc)
    return out


def _epochs(run_dir: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((run_dir / "metrics").glob("epoch_*.json"))]


def _local_dir(summary: dict) -> Path | None:
    for key in ("local_mirror", "run_dir"):
        value = summary.get(key)
        if value and Path(str(value)).is_dir():
            return Path(str(value))
    student = summary.get("student")
    if isinstance(student, dict):
        return _local_dir(student)
    return None


def record(spec, summary: dict) -> str | None:
    """Log one finished run (its summary and its run directory) to MLflow and TensorBoard as the spec asks; returns
    the MLflow run id. A tracking failure is reported, not raised."""
    run_dir = _local_dir(summary)
    if spec.tracking.tensorboard and run_dir is not None:
        write_tensorboard(run_dir)
        for trial in (run_dir / "tune").glob("*/run") if spec.kind == "tune" else []:
            write_tensorboard(trial)  # each trial's own run directory (on a path run)
    if not spec.tracking.mlflow:
        return None
    try:
        return _record_mlflow(spec, summary, run_dir)
    except Exception as e:  # noqa: BLE001 - the run is done and on disk; tracking must not fail it
        log.warning(f"MLflow tracking at {tracking_uri(spec)} failed ({type(e).__name__}: {e}); the run's files "
             f"are complete in {run_dir}")
        return None


def _record_mlflow(spec, summary: dict, run_dir: Path | None) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(spec))
    name = f"{spec.name}/{run_dir.name}" if run_dir is not None else spec.name
    tags = {"raytrain.kind": spec.kind, "raytrain.run_dir": str(summary.get("run_dir", run_dir)),
            "mlflow.runName": name}
    run = client.create_run(_experiment(client, spec), tags=tags)
    rid = run.info.run_id
    params = [Param(k, v) for k, v in flatten(spec.model_dump(mode="json", exclude={"tracking"})).items()]
    metrics = []
    for row in _epochs(run_dir) if run_dir is not None else []:
        step = int(row.get("epoch", 0))
        metrics += [Metric(k, v, int(1000 * row.get("epoch_end_time", 0)), step)
                    for k, v in _numbers(row).items() if k not in ("epoch", "epoch_end_time")]
    per_epoch = {m.key for m in metrics}  # a summary's copy of the last epoch's value is not a new point
    finals = {k: v for k, v in _numbers(summary).items() if not k.startswith("startup.") and k not in per_epoch}
    metrics += [Metric(k, v, 0, 0) for k, v in finals.items()]
    for i in range(0, max(len(params), len(metrics), 1), 100):  # MLflow's batch limits
        client.log_batch(rid, metrics=metrics[i:i + 100], params=params[i:i + 100],
                         tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])
    if run_dir is not None:
        for f in sorted(run_dir.iterdir()):
            if f.is_file() and f.suffix in ARTIFACT_SUFFIXES and f.stat().st_size <= MAX_ARTIFACT_BYTES:
                client.log_artifact(rid, str(f))
        if (run_dir / "tensorboard").is_dir():
            client.log_artifacts(rid, str(run_dir / "tensorboard"), "tensorboard")
    client.set_terminated(rid)
    log.info(f"tracked as MLflow run {rid} in experiment {spec.tracking.experiment or spec.name} ({tracking_uri(spec)})")
    return rid


def tune_callbacks(spec) -> list:
    """Ray Tune's MLflow callback for live per-trial runs, when tracking is on."""
    if not spec.tracking.mlflow:
        return []
    import mlflow
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    client = mlflow.tracking.MlflowClient(tracking_uri=tracking_uri(spec))
    _experiment(client, spec)  # created here, with its artifact location, before the callback looks it up
    return [MLflowLoggerCallback(tracking_uri=tracking_uri(spec), experiment_name=spec.tracking.experiment or spec.name,
                                 tags={"raytrain.kind": "tune-trial", "raytrain.tune": spec.name}, save_artifact=False)]


def epoch_scalars(spec, store, row: dict) -> None:
    """One epoch's metrics as TensorBoard scalars in ``<run>/tensorboard/``, as the epoch ends (rank 0 of a run
    on a path; a run on object storage gets them from ``write_tensorboard`` when it ends)."""
    if not spec.tracking.tensorboard or store.remote:
        return
    from tensorboardX import SummaryWriter

    # a file per epoch (TensorBoard reads a folder's files as one run); the suffix keeps two epochs ending within
    # a second from writing the same file
    suffix = f".epoch{int(row.get('epoch', 0)):04d}"
    with SummaryWriter(str(Path(store.location) / "tensorboard"), filename_suffix=suffix) as writer:
        _add(writer, row)


def _add(writer, row: dict) -> None:
    step = int(row.get("epoch", 0))
    for k, v in _numbers(row).items():
        if k not in ("epoch", "epoch_end_time"):
            writer.add_scalar(k, v, step, walltime=row.get("epoch_end_time"))


def write_tensorboard(run_dir: Path) -> Path | None:
    """The run's per-epoch metrics as TensorBoard scalars in ``<run>/tensorboard/``, unless its epochs wrote them
    as they ended."""
    rows = _epochs(run_dir)
    if not rows or (run_dir / "tensorboard").is_dir():
        return None
    from tensorboardX import SummaryWriter

    out = run_dir / "tensorboard"
    with SummaryWriter(str(out)) as writer:
        for row in rows:
            _add(writer, row)
    return out
