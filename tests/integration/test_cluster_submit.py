"""A real multi-node Ray cluster on 127.0.0.1 (cluster/local_cluster.sh: `ray start --head` + 2 worker nodes)
with token authentication, driven through the CLI: submit, follow, logs, list, stop, refused tokens, and a
tune run whose trials land on more than one node."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TOKEN = "raytrain-test-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(token: str | None = TOKEN) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the cluster's `python` has raytrain
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)  # an embedded test cluster may have set RAY_AUTH_MODE in this process
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


def _cli(*args: str, token: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = _env(None)
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "raytrain.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def cluster():
    port, dash = _free_port(), _free_port()
    script = str(ROOT / "cluster/local_cluster.sh")
    opts = ["--workers", "2", "--cpus", "2", "--head-cpus", "1", "--port", str(port), "--dashboard-port", str(dash)]
    up = subprocess.run([script, "start", *opts], capture_output=True, text=True, env=_env(), timeout=300)
    assert up.returncode == 0, up.stderr
    yield {"jobs": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{port}"}
    subprocess.run([script, "stop", "--port", str(port)], capture_output=True, env=_env(), timeout=120)


def _status(cluster, job_id: str) -> str:
    out = _cli("status", job_id, "--address", cluster["jobs"], token=TOKEN)
    assert out.returncode == 0, out.stderr
    return out.stdout.split(":")[1].split()[0]


def test_submit_follow_logs_list_stop_with_token_auth(cluster, tmp_path):
    spec = str(ROOT / "jobs/train_ml100k.yaml")
    small = ["train.epochs=1", "train.workers=2", "train.batch_size=1024", f"storage={tmp_path}"]
    refused = _cli("submit", spec, "--address", cluster["jobs"], *small)
    assert refused.returncode == 1
    assert "refused the request: it requires a token and none was given" in refused.stderr
    wrong = _cli("submit", spec, "--address", cluster["jobs"], "--token", "not-the-token", *small)
    assert wrong.returncode == 1 and "the token was rejected" in wrong.stderr and "not-the-token" not in wrong.stderr

    done = _cli("submit", spec, "--address", cluster["jobs"], "--token", TOKEN, "--submission-id", "rt-train-1", *small)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "job rt-train-1: SUCCEEDED" in done.stdout and TOKEN not in done.stdout + done.stderr
    run_dir = next((tmp_path / "train-ml100k").iterdir())
    test = json.loads((run_dir / "metrics" / "test.json").read_text())
    assert test["test_auc"] > 0.7 and test["epoch"] == 1

    logs = _cli("logs", "rt-train-1", "--address", cluster["jobs"], token=TOKEN)
    assert logs.returncode == 0 and "test: auc" in logs.stdout
    listed = _cli("list", "--address", cluster["jobs"], token=TOKEN)
    assert listed.returncode == 0
    assert any(line.split()[:3] == ["rt-train-1", "SUCCEEDED", "train-ml100k"] for line in listed.stdout.splitlines())

    long = _cli("submit", spec, "--address", cluster["jobs"], "--no-wait", "--submission-id", "rt-train-2",
                *small, "train.epochs=50", token=TOKEN)
    assert long.returncode == 0 and long.stdout.strip().endswith("rt-train-2")
    deadline = time.time() + 120
    while _status(cluster, "rt-train-2") != "RUNNING" and time.time() < deadline:
        time.sleep(1)
    stop = _cli("stop", "rt-train-2", "--address", cluster["jobs"], token=TOKEN)
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    deadline = time.time() + 120
    while (status := _status(cluster, "rt-train-2")) != "STOPPED" and time.time() < deadline:
        time.sleep(1)
    assert status == "STOPPED"

    unknown = _cli("status", "no-such-job", "--address", cluster["jobs"], token=TOKEN)
    assert unknown.returncode == 1 and f"no job 'no-such-job' on the cluster at {cluster['jobs']}" in unknown.stderr


def test_tune_trials_spread_over_the_nodes(cluster, tmp_path):
    env = _env()
    cmd = [sys.executable, "-m", "raytrain.cli.main", "run", str(ROOT / "jobs/tune_ml100k_asha.yaml"),
           "--address", cluster["gcs"], f"storage={tmp_path}", "train.workers=1", "train.batch_size=1024",
           "train.epochs=1", "tune.num_samples=2", "tune.max_concurrent_trials=2", "tune.scheduler={name: fifo}",
           "tune.search={algorithm: random, seed: 0}",
           "tune.space={model.embedding_dim: 'choice([8, 16])'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = next((tmp_path / "tune-ml100k-asha").iterdir())
    board = pd.read_parquet(run_dir / "leaderboard.parquet")
    assert len(board) == 2 and (board["status"] == "completed").all()
    assert board["node_id"].nunique() >= 2, board[["trial", "node_id"]]
