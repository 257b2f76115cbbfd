"""Split one parquet data set into train / validation / test files, row group by row group, in parallel.

``random``: each row goes to a split by a seeded hash of its global row number (so the split is
reproducible and needs no shuffle of the whole data set; fractions hold up to sampling noise).
``time``: thresholds are the timestamp quantiles at the split fractions (only that column is read
to find them); earlier rows train, later rows validate and test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .schema import FeatureSchema
from .synthetic import _splitmix

SPLITS = ("train", "validation", "test")


ROW_GROUP_ROWS = 65_536  # the unit the training ranks read and shuffle
ROW_GROUPS_PER_TASK = 32


def split_parquet(files: list[str], schema: FeatureSchema, split_spec, out_dir: str | Path) -> dict[str, list[str]]:
    """Split ``files`` into ``out_dir/<split>/part-*.parquet``, one task per file or run of row groups
    (``fan_out``). Each row's split depends only on its global row number (or timestamp), so the result is
    the same however the work is cut."""
    from .parallel import fan_out

    out = Path(out_dir)
    f0, f1, _ = split_spec.fractions
    cuts: tuple[float, float] | None = None
    if split_spec.method == "time":
        if schema.timestamp is None:
            raise DataError("split.method time needs data.columns.timestamp")
        ts = np.concatenate(fan_out(_timestamps, [(f, schema.timestamp) for f in files], "read timestamps"))
        q = np.quantile(ts, [f0, f0 + f1])
        cuts = (float(q[0]), float(q[1]))
    calls: list[tuple] = []
    row0 = 0
    for path in files:
        meta = pq.read_metadata(path)
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        for lo in range(0, len(sizes), ROW_GROUPS_PER_TASK):
            hi = min(lo + ROW_GROUPS_PER_TASK, len(sizes))
            calls.append((path, lo, hi, row0, str(out), len(calls), split_spec.method, split_spec.seed,
                          (f0, f1), cuts, schema.timestamp))
            row0 += sum(sizes[lo:hi])
    counts = fan_out(_split_part, calls, f"split {len(files)} file(s)")
    totals = {name: sum(c[name] for c in counts) for name in SPLITS}
    missing = [name for name in SPLITS if not totals[name]]
    if missing:
        raise DataError(f"splitting {len(files)} file(s) left {', '.join(missing)} empty: too few rows")
    return {name: sorted(str(p) for p in (out / name).glob("part-*.parquet")) for name in SPLITS}


def _timestamps(path: str, column: str) -> np.ndarray:
    return pq.read_table(path, columns=[column]).column(0).to_numpy()


def _split_part(path: str, rg_lo: int, rg_hi: int, row0: int, out: str, part: int, method: str, seed: int,
                fractions: tuple[float, float], cuts: tuple[float, float] | None, ts_col: str | None) -> dict[str, int]:
    """Row groups ``[rg_lo, rg_hi)`` of ``path`` (global rows from ``row0``) into one part file per split."""
    f0, f1 = fractions
    pf = pq.ParquetFile(path)
    writers: dict[str, pq.ParquetWriter] = {}
    counts = dict.fromkeys(SPLITS, 0)
    try:
        for rg in range(rg_lo, rg_hi):
            table = pf.read_row_group(rg)
            n = table.num_rows
            if cuts is not None:
                t = table.column(ts_col).to_numpy()
                which = np.where(t < cuts[0], 0, np.where(t < cuts[1], 1, 2))
            else:
                rows = np.arange(row0, row0 + n, dtype=np.uint64)
                h = _splitmix(rows ^ np.uint64(seed * 0x9E3779B1 + 1))
                draws = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
                which = np.where(draws < f0, 0, np.where(draws < f0 + f1, 1, 2))
            for i, name in enumerate(SPLITS):
                piece = table.filter(pa.array(which == i))
                if piece.num_rows:
                    if name not in writers:
                        (Path(out) / name).mkdir(parents=True, exist_ok=True)
                        writers[name] = pq.ParquetWriter(str(Path(out) / name / f"part-{part:05d}.parquet"),
                                                         piece.schema)
                    writers[name].write_table(piece, row_group_size=ROW_GROUP_ROWS)
                    counts[name] += piece.num_rows
            row0 += n
    finally:
        for w in writers.values():
            w.close()
    return counts
