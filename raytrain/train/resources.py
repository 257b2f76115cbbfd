"""Whether a run's workers can ever start where it runs: refused at once on an embedded Ray (this machine is all
there is), waited for with one console line on a cluster (an autoscaler may add nodes), then given up.

Without this a CUDA job on a machine without GPUs printed Ray Train's "worker group startup timed out" tracebacks
in a loop and never ended.
"""

from __future__ import annotations

import time
from typing import Callable

from ..errors import RaytrainError, SpecError
from ..log import get_logger

log = get_logger(__name__)

# set in a local Ray raytrain starts (train.runner.EMBEDDED_TRAIN_ENV): its trainers leave out the helper actors only a
# cluster uses (train.lean)
LOCAL_RAY_ENV = "RAYTRAIN_LOCAL_RAY"
# Ray Train settings for the local Ray raytrain starts itself (embedded, or `raytrain up`; a user's value wins): the
# controller looks at its workers every 0.5 s instead of 2 s (a run noticed its workers' end up to 2 s late: 1-4 s of
# the demo's tail), and no preemption watcher actor is started (it watches for nodes being drained, which a
# one-machine Ray never is; one Python process fewer competing for the cores while the workers start). A missed look
# is not a failure: Ray marks a worker dead only after its check hangs for RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S.
# Nor does it collect Ray's own metrics: a local Ray here runs without a dashboard, so nothing reads them, and the
# OpenTelemetry exporter thread of Ray 2.60 once killed a tune trial's worker with SIGSEGV while it reported.
# what every Ray process of a raytrain job gets in its runtime env (never a credential: Ray logs runtime envs)
RUNTIME_ENV = {"env_vars": {"PYTHONWARNINGS": "ignore", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
EMBEDDED_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                      "RAY_enable_metrics_collection": "0", LOCAL_RAY_ENV: "1"}


class ResourceError(RaytrainError):
    """The cluster never had what the run's workers need within ``train.start_timeout_s``."""

    exit_code = 3


def needs(spec) -> dict[str, float]:
    """Ray resources one run's worker group holds: CPUs, and GPUs on a CUDA run."""
    t = spec.train
    out = {"CPU": t.workers * t.resources_per_worker.cpu}
    if t.device == "cuda":
        out["GPU"] = t.workers * (t.resources_per_worker.gpu or 1)
    return out


def _describe(spec, resource: str, need: float, have: float, where: str) -> str:
    unit = "GPUs" if resource == "GPU" else "CPUs"
    return (f"train.device {spec.train.device}: {spec.train.workers} workers need {need:g} {unit}, {where} has "
            f"{have:g}")


def check_local_gpus(spec) -> None:
    """An embedded Ray: refuse a CUDA run this machine cannot hold (exit 2), before Ray starts."""
    if spec.train.device != "cuda":
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    need = needs(spec)["GPU"]
    if have < need:
        raise SpecError([_describe(spec, "GPU", need, have, "this machine") + " (run on a GPU machine, or attach to a "
                         "cluster that has them: --address)"])


def wait_for_cluster(spec, totals: Callable[[], dict] | None = None, poll_s: float = 5.0) -> None:
    """A cluster: wait until its nodes together have what the worker group needs (``ray.cluster_resources``), at
    most ``train.start_timeout_s``, saying once what it waits for; then ResourceError (exit 3)."""
    import ray

    totals = totals or ray.cluster_resources
    deadline = time.monotonic() + spec.train.start_timeout_s
    said = False
    while True:
        have = totals()
        short = [(r, n, float(have.get(r, 0))) for r, n in needs(spec).items() if float(have.get(r, 0)) < n]
        if not short:
            return
        text = "; ".join(_describe(spec, r, n, h, "the cluster") for r, n, h in short)
        if time.monotonic() >= deadline:
            raise ResourceError(f"{text}, after waiting {spec.train.start_timeout_s:g} s (train.start_timeout_s)")
        if not said:
            log.info(f"waiting for the cluster to grow: {text} now; giving up after {spec.train.start_timeout_s:g} s "
                     "(train.start_timeout_s)")
            said = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
