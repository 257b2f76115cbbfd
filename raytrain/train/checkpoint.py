"""Sharded checkpoints with torch.distributed.checkpoint (DCP).

Every rank writes its own shards; rank 0 writes DCP's ``.metadata`` and, last of all, the
``raytrain.json`` marker, which holds the manifest: every file of every rank and its size, gathered
after all ranks finished writing. A checkpoint is complete only when the marker is there and every file
of its manifest is present with that size: on an object store each rank's files are uploaded
separately, so the marker can arrive before another rank's shard. ``read_marker`` (and so ``load``)
refuses anything else with a CheckpointError naming the missing file.

A checkpoint may come from a bucket someone else can write. Loading it never runs code from it: DCP's
``.metadata`` (a pickle) is read by an unpickler that admits only the types DCP metadata is made of,
and the non-tensor values of the state (DCP loads them with ``torch.load(weights_only=False)``) are
loaded with ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import pickle
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

from ..errors import CheckpointError
from ..storage import Store, redact

MARKER = "raytrain.json"
METADATA = ".metadata"

# what DCP's .metadata is made of (torch 2.13): its dataclasses and enums, tensor sizes, dtypes, layouts and paths
_DCP_MODULES = ("torch.distributed.checkpoint.metadata",)
_ALLOWED = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits the classes of DCP metadata and nothing else (no functions that run code, no foreign classes)."""

    def __init__(self, f, where: str):
        super().__init__(f)
        self.where = where

    def find_class(self, module: str, name: str):
        found = None
        if (module, name) in _ALLOWED:
            found = super().find_class(module, name)
        elif module in _DCP_MODULES and not name.startswith("__"):
            candidate = super().find_class(module, name)
            found = candidate if isinstance(candidate, type) else None
        elif module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)):
            found = getattr(torch, name)
        if found is None:
            raise CheckpointError(f"{self.where}: refusing to load it: its {METADATA} names {module}.{name}, which "
                                  "is not part of DCP checkpoint metadata (a crafted or foreign checkpoint?)")
        return found


class _SafeReader(FileSystemReader):
    """DCP's reader with the metadata ``load_state`` already read through ``_MetadataUnpickler`` (read once)."""

    def __init__(self, path: str, metadata) -> None:
        super().__init__(path)
        self.metadata = metadata

    def read_metadata(self, *args, **kwargs):
        metadata = self.metadata
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp.metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            why = str(e).splitlines()[0]
            raise CheckpointError(f"refusing a non-tensor value of {read_item.dest_index.fqn}: {why}") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element  # noqa: PLC0415

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def read_metadata(directory: str | Path):
    """A checkpoint's DCP metadata, read through the allow-list unpickler."""
    store, where = Store(directory), redact(str(directory))
    with store.fs.open_input_stream(store.path(METADATA)) as f:
        metadata = _MetadataUnpickler(f, where).load()
    if not isinstance(metadata, dcp.Metadata):
        raise CheckpointError(f"{where}/{METADATA}: not DCP metadata ({type(metadata).__name__})")
    return metadata


def tensor_sizes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint holds (``model.<key>`` and ``optim.<key>``) and its full (unsharded) size."""
    return {k: tuple(v.size) for k, v in read_metadata(directory).state_dict_metadata.items() if hasattr(v, "size")}


def load_state(state: dict, directory: str | Path) -> None:
    """DCP load of ``state`` in place from ``directory``, without running code from the checkpoint. Its metadata
    is checked first, here, so a refusal is raised as it is (inside ``dcp.load`` it would be wrapped)."""
    metadata = read_metadata(directory)
    dcp.load(state, storage_reader=_SafeReader(str(directory), metadata), planner=_SafePlanner())


def _state(sharded) -> dict:
    return {"model": sharded.module.state_dict(), "optim": sharded.optimizer.state_dict()}


def save(sharded, directory: str | Path, epoch: int, metrics: dict, step: int | None = None,
         data_order: dict | None = None) -> None:
    """``step``: a mid-epoch checkpoint taken after that many steps of ``epoch`` (the data position), which holds
    only with the same ``data_order`` (``TrainData.order``: world size, batch size, seed, shuffle buffer, the train
    files' fingerprint), recorded beside it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if dist.get_rank() == 0:
        # a re-run of this epoch (after a failure) must not leave an old marker over new shards
        (directory / MARKER).unlink(missing_ok=True)
    dist.barrier()
    dcp.save(_state(sharded), checkpoint_id=str(directory))
    # each rank's own files (DCP names them __<rank>_<n>.distcp), gathered once every rank finished writing
    rank = dist.get_rank()
    mine = {f.name: f.stat().st_size for f in directory.iterdir() if f.name.startswith(f"__{rank}_")}
    if rank == 0:
        mine[METADATA] = (directory / METADATA).stat().st_size
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        tmp = directory / (MARKER + ".tmp")
        files = {name: size for part in everyone for name, size in part.items()}
        marker = {"epoch": epoch, "metrics": metrics, "time": time.time(), "world_size": dist.get_world_size(),
                  "files": dict(sorted(files.items()))}
        if step is not None:
            marker["step"] = step
            if data_order is not None:
                marker["data_order"] = data_order
        tmp.write_text(json.dumps(marker))
        tmp.replace(directory / MARKER)


def save_single(state: dict, directory: str | Path, epoch: int, metrics: dict) -> None:
    """A checkpoint written by one process without a process group (a model fitted on the driver, such as
    ``models.content``): the same DCP files and marker as ``save``, so loading and scoring read it the same way."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).unlink(missing_ok=True)
    dcp.save(state, checkpoint_id=str(directory), no_dist=True)
    files = {f.name: f.stat().st_size for f in directory.iterdir() if f.name.startswith("__") or f.name == METADATA}
    marker = {"epoch": epoch, "metrics": metrics, "time": time.time(), "world_size": 1, "files": dict(sorted(files.items()))}
    (directory / (MARKER + ".tmp")).write_text(json.dumps(marker))
    (directory / (MARKER + ".tmp")).replace(directory / MARKER)


def read_marker(directory: str | Path) -> dict:
    """A complete checkpoint's marker (epoch, metrics, manifest); ``directory`` may be a pyarrow.fs URI. Raises
    CheckpointError unless every file of the manifest is there with its size."""
    import pyarrow.fs as pafs

    store = Store(directory)
    where = redact(str(directory))
    if not store.exists(MARKER):
        raise CheckpointError(f"{where}: incomplete checkpoint (no {MARKER}); refusing to load it")
    try:
        marker = json.loads(store.read_text(MARKER))
        files = marker["files"]
        expected = {str(name): int(size) for name, size in files.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{where}/{MARKER}: corrupt ({e})") from None
    except KeyError:
        raise CheckpointError(f"{where}/{MARKER}: no file manifest (written by an older raytrain); refusing to "
                              "load it") from None
    if METADATA not in expected or any("/" in name or name.startswith("..") for name in expected):
        raise CheckpointError(f"{where}/{MARKER}: corrupt manifest ({sorted(expected)[:5]})")
    infos = store.fs.get_file_info([store.path(name) for name in expected])
    for (name, size), info in zip(expected.items(), infos):
        if info.type == pafs.FileType.NotFound:
            raise CheckpointError(f"{where}: incomplete checkpoint: {name} is missing ({size} bytes expected; a "
                                  "rank's files never arrived); refusing to load it")
        if info.size != size:
            raise CheckpointError(f"{where}: incomplete checkpoint: {name} has {info.size} bytes, its manifest says "
                                  f"{size}; refusing to load it")
    return marker


def latest_complete(directory: str | Path) -> tuple[str, dict] | None:
    """The newest complete checkpoint beside ``directory`` (its siblings in the run's ``ray/`` folder, itself
    included), by (epoch, step); None when there is none. Resuming falls back to it when the newest is incomplete."""
    location = str(directory).rstrip("/")
    base, sep, query = location.partition("?")
    parent = base.rsplit("/", 1)[0] + (sep + query)
    found = []
    for name in Store(parent).dirs():
        candidate = f"{base.rsplit('/', 1)[0]}/{name}{sep}{query}"
        try:
            info = read_marker(candidate)
        except CheckpointError:
            continue
        step = info.get("step")
        found.append(((info["epoch"], float("inf") if step is None else step), candidate, info))
    if not found:
        return None
    _, best, info = max(found, key=lambda item: item[0])
    return best, info


def load(sharded, directory: str | Path) -> dict:
    """Load model and optimizer state in place; returns the marker (epoch, metrics)."""
    info = read_marker(directory)
    # optimizers create their state lazily (Adam at its first step); create it now so DCP has
    # tensors to load into. Weights it touches are overwritten by the load right after.
    sharded.optimizer.init_state()
    state = _state(sharded)
    try:
        load_state(state, directory)
    except CheckpointError:
        raise
    except Exception as e:  # DCP raises several types for missing / mismatched shards
        raise cause(e, directory) from None
    sharded.module.load_state_dict(state["model"])
    sharded.optimizer.load_state_dict(state["optim"])
    return info


def cause(e: Exception, directory) -> CheckpointError:
    """A CheckpointError raised inside DCP's collectives (wrapped by DCP in a CheckpointException) as it was;
    any other failure as 'cannot load'."""
    for failure in getattr(e, "failures", {}).values():  # rank -> (exception, stack)
        inner = failure[0] if isinstance(failure, tuple) and failure else failure
        if isinstance(inner, CheckpointError):
            return inner
    return CheckpointError(f"{redact(str(directory))}: cannot load into this model ({type(e).__name__}: {e})")
