"""Sharded checkpoints with torch.distributed.checkpoint (DCP).

Every rank writes its own shards; rank 0 writes DCP's ``.metadata`` and, last of all, the
``raytrain.json`` marker. A directory without the marker (a save cut short) is never loaded:
``load`` raises CheckpointError instead. Ray Train registers a checkpoint only once every worker
has reported it, so the marker and Ray's registration agree.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ..errors import CheckpointError
from ..storage import Store, redact

MARKER = "raytrain.json"


def _state(sharded) -> dict:
    return {"model": sharded.module.state_dict(), "optim": sharded.optimizer.state_dict()}


def save(sharded, directory: str | Path, epoch: int, metrics: dict, step: int | None = None) -> None:
    """``step``: a mid-epoch checkpoint taken after that many steps of ``epoch`` (the data position)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if dist.get_rank() == 0:
        # a re-run of this epoch (after a failure) must not leave an old marker over new shards
        (directory / MARKER).unlink(missing_ok=True)
    dist.barrier()
    dcp.save(_state(sharded), checkpoint_id=str(directory))
    if dist.get_rank() == 0:
        tmp = directory / (MARKER + ".tmp")
        marker = {"epoch": epoch, "metrics": metrics, "time": time.time(), "world_size": dist.get_world_size()}
        if step is not None:
            marker["step"] = step
        tmp.write_text(json.dumps(marker))
        tmp.replace(directory / MARKER)


def read_marker(directory: str | Path) -> dict:
    """A complete checkpoint's marker (epoch, metrics); ``directory`` may be a pyarrow.fs URI."""
    store = Store(directory)
    where = redact(str(directory))
    if not store.exists(MARKER) or not store.exists(".metadata"):
        raise CheckpointError(f"{where}: incomplete checkpoint (no {MARKER} or .metadata); refusing to load it")
    try:
        return json.loads(store.read_text(MARKER))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}/{MARKER}: corrupt ({e})") from None


def load(sharded, directory: str | Path) -> dict:
    """Load model and optimizer state in place; returns the marker (epoch, metrics)."""
    info = read_marker(directory)
    # optimizers create their state lazily (Adam at its first step); create it now so DCP has
    # tensors to load into. Weights it touches are overwritten by the load right after.
    sharded.optimizer.init_state()
    state = _state(sharded)
    try:
        dcp.load(state, checkpoint_id=str(directory))
    except Exception as e:  # DCP raises several types for missing / mismatched shards
        raise CheckpointError(f"{directory}: cannot load into this model ({type(e).__name__}: {e})") from None
    sharded.module.load_state_dict(state["model"])
    sharded.optimizer.load_state_dict(state["optim"])
    return info
