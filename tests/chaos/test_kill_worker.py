"""Kill a real training worker process mid-run: Ray Train restarts the group from the last checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from raytrain.spec import load_spec
from raytrain.train.runner import new_run_dir, run_train

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_killed_worker_resumes_from_last_checkpoint(ray_local, tmp_path):
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml",
                     [f"storage={tmp_path}", "train.epochs=4", "train.max_failures=2", "train.checkpoint.keep=4"])
    run_dir = new_run_dir(spec)
    killed: dict = {}

    def registered() -> bool:
        # the checkpoint files reach storage before the Train controller registers the report; a kill in
        # between loses it (on a busy machine that took seconds), so wait for the controller's own record
        snapshot = run_dir / "ray" / "checkpoint_manager_snapshot.json"
        try:
            return "epoch_0001" in snapshot.read_text()
        except OSError:
            return False

    def kill_after_first_checkpoint():
        deadline = time.time() + 600
        while not registered() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # inside epoch 2 now
        pid = int((run_dir / "workers" / "rank1.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid
        killed["done_epochs"] = len(list((run_dir / "metrics").glob("epoch_*.json")))

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    summary = run_train(spec, run_dir=run_dir)
    watcher.join(timeout=5)

    assert "pid" in killed, "the worker was never killed"
    assert killed["done_epochs"] < 4  # killed mid-run, not after the end
    resumes = (run_dir / "resumes.jsonl").read_text().splitlines()
    assert len(resumes) >= 1
    assert '"from_epoch": 1' in resumes[0] or '"from_epoch": 2' in resumes[0]
    # a new worker process took rank 1's place
    assert int((run_dir / "workers" / "rank1.pid").read_text()) != killed["pid"]
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert metrics["epoch"].tolist() == [1, 2, 3, 4]
    assert summary["test_auc"] > 0.75
