"""A warm local Ray cluster for raytrain's runs: ``raytrain up`` starts one (a head node on 127.0.0.1, token
authentication, raytrain's local Ray Train settings), ``raytrain run`` attaches to it while it runs instead of
starting an embedded Ray for every run, and ``raytrain down`` stops it and every process it started.

Its state is one file, ``<cache>/cluster/state.json`` (address, temp dir, token file), beside the token (mode 0600).
Every process of the cluster names its temp dir on its command line or holds a log file under it open (Ray's
agents retitle themselves but keep their logs open), which is how ``down`` finds them all: SIGTERM, then SIGKILL
for the ones that ignore it (the dashboard and runtime-env agents and Ray's client server do), until none is left.
It touches no other Ray instance.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .errors import RaytrainError
from .log import get_logger
from .storage import cache_dir
from .warm_workers import uses

log = get_logger(__name__)


def _home() -> Path:
    return cache_dir("cluster")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def running() -> dict | None:
    """The local cluster's state when it is up (its GCS answers), else None."""
    path = _home() / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if _listening(int(state["port"])) else None


def auth_env(state: dict) -> dict[str, str]:
    """What a process needs in its environment to talk to the cluster: its token, by file (set before Ray is
    imported, which reads the auth mode then)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state["token_path"]}


def up(cpus: int, port: int = 0, warm_workers: int = 4) -> dict:
    """Start the cluster (or say where it already runs); its state. ``warm_workers``: worker processes kept started,
    with torch and Ray Train imported, for the next run (raytrain.warm_workers; a 2-worker run takes 4 with its
    controller and synchronization actor)."""
    from .train.resources import EMBEDDED_TRAIN_ENV
    from .warm_workers import preload_env, top_up

    found = running()
    if found is not None:
        log.info(f"the local raytrain cluster is already up at {found['address']} ({found['cpus']} CPUs)")
        return found
    home = _home()
    home.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    temp_dir = f"/tmp/raytrain-cluster-{os.getuid()}-{port}"  # short: Ray's socket paths stay under 108 bytes
    token = home / "token"
    token.touch(mode=0o600)
    os.chmod(token, 0o600)
    token.write_text(secrets.token_hex(32))
    state: dict[str, Any] = {"address": f"127.0.0.1:{port}", "port": port, "temp_dir": temp_dir, "token_path": str(token),
             "cpus": cpus, "started": time.time(), "raylet": f"127.0.0.1:{_free_port()}", "warm_workers": warm_workers}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(EMBEDDED_TRAIN_ENV)  # Ray Train's local settings, in every process of the cluster
    env.update(auth_env(state))
    env.update(preload_env(warm_workers))
    ports = [f"--node-manager-port={state['raylet'].rsplit(':', 1)[1]}",
             f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
             f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
    ray = str(Path(sys.executable).parent / "ray")
    out = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                          f"--temp-dir={temp_dir}", f"--num-cpus={cpus}", "--include-dashboard=false",
                          "--disable-usage-stats", *ports], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        stop_processes(temp_dir)
        raise RaytrainError(f"raytrain up: `ray start --head` failed (exit {out.returncode}): "
                            f"{(out.stderr or out.stdout).strip()[-2000:]}")
    (home / "state.json").write_text(json.dumps(state, indent=2))
    os.environ.update(auth_env(state))  # the raylet's gRPC asks for the token too
    top_up(state, warm_workers)
    log.info(f"the local raytrain cluster is up at {state['address']} ({cpus} CPUs, token authentication, "
             f"{warm_workers} warm worker processes); `raytrain run` attaches to it, `raytrain down` stops it")
    return state


def _processes(temp_dir: str) -> list[int]:
    """Pids of the cluster's processes (``_uses``; Linux's /proc), this one left out."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            state = next((line for line in (d / "status").read_text().splitlines() if line.startswith("State:")), "")
            if "zombie" not in state and uses(d, temp_dir):
                found.append(int(d.name))
        except OSError:
            continue
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait(temp_dir: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _processes(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def stop_processes(temp_dir: str, grace_s: float = 10.0) -> int:
    """Every process of the cluster whose temp dir is ``temp_dir`` ended (SIGTERM, then SIGKILL); how many."""
    procs = _processes(temp_dir)
    _signal(procs, signal.SIGTERM)
    alive = _wait(temp_dir, grace_s)
    _signal(alive, signal.SIGKILL)  # the agents and the client server ignore SIGTERM
    left = _wait(temp_dir, grace_s)
    if left:
        raise RaytrainError(f"raytrain down: {len(left)} process(es) of the cluster still run: "
                            + ", ".join(map(str, left)))
    return len(procs)


def down() -> int:
    """Stop the cluster; the number of processes ended (0 when none was up)."""
    path = _home() / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        log.info("no local raytrain cluster is up")
        return 0
    n = stop_processes(state["temp_dir"])
    path.unlink(missing_ok=True)
    log.info(f"the local raytrain cluster at {state['address']} is down ({n} processes ended)")
    return n
