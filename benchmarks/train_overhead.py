"""raytrain vs a hand-written TorchRec loop: the same model, data and worker count, alternating.

    python benchmarks/train_overhead.py [--rounds 2] [--epochs 3] [--workers 2]

Arm A: `raytrain run` machinery (Ray Train workers, streamed parquet input, checkpoints each epoch).
Arm B: the TorchRec loop an engineer would write by hand (benchmarks/common/handbuilt.py, which imports nothing
from raytrain): torch.multiprocessing over gloo, no Ray, DLRM_DCN / the planner / the optimizers built with
TorchRec's API, gradients averaged by DDP over gloo, numpy batches from its share of the same training parquet
file (prepared once by raytrain; the arm only reads it).

The ratio is what raytrain adds or saves around the same model, data and worker count (its input pipeline and
shared-memory gradient exchange included). Throughput is training examples/s over the epochs after the first
(warm); start-up is the time from launch to the first training step; each arm's whole-run wall time is printed
beside them (raytrain's includes validation, checkpoints and the test, which the hand-written loop does not run).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SPEC = ROOT / "jobs" / "train_ml100k.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepared_split(tmp: Path) -> tuple[str, str]:
    """The demo's prepared training file and its schema as JSON: raytrain prepares the data once; the hand-written
    arm only reads the files."""
    from raytrain.data import prepare
    from raytrain.spec import load_spec

    data = prepare(load_spec(SPEC).data)
    schema = tmp / "schema.json"
    schema.write_text(data.schema.to_json())
    return data.paths["train"][0], str(schema)


def run_handwritten(world: int, epochs: int, tmp: Path, split: tuple[str, str]) -> dict:
    from common.handbuilt import model_config, train_worker

    out = tmp / f"hand-{time.time_ns()}.json"
    t_launch = time.time()
    mp.spawn(train_worker, args=(world, _free_port(), split[0], split[1], model_config(SPEC), epochs, str(out),
                                 t_launch), nprocs=world)
    return json.loads(out.read_text())


def run_raytrain(world: int, epochs: int, tmp: Path) -> dict:
    import pandas as pd

    from raytrain.spec import load_spec
    from raytrain.train.runner import run_train

    spec = load_spec(SPEC, [f"storage={tmp}", f"train.epochs={epochs}", f"train.workers={world}",
                            "train.checkpoint.keep=1"])
    t_launch = time.time()
    summary = run_train(spec)
    m = pd.read_parquet(Path(summary["run_dir"]) / "metrics.parquet")
    first_step = m["epoch_end_time"].iloc[0] - m["train_seconds"].iloc[0]
    return {"rates": m["train_examples_per_s"].tolist(), "startup_s": first_step - t_launch,
            "wall_s": summary["wall_seconds"]}  # the whole run: validation, checkpoints and the test included


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import tempfile

    import ray

    from raytrain.train.runner import local_runtime_env

    tmp = Path(tempfile.mkdtemp(prefix="raytrain-bench-"))
    t = time.time()
    ray.init(num_cpus=8, include_dashboard=False, runtime_env=local_runtime_env(), log_to_driver=False)
    ray_init_s = time.time() - t
    split = prepared_split(tmp)
    results: dict[str, list[dict]] = {"raytrain": [], "handwritten": []}
    arms = (("raytrain", run_raytrain), ("handwritten", lambda w, e, t: run_handwritten(w, e, t, split)))
    for r in range(args.rounds):
        for name, fn in arms:
            res = fn(args.workers, args.epochs, tmp)
            results[name].append(res)
            warm = res["rates"][1:] or res["rates"]
            whole = f"  whole run {res['wall_s']:.1f}s" + (" (with validation, checkpoints, test)" if name == "raytrain" else "")
            print(f"round {r + 1} {name:<12} warm examples/s {statistics.median(warm):>10,.0f}  "
                  f"start-up {res['startup_s']:.1f}s{whole}", flush=True)

    def warm_rate(name: str) -> float:
        return statistics.median([x for res in results[name] for x in (res["rates"][1:] or res["rates"])])

    a, b = warm_rate("raytrain"), warm_rate("handwritten")
    print()
    print(f"{'arm':<12} {'examples/s (warm, median)':>26} {'start-up s (median)':>20}")
    for name, rate in (("raytrain", a), ("handwritten", b)):
        print(f"{name:<12} {rate:>26,.0f} {statistics.median(r['startup_s'] for r in results[name]):>20.1f}")
    per_round = [statistics.median(a["rates"][1:] or a["rates"]) / statistics.median(b["rates"][1:] or b["rates"])
                 for a, b in zip(results["raytrain"], results["handwritten"])]
    print(f"ray.init (once, not in start-up above): {ray_init_s:.1f}s")
    print("ratio per round: " + ", ".join(f"{r:.3f}" for r in per_round))
    print(f"GOAL raytrain_vs_handwritten_examples_per_s {a / b:.3f} >=0.950 {'met' if a / b >= 0.95 else 'missed'}")


if __name__ == "__main__":
    main()
