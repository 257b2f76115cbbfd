"""Rows of one table straight from a DCP checkpoint, reading only their bytes.

DCP's own reader loads a whole chunk (``torch.load``) before it narrows it to what was asked for, so reading a
slice of a table that training kept on one rank costs the whole table in memory. A serving shard must never hold
more than its rows (docs/serving.md, "Tables larger than a replica"), so this reads the chunks itself: DCP stores
each chunk as a ``torch.save`` archive (an uncompressed zip) at an offset of a ``.distcp`` file; the tensor's
bytes are one stored member of that zip, row-major, so rows ``[a, b)`` of a chunk are one contiguous byte range.
The archive's small ``data.pkl`` is read with an unpickler that admits the tensor-rebuilding call and nothing else,
to check the layout (storage offset 0, row-major strides) before any byte is trusted.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..storage import Store, redact
from .checkpoint import read_metadata

_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: None, torch.float64: np.float64}


class _Window(io.RawIOBase):
    """Bytes [offset, offset + length) of a random-access file, as a seekable stream (for ``zipfile``)."""

    def __init__(self, f: Any, offset: int, length: int) -> None:
        self.f, self.offset, self.length, self.pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence]
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.length - self.pos if n is None or n < 0 else min(n, self.length - self.pos)
        data = self.f.read_at(n, self.offset + self.pos) if n > 0 else b""
        self.pos += len(data)
        return bytes(data)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _Layout(pickle.Unpickler):
    """Reads a saved tensor's (storage offset, size, stride) from its ``data.pkl``; refuses anything else."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: (offset, tuple(size), tuple(stride))
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return pid


def _chunk_bytes(f: Any, offset: int, length: int, rows: int, cols: int, itemsize: int, where: str) -> int:
    """The file offset of a chunk's first tensor byte, its layout checked."""
    window = _Window(f, offset, length)
    z = zipfile.ZipFile(window)
    names = {n.rsplit("/", 1)[-1] if "/data/" not in n else "data/" + n.rsplit("/", 1)[-1]: n for n in z.namelist()}
    pkl, data = names.get("data.pkl"), names.get("data/0")
    if pkl is None or data is None or len([n for n in z.namelist() if "/data/" in n]) != 1:
        raise CheckpointError(f"{where}: not a single saved tensor")
    try:
        storage_offset, size, stride = _Layout(io.BytesIO(z.read(pkl))).load()
    except (pickle.UnpicklingError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: unexpected tensor record ({e})") from None
    info = z.getinfo(data)
    if (storage_offset, size, stride) != (0, (rows, cols), (cols, 1)) or info.compress_type != zipfile.ZIP_STORED \
            or info.file_size != rows * cols * itemsize:
        raise CheckpointError(f"{where}: a chunk that is not a plain row-major tensor ({size}, stride {stride})")
    window.seek(info.header_offset)
    header = window.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{where}: corrupt archive")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return offset + info.header_offset + 30 + name_len + extra_len


def read_rows(directory: str, key: str, start: int, stop: int, out: torch.Tensor | None = None,
              metadata: Any = None) -> torch.Tensor:
    """Rows ``[start, stop)`` of the 2-D tensor ``key`` (e.g. ``model.model.net...t_item_id.weight``) of the
    checkpoint in ``directory`` (a path or a pyarrow.fs URI), into ``out`` when given; only those rows' bytes are
    read, from every chunk that holds some (row-wise, column-wise or whole-table shards of training)."""
    where = f"{redact(str(directory))}: {key}"
    metadata = metadata if metadata is not None else read_metadata(directory)
    found = metadata.state_dict_metadata.get(key)
    if found is None or not hasattr(found, "chunks") or len(found.size) != 2:
        raise CheckpointError(f"{where}: not a 2-D tensor of this checkpoint")
    total_rows, dim = found.size
    if not 0 <= start <= stop <= total_rows:
        raise CheckpointError(f"{where}: rows [{start}, {stop}) outside its {total_rows}")
    dtype = found.properties.dtype
    np_dtype = _DTYPES.get(dtype)
    if np_dtype is None:
        raise CheckpointError(f"{where}: dtype {dtype} is not read by row")
    out = out if out is not None else torch.empty(stop - start, dim, dtype=dtype)
    view = out.numpy()
    itemsize = np.dtype(np_dtype).itemsize
    store = Store(directory)
    covered = 0
    from torch.distributed.checkpoint.metadata import MetadataIndex

    for chunk in found.chunks:
        (r0, c0), (nr, nc) = tuple(chunk.offsets), tuple(chunk.sizes)
        a, b = max(start, r0), min(stop, r0 + nr)
        if a >= b:
            continue
        info = metadata.storage_data[MetadataIndex(key, chunk.offsets)]
        if info.transform_descriptors:
            raise CheckpointError(f"{where}: transformed (compressed) chunks are not read by row")
        with store.fs.open_input_file(store.path(str(info.relative_path))) as f:
            first = _chunk_bytes(f, info.offset, info.length, nr, nc, itemsize, where)
            raw = f.read_at((b - a) * nc * itemsize, first + (a - r0) * nc * itemsize)
        view[a - start:b - start, c0:c0 + nc] = np.frombuffer(raw, dtype=np_dtype).reshape(b - a, nc)
        covered += (b - a) * nc
    if covered != (stop - start) * dim:
        raise CheckpointError(f"{where}: its chunks cover {covered} of the {(stop - start) * dim} values asked for")
    return out
