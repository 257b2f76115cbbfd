"""Start-up: from a command to the first training step, raytrain against a hand-written TorchRec loop, by phase.

Arm "raytrain": ``raytrain run jobs/train_ml100k.yaml train.epochs=1`` as a user runs it (a fresh process, an
embedded Ray, 2 Ray Train workers). Phases from the stamps the run records (result.json's ``startup`` and the
workers' ``workers/startup.json``): interpreter and imports, Ray start, data, worker group (controller, placement,
worker processes, process group, their imports), sharding plan and model, first step. Then the rest of the run.

Arm "hand-written": the same model and sharding in ONE process, the loop a user would write around TorchRec: a gloo
group of one, the model (raytrain's module builder), TorchRec's planner and DistributedModelParallel, the first batch
read with pyarrow from the same prepared split, one step. No Ray, no run directory.

    python benchmarks/startup.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "jobs" / "train_ml100k.yaml"

HAND = r'''
import json, os, sys, time
t = {"launch": float(sys.argv[1]), "python": time.time()}
import torch, torch.distributed as dist
import pyarrow.parquet as pq
from torchrec.distributed import DistributedModelParallel
t["imports"] = time.time()
from raytrain.spec import load_spec
from raytrain.data import prepare
from raytrain.data.batches import Columns
from raytrain.train.distributed import build_train_module
from raytrain.sharding import make_plan, make_topology
from raytrain.sharding.planner import build_constraints
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3])
dist.init_process_group("gloo", rank=0, world_size=1)
spec = load_spec(sys.argv[2])
prepared = prepare(spec.data)
table = pq.read_table(prepared.paths["train"][0]).slice(0, spec.train.batch_size)
batch = Columns.from_arrow(prepared.schema, table, "train").batch(torch.arange(table.num_rows))
t["data"] = time.time()
module = build_train_module(spec, prepared.schema, torch.device("cpu"))
constraints = build_constraints(prepared.schema, spec.train.sharding, spec.model.embedding_dim, "cpu")
plan = make_plan(module, make_topology(1, "cpu"), constraints)
dmp = DistributedModelParallel(module, device=torch.device("cpu"), plan=plan)
opt = torch.optim.Adam([p for n, p in dmp.named_parameters() if "embedding_bags" not in n], lr=1e-3)
t["sharded"] = time.time()
loss, _ = dmp(batch)
opt.zero_grad(); loss.backward(); opt.step()
t["first_step"] = time.time()
print(json.dumps(t))
'''


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def hand_written() -> dict:
    launch = time.time()
    out = subprocess.run([sys.executable, "-c", HAND, str(launch), str(SPEC), _free_port()], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    t = json.loads(out.stdout.strip().splitlines()[-1])
    return {"interpreter + imports": t["imports"] - t["launch"], "data": t["data"] - t["imports"],
            "plan + model": t["sharded"] - t["data"], "first step": t["first_step"] - t["sharded"],
            "to first step": t["first_step"] - t["launch"]}


class CpuSampler:
    """The machine's CPU use over time (/proc/stat, every 0.1 s), to tell waiting from computing in a phase."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (time, idle jiffies, all jiffies)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            self.samples.append((time.time(), v[3] + v[4], sum(v)))
            self._stop.wait(0.1)

    def __enter__(self) -> CpuSampler:
        if Path("/proc/stat").exists():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def busy(self, t0: float, t1: float) -> float:
        """Share of all cores' time spent busy between t0 and t1 (nan without samples)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return float("nan")
        (_, i0, a0), (_, i1, a1) = inside[0], inside[-1]
        return 1 - (i1 - i0) / max(a1 - a0, 1)


def raytrain_arm() -> dict:
    with tempfile.TemporaryDirectory(prefix="raytrain-startup-") as d, CpuSampler() as cpu:
        launch = time.time()
        out = subprocess.run([sys.executable, "-m", "raytrain.cli.main", "run", str(SPEC), f"storage={d}",
                              "train.epochs=1"], capture_output=True, text=True, cwd=ROOT)
        end = time.time()
        if out.returncode != 0:
            raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
        (run,) = list((Path(d) / "train-ml100k").iterdir())
        driver = json.loads((run / "result.json").read_text())["startup"]
        worker = json.loads((run / "workers" / "startup.json").read_text())
    return {"interpreter + imports": driver["driver_start"] - launch, "ray start": driver["ray_ready"] - driver["driver_start"],
            "data": driver["data_ready"] - driver["ray_ready"],
            "worker group": worker["worker_start"] - driver["data_ready"],
            "plan + model": worker["sharded"] - worker["worker_start"],
            "first step": worker["first_step"] - worker["sharded"],
            "to first step": worker["first_step"] - launch, "whole run (1 epoch)": end - launch,
            # a phase that keeps every core busy is cut only by doing less work, not by overlapping it
            "cpu busy in worker group (share)": cpu.busy(driver["data_ready"], worker["worker_start"]),
            "cpu busy to first step (share)": cpu.busy(launch, worker["first_step"])}


def _fmt(k: str, v: float) -> str:
    return f"{k} {v:.2f}" if "share" in k else f"{k} {v:.1f}s"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    best: dict[str, dict] = {}
    for r in range(a.rounds):  # alternate, keep each arm's fastest start
        for name, fn in (("hand-written", hand_written), ("raytrain", raytrain_arm)):
            t = fn()
            print(f"round {r + 1} {name}: " + ", ".join(_fmt(k, v) for k, v in t.items()), flush=True)
            if name not in best or t["to first step"] < best[name]["to first step"]:
                best[name] = t
    for name, t in best.items():
        print(f"{name:13s} " + " | ".join(_fmt(k, v) for k, v in t.items()))
    ratio = best["raytrain"]["to first step"] / best["hand-written"]["to first step"]
    print(f"GOAL startup_vs_hand_written {ratio:.2f} <=2.00 {'met' if ratio <= 2.0 else 'missed'}")


if __name__ == "__main__":
    main()
