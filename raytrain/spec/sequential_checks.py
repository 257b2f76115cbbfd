"""What the sequential models (SASRec, HSTU) support: the checks a spec with one of them passes (spec.training)."""

from __future__ import annotations

from typing import Any

from .training import SEQUENTIAL_METRICS


def sequential_checks(spec: Any) -> list[str]:
    """What the sequential models (sasrec, hstu) support so far: kind train (pretraining) and tune (over pretraining
    runs, a ranking metric), on MovieLens-100K or parquet histories, on a path."""
    from ..storage import is_uri

    arch, problems = spec.model.arch, []
    if spec.kind not in ("train", "tune", "distill"):
        problems.append(f"model.arch: {arch} runs as kind train (pretraining), tune or distill (a student) in this "
                        f"version, not {spec.kind}")
    if spec.kind == "tune" and spec.tune is not None:
        if spec.tune.metric not in SEQUENTIAL_METRICS:
            problems.append(f"tune.metric: {arch} reports {', '.join(SEQUENTIAL_METRICS)}, not {spec.tune.metric}")
        elif spec.tune.mode != "max":
            problems.append(f"tune.mode: {spec.tune.metric} is better when higher: max")
        if spec.tune.scheduler.name == "pbt":
            problems.append(f"tune.scheduler: pbt is not available for {arch} in this version")
    if spec.data.source not in ("movielens-100k", "parquet"):
        problems.append(f"data.source: {arch} reads histories from movielens-100k or parquet, not {spec.data.source}")
    if spec.data.source == "parquet" and spec.data.sequences is None:
        problems.append(f"data.sequences: {arch} on parquet needs the user, item and timestamp columns declared")
    elif spec.model.sequence.actions and spec.data.source == "parquet" and spec.data.sequences.action is None:
        problems.append("model.sequence.actions: embeds each action, but data.sequences declares no action column")
    if spec.model.embedding_dim % 4:
        problems.append(f"model.embedding_dim: {arch}'s item table is a sharded sequence table, whose width TorchRec "
                        f"needs divisible by 4; got {spec.model.embedding_dim}")
    if spec.model.embedding_dim % spec.model.sequence.heads:
        problems.append(f"model.sequence.heads: embedding_dim {spec.model.embedding_dim} is not divisible by "
                        f"{spec.model.sequence.heads}")
    if spec.train.batch_size % spec.train.workers:
        problems.append(f"train.batch_size: {spec.train.batch_size} users per step do not split over "
                        f"{spec.train.workers} workers")
    if spec.train.cross_validation is not None or spec.train.checkpoint.every_steps is not None:
        problems.append(f"train: {arch} has no cross-validation or mid-epoch checkpoints yet")
    if is_uri(spec.storage):
        problems.append(f"storage: {arch} runs write to a path in this version")
    # accepted elsewhere, ignored by the sequential loop: refused rather than silently dropped
    if spec.train.device == "cuda":
        problems.append(f"train.device: {arch} trains on CPU workers in this version; cuda would silently train on CPU")
    if spec.train.pipeline == "sparse_dist":
        problems.append(f"train.pipeline: {arch}'s loop has no TorchRec train pipeline in this version; use auto")
    if spec.train.init_from is not None:
        problems.append(f"train.init_from: {arch} runs do not warm-start from another run in this version (a CTR model "
                        "can start from a pretrained sequential run's item table: docs/sequential.md)")
    if spec.train.id_dropout:
        problems.append(f"train.id_dropout: {arch} reads item histories, not id features; it has nothing to drop")
    if spec.data.split.cold_items:
        problems.append(f"data.split.cold_items: {arch} evaluates leave-one-out on every user's last items; it holds "
                        "no items out in this version")
    return problems
