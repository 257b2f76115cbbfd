"""Gradient averaging on one machine: gloo's all-reduce vs raytrain's shared-memory exchange.

    python benchmarks/allreduce.py [--rounds 2] [--epochs 4]

Part 1, the collective alone: 2 processes (torch.multiprocessing, 1 thread each) average tensors of
4 bytes to 1.8 MB (the demo model's replicated parameters: 447k floats) with ``dist.all_reduce`` over gloo
and with ``ShmAllReduce.average_`` (raytrain.train.shm_allreduce); ms per call, 200 calls after 20 warm-up.

Part 2, in training: the demo job's model (jobs/train_ml100k.yaml) sharded as raytrain shards it
(``shard_model``), 2 processes x 1 thread, each on its half of the training split in prebuilt batches (no
Ray, no data loading), with ``train.allreduce`` gloo and auto (shared memory), alternating ``--rounds``
times; examples/s of the best epoch after the first, and the weights after training (they must be equal).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZES = [1, 1_000, 100_000, 446_817]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)


def collective_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from raytrain.train.shm_allreduce import ShmAllReduce

    _init(rank, port)
    shm = ShmAllReduce.create(None, max(SIZES))
    rows = []
    for n in SIZES:
        t = torch.ones(n)
        row = {"numel": n}
        for name, fn in (("gloo", dist.all_reduce), ("shm", shm.average_)):
            for _ in range(20):
                fn(t)
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(200):
                fn(t)
            row[name] = (time.perf_counter() - t0) / 200 * 1e3
        rows.append(row)
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.destroy_process_group()


def training_worker(rank: int, port: int, allreduce: str, epochs: int, out: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch.distributed as dist

    from raytrain.data import prepare
    from raytrain.data.batches import Columns
    from raytrain.spec import load_spec
    from raytrain.train.distributed import shard_model, train_step

    _init(rank, port)
    spec = load_spec(ROOT / "jobs" / "train_ml100k.yaml", [f"train.allreduce={allreduce}"])
    prepared = prepare(spec.data)
    table = pq.read_table(prepared.paths["train"][0])
    cols = Columns.from_arrow(prepared.schema, table.take(pa.array(np.arange(rank, table.num_rows, 2))), "train")
    sharded = shard_model(spec, prepared.schema, torch.device("cpu"), local_world_size=2)
    assert (sharded.allreduce is not None) == (allreduce == "auto")
    b = spec.train.batch_size // 2
    batches = [cols.batch(torch.arange(s * b, (s + 1) * b)) for s in range(len(cols) // b)]
    rates = []
    for _ in range(epochs):
        dist.barrier()
        t0 = time.perf_counter()
        for batch in batches:
            train_step(sharded, batch)
        dist.barrier()
        rates.append(len(batches) * b * 2 / (time.perf_counter() - t0))
    digest = hashlib.sha256()
    for key, value in sorted(sharded.module.state_dict().items()):
        if hasattr(value, "local_shards"):  # a sharded table: this rank's part
            value = torch.cat([s.tensor.flatten() for s in value.local_shards()])
        digest.update(key.encode() + value.detach().contiguous().numpy().tobytes())
    if rank == 0:
        Path(out).write_text(json.dumps({"rate": max(rates[1:]), "weights": digest.hexdigest()}))
    dist.destroy_process_group()


def _spawn(fn, *args) -> dict:
    out = Path(f"/tmp/raytrain-allreduce-{os.getpid()}-{time.time_ns()}.json")
    mp.spawn(fn, args=(_port(), *args, str(out)), nprocs=2)
    result = json.loads(out.read_text())
    out.unlink()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    rows = _spawn(collective_worker)
    for row in rows:
        print(f"all-reduce of {row['numel'] * 4:>9,} bytes, 2 processes: gloo {row['gloo']:.3f} ms, shared memory "
              f"{row['shm']:.3f} ms ({row['gloo'] / row['shm']:.1f}x)", flush=True)
    rates: dict[str, list[float]] = {"gloo": [], "auto": []}
    weights = set()
    for r in range(args.rounds):
        for arm in ("gloo", "auto"):
            res = _spawn(training_worker, arm, args.epochs)
            rates[arm].append(res["rate"])
            weights.add(res["weights"])
            print(f"ROUND {r + 1} demo model, 2 processes, train.allreduce={arm}: {res['rate']:,.0f} examples/s "
                  f"(best epoch after the first)", flush=True)
    big = rows[-1]["gloo"] / rows[-1]["shm"]
    step = max(rates["auto"]) / max(rates["gloo"])
    print(f"\nshared memory / gloo: {step:.2f}x examples/s (best of each: {max(rates['auto']):,.0f} vs "
          f"{max(rates['gloo']):,.0f}); final weights {'identical' if len(weights) == 1 else 'DIFFERENT'} "
          f"across {2 * args.rounds} runs")
    print(f"GOAL shm_vs_gloo_allreduce_1_8mb {big:.1f} >=5.0 {'met' if big >= 5 else 'missed'}")
    print(f"GOAL shm_vs_gloo_2_worker_examples_per_s {step:.2f} >=1.20 {'met' if step >= 1.2 else 'missed'}")
    print(f"GOAL same_weights_gloo_and_shm {len(weights)} ==1 {'met' if len(weights) == 1 else 'missed'}")


if __name__ == "__main__":
    main()
