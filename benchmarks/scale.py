"""Out-of-core training at two sizes, side by side: memory per worker must stay flat, throughput steady.

    python benchmarks/scale.py [--sizes 2000000,8000000] [--rounds 2] [--full] [--work /tmp/raytrain-scale]

For each size: Criteo-format TSV day files of that many training rows (Criteo Kaggle's 26
cardinalities, uncapped, power-law ids) written by ``raytrain data synth-criteo``'s generator, plus a
validation and a test day of fixed size; ``data.source: criteo`` converts them to parquet in
parallel (cached, so the conversion is timed once and not inside the training wall time); then
one epoch of DLRM (dim 16: 26 tables, 2.01 GiB of fp32 weights, sharded over 2 workers by the
planner) with ``raytrain``'s train runner. Sizes alternate when ``--rounds`` > 1.

Measured per size: training examples/s (the epoch's steps), wall time of the run (start of Ray Train
to the end of the test evaluation), peak RSS of each worker (VmHWM of its process, sampled while it
runs) and of this driver process, and memory per rank from the plan. ``--full`` adds one epoch on a
set of Criteo Kaggle's size (45,840,617 training rows). The tables' size is measured from the run's checkpoint
(every table tensor's full size and dtype). With one size the scaling goals are printed as not measured (missed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVAL_ROWS = 250_000
DAY_ROWS = 1_000_000


def write_data(root: Path, train_rows: int, seed: int) -> Path:
    """train/day_*, validation/day_0, test/day_0 under root (kept between runs of the benchmark)."""
    from raytrain.data.criteo_synth import day_rows, write_day
    from raytrain.data.parallel import fan_out

    done = root / "_COMPLETE"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    days = max(1, -(-train_rows // DAY_ROWS))
    calls = [(str(root / "train" / f"day_{d}"), n, seed, d) for d, n in enumerate(day_rows(train_rows, days))]
    calls += [(str(root / "validation" / "day_0"), EVAL_ROWS, seed, 1000), (str(root / "test" / "day_0"), EVAL_ROWS,
                                                                             seed, 1001)]
    for sub in ("train", "validation", "test"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fan_out(write_day, calls, f"wrote {len(calls)} Criteo-format day file(s)")
    print(f"data: {train_rows:,} training rows written in {time.perf_counter() - t0:.0f}s", flush=True)
    done.write_text("")
    return root


def spec_for(data: Path, storage: Path, batch: int, dim: int):
    from raytrain.spec import parse_spec

    return parse_spec({
        "name": f"scale-{data.name}", "kind": "train", "storage": str(storage),
        "data": {"source": "criteo", "paths": {s: str(data / s / "day_*") for s in ("train", "validation", "test")}},
        "model": {"arch": "dlrm", "embedding_dim": dim, "dense_arch": [64, dim], "over_arch": [128, 64]},
        "train": {"workers": 2, "batch_size": batch, "eval_batch_size": 16384, "epochs": 1,
                  "optimizer": {"sparse": "rowwise_adagrad", "dense": "adam", "lr": 0.001, "sparse_lr": 0.05},
                  "ingest": {"shuffle_buffer_rows": 262_144, "prefetch_batches": 4},
                  "checkpoint": {"every_epochs": 1, "keep": 1}},
    })


class PeakRss:
    """Peak RSS (VmHWM) of the run's worker processes, found from their pid files, sampled until stopped."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.peak, self.stop = run_dir, {}, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.is_set():
            for f in (self.run_dir / "workers").glob("rank*.pid"):
                try:
                    pid = int(f.read_text())
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            kb = int(line.split()[1])
                            self.peak[f.stem] = max(self.peak.get(f.stem, 0), kb)
                except (OSError, ValueError):
                    continue
            self.stop.wait(0.5)

    def done(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return {k: v / 2**20 for k, v in sorted(self.peak.items())}  # GiB


def run_one(rows: int, args) -> dict:
    from raytrain.data import prepare
    from raytrain.runs import new_run_dir
    from raytrain.train.runner import run_train

    data = write_data(Path(args.work) / f"criteo-{rows}", rows, seed=0)
    spec = spec_for(data, Path(args.work) / "runs", args.batch, args.dim)
    t0 = time.perf_counter()
    prepare(spec.data)  # conversion (cached after the first run of this size)
    convert_s = time.perf_counter() - t0
    run_dir = new_run_dir(spec)
    rss = PeakRss(run_dir)
    t0 = time.perf_counter()
    summary = run_train(spec, run_dir=run_dir)
    wall = time.perf_counter() - t0
    peaks = rss.done()
    epoch = json.loads((run_dir / "metrics" / "epoch_0001.json").read_text())
    plan = (run_dir / "plan.txt").read_text()
    return {"rows": rows, "examples_per_s": epoch["train_examples_per_s"], "train_s": epoch["train_seconds"],
            "table_gib": table_bytes(summary["checkpoint"]) / 2**30,
            "wall_s": wall, "prepare_s": convert_s, "test_auc": summary.get("test_auc"),
            "worker_peak_gib": peaks, "driver_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "plan": plan}


def table_bytes(checkpoint: str) -> int:
    """The embedding tables the run built, as its checkpoint holds them (DCP metadata: every table's full size and
    dtype), not as the spec says they should be."""
    import torch

    from raytrain.train.checkpoint import read_metadata

    total = 0
    for key, meta in read_metadata(checkpoint).state_dict_metadata.items():
        if key.startswith("model.") and "embedding_bags" in key and key.endswith(".weight") and hasattr(meta, "size"):
            total += math.prod(meta.size) * torch.empty((), dtype=meta.properties.dtype).element_size()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000000,8000000")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every size, alternating (the spread)")
    p.add_argument("--full", action="store_true", help="also one epoch on Criteo Kaggle's size (45,840,617 rows)")
    p.add_argument("--work", default="/tmp/raytrain-scale")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=16)
    args = p.parse_args()
    os.environ.setdefault("RAYTRAIN_CACHE", str(Path(args.work) / "cache"))
    import ray

    from raytrain.data.criteo import KAGGLE_CARDINALITIES, KAGGLE_ROWS
    from raytrain.train.resources import RUNTIME_ENV

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True, runtime_env=RUNTIME_ENV)
    print(f"model: DLRM dim {args.dim}, 26 tables, {sum(KAGGLE_CARDINALITIES):,} rows configured")
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, list[dict]] = {n: [] for n in sizes}
    for _ in range(args.rounds):
        for n in sizes:
            results[n].append(run_one(n, args))
            r = results[n][-1]
            print(f"RESULT rows={n:,} examples/s={r['examples_per_s']:,.0f} train_s={r['train_s']:.0f} "
                  f"wall_s={r['wall_s']:.0f} test_auc={r['test_auc']:.4f} workers_peak_gib="
                  f"{json.dumps({k: round(v, 2) for k, v in r['worker_peak_gib'].items()})} "
                  f"driver_peak_gib={r['driver_peak_gib']:.2f}", flush=True)
    print("\nplan (last run):\n" + results[sizes[-1]][-1]["plan"])
    print(f"{'rows':>12} {'examples/s':>11} {'train s':>8} {'wall s':>7} {'worker peak GiB':>16} {'driver GiB':>10} "
          f"{'test AUC':>8}")
    best = {}
    for n in sizes:
        rs = results[n]
        ex = max(r["examples_per_s"] for r in rs)
        wall = min(r["wall_s"] for r in rs)
        peak = max(max(r["worker_peak_gib"].values()) for r in rs)
        best[n] = (ex, wall, peak)
        print(f"{n:>12,} {ex:>11,.0f} {rs[-1]['train_s']:>8.0f} {wall:>7.0f} {peak:>16.2f} "
              f"{max(r['driver_peak_gib'] for r in rs):>10.2f} {rs[-1]['test_auc']:>8.4f}")
        print(f"{'':>12} spread over {len(rs)} round(s): examples/s {min(r['examples_per_s'] for r in rs):,.0f}-{ex:,.0f}, "
              f"wall s {wall:.0f}-{max(r['wall_s'] for r in rs):.0f}, worker peak GiB "
              f"{min(max(r['worker_peak_gib'].values()) for r in rs):.2f}-{peak:.2f}")
    table_gib = min(r["table_gib"] for rs in results.values() for r in rs)
    full = None
    if args.full:
        full = run_one(KAGGLE_ROWS, args)
        print(f"full Kaggle-size epoch: {full['examples_per_s']:,.0f} examples/s, wall {full['wall_s']:.0f}s, "
              f"test AUC {full['test_auc']:.4f}, worker peaks {full['worker_peak_gib']}")
    small, big = min(sizes), max(sizes)
    if small == big:  # a size compared with itself proves nothing: those goals are not measured, so not met
        print("one size given: the scaling goals need two (--sizes SMALL,BIG)")
        for name, target in (("flat_worker_memory", "<=1.15"), ("steady_throughput", ">=0.90"),
                             ("wall_time_ratio", "<=1.1x_rows")):
            print(f"GOAL {name} not_measured {target} missed")
    else:
        mem = best[big][2] / best[small][2]
        speed = best[big][0] / best[small][0]
        wall = best[big][1] / best[small][1]
        limit = 1.1 * big / small
        print(f"GOAL flat_worker_memory {mem:.3f} <=1.15 {'met' if mem <= 1.15 else 'missed'}")
        print(f"GOAL steady_throughput {speed:.3f} >=0.90 {'met' if speed >= 0.90 else 'missed'}")
        print(f"GOAL wall_time_ratio {wall:.2f} <={limit:.1f} {'met' if wall <= limit else 'missed'}")
    print(f"GOAL embedding_tables_gib {table_gib:.2f} >=2.00 {'met' if table_gib >= 2.0 else 'missed'}")
    if full is not None:
        peak = max(full["worker_peak_gib"].values())
        print(f"GOAL full_kaggle_worker_peak_gib {peak:.2f} <4.00 {'met' if peak < 4.0 else 'missed'}")


if __name__ == "__main__":
    main()
