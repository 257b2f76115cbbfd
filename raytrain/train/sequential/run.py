"""The driver of a sequential model's pretraining run (kind train, model.arch sasrec or hstu): histories, Ray Train
workers (``sequential_loop``), and the summary: the test metrics of the epoch with the best validation NDCG@10."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ...data.sequences import Sequences, movielens_sequences, parquet_sequences
from ...log import get_logger
from ...runs import open_run
from ...spec.job import JobSpec
from ..runner import init_ray, process_group_backend

log = get_logger(__name__)


def sequences_of(spec: JobSpec) -> Sequences:
    data = spec.data
    if data.source == "movielens-100k":
        return movielens_sequences(data.path)
    from ...data.parquet import expand

    cols = data.sequences
    assert cols is not None and data.path is not None  # the spec's checks
    return parquet_sequences(expand(data.path), cols.user, cols.item, cols.timestamp, cols.action, cols.num_items)


def write_sequences(spec: JobSpec, run_dir: Path) -> Path:
    """The histories, once, into ``run_dir/sequences.npz`` (what the workers and ``load_sequential`` read)."""
    seqs = sequences_of(spec)
    vocab = spec.model.sequence.actions
    if vocab:  # the actions the model embeds: integer ids in [0, vocab)
        from ...errors import DataError

        acts = seqs.actions
        if acts is None or not np.issubdtype(np.asarray(acts).dtype, np.integer):
            raise DataError(f"model.sequence.actions: {spec.data.source}'s histories carry no integer action ids "
                            "(parquet: data.sequences.action)")
        bad = (acts < 0) | (acts >= vocab)
        if bad.any():
            raise DataError(f"model.sequence.actions: action id {int(acts[bad][0])} outside [0, {vocab})")
    path = run_dir / "sequences.npz"
    arrays: dict[str, np.ndarray] = {"items": seqs.items, "timestamps": seqs.timestamps, "offsets": seqs.offsets,
                                     "num_items": np.asarray(seqs.num_items)}
    arrays.update({k: v for k, v in (("user_ids", seqs.user_ids), ("item_ids", seqs.item_ids),
                                     ("actions", seqs.actions if vocab else None)) if v is not None})
    if spec.data.text is not None:  # the item table starts from the items' text (sequential/text_init.py)
        from .text_init import text_vectors

        ids = seqs.item_ids if seqs.item_ids is not None else np.arange(seqs.num_items)
        arrays["text"] = text_vectors(spec, ids, seqs.num_items)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    from .ranking import resolve_negatives

    negatives = resolve_negatives(spec.train.sampled_softmax.negatives, seqs.num_items)
    objective = "a softmax over every item" if negatives == "all" else f"{negatives} sampled negatives"
    log.info(f"data: {spec.data.source}, {seqs.users:,} users, {seqs.num_items - 1:,} items, {len(seqs.items):,} "
             f"actions; {spec.model.arch} pretraining by next-item prediction ({objective}), leave-one-out evaluation "
             "over the whole catalogue")
    return path


def sequential_worker(config: dict) -> None:
    """Ray Train's function on each worker, importing the loop (TorchRec, FBGEMM) there and not on the driver."""
    from .loop import sequential_loop

    sequential_loop(config)


def sequential_trainer(spec: JobSpec, run_dir: str | Path, sequences: str | Path, callbacks: list | None = None,
                       teacher: dict | None = None):
    """The TorchTrainer of one sequential run (also one tune trial; with ``teacher``, a distilled student), its
    checkpoints ranked by validation NDCG@10."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from ..lean import trainer_class

    res = spec.train.resources_per_worker
    return trainer_class()(
        sequential_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "run_dir": str(run_dir),
                           "sequences": str(sequences), "teacher": teacher},
        scaling_config=ScalingConfig(num_workers=spec.train.workers, resources_per_worker={"CPU": res.cpu}),
        torch_config=TorchConfig(backend=process_group_backend("cpu")),
        run_config=RunConfig(
            name="ray", storage_path=str(run_dir), callbacks=callbacks or None,
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.train.checkpoint.keep,
                                               checkpoint_score_attribute="val_ndcg@10", checkpoint_score_order="max")),
    )


def run_sequential(spec: JobSpec, address: str | None = None, teacher: dict | None = None) -> dict:
    """A pretraining run (``teacher``: a distillation's, see ``sequential_teacher``)."""
    run_dir = open_run(spec)
    t0 = time.perf_counter()
    init_ray(spec, address)
    result = sequential_trainer(spec, run_dir, write_sequences(spec, run_dir), teacher=teacher).fit()
    if result.error is not None:
        raise result.error
    summary = summarize(run_dir)
    summary.update(run_dir=str(run_dir), wall_seconds=time.perf_counter() - t0,
                   checkpoint=result.checkpoint.path if result.checkpoint else None)
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    log.info(f"done in {summary['wall_seconds']:.0f}s: best epoch {summary['best_epoch']} by validation NDCG@10 "
             f"{summary['best_val_ndcg@10']:.4f}; its test " + ", ".join(
                 f"{k.removeprefix('test_')} {v:.4f}" for k, v in summary.items() if k.startswith("test_")))
    return summary


def summarize(run_dir: Path) -> dict:
    """metrics/epoch_*.json -> metrics.parquet; the best epoch by validation NDCG@10 and its test metrics (test is
    measured every epoch but never used to choose)."""
    rows = [json.loads(f.read_text()) for f in sorted((run_dir / "metrics").glob("epoch_*.json"))]
    pd.DataFrame(rows).to_parquet(run_dir / "metrics.parquet", index=False)
    best = max(rows, key=lambda r: r["val_ndcg@10"])
    return {"epoch": rows[-1]["epoch"], "best_epoch": best["epoch"], "best_val_ndcg@10": best["val_ndcg@10"],
            **{k: v for k, v in best.items() if k.startswith("test_")},
            "train_examples_per_s": float(np.mean([r["train_examples_per_s"] for r in rows]))}
