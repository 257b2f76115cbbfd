"""How close raytrain trains to what this machine's cores can compute for the demo job's model.

    python benchmarks/compute_limit.py [--rounds 2] [--epochs 3] [--threads 2]

Arm "limit": the model of jobs/train_ml100k.yaml (DCN-v2: the same tables, pooling, bottom MLP,
low-rank cross layers and top MLP, built from TorchRec's plain modules with ``nn.EmbeddingBag``
tables) trained in ONE process with plain PyTorch on batches prebuilt in memory: no Ray, no
sharding, no input distribution, no data loading; Adam for dense weights, sparse Adagrad for the
tables; ``--threads`` intra-op threads (the machine's cores).

Arm "raytrain": ``raytrain run jobs/train_ml100k.yaml`` (2 Ray Train workers, TorchRec sharding over
gloo, streamed parquet input); its steady-state rate is the training examples/s of the epochs after
the first. The arms alternate, ``--rounds`` times; the best of each is compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPEC = ROOT / "jobs" / "train_ml100k.yaml"


class PlainDCN(nn.Module):
    """DLRM_DCN's computation with plain ``nn.EmbeddingBag`` tables (sparse gradients)."""

    def __init__(self, spec, schema):
        super().__init__()
        from torchrec.models.dlrm import DenseArch, InteractionDCNArch, OverArch
        from torchrec.modules.crossnet import LowRankCrossNet

        d = spec.model.embedding_dim
        self.names = [f.name for f in schema.sparse]
        self.tables = nn.ModuleList(
            nn.EmbeddingBag(f.cardinality, d, mode="mean" if f.multi_valued else "sum", sparse=True)
            for f in schema.sparse)
        self.dense_arch = DenseArch(len(schema.dense), [*spec.model.dense_arch, d])
        n = len(schema.sparse) + 1
        self.inter = InteractionDCNArch(len(schema.sparse), LowRankCrossNet(n * d, spec.model.dcn.num_layers,
                                                                           spec.model.dcn.low_rank_dim))
        self.over = OverArch(n * d, [*spec.model.over_arch, 1])

    def forward(self, dense, lists):
        emb = torch.stack([t(v, o) for t, (v, o) in zip(self.tables, lists)], dim=1)
        return self.over(self.inter(self.dense_arch(dense), emb)).reshape(-1)


def limit_rate(epochs: int, threads: int) -> float:
    """Examples/s of the plain single-process loop over the epochs after the first."""
    import pyarrow.parquet as pq

    from raytrain.data import prepare
    from raytrain.data.batches import Columns
    from raytrain.spec import load_spec

    torch.set_num_threads(threads)
    spec = load_spec(SPEC)
    prepared = prepare(spec.data)
    cols = Columns.from_arrow(prepared.schema, pq.read_table(prepared.paths["train"][0]), "train")
    torch.manual_seed(0)
    model = PlainDCN(spec, prepared.schema)
    opt_dense = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("tables")],
                                 lr=spec.train.optimizer.lr)
    opt_sparse = torch.optim.Adagrad(model.tables.parameters(), lr=spec.train.optimizer.sparse_lr)
    B = spec.train.batch_size
    batches = []  # prebuilt: (dense, [(values, offsets) per feature], label)
    perm = torch.randperm(len(cols))
    for s in range(len(cols) // B):
        b = cols.batch(perm[s * B:(s + 1) * B])
        per = b.sparse.to_dict()
        lists = [(per[n].values(), torch.cat([torch.zeros(1, dtype=torch.int64), per[n].lengths().cumsum(0)[:-1]]))
                 for n in model.names]
        batches.append((b.dense, lists, b.label))
    rates = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for dense, lists, label in batches:
            loss = nn.functional.binary_cross_entropy_with_logits(model(dense, lists), label)
            opt_dense.zero_grad()
            opt_sparse.zero_grad()
            loss.backward()
            opt_dense.step()
            opt_sparse.step()
        if epoch > 0:
            rates.append(len(batches) * B / (time.perf_counter() - t0))
    return max(rates)


def raytrain_rate(epochs: int, storage: str) -> tuple[float, dict]:
    from raytrain.spec import load_spec
    from raytrain.train.runner import run_train

    spec = load_spec(SPEC, [f"storage={storage}", f"train.epochs={epochs}"])
    summary = run_train(spec)
    rows = [json.loads(f.read_text()) for f in sorted((Path(summary["run_dir"]) / "metrics").glob("epoch_*.json"))]
    return max(r["train_examples_per_s"] for r in rows[1:]), summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--storage", default="/tmp/raytrain-compute-limit")
    args = p.parse_args()
    import ray

    from raytrain.train.runner import RUNTIME_ENV

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True, runtime_env=RUNTIME_ENV)
    limits, ours = [], []
    for r in range(args.rounds):
        limits.append(limit_rate(args.epochs, args.threads))
        print(f"ROUND {r + 1} limit (plain PyTorch, 1 process, {args.threads} threads): {limits[-1]:,.0f} examples/s",
              flush=True)
        rate, summary = raytrain_rate(args.epochs, args.storage)
        ours.append(rate)
        print(f"ROUND {r + 1} raytrain (2 workers, demo job): {rate:,.0f} examples/s, test AUC "
              f"{summary['test_auc']:.4f}", flush=True)
    ratio = max(ours) / max(limits)
    print(f"\nlimit {max(limits):,.0f} examples/s (rounds {', '.join(f'{x:,.0f}' for x in limits)}); raytrain "
          f"{max(ours):,.0f} (rounds {', '.join(f'{x:,.0f}' for x in ours)}); median ratio "
          f"{statistics.median(o / m for o, m in zip(ours, limits)):.3f}")
    print(f"GOAL raytrain_vs_compute_limit {ratio:.3f} >=0.80 {'met' if ratio >= 0.8 else 'missed'}")


if __name__ == "__main__":
    main()
