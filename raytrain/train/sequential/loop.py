"""The Ray Train worker of a sequential model's pretraining: the item table sharded by TorchRec's planner, the
encoder data-parallel, next-item batches split over the ranks, the whole-catalogue evaluation merged across ranks,
checkpoints every epoch (resumed after a failure, like the CTR loop's)."""

from __future__ import annotations

import json
import time

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ...data.sequences import Sequences, leave_one_out, subset
from ...log import get_logger
from ...models.sequential import KEYS, SequentialModel
from ...sharding.planner import make_plan, make_topology, sharders
from ...spec.job import JobSpec
from ...storage import Store
from ...tracking import epoch_scalars
from ..distributed import SPARSE_OPTIMIZERS, ShardedModel, _sparse_kwargs, dense_optimizer_factory, local_allreduce
from ..worker_checkpoints import restore, save_and_report
from .load import load_sequences
from .ranking import KS, eval_batches, next_item_loss, rank_sums, train_batches, trainable_users
from .teacher import SequenceTeacher
from .text_init import init_from_text

log = get_logger(__name__)


def shard(spec: JobSpec, num_items: int, pg, local_world_size: int | None = None) -> ShardedModel:
    model = SequentialModel(spec.model.arch, num_items, spec.model.embedding_dim, spec.model.sequence, device="meta")
    opt = spec.train.optimizer
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[opt.sparse], model.item_table.parameters(), _sparse_kwargs(opt))
    topology = make_topology(dist.get_world_size(pg), "cpu")
    plan = make_plan(model, topology, {}, pg)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=sharders())
    dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    optimizer = CombinedOptimizer([dmp.fused_optimizer, KeyedOptimizerWrapper(dense, dense_optimizer_factory(opt))])
    return ShardedModel(dmp, plan, optimizer, local_allreduce(dmp, spec, torch.device("cpu"), pg, local_world_size))


def _chunks(users: np.ndarray, world: int, rank: int, per_rank: int) -> list[np.ndarray]:
    """This rank's share of ``users`` in batches; every rank gets the same number of batches (their collectives
    pair up), none of them empty."""
    parts = np.array_split(users, world)
    steps = max(1, min(-(-max(len(p) for p in parts) // per_rank), min(len(p) for p in parts)))
    return np.array_split(parts[rank], steps)


@torch.no_grad()
def all_item_embeddings(dmp, num_items: int, world: int, rank: int) -> torch.Tensor:
    """[num_items, d]: each rank looks up every world-th id through the sharded table, then all ranks gather."""
    per = -(-num_items // world)
    ids = torch.arange(rank, per * world, world)
    ids = torch.where(ids < num_items, ids, torch.zeros_like(ids))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=KEYS, values=ids, lengths=torch.tensor([0, per, 0]))
    mine = torch.nn.functional.normalize(dmp.module.item_table(kjt)["target"].values(), dim=-1)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    return torch.stack(parts, dim=1).reshape(per * world, -1)[:num_items]


@torch.no_grad()
def evaluate(sharded: ShardedModel, history: Sequences, targets: np.ndarray, world: int, rank: int,
             users_per_batch: int, max_len: int, num_items: int) -> dict[str, float]:
    dmp = sharded.module
    dmp.eval()
    items = all_item_embeddings(dmp, num_items, world, rank)
    chunks = _chunks(np.arange(history.users), world, rank, users_per_batch)
    vectors, users = [], []
    for chunk, batch in eval_batches(history, users_per_batch, max_len, chunks):
        user, _ = dmp(*batch.inputs())
        vectors.append(user[batch.kjt["history"].offsets()[1:] - 1])
        users.append(chunk)
    mine = np.concatenate(users)
    sums = rank_sums(torch.cat(vectors), items, targets[mine], subset(history, mine))
    keys = sorted(sums)
    total = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(total)
    n = max(float(total[keys.index("users")]), 1.0)
    return {k: float(v) / n for k, v in zip(keys, total.tolist()) if k != "users"}


def sequential_loop(config: dict) -> None:
    spec = JobSpec.model_validate(config["spec"])
    store = Store(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(spec.train.seed)
    if spec.train.threads_per_worker:
        torch.set_num_threads(spec.train.threads_per_worker)
    seqs = load_sequences(config["sequences"])
    split = leave_one_out(seqs)
    sharded = shard(spec, seqs.num_items, dist.GroupMember.WORLD, ctx.get_local_world_size())
    teacher = SequenceTeacher.load(config.get("teacher"))
    start = 0
    restored = ray.train.get_checkpoint()
    if restored is None:  # a fresh run; a resumed one continues from its own weights
        init_from_text(sharded.module, config["sequences"], rank)
    if restored is not None:
        info, where = restore(sharded, restored, store)
        start = int(info["epoch"]) + 1
        if rank == 0:
            log.info(f"resumed from {where}: epoch {start + 1} next")
    per_rank, cfg, ss = spec.train.batch_size // world, spec.model.sequence, spec.train.sampled_softmax
    usable = trainable_users(split.train)
    for epoch in range(start, spec.train.epochs):
        rng = np.random.default_rng([spec.train.seed, epoch, rank])
        chunks = _chunks(np.random.default_rng([spec.train.seed, epoch]).permutation(usable), world, rank, per_rank)
        sharded.module.train()
        t0, losses, examples = time.perf_counter(), [], 0
        for batch in train_batches(split.train, per_rank, cfg.max_len, ss.negatives, rng, ss.in_batch_negatives, chunks):
            loss, logits = next_item_loss(sharded.module, batch, ss.temperature)
            if teacher is not None:  # distillation: the teacher's distribution over the same candidates
                loss = teacher.mix(loss, logits, batch)
            sharded.optimizer.zero_grad()
            loss.backward()
            sharded.optimizer.step()
            losses.append(loss.item())
            examples += len(batch.targets)
        seconds = time.perf_counter() - t0
        stats = torch.tensor([float(np.sum(losses)), float(len(losses)), float(examples)], dtype=torch.float64)
        dist.all_reduce(stats)
        loss_sum, steps, total = stats.tolist()
        metrics: dict = {"epoch": epoch + 1, "train_loss": loss_sum / max(steps, 1.0),
                         "train_examples_per_s": total / max(seconds, 1e-9)}
        for which, history, targets in (("val", split.validation_history, split.validation_target),
                                        ("test", split.test_history, split.test_target)):
            got = evaluate(sharded, history, targets, world, rank, spec.train.eval_batch_size, cfg.max_len,
                           seqs.num_items)
            metrics.update({f"{which}_{k}": v for k, v in got.items()})
        if rank == 0:
            store.write_text(f"metrics/epoch_{epoch + 1:04d}.json", json.dumps(metrics, indent=2))
            epoch_scalars(spec, store, metrics)
            log.info(f"epoch {epoch + 1}/{spec.train.epochs}: loss {metrics['train_loss']:.4f} "
                     + " ".join(f"val_{k} {metrics[f'val_{k}']:.4f}" for k in (f"ndcg@{KS[0]}", f"hr@{KS[0]}", "mrr"))
                     + f" ({seconds:.1f}s, {metrics['train_examples_per_s']:,.0f} next items/s)")
        save_and_report(spec, store, sharded, f"epoch_{epoch + 1:04d}", epoch, metrics)
