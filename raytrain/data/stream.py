"""A split streamed to the ranks: each rank reads only its own rows, row group by row group.

The split's files and row groups (from the parquet footers alone) are laid end to end. For an epoch
of training, the row groups are put in an order drawn from (seed, epoch), the same on every rank,
and rank ``r`` of ``w`` takes rows ``[N r / w, N (r + 1) / w)`` of that sequence: ranks get equal
shares to the row, a row group is read by at most two ranks, and the epoch's assignment of rows to
ranks changes with the epoch. A rank's rows are then grouped into *windows* of at least
``buffer_rows`` (whole row groups or their parts), each window is permuted (seeded by seed, epoch,
rank and window number) and the rank's stream is the windows one after another, cut into batches.

Memory per rank: one window (about ``buffer_rows`` rows, or one row group if larger) plus the
batches prefetched, whatever the number of rows. Every position of the stream is a pure function
of (seed, epoch, rank, world, buffer), so a run resumed at step ``s`` starts reading at the window
that holds row ``s * batch`` and consumes exactly the examples it had not yet trained on.

Evaluation uses the same layout in file order without permutation: every row is read by exactly
one rank, whatever order the files were listed or read in.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..errors import DataError
from ..storage import filesystem, is_uri, redact
from .batches import TEACHER_COLUMN, Batch, Columns
from .schema import FeatureSchema


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of row group ``rg`` of file number ``file``."""

    file: int
    rg: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class SplitIndex:
    """The row groups of one split's files, from their footers (no data read)."""

    def __init__(self, files: list[str], rows: list[list[int]], fingerprint: str = ""):
        self.files, self.rows = files, rows
        self.fingerprint = fingerprint  # of the files' names and footers, in order (``of``)
        self.units = [(f, g) for f, groups in enumerate(rows) for g in range(len(groups))]
        self.unit_of = {u: i for i, u in enumerate(self.units)}
        sizes = [rows[f][g] for f, g in self.units]
        self.unit_rows = np.asarray(sizes, dtype=np.int64)
        # global row id of each unit's first row (file order): ids name an example whatever the shuffle
        self.unit_base = np.concatenate([[0], np.cumsum(self.unit_rows)[:-1]]).astype(np.int64)
        self.total = int(self.unit_rows.sum())

    @classmethod
    def of(cls, files: list[str]) -> "SplitIndex":
        """The index of ``files`` and their fingerprint: a digest of each file's name and parquet footer (row groups
        with their sizes, offsets and column statistics), which changes with the file list and, in practice, with
        the files' contents, without reading any data."""
        import hashlib
        import json

        rows, digest = [], hashlib.sha256()
        for f in files:
            try:
                meta = _footer(f)
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"{redact(f)}: not a readable parquet file ({e})") from None
            rows.append([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
            digest.update(str(f).split("?")[0].rsplit("/", 1)[-1].encode() + b"\0")
            digest.update(json.dumps(meta.to_dict(), sort_keys=True, default=str).encode() + b"\0")
        return cls(files, rows, digest.hexdigest()[:16])

    def rank_rows(self, rank: int, world: int) -> int:
        return self.total * (rank + 1) // world - self.total * rank // world

    def segments(self, order: np.ndarray, rank: int, world: int) -> list[Segment]:
        """This rank's part of the units laid end to end in ``order``."""
        lo, hi = self.total * rank // world, self.total * (rank + 1) // world
        out, pos = [], 0
        for u in order:
            n = int(self.unit_rows[u])
            a, b = max(lo, pos), min(hi, pos + n)
            if a < b:
                f, g = self.units[u]
                out.append(Segment(f, g, a - pos, b - pos))
            pos += n
            if pos >= hi:
                break
        return out


def _footer(path: str) -> pq.FileMetaData:
    fs, p = filesystem(path)
    with fs.open_input_file(p) as fh:
        return pq.ParquetFile(fh).metadata


class RowGroupReader:
    """Reads row groups of a split's files; keeps the last one, since neighbouring segments often share it."""

    def __init__(self, files: list[str], schema: FeatureSchema):
        self.files, self.schema = files, schema
        self._open: tuple[int, pq.ParquetFile] | None = None
        self._last: tuple[tuple[int, int], pa.Table] | None = None

    def _file(self, i: int) -> pq.ParquetFile:
        if self._open is None or self._open[0] != i:  # one open file at a time
            path = self.files[i]
            fs, p = filesystem(path) if is_uri(path) else (None, path)
            self._open = (i, pq.ParquetFile(fs.open_input_file(p) if fs is not None else p))
        return self._open[1]

    def read(self, seg: Segment) -> pa.Table:
        key = (seg.file, seg.rg)
        if self._last is None or self._last[0] != key:
            pf = self._file(seg.file)
            cols = self.schema.columns() + ([TEACHER_COLUMN] if TEACHER_COLUMN in pf.schema_arrow.names else [])
            missing = [c for c in cols if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{redact(self.files[seg.file])}: missing column(s) {', '.join(missing)}")
            try:
                self._last = (key, pf.read_row_group(seg.rg, columns=cols))
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"{redact(self.files[seg.file])} (row group {seg.rg}): cannot be read ({e})") from None
        return self._last[1].slice(seg.start, seg.rows)


@dataclass
class Window:
    segments: list[Segment]
    rows: int


def windows(segments: list[Segment], buffer_rows: int) -> list[Window]:
    """Consecutive segments grouped until each group holds at least ``buffer_rows`` rows."""
    out: list[Window] = []
    cur: list[Segment] = []
    n = 0
    for s in segments:
        cur.append(s)
        n += s.rows
        if n >= buffer_rows:
            out.append(Window(cur, n))
            cur, n = [], 0
    if cur:
        out.append(Window(cur, n))
    return out


def epoch_order(num_units: int, seed: int, epoch: int) -> np.ndarray:
    """The order of row groups in an epoch: the same on every rank (it decides who reads what)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_units)


class RankStream:
    """One rank's rows of a split for one pass, as batches of ``batch`` rows (the last may be short).

    ``shuffle``: row groups in epoch order and rows permuted within windows (training); otherwise file
    order (evaluation). ``start_row``: skip this many of the rank's rows (a resumed epoch)."""

    def __init__(self, index: SplitIndex, schema: FeatureSchema, rank: int, world: int, *, batch: int,
                 buffer_rows: int, seed: int = 0, epoch: int = 0, shuffle: bool = True, source: str = "split",
                 keep: dict | None = None):
        self.index, self.schema, self.rank, self.batch = index, schema, rank, batch
        # ``keep``: a dict the caller holds across passes; it keeps the last window decoded, and a pass whose window
        # has the same rows (a split small enough to be one window, e.g. one row group) skips reading and decoding
        self.keep = keep
        self.seed, self.epoch, self.shuffle, self.source = seed, epoch, shuffle, source
        order = epoch_order(len(index.units), seed, epoch) if shuffle else np.arange(len(index.units))
        self.windows = windows(index.segments(order, rank, world), max(1, buffer_rows))
        self.rows = sum(w.rows for w in self.windows)

    def _load(self, w: int, reader: RowGroupReader) -> tuple[Columns, np.ndarray, np.ndarray]:
        """The window's columns, their global row ids, and the order its rows are consumed in."""
        win = self.windows[w]
        key = tuple(win.segments)
        if self.keep is not None and self.keep.get("segments") == key:
            cols, row_ids = self.keep["columns"]
        else:
            tables = [reader.read(s) for s in win.segments]
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            cols = Columns.from_arrow(self.schema, table, f"{self.source} (rank {self.rank}, window {w})")
            row_ids = np.concatenate([self._base(s) + np.arange(s.start, s.stop, dtype=np.int64)
                                      for s in win.segments])
            if self.keep is not None:
                self.keep.clear()  # drop the previous window before holding this one: one window at a time
                self.keep.update(segments=key, columns=(cols, row_ids))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, self.rank, w, 0xB0FF]).permutation(win.rows)
        else:
            order = np.arange(win.rows)
        return cols, row_ids, order

    def _base(self, s: Segment) -> int:
        return int(self.index.unit_base[self.index.unit_of[(s.file, s.rg)]])

    def batches(self, start_row: int = 0) -> Iterator[Batch]:
        """Batches of ``batch`` rows (``Batch.row_ids``: their global row ids), from the rank's row ``start_row``."""
        reader = RowGroupReader(self.index.files, self.schema)
        pending: list[tuple[Columns, np.ndarray]] = []  # parts of a batch that spans two windows
        have = pos = 0
        for w, win in enumerate(self.windows):
            if pos + win.rows <= start_row:  # consumed before the interruption: not even read
                pos += win.rows
                continue
            cols, ids, order = self._load(w, reader)
            at = max(0, start_row - pos)
            pos += win.rows
            while at < win.rows:
                take = min(self.batch - have, win.rows - at)
                sel = order[at : at + take]
                at += take
                if not pending and take == self.batch:
                    yield cols.batch(torch.from_numpy(sel), row_ids=torch.from_numpy(ids[sel]))
                    continue
                pending.append((cols.take(torch.from_numpy(sel)), ids[sel]))
                have += take
                if have == self.batch:
                    yield _merge(pending, self.schema)
                    pending, have = [], 0
        if pending:
            yield _merge(pending, self.schema)


def _merge(parts: list[tuple[Columns, np.ndarray]], schema: FeatureSchema) -> Batch:
    cols = Columns.concat([c for c, _ in parts], schema) if len(parts) > 1 else parts[0][0]
    ids = np.concatenate([i for _, i in parts])
    return cols.batch(torch.arange(len(cols)), row_ids=torch.from_numpy(ids))


_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetched(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """``items`` produced by a background thread, up to ``depth`` ahead of the consumer: reading, decoding and
    building the next batches overlap the current step (parquet decoding and torch ops release the GIL).
    An error in the producer is raised in the consumer; closing the iterator stops the producer."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(_Failure(e))

    t = threading.Thread(target=produce, name="raytrain-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            t.join(timeout=0.05)
