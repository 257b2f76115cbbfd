"""`raytrain up` starts a warm local cluster, `raytrain run` attaches to it (and says so first), `raytrain down` stops
it leaving no process of it behind; all through the CLI, as a user runs them. The run's workers are warm processes
the cluster started before it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cluster_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raytrain.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _pids_with(text: str) -> list[int]:
    """Live processes that name ``text`` on their command line or hold a file under it open (Ray's agents retitle
    themselves, ``ray::DashboardAgent``, and keep only their open logs in the temp dir)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit() or "zombie" in (d / "status").read_text():
                continue
            opened = []
            for fd in (d / "fd").iterdir():
                try:
                    opened.append(os.readlink(fd))
                except OSError:
                    pass
            if text.encode() in (d / "cmdline").read_bytes() or any(f.startswith(text) for f in opened):
                out.append(int(d.name))
        except OSError:
            continue
    return out


def test_up_run_attached_then_down_leaves_nothing(without_session_ray, tmp_path):
    env = {**cluster_env(), "RAYTRAIN_CACHE": str(tmp_path / "cache")}
    up = _cli("up", "--cpus", "6", env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    state = json.loads((tmp_path / "cache" / "cluster" / "state.json").read_text())
    token = Path(state["token_path"])
    assert oct(token.stat().st_mode & 0o777) == "0o600" and len(token.read_text()) == 64
    try:
        assert len(_pids_with(state["temp_dir"])) >= 3  # GCS, raylet, agents
        again = _cli("up", env=env)  # idempotent: says where it runs
        assert again.returncode == 0 and state["address"] in again.stdout + again.stderr
        before = set(_pids_with(state["temp_dir"]))
        run = _cli("run", "jobs/train_ml100k.yaml", "train.epochs=1", f"storage={tmp_path / 'runs'}", env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        # its workers ran in processes the cluster had started before the command (raytrain.warm_workers)
        (run_dir,) = (tmp_path / "runs").glob("train-ml100k/*")
        ranks = {int((run_dir / "workers" / f"rank{r}.pid").read_text()) for r in (0, 1)}
        assert ranks <= before, (ranks, before)
        lines = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("[raytrain]")]
        assert lines[0] == f"[raytrain] attached to the local raytrain cluster at {state['address']} (6 CPUs; " \
                           "`raytrain down` stops it)", lines[:3]
        assert any(line.startswith("[raytrain] test (epoch 1)") for line in lines)
        assert list((tmp_path / "runs").glob("train-ml100k/*/result.json"))
        # the run's workers ran in the cluster: its session holds the job's driver log
        assert list(Path(state["temp_dir"]).glob("session_*/logs/*"))
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0, down.stderr[-3000:]
    assert _pids_with(state["temp_dir"]) == []  # no raylet, GCS, agent, client server or worker left
    assert not (tmp_path / "cache" / "cluster" / "state.json").exists()
    again = _cli("down", env=env)
    assert again.returncode == 0 and "no local raytrain cluster is up" in again.stdout + again.stderr
