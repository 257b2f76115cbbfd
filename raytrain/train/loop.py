"""The Ray Train worker loop: shard, (resume), train epochs, evaluate, checkpoint, test."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray.train
import ray.util
import torch
import torch.distributed as dist

from .. import console
from ..data import PreparedData
from ..log import get_logger
from ..sharding.planner import describe_plan, format_plan, memory_per_rank, summarize_plan
from ..spec.job import JobSpec
from ..storage import Store
from ..tracking import epoch_scalars
from .distributed import shard_model
from .id_dropout import drop_ids
from .loaders import EvalData, TrainData
from .metrics import evaluate
from .steps import Steps
from .worker_checkpoints import restore, resume_point, save_and_report, test_at_best

log = get_logger(__name__)


def _write_json(store: Store, rel: str, obj) -> None:
    store.write_text(rel, json.dumps(obj, indent=2))


def _device(spec: JobSpec) -> torch.device:
    """The worker's device: Ray Train's own choice of GPU for this worker on a CUDA run."""
    if spec.train.device == "cuda":
        from ray.train.torch import get_device

        device = get_device()
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def set_epoch_lr(optimizer, base_lrs: list[float], decay: float, epoch: int) -> None:
    """Learning rates of an epoch: ``base * decay ** epoch`` (0-based), from the epoch alone, so a resumed
    run continues the schedule."""
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * decay**epoch
    # a fused (FBGEMM) table copies its group's lr into the kernel in zero_grad / step, and its forward
    # captures that value for the update it applies in backward: set it now, before the epoch's first forward
    optimizer.zero_grad()


def _train_epoch(steps: Steps, data: TrainData, epoch: int, rank: int, epochs: int, start_step: int = 0,
                 after_step=None, dropout: dict[str, float] | None = None, seed: int = 0) -> dict:
    """One epoch from ``start_step`` (a resumed epoch); ``after_step(step, batch)`` runs after each optimizer step
    (1-based step numbers of the epoch, the batch that step trained) and may save a mid-epoch checkpoint."""
    steps.sharded.module.train()
    total_loss = torch.zeros((), dtype=torch.float64)
    t0 = time.perf_counter()
    every = max(1, data.steps // 5)
    step = start_step
    batches = data.epoch(epoch, start_step)
    if dropout:
        batches = drop_ids(batches, dropout, seed, epoch, rank, start_step)
    for loss, batch in steps.epoch(batches):
        step += 1
        total_loss += loss.detach().double().cpu()
        if after_step is not None:
            after_step(step, batch)
        done = step - start_step
        if rank == 0 and done % every == 0:
            rate = done * data.local_batch * data.world / (time.perf_counter() - t0)
            console.progress(epoch + 1, epochs, step, data.steps, loss.item(), rate)
    if step != data.steps:
        raise RuntimeError(f"epoch {epoch + 1}: {step - start_step} steps ran from step {start_step}, the epoch has "
                           f"{data.steps}")
    ran = data.steps - start_step
    if dist.get_world_size() > 1:
        dist.all_reduce(total_loss)
        total_loss /= dist.get_world_size()
    seconds = time.perf_counter() - t0
    examples = ran * data.local_batch * data.world
    return {"train_loss": float(total_loss) / max(1, ran), "train_seconds": seconds,
            "train_examples_per_s": examples / seconds if seconds > 0 else 0.0}


def process_start() -> float:
    """When this process began (seconds since the epoch, whole-second precision: Linux's boot time), from /proc;
    0 where there is no /proc."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


def train_loop_per_worker(config: dict) -> None:
    # start-up, by phase (benchmarks/startup.py); a process older than its run was a warm one (raytrain.warm_workers)
    stamps = {"worker_start": time.time(), "process_start": process_start()}
    spec = JobSpec.model_validate(config["spec"])
    prepared = PreparedData.from_dict(config["data"])
    store = Store(config["run_dir"])  # a local path or a pyarrow.fs URI (raytrain.storage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(spec.train.threads_per_worker or 1)
    # the pid lets operators (and the chaos test) find and kill a worker
    store.write_text(f"workers/rank{rank}.pid", str(os.getpid()))
    pg = ray.util.get_current_placement_group()
    if rank == 0 and pg is not None:
        # the worker group's placement group: a Tune trial that a scheduler stops leaves it behind (ray issue
        # 54305), and raytrain's tune callback removes it from this record when the trial ends
        store.append_text("workers/placement_groups.txt", pg.id.hex() + "\n")

    device = _device(spec)
    sharded = shard_model(spec, prepared.schema, device, local_world_size=ctx.get_local_world_size())
    stamps["sharded"] = time.time()
    base_lrs = [g["lr"] for g in sharded.optimizer.param_groups]  # before a checkpoint's state can change them
    if rank == 0:
        rows = describe_plan(sharded.plan, world)
        per_rank = memory_per_rank(rows, prepared.schema, spec.model.embedding_dim, spec.train.optimizer.sparse, world)
        text = format_plan(rows, per_rank, prepared.schema, spec.model.embedding_dim)
        if world > 1:
            text += "\ngradients averaged " + ("through shared memory (every worker on this machine)"
                                             if sharded.allreduce else f"by {dist.get_backend()}")
        store.write_text("plan.txt", text + "\n")
        print("sharding plan:\n" + text, flush=True)  # the whole plan: in plan.txt and the run's logs/ray.log
        log.info(f"sharding plan: {summarize_plan(rows, per_rank)} (plan.txt)")

    start_epoch, start_step = 0, 0
    last_metrics: dict = {}
    restored = ray.train.get_checkpoint()
    init = config.get("init_checkpoint")
    if restored is None and init:  # a run that starts from another run's weights (PBT exploit)
        restored = ray.train.Checkpoint(init)
    train = TrainData(prepared, spec.train.batch_size, rank, world, spec.train.seed,
                      buffer_rows=spec.train.ingest.shuffle_buffer_rows, prefetch=spec.train.prefetch_depth())
    if restored is None and spec.train.init_from is not None:  # a fresh run warm-started from another run
        from .warm_start import warm_start

        warm_start(sharded.module, spec.train.init_from, rank)
    if restored is not None:
        info, loaded_from = restore(sharded, restored, store)
        start_epoch, start_step = resume_point(info, train, world)
        last_metrics = dict(info.get("metrics", {}))
        if rank == 0:
            where = f"epoch {start_epoch + 1} step {start_step}" if start_step else f"epoch {start_epoch + 1}"
            log.info(f"resumed from checkpoint {Path(loaded_from.split('?')[0]).name}: continuing at {where}")
            store.append_text("resumes.jsonl", json.dumps({"from_epoch": info["epoch"] + 1,
                                                          "from_step": start_step, "checkpoint": loaded_from,
                                                          "time": time.time()}) + "\n")

    val = EvalData(prepared, "validation", spec.train.eval_batch_size, rank, world,
                   prefetch=min(2, spec.train.prefetch_depth()), buffer_rows=spec.train.ingest.shuffle_buffer_rows)
    if rank == 0:
        log.info(f"{world} workers, {train.steps} steps/epoch of {spec.train.batch_size} examples, "
             f"{val.total_rows:,} validation rows")

    epochs = spec.train.epochs
    steps = Steps(sharded, device, spec.train.pipelined())  # one pipeline (if any) for the whole run
    node_id = ray.get_runtime_context().get_node_id()  # rank 0's node: where a tune trial ran, in its leaderboard
    for epoch in range(start_epoch, epochs):
        set_epoch_lr(sharded.optimizer, base_lrs, spec.train.lr_decay, epoch)
        every = spec.train.checkpoint.every_steps
        audit = _Audit(store, rank, epoch) if spec.train.audit_examples else None

        def after_step(step: int, batch, epoch: int = epoch, audit=audit) -> None:
            if "first_step" not in stamps:
                stamps["first_step"] = time.time()
                if rank == 0:
                    _write_json(store, "workers/startup.json", stamps)
            if audit is not None and batch is not None:
                audit.record(step, batch)
            if every and step % every == 0 and step < train.steps:
                if audit is not None:
                    audit.flush()  # the steps this checkpoint covers are on record before it exists
                steps.detach()  # the pipeline's next step re-attaches it
                # mid-epoch: the data position is (epoch, step); its score is -inf so the best-by-val_auc
                # checkpoints kept are epoch ends, and Ray keeps this one as the latest for resuming
                save_and_report(spec, store, sharded, f"mid_epoch_{epoch + 1:04d}_step_{step:07d}", epoch,
                      {"epoch": epoch, "step": step, "val_auc": float("-inf"), "mid_epoch": True}, step=step,
                      data_order=train.order)

        stats = _train_epoch(steps, train, epoch, rank, epochs, start_step if epoch == start_epoch else 0, after_step,
                             spec.train.id_dropout, spec.train.seed)
        if audit is not None:
            audit.close()
        steps.detach()  # evaluation, the checkpoint and the test call the module outside the pipeline
        m = evaluate(sharded.module, val, device)
        metrics = {"epoch": epoch + 1, **stats, "val_auc": m["auc"], "val_logloss": m["logloss"],
                   "epoch_end_time": time.time(), "node_id": node_id}
        if rank == 0:
            log.info(f"epoch {epoch + 1}/{epochs}: train_loss {stats['train_loss']:.4f} val_auc {m['auc']:.4f} "
                 f"val_logloss {m['logloss']:.4f} ({stats['train_seconds']:.1f}s, "
                 f"{stats['train_examples_per_s']:,.0f} examples/s)")
            _write_json(store, f"metrics/epoch_{epoch + 1:04d}.json", metrics)
            epoch_scalars(spec, store, metrics)
        last = epoch == epochs - 1
        # test metrics ride in the last epoch's report: a scheduler whose max_t is this epoch (ASHA, HyperBand)
        # stops the trial on this report, so a separate test report after it would never be made
        test = (lambda m=metrics: test_at_best(spec, prepared, sharded, device, rank, world, store, m)) if last \
            else None
        last_metrics = metrics
        if (epoch + 1) % spec.train.checkpoint.every_epochs == 0 or last:
            save_and_report(spec, store, sharded, f"epoch_{epoch + 1:04d}", epoch, metrics, before_report=test)
        else:
            ray.train.report(metrics)

    if start_epoch >= epochs:  # resumed from the last epoch's checkpoint: only the test evaluation is left
        final = {**last_metrics, "epoch": epochs}
        final.update(test_at_best(spec, prepared, sharded, device, rank, world, store, final))
        ray.train.report(final)


class _Audit:
    """Ids of the examples each step consumed, one line per step: ``<run>/audit/epoch_E/rank_R_pid_P.jsonl``.
    A resumed epoch writes a new file; the steps of the last file that ran them are the ones that count."""

    def __init__(self, store: Store, rank: int, epoch: int):
        self.store, self.rel = store, f"audit/epoch_{epoch + 1:04d}/rank_{rank}_pid_{os.getpid()}.jsonl"
        self.lines: list[str] = []

    def record(self, step: int, batch) -> None:
        self.lines.append(json.dumps({"step": step, "ids": batch.row_ids.tolist()}))
        if len(self.lines) >= 16:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            self.store.append_text(self.rel, "\n".join(self.lines) + "\n")
            self.lines = []

    close = flush
