"""Kill a real training worker process mid-run: Ray Train restarts the group from the last checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from raytrain.runs import new_run_dir
from raytrain.spec import load_spec
from raytrain.train.runner import run_train

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("broken_shard,how", [(False, "kill"), (True, "kill"), (False, "stop")],
                         ids=["complete", "latest-missing-a-shard", "stopped"])
def test_killed_worker_resumes_from_last_checkpoint(ray_local, tmp_path, broken_shard, how):
    """broken_shard: rank 1's shard of the newest checkpoint is gone when the worker dies (a shard that never
    reached storage): the restarted group refuses it and resumes from the checkpoint before. stopped: rank 1 is
    alive but stuck (SIGSTOP) mid-epoch; rank 0 gives up after the collective timeout (shared-memory all-reduce or
    gloo, whichever it waits in), and Ray Train restarts the group as for a dead worker."""
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml",
                     [f"storage={tmp_path}", "train.epochs=4", "train.max_failures=2", "train.checkpoint.keep=4",
                      "train.collective_timeout_s=20"])
    run_dir = new_run_dir(spec)
    killed: dict = {}
    wait_for = "epoch_0002" if broken_shard else "epoch_0001"

    def registered() -> bool:
        # the checkpoint files reach storage before the Train controller registers the report; a kill in
        # between loses it (on a busy machine that took seconds), so wait for the controller's own record
        snapshot = run_dir / "ray" / "checkpoint_manager_snapshot.json"
        try:
            return wait_for in snapshot.read_text()
        except OSError:
            return False

    def kill_after_first_checkpoint():
        deadline = time.time() + 600
        while not registered() and time.time() < deadline:
            time.sleep(0.2)
        if broken_shard:
            (run_dir / "ray" / "epoch_0002" / "__1_0.distcp").unlink()
        else:
            time.sleep(1.0)  # inside epoch 2 now
        pid = int((run_dir / "workers" / "rank1.pid").read_text())
        os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        killed["pid"] = pid
        killed["done_epochs"] = len(list((run_dir / "metrics").glob("epoch_*.json")))

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    summary = run_train(spec, run_dir=run_dir)
    watcher.join(timeout=5)

    assert "pid" in killed, "the worker was never killed"
    assert killed["done_epochs"] < 4  # killed mid-run, not after the end
    resumes = [__import__("json").loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert len(resumes) >= 1
    if broken_shard:  # epoch 2's checkpoint was refused: training went on from epoch 1's
        assert resumes[0]["from_epoch"] == 1 and resumes[0]["checkpoint"].endswith("epoch_0001"), resumes
    else:
        assert resumes[0]["from_epoch"] in (1, 2), resumes
    # a new worker process took rank 1's place
    assert int((run_dir / "workers" / "rank1.pid").read_text()) != killed["pid"]
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert metrics["epoch"].tolist() == [1, 2, 3, 4]
    assert summary["test_auc"] > 0.75
    if how == "stop":  # the stuck worker was ended with its group, not left stopped
        deadline = time.time() + 60
        while Path(f"/proc/{killed['pid']}").exists() and time.time() < deadline:
            state = Path(f"/proc/{killed['pid']}/status").read_text().split("State:")[1].split()[0]
            if state == "Z":
                break
            time.sleep(0.5)
        assert not Path(f"/proc/{killed['pid']}").exists() or state == "Z"
    from raytrain.train.shm_allreduce import _shm_dir

    assert not list(_shm_dir().glob("raytrain-grad-*"))  # nothing left in shared memory
