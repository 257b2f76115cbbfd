"""The hand-written TorchRec baseline the training benchmarks compare raytrain with.

It reads a prepared parquet split and its schema (JSON), builds batches with numpy, builds the demo's DCN-v2 from
TorchRec's own ``DLRM_DCN``, shards it with TorchRec's planner (every table replicated, as raytrain places the demo's
small tables on CPU), averages gradients with DDP over gloo and trains: what an engineer would write without a
framework. It imports nothing from raytrain (tests/unit/test_benchmark_verdicts.py checks): a baseline built from the
code under test would measure that code against itself.

``cfg`` is a plain dict of the model and optimizer numbers (``model_config`` reads them from a job spec file).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import yaml


def model_config(spec_file: str | Path) -> dict:
    """The numbers the baseline needs, read from a job spec's YAML (its defaults where the file is silent)."""
    doc = yaml.safe_load(Path(spec_file).read_text())
    m, t = doc.get("model", {}), doc.get("train", {})
    o, dcn = t.get("optimizer", {}), m.get("dcn", {})
    return {"embedding_dim": m.get("embedding_dim", 64), "dense_arch": m.get("dense_arch", [32]),
            "over_arch": m.get("over_arch", [128, 64]), "dcn_layers": dcn.get("num_layers", 2),
            "low_rank_dim": dcn.get("low_rank_dim", 16), "lr": o.get("lr", 1e-3), "sparse_lr": o.get("sparse_lr", 0.05),
            "eps": o.get("eps", 1e-8), "batch_size": t.get("batch_size", 512)}


class Split:
    """A split's columns as numpy arrays: dense [N, F], label [N], and per sparse feature (values, offsets)."""

    def __init__(self, table: pa.Table, schema: dict):
        self.names = [f["name"] for f in schema["sparse"]]
        self.dense = np.stack([table.column(n).to_numpy().astype(np.float32) for n in schema["dense"]], axis=1)
        self.label = table.column(schema["label"]).to_numpy().astype(np.float32)
        self.lists = []
        for f in schema["sparse"]:
            col = table.column(f["name"]).combine_chunks()
            if f["multi_valued"]:
                values, offsets = col.values.to_numpy(), col.offsets.to_numpy()
            else:
                values, offsets = col.to_numpy(), np.arange(len(col) + 1)
            self.lists.append((values.astype(np.int64), offsets.astype(np.int64)))

    def __len__(self) -> int:
        return len(self.label)

    def batch(self, rows: np.ndarray):
        """(dense, KeyedJaggedTensor, label) of the given rows."""
        from torchrec import KeyedJaggedTensor

        values, lengths = [], []
        for v, off in self.lists:
            start, n = off[rows], off[rows + 1] - off[rows]
            shift = np.repeat(start - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
            values.append(v[shift + np.arange(n.sum())])
            lengths.append(n)
        kjt = KeyedJaggedTensor.from_lengths_sync(self.names, torch.from_numpy(np.concatenate(values)),
                                                  torch.from_numpy(np.concatenate(lengths)))
        return torch.from_numpy(self.dense[rows]), kjt, torch.from_numpy(self.label[rows])


def dcn(schema: dict, cfg: dict, device: str = "meta"):
    """TorchRec's DLRM_DCN over the schema's tables (mean pooling for lists, sum for single ids)."""
    from torchrec.models.dlrm import DLRM_DCN
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    d = cfg["embedding_dim"]
    ebc = EmbeddingBagCollection(device=torch.device(device), tables=[
        EmbeddingBagConfig(name=f"t_{f['name']}", embedding_dim=d, num_embeddings=f["cardinality"],
                           feature_names=[f["name"]], pooling=PoolingType.MEAN if f["multi_valued"] else PoolingType.SUM)
        for f in schema["sparse"]])
    return DLRM_DCN(ebc, len(schema["dense"]), [*cfg["dense_arch"], d], [*cfg["over_arch"], 1], cfg["dcn_layers"],
                    cfg["low_rank_dim"])


def sharded(schema: dict, cfg: dict, world: int):
    """(DistributedModelParallel, optimizer): every table replicated, row-wise Adagrad fused into the tables'
    backward, Adam for the dense weights. Needs an initialised process group."""
    import torch.distributed as dist
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingType
    from torchrec.optim import RowWiseAdagrad
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    torch.manual_seed(0)
    model = dcn(schema, cfg)
    apply_optimizer_in_backward(RowWiseAdagrad, model.sparse_arch.parameters(), {"lr": cfg["sparse_lr"], "eps": cfg["eps"]})
    replicated = {f"t_{f['name']}": ParameterConstraints(sharding_types=[ShardingType.DATA_PARALLEL.value])
                  for f in schema["sparse"]}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device="cpu", local_world_size=world),
                                       constraints=replicated)
    plan = planner.collective_plan(model, None, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda ps: torch.optim.Adam(ps, lr=cfg["lr"]))
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense])


def step(dmp, opt, batch) -> None:
    dense, kjt, label = batch
    loss = torch.nn.functional.binary_cross_entropy_with_logits(dmp(dense, kjt).reshape(-1), label)
    opt.zero_grad()
    loss.backward()
    opt.step()


def train_worker(rank: int, world: int, port: int, split_file: str, schema_file: str, cfg: dict, epochs: int,
                 out: str, t_launch: float) -> None:
    """One rank of the multi-process baseline (``torch.multiprocessing.spawn``): its share of the split's rows,
    batches of ``batch_size / world``, reshuffled each epoch; rank 0 writes each epoch's examples/s, the time from
    launch to the first step and the whole run's wall time."""
    import logging

    import pyarrow.parquet as pq
    import torch.distributed as dist

    logging.getLogger("torchrec").setLevel(logging.ERROR)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    schema = json.loads(Path(schema_file).read_text())
    table = pq.read_table(split_file)
    split = Split(table.take(pa.array(np.arange(rank, table.num_rows, world))), schema)
    dmp, opt = sharded(schema, cfg, world)
    b = cfg["batch_size"] // world
    steps = torch.tensor([len(split) // b])
    dist.all_reduce(steps, op=dist.ReduceOp.MIN)
    first_step, rates = time.time(), []
    for epoch in range(epochs):
        perm = np.random.default_rng(epoch * 7919 + rank).permutation(len(split))
        t0 = time.perf_counter()
        for s in range(int(steps)):
            step(dmp, opt, split.batch(perm[s * b:(s + 1) * b]))
        dist.barrier()
        rates.append(int(steps) * b * world / (time.perf_counter() - t0))
    if rank == 0:
        Path(out).write_text(json.dumps({"rates": rates, "startup_s": first_step - t_launch,
                                         "wall_s": time.time() - t_launch}))
    dist.destroy_process_group()
