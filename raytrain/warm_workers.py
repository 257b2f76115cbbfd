"""Warm worker processes on raytrain's local cluster (``raytrain up``): what makes an attached run start fast.

A run's worker group costs seconds per process before its first step: a fresh Python process that imports torch,
Ray Train, TorchRec and FBGEMM. A cluster that is already up saves Ray's own start, not that. So the cluster's
raylet imports torch and Ray Train (PRELOAD) in every worker process it starts before handing it work (Ray's
``preload_python_modules`` setting), and raytrain asks the raylet to start processes ahead of the next run and keep
them idle (``PrestartWorkers``, with no job bound, so a later driver's actors get them): at ``up`` and after every
run that attached. Ray hands a prestarted process to an actor only when their runtime envs are equal, so the
processes are started in the runtime env Ray Train's controller and workers of a run from this machine get
(``run_env_vars``).

Only third-party modules are preloaded: raytrain's own code is imported by each run, so an edit between runs is
seen. Each idle warm process holds about 0.4 GiB; ``raytrain up --warm-workers 0`` keeps none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .log import get_logger

log = get_logger(__name__)

# every process the raylet starts imports these, also one started on demand (a Tune trial's actor, a Ray Train
# controller), so only what nearly every raytrain process imports anyway; TorchRec and FBGEMM (about 2 s more a
# process here) are left to the training workers (docs/benchmarks.md, tune_efficiency.py's part 3)
PRELOAD = ("torch", "ray.train")
KEEP_ALIVE_S = 3600  # an idle warm process ends after this long; the next run that attaches starts new ones


def preload_env(warm_workers: int) -> dict[str, str]:
    """The cluster's raylet settings: import PRELOAD in every worker process it starts; start up to
    ``warm_workers`` + 1 at once (Ray's default is one per core, and a prestart request beyond it is dropped, not
    queued)."""
    # and no processes in the default runtime env at the raylet's start (one per CPU, all importing PRELOAD at once):
    # a run's actors never take them (their runtime envs differ), prestart() starts the ones they do take
    return {"RAY_preload_python_modules": ",".join(PRELOAD), "RAY_prestart_worker_first_driver": "0",
            "RAY_worker_maximum_startup_concurrency": str(max(warm_workers + 1, os.cpu_count() or 1))}


def run_env_vars() -> dict[str, str]:
    """The env vars of the runtime env Ray Train's controller, workers and synchronization actor get in a training
    run started here on the local cluster (Ray merges a child's into its parent's): the job's
    (train.resources.RUNTIME_ENV), the Ray Train settings the driver propagates (its environment with raytrain's
    local settings, as an attached run sets them) and the controller's own default."""
    from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
    from ray.train.v2._internal.constants import DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE, ENV_VARS_TO_PROPAGATE

    from .train.resources import EMBEDDED_TRAIN_ENV, RUNTIME_ENV

    driver = {**os.environ, **EMBEDDED_TRAIN_ENV}
    env = dict(RUNTIME_ENV["env_vars"])
    env.update({k: driver[k] for k in ENV_VARS_TO_PROPAGATE if k in driver})
    env.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    return env


TUNE_MARK = "PL_DISABLE_FORK"  # what Tune adds to its trial actors' runtime env: not a training run's process


def uses(d: Path, temp_dir: str) -> bool:
    """Whether the process at /proc/``d`` names ``temp_dir`` on its command line or holds a file under it open. Ray's
    agents rewrite their command line to a bare title (``ray::DashboardAgent``) but keep their logs there open."""
    if temp_dir.encode() in (d / "cmdline").read_bytes():
        return True
    for fd in (d / "fd").iterdir():
        try:
            if os.readlink(fd).startswith(temp_dir + "/"):
                return True
        except OSError:
            continue
    return False


def idle(temp_dir: str, env: dict[str, str]) -> int:
    """How many worker processes of the cluster at ``temp_dir`` wait for work (or are starting) in the runtime env
    ``env``: this machine's /proc (the local cluster is one node), each process's environment compared on ``env``'s
    keys and on the keys that tell the kinds apart."""
    keys = set(env) | {TUNE_MARK, "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"}
    n = 0
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit():
                continue
            cmd = (d / "cmdline").read_bytes()
            if not (cmd.startswith(b"ray::IDLE") or b"default_worker.py" in cmd) or not uses(d, temp_dir):
                continue
            pairs = [line.split(b"=", 1) for line in (d / "environ").read_bytes().split(b"\0") if b"=" in line]
            have = {k.decode(): v.decode() for k, v in pairs if k.decode() in keys}
        except (OSError, UnicodeDecodeError):
            continue
        n += have == {k: v for k, v in env.items() if k in keys}
    return n


def top_up(state: dict, want: int) -> bool:
    """Idle warm processes (run_env_vars) on the local cluster of ``state`` brought to ``want``: the missing ones
    asked of its raylet, so repeated calls never pile processes up."""
    env = run_env_vars()
    return prestart(state["raylet"], want - idle(state["temp_dir"], env), env)


def prestart(raylet: str, num: int, env: dict[str, str], keep_alive_s: int = KEEP_ALIVE_S) -> bool:
    """Ask the raylet at ``raylet`` (host:port of its node manager) to start ``num`` idle worker processes in the
    runtime env of env vars ``env``; whether it accepted. Needs the cluster's token in this process's environment
    (auth_env). A failure costs the next run its warm start, nothing else, so it is logged, not raised."""
    if num <= 0:
        return True
    try:
        from ray._private.grpc_utils import init_grpc_channel
        from ray._private.utils import get_runtime_env_info
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc
        from ray.runtime_env import RuntimeEnv

        info = get_runtime_env_info(RuntimeEnv(env_vars=env), is_job_runtime_env=False, serialize=False)
        # the raylet matches a process to an actor by the serialized text: an actor's runtime env, merged with its
        # parent's, arrives compact (no spaces), RuntimeEnv.serialize() spaces it
        info.serialized_runtime_env = json.dumps({"env_vars": env}, sort_keys=True, separators=(",", ":"))
        request = node_manager_pb2.PrestartWorkersRequest(  # type: ignore[attr-defined]  # generated code
            language=common_pb2.Language.PYTHON, runtime_env_info=info,  # type: ignore[attr-defined]
            keep_alive_duration_secs=keep_alive_s, num_workers=num)
        channel = init_grpc_channel(raylet, asynchronous=False)
        try:
            node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
        finally:
            channel.close()
    except Exception as e:  # noqa: BLE001 - an internal API of the pinned Ray (ray_internals.py); warmth is optional
        log.warning(f"could not keep {num} warm worker processes on the local cluster ({type(e).__name__}: {e}); "
                    "runs still start, at a cold worker's speed")
        return False
    log.debug(f"{num} warm worker processes requested from the raylet at {raylet}")
    return True
