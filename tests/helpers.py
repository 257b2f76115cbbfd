"""Run a function on N gloo processes (torch.multiprocessing, no Ray) and collect what rank 0 returns."""

from __future__ import annotations

import os
import socket
import traceback

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env() -> dict:
    """This process's environment for a Ray cluster's processes, and for a CLI process that attaches to one: the
    venv's `python` on PATH, without this process's Ray settings (an embedded test Ray sets some), raytrain's
    local-Ray settings or the storage credentials earlier tests adopted here."""
    import sys
    from pathlib import Path

    from raytrain.train.resources import EMBEDDED_TRAIN_ENV

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAYTRAIN_STORAGE_CREDENTIALS",
                 "RAYTRAIN_STORAGE_CREDENTIALS_FILE", *EMBEDDED_TRAIN_ENV):
        env.pop(name, None)
    return env


def _entry(rank, world, port, fn, args, queue, backend="gloo"):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        dist.init_process_group(backend, rank=rank, world_size=world)
        out = fn(rank, world, *args)
        dist.barrier()
        dist.destroy_process_group()
        queue.put((rank, "ok", out))
    except BaseException:  # report instead of hanging the parent
        queue.put((rank, "error", traceback.format_exc()))


def run_distributed(fn, world: int, *args, timeout: float = 300, backend: str = "gloo"):
    """Returns the list of per-rank results (numpy / plain objects only). Raises on any rank's error."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, queue, backend)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(world):
            rank, status, out = queue.get(timeout=timeout)
            if status != "ok":
                raise RuntimeError(f"rank {rank} failed:\n{out}")
            results[rank] = out
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]


def post_json(url: str, body) -> tuple[int, dict]:
    """POST ``body`` as JSON over real HTTP: (status, the reply's JSON), 4xx and 5xx included."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
