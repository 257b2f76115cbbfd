"""Ensemble members: trained runs, loaded unsharded on one process, scored split by split."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data import prepare
from ..data.batches import Columns
from ..errors import CheckpointError
from ..runs import newest_run
from ..storage import Store, join, materialize, redact
from ..train.checkpoint import read_marker
from ..train.export import LoadedModel, best_checkpoint_location, load_model


@dataclass
class Member:
    name: str
    run_dir: Path
    checkpoint: Path
    model: LoadedModel


def best_checkpoint(run_dir: Path, metric: str = "val_auc", mode: str = "max") -> Path:
    """The complete checkpoint of a run with the best validation metric (its last one if none recorded it)."""
    found = best_checkpoint_location(run_dir, metric, mode)
    if found is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint under ray/")
    return Path(found)


def top_trials(tune_run_dir: str | Path, k: int) -> list[Path]:
    """Run directories of the k best trials of a tune run (by its leaderboard), best first; the trials of a tune
    run on a pyarrow.fs URI are downloaded into the local cache."""
    # the tune run itself, or <storage>/<name>: its newest finished run (a path or a URI, the same calls)
    location = newest_run(str(tune_run_dir), "leaderboard.parquet")
    store = Store(location)
    board = store.read_parquet("leaderboard.parquet")
    board = board[board["status"].isin(["completed", "stopped early"]) & board["path"].notna()]
    if len(board) < k:
        raise CheckpointError(f"{redact(location)}: {len(board)} usable trials, fewer than the {k} asked for")
    return [materialize(join(str(p), "run")) for p in board["path"].iloc[:k]]


def read_ensemble(location: str | Path, combine: str, where: str) -> tuple[Path, dict]:
    """An ensemble run (``location``, or the newest one below it): its directory and ensemble.json, which must have
    the ``combine`` combiner (``where`` names the spec field asking for it)."""
    from ..runs import newest_local_run

    run = newest_local_run(location, "ensemble.json")
    doc = json.loads((run / "ensemble.json").read_text())
    if combine not in doc["combiners"]:
        raise CheckpointError(f"{where}: {run} has no {combine!r} combiner (it has {', '.join(doc['combiners'])})")
    return run, doc


_TRIAL_DIR = re.compile(r"^(?:_?pbt_|_)?trial_([0-9a-f]+_\d+)(?:_|$)")


def member_name(run_dir: Path) -> str:
    """A run's short name: a tune trial's id ``<experiment>_<index>`` (from its directory, named by Tune after the
    trial function: trial_, pbt_trial_, and _trial_ in older runs), else the directory's name."""
    base = run_dir.parent.name if run_dir.name == "run" else run_dir.name
    m = _TRIAL_DIR.match(base)
    return m.group(1) if m else base


def load_member(run_dir: str | Path, name: str | None = None) -> Member:
    run_dir = materialize(run_dir)  # a URI run is downloaded into the local cache first
    ckpt = best_checkpoint(run_dir)
    return Member(name or member_name(run_dir), run_dir, ckpt, load_model(run_dir, ckpt))


def split_table(member: Member, split: str) -> pa.Table:
    prepared = prepare(member.model.spec.data)
    if prepared.synthetic is not None:
        raise CheckpointError("ensembles of synthetic-data runs are not supported (no fixed rows to align)")
    return pa.concat_tables([pq.read_table(p) for p in prepared.paths[split]])


@torch.no_grad()
def score(member: Member, split: str, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of one split, in the prepared file's row order."""
    table = split_table(member, split)
    cols = Columns.from_arrow(member.model.schema, table, f"{split} split")
    logits, labels = [], []
    for lo in range(0, len(cols), batch_size):
        batch = cols.batch(torch.arange(lo, min(lo + batch_size, len(cols))))
        _, out = member.model.module(batch)
        logits.append(out.double().numpy())
        labels.append(batch.label.double().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def member_info(m: Member) -> dict:
    info = read_marker(m.checkpoint)
    return {"name": m.name, "run_dir": str(m.run_dir), "checkpoint": str(m.checkpoint), "epoch": info["epoch"],
            "arch": m.model.spec.model.arch, "embedding_dim": m.model.spec.model.embedding_dim,
            "parameters": int(sum(p.numel() for p in m.model.module.parameters())),
            "config": json.dumps({"over_arch": m.model.spec.model.over_arch})}
