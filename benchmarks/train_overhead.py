"""raytrain vs a hand-written TorchRec loop: the same model, data and worker count, alternating.

    python benchmarks/train_overhead.py [--rounds 2] [--epochs 3] [--workers 2]

Arm A: `raytrain run` machinery (Ray Train workers, streamed parquet input, checkpoints each epoch).
Arm B: a TorchRec DistributedModelParallel loop written by hand, launched with
torch.multiprocessing over gloo, no Ray; it builds DLRM_DCN / the planner / optimizers itself and
feeds batches from its half of the same training parquet file.

Both use the same batch builder (raytrain.data.batches.Columns) and average gradients the same way
(through shared memory, raytrain.train.shm_allreduce, as raytrain does when every worker is on one
machine), so the ratio isolates what the framework adds around the training steps. Throughput is
training examples/s over the epochs after the first (warm); start-up is the time from launch to the
first training step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = ROOT / "jobs" / "train_ml100k.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def handwritten_worker(rank: int, world: int, port: int, epochs: int, out: str, t_launch: float) -> None:
    import logging

    import pyarrow.parquet as pq
    import torch.distributed as dist
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.models.dlrm import DLRM_DCN
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.optim import RowWiseAdagrad
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from raytrain.data import prepare
    from raytrain.data.batches import Columns
    from raytrain.sharding import build_constraints
    from raytrain.spec import load_spec

    logging.getLogger("torchrec").setLevel(logging.ERROR)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    spec = load_spec(SPEC)
    prepared = prepare(spec.data)
    schema = prepared.schema
    table = pq.read_table(prepared.paths["train"][0])
    import numpy as np
    import pyarrow as pa

    table = table.take(pa.array(np.arange(rank, table.num_rows, world)))
    cols = Columns.from_arrow(schema, table, "train")

    m, o = spec.model, spec.train.optimizer
    ebc = EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name=f"t_{f.name}", embedding_dim=m.embedding_dim, num_embeddings=f.cardinality,
                                   feature_names=[f.name],
                                   pooling=PoolingType.MEAN if f.multi_valued else PoolingType.SUM)
                for f in schema.sparse],
        device=torch.device("meta"),
    )
    torch.manual_seed(0)
    model = DLRM_DCN(ebc, len(schema.dense), [*m.dense_arch, m.embedding_dim], [*m.over_arch, 1],
                     m.dcn.num_layers, m.dcn.low_rank_dim)
    apply_optimizer_in_backward(RowWiseAdagrad, model.sparse_arch.parameters(), {"lr": o.sparse_lr, "eps": o.eps})
    # the sharding types raytrain gives each table (the spec's pins; on CPU small auto tables replicated)
    constraints = build_constraints(schema, spec.train.sharding, m.embedding_dim, "cpu")
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device="cpu"), constraints=constraints)
    plan = planner.collective_plan(model, None, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
    if world > 1:  # gradients averaged the way raytrain averages them on one machine (a DDP comm hook)
        from raytrain.train.shm_allreduce import use_shared_memory

        assert use_shared_memory(dmp) is not None
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda ps: torch.optim.Adam(ps, lr=o.lr))
    opt = CombinedOptimizer([dmp.fused_optimizer, dense])
    b = spec.train.batch_size // world
    steps = torch.tensor([len(cols) // b])
    dist.all_reduce(steps, op=dist.ReduceOp.MIN)
    steps = int(steps)
    first_step = time.time()
    rates = []
    for epoch in range(epochs):
        perm = torch.randperm(len(cols), generator=torch.Generator().manual_seed(epoch * 7919 + rank))
        t0 = time.perf_counter()
        for s in range(steps):
            batch = cols.batch(perm[s * b:(s + 1) * b])
            logits = dmp(batch.dense, batch.sparse).reshape(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.label)
            opt.zero_grad()
            loss.backward()
            opt.step()
        dist.barrier()
        rates.append(steps * b * world / (time.perf_counter() - t0))
    if rank == 0:
        Path(out).write_text(json.dumps({"rates": rates, "startup_s": first_step - t_launch}))
    dist.destroy_process_group()


def run_handwritten(world: int, epochs: int, tmp: Path) -> dict:
    out = tmp / f"hand-{time.time_ns()}.json"
    t_launch = time.time()
    mp.spawn(handwritten_worker, args=(world, _free_port(), epochs, str(out), t_launch), nprocs=world)
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
    results: dict[str, list[dict]] = {"raytrain": [], "handwritten": []}
    for r in range(args.rounds):
        for name, fn in (("raytrain", run_raytrain), ("handwritten", run_handwritten)):
            res = fn(args.workers, args.epochs, tmp)
            results[name].append(res)
            warm = res["rates"][1:] or res["rates"]
            whole = f"  whole run {res['wall_s']:.1f}s (with validation, checkpoints, test)" if "wall_s" in res else ""
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
