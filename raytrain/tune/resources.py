"""What trials need and what they leave: the preflight check of a trial against the cluster, and the release of
exactly the placement groups a run's own trials recorded (never another job's)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..data import PreparedData
from ..errors import RaytrainError
from ..log import get_logger
from ..spec.job import JobSpec
from ..spec.tune_space import parse_dist, tune_of
from ..storage import Store
from .trial import trial_location

log = get_logger(__name__)


class ResourceError(RaytrainError):
    """A trial cannot fit the cluster."""


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
    constraints = build_constraints(prepared.schema, spec.train.sharding, dim, spec.train.device)
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


def release_callback(location: str) -> Any:
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
