"""Kill a real worker in the middle of an epoch: training resumes at the last mid-epoch checkpoint's step, every
example of the epoch is consumed exactly once across the interruption, and the final weights equal an
uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raytrain.runs import new_run_dir
from raytrain.spec import parse_spec
from raytrain.train.export import load_model
from raytrain.train.runner import run_train

pytestmark = pytest.mark.slow
ROWS = 30_000  # 3 files of 10,000 rows


def _data(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for split, n, files in (("train", ROWS, 3), ("validation", 3000, 1), ("test", 3000, 1)):
        d = tmp_path / "data" / split
        d.mkdir(parents=True)
        for f in range(files):
            m = n // files
            u, i = rng.integers(0, 500, m), rng.integers(0, 800, m)
            y = (rng.random(m) < 1 / (1 + np.exp(-(np.sin(u) + np.cos(i))))).astype(np.float32)
            pq.write_table(pa.table({"user": u, "item": i, "x": rng.normal(size=m).astype(np.float32), "y": y}),
                           d / f"part-{f}.parquet", row_group_size=2000)
        out[split] = str(d)
    return out


def _spec(tmp_path: Path, paths: dict, name: str):
    return parse_spec({
        "name": name, "kind": "train", "storage": str(tmp_path / "runs"),
        "data": {"source": "parquet", "paths": paths, "label": {"column": "y"},
                 "columns": {"sparse": {"user": 500, "item": 800}, "dense": ["x"]}},
        "model": {"arch": "dlrm", "embedding_dim": 8, "dense_arch": [8], "over_arch": [16]},
        "train": {"workers": 2, "batch_size": 64, "epochs": 1, "max_failures": 2, "audit_examples": True,
                  "checkpoint": {"every_steps": 100, "keep": 2},
                  "ingest": {"shuffle_buffer_rows": 5000, "prefetch_batches": 2}},
    })


def _consumed(run_dir: Path, epoch: int) -> tuple[list[int], int]:
    """The example ids an epoch trained on: per (rank, step), the record of the last attempt that ran the step
    (an attempt's steps after its last checkpoint were lost with it and run again)."""
    files = sorted((run_dir / "audit" / f"epoch_{epoch:04d}").glob("rank_*.jsonl"), key=lambda p: p.stat().st_mtime)
    steps: dict[tuple[int, int], list[int]] = {}
    for f in files:  # oldest first: a later attempt overwrites the steps it re-ran
        rank = int(f.name.split("_")[1])
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            steps[(rank, rec["step"])] = rec["ids"]
    return [i for ids in steps.values() for i in ids], len(files)


def test_a_worker_killed_mid_epoch_resumes_at_its_step_exactly_once(ray_local, tmp_path):
    paths = _data(tmp_path)
    clean = run_train(_spec(tmp_path, paths, "clean"))
    spec = _spec(tmp_path, paths, "killed")
    run_dir = new_run_dir(spec)
    killed: dict = {}

    def kill_mid_epoch():
        snapshot = run_dir / "ray" / "checkpoint_manager_snapshot.json"
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if "mid_epoch_0001_step_0000200" in snapshot.read_text():
                    break
            except OSError:
                pass
            time.sleep(0.02)
        pid = int((run_dir / "workers" / "rank1.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    watcher = threading.Thread(target=kill_mid_epoch, daemon=True)
    watcher.start()
    run_train(spec, run_dir=run_dir)
    watcher.join(timeout=5)

    assert "pid" in killed
    resume = json.loads((run_dir / "resumes.jsonl").read_text().splitlines()[0])
    assert resume["from_epoch"] == 1 and 200 <= resume["from_step"] < ROWS // 64  # inside the epoch
    steps_per_epoch = (ROWS // 2) // 32  # each rank's 15,000 rows in local batches of 32
    ids, attempts = _consumed(run_dir, 1)
    reference, _ = _consumed(Path(clean["run_dir"]), 1)
    assert len(ids) == steps_per_epoch * 64 and len(set(ids)) == len(ids)  # none twice, none skipped
    assert Counter(ids) == Counter(reference)  # the same examples as the uninterrupted epoch
    assert attempts == 4  # two ranks before the kill, two after
    a, b = load_model(clean["run_dir"]).module.state_dict(), load_model(run_dir).module.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
