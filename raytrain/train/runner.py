"""The driver side of a training run: prepare data, lay out the run directory, run Ray Train."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .. import console
from ..data import PreparedData, prepare
from ..log import get_logger
from ..runs import new_run_location
from ..spec import resolved_yaml
from ..spec.job import JobSpec
from ..storage import CREDENTIALS_ENV, Mirror, filesystem, is_uri, redact
from .resources import EMBEDDED_TRAIN_ENV, RUNTIME_ENV, check_local_gpus, wait_for_cluster

log = get_logger(__name__)


# Ray Train V2 re-logs every worker print through its logger, so each line reached the driver twice
_set_here: set[str] = set()  # the EMBEDDED_TRAIN_ENV keys this process set, taken back before it joins a cluster
_warm: dict = {}  # the local cluster's state while this process is attached to it (raytrain up)


def init_ray(spec: JobSpec, address: str | None = None) -> None:
    """Connect to ``address`` (or spec.ray.address / RAY_ADDRESS), else start an embedded local Ray.

    A local Ray gets more logical CPUs than this machine has cores when the job needs them: each
    Ray Train worker holds ``resources_per_worker.cpu`` and data preparation needs room for its tasks.

    Storage credentials adopted from a URI (raytrain.credentials) reach an embedded Ray's processes through the
    environment they inherit from this one, never through a runtime env (which Ray logs and lists). A cluster's nodes
    use their own (docs/security.md); a Ray already initialized by the caller must have inherited them.
    """
    import ray

    from .. import console

    if ray.is_initialized():
        return
    _warm.clear()  # set again below only when this Ray is raytrain's local cluster
    console.quiet_loggers()
    address = address or spec.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        from ..local_cluster import auth_env, running

        local = running()
        if local is not None and address == local["address"]:  # raytrain's own warm cluster (raytrain up)
            os.environ.update({**auth_env(local), **EMBEDDED_TRAIN_ENV})  # its token; its local Train settings
            _warm.update(local)
        else:
            for key in _set_here:  # a cluster keeps Ray Train's defaults (or its own settings)
                os.environ.pop(key, None)
            _set_here.clear()
        # a submitted job (raytrain submit) already runs in a runtime env holding these variables, and Ray
        # refuses a driver runtime env that repeats a job's keys
        in_job = "RAYTRAIN_SPEC" in os.environ
        if os.environ.get(CREDENTIALS_ENV) and not in_job:
            log.info(f"storage credentials given in a URI stay in this process: the cluster's workers open the "
                         f"storage with their own ({CREDENTIALS_ENV} or {CREDENTIALS_ENV}_FILE in their "
                         "environment; docs/security.md)")
        ray.init(address=address, log_to_driver=True, runtime_env=None if in_job else _runtime_env())
        console.quiet_ray()
        wait_for_cluster(spec)
        return
    check_local_gpus(spec)  # before Ray starts: this machine is all an embedded Ray has
    runtime_env = local_runtime_env()
    need = spec.train.workers * spec.train.resources_per_worker.cpu + 2
    num_cpus = spec.ray.num_cpus or max(os.cpu_count() or 1, int(need + 0.999))
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env,
             logging_level=console.ray_logging_level())
    console.quiet_ray()


def keep_warm(num: int) -> None:
    """On raytrain's local cluster: at least ``num`` idle worker processes ready for the next training run
    (raytrain.warm_workers); elsewhere nothing."""
    if _warm.get("raylet") and _warm.get("warm_workers", 0) > 0:
        from ..warm_workers import top_up

        top_up(_warm, max(num, _warm["warm_workers"]))


def _runtime_env() -> dict:
    """What every Ray process of a job gets: RUNTIME_ENV. Never a credential: Ray writes runtime envs to its
    session's logs and shows them in its job table."""
    return {"env_vars": dict(RUNTIME_ENV["env_vars"])}


def local_runtime_env() -> dict:
    """The runtime env of a local Ray raytrain starts (the tests' Ray too): ``_runtime_env`` and EMBEDDED_TRAIN_ENV,
    which is also set in this process's environment (a user's value wins), where Ray Train reads it when a trainer
    starts; trainers inside tune trials read it from the runtime env."""
    runtime_env = _runtime_env()
    for key, value in EMBEDDED_TRAIN_ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            _set_here.add(key)
        runtime_env["env_vars"][key] = os.environ[key]
    return runtime_env


def process_group_backend(device: str) -> str:
    """The process group's backend: on CUDA, NCCL for GPU tensors and gloo for the CPU tensors the loop's small
    collectives (step counts, losses, metric histograms) use; a plain ``nccl`` group fails on CPU tensors."""
    return "cpu:gloo,cuda:nccl" if device == "cuda" else "gloo"


def make_trainer(spec: JobSpec, prepared, location: str | Path, callbacks: list | None = None, name: str = "ray",
                 init_checkpoint: str | None = None):
    """The TorchTrainer for one training run (also one Tune trial): workers, storage, retries. Workers stream their
    data themselves (raytrain.data.stream): each reads its own row groups of ``prepared``'s files.
    ``location``: where the run lives, a path or a pyarrow.fs URI; Ray Train's own state goes to ``<location>/<name>``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from .lean import trainer_class

    res = spec.train.resources_per_worker
    storage: dict[str, Any] = {"storage_path": str(location)}
    if is_uri(str(location)):
        fs, path = filesystem(str(location))
        storage = {"storage_path": path, "storage_filesystem": fs}
    return trainer_class()(
        train_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "data": prepared.to_dict(),
                           "run_dir": str(location), "init_checkpoint": init_checkpoint},
        scaling_config=ScalingConfig(
            num_workers=spec.train.workers,
            use_gpu=spec.train.device == "cuda",
            resources_per_worker={"CPU": res.cpu, **({"GPU": res.gpu or 1} if spec.train.device == "cuda" else {})},
        ),
        torch_config=TorchConfig(backend=process_group_backend(spec.train.device),
                                 timeout_s=int(max(1, spec.train.collective_timeout_s))),
        run_config=RunConfig(
            name=name,
            **storage,
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            # the best `keep` checkpoints by validation AUC survive (Ray also keeps the latest, for resuming), so
            # ensembles and distillation load each run at its best epoch, not an overfitted last one
            checkpoint_config=CheckpointConfig(num_to_keep=spec.train.checkpoint.keep,
                                               checkpoint_score_attribute="val_auc", checkpoint_score_order="max"),
            callbacks=callbacks or None,
        ),
    )


def train_worker(config: dict) -> None:
    """Ray Train's function on each worker. The loop is imported here, not by the module: the driver pickles only a
    reference to this function, so it never loads TorchRec and FBGEMM (seconds of start-up on a small machine)."""
    from .loop import train_loop_per_worker

    train_loop_per_worker(config)


def run_train(spec: JobSpec, run_dir: Path | None = None, address: str | None = None,
              prepared: PreparedData | None = None, location: str | None = None) -> dict:
    """A training run; ``prepared``: data already laid out (a distillation's teacher-scored split); ``run_dir`` and
    ``location``: a run directory made by the caller (the local mirror, and the URI it mirrors if any)."""
    if run_dir is None:
        run_dir, location = new_run_location(spec)
    location = location or str(run_dir)
    mirror = Mirror(run_dir, location)
    store, put = mirror.store, mirror.put
    console.attach(run_dir / "logs")
    put("spec.yaml", resolved_yaml(spec))
    log.info(f"run directory: {redact(location)}" + (f" (local mirror {run_dir})" if store is not None else ""))
    t0 = time.perf_counter()
    stamps = {"driver_start": time.time()}
    init_ray(spec, address)  # first: validation, splitting and conversion fan out as Ray tasks
    stamps["ray_ready"] = time.time()
    prepared = mirror.share(prepared or prepare(spec.data, work_dir=str(run_dir)))  # on a URI run: data/ there too
    put("schema.json", prepared.schema.to_json())
    log.info(f"data: {spec.data.source}, {len(prepared.schema.sparse)} sparse / {len(prepared.schema.dense)} dense "
         f"features, {json.dumps(prepared.schema.info.get('rows', {}))}")
    stamps["data_ready"] = time.time()
    if spec.train.id_dropout:
        from .id_dropout import check

        check(spec.train.id_dropout, prepared.schema)
    if spec.train.init_from is not None:  # a wrong table or size is named here, before any worker starts
        from .warm_start import preflight

        log.info(f"warm start from {redact(preflight(spec.train.init_from, prepared.schema, spec.model.embedding_dim))}")
    trainer = make_trainer(spec, prepared, location)
    result = trainer.fit()
    keep_warm(spec.train.workers + 2)  # the next run's workers, controller and sync actor, as this one ends
    if result.error is not None:
        raise result.error
    if store is not None:  # the workers' files into the mirror; shards only when the driver scores the model
        shards = spec.model.arch == "two_tower" and bool(prepared.paths)
        store.download(run_dir, skip=lambda rel: rel.endswith(".distcp") and not shards)
    summary = collect_metrics(run_dir)
    if spec.model.arch == "two_tower" and prepared.paths:
        from .export import load_model
        from .retrieval import retrieval_metrics

        retrieval = retrieval_metrics(load_model(run_dir), prepared.paths)
        summary.update(retrieval)
        log.info("full-catalogue retrieval on test: " + ", ".join(
            f"{k.removeprefix('test_')} {v:.4f}" for k, v in retrieval.items() if "@" in k))
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["startup"] = stamps  # the workers' stamps: workers/startup.json
    summary["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    summary["run_dir"] = str(run_dir)
    if store is not None:
        if result.checkpoint is not None:
            summary["checkpoint"] = store.location_of(result.checkpoint.path)
        summary["run_dir"], summary["local_mirror"] = location, str(run_dir)
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    mirror.publish(skip_dirs=("ray/", "data/"))  # what the driver wrote (result, metrics table) joins a URI run
    nan = float("nan")
    log.info(f"done in {summary['wall_seconds']:.0f}s: last epoch val_auc {summary.get('val_auc', nan):.4f} | best epoch "
         f"{summary.get('best_epoch')}: val_auc {summary.get('best_val_auc', nan):.4f}, test_auc "
         f"{summary.get('test_auc', nan):.4f} test_logloss {summary.get('test_logloss', nan):.4f} (its checkpoint)")
    return summary


def collect_metrics(run_dir: Path) -> dict:
    """metrics/epoch_*.json -> metrics.parquet; returns the last epoch's and the test metrics."""
    files = sorted((run_dir / "metrics").glob("epoch_*.json"))
    rows = [json.loads(f.read_text()) for f in files]
    out: dict = {}
    if rows:
        pd.DataFrame(rows).to_parquet(run_dir / "metrics.parquet", index=False)
        out.update({k: rows[-1][k] for k in ("epoch", "val_auc", "val_logloss")})
        best = max(rows, key=lambda r: r["val_auc"])  # the checkpoint the model is used from (and tested at)
        out.update(best_epoch=best["epoch"], best_val_auc=best["val_auc"])
    test = run_dir / "metrics" / "test.json"
    if test.exists():
        out.update({k: v for k, v in json.loads(test.read_text()).items() if k.startswith("test_")})
    return out
