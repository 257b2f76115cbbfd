"""The console of `raytrain run` on the demo job, run as a user runs it (a subprocess, output not a terminal):
raytrain's own lines only, the test AUC among them; Ray's, TorchRec's and the workers' own output in the run's
logs/ray.log; --verbose shows it all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    # as from a fresh shell: no address, and no RAY_AUTH_MODE (which the tests' own Ray set in this process)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    return subprocess.run([sys.executable, "-m", "raytrain.cli.main", "run", str(ROOT / "jobs/train_ml100k.yaml"),
                           f"storage={tmp_path}", *extra], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=900)


def test_the_demo_job_prints_at_most_40_lines_and_its_test_auc(without_session_ray, tmp_path):
    out = _run(tmp_path / "quiet")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = (out.stdout + out.stderr).splitlines()
    print("\n".join(lines))
    assert len(lines) <= 40, len(lines)
    assert any("test (epoch" in line and "auc 0." in line for line in lines)
    assert not any("pid=" in line for line in lines)  # no worker's or Ray actor's own line
    assert not any("Token authentication" in line for line in lines)  # Ray's notice of its default (still on)
    (run_dir,) = list((tmp_path / "quiet" / "train-ml100k").iterdir())
    filed = (run_dir / "logs" / "ray.log").read_text()
    assert "RayTrainWorker" in filed and "[raytrain] epoch 1/" in filed  # what the console left out is on file
    assert "Token authentication is enabled" in filed

    loud = _run(tmp_path / "loud", "train.epochs=1", "--verbose")
    assert loud.returncode == 0
    assert len((loud.stdout + loud.stderr).splitlines()) > 40 and "pid=" in loud.stdout + loud.stderr
