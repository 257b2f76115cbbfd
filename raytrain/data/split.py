"""Split one parquet data set into train / validation / test files, streaming row group by row group.

``random``: each row goes to a split by a seeded hash of its global row number (so the split is
reproducible and needs no shuffle of the whole data set; fractions hold up to sampling noise).
``time``: thresholds are the timestamp quantiles at the split fractions (only that column is read
to find them); earlier rows train, later rows validate and test.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .schema import FeatureSchema
from .synthetic import _splitmix

SPLITS = ("train", "validation", "test")


def split_parquet(files: list[str], schema: FeatureSchema, split_spec, work_dir: str | None) -> dict[str, list[str]]:
    out = Path(work_dir or tempfile.mkdtemp(prefix="raytrain-split-")) / "data"
    out.mkdir(parents=True, exist_ok=True)
    f0, f1, _ = split_spec.fractions
    if split_spec.method == "time":
        if schema.timestamp is None:
            raise DataError("split.method time needs data.columns.timestamp")
        ts = np.concatenate([pq.read_table(f, columns=[schema.timestamp]).column(0).to_numpy() for f in files])
        cut1, cut2 = np.quantile(ts, [f0, f0 + f1])
    writers: dict[str, pq.ParquetWriter] = {}
    row0 = 0
    try:
        for path in files:
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                table = pf.read_row_group(rg)
                n = table.num_rows
                if split_spec.method == "time":
                    t = table.column(schema.timestamp).to_numpy()
                    which = np.where(t < cut1, 0, np.where(t < cut2, 1, 2))
                else:
                    rows = np.arange(row0, row0 + n, dtype=np.uint64)
                    h = _splitmix(rows ^ np.uint64(split_spec.seed * 0x9E3779B1 + 1))
                    draws = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
                    which = np.where(draws < f0, 0, np.where(draws < f0 + f1, 1, 2))
                for i, name in enumerate(SPLITS):
                    part = table.filter(pa.array(which == i))
                    if part.num_rows:
                        if name not in writers:
                            writers[name] = pq.ParquetWriter(str(out / f"{name}.parquet.tmp"), part.schema)
                        writers[name].write_table(part)
                row0 += n
    finally:
        for w in writers.values():
            w.close()
    missing = [s for s in SPLITS if s not in writers]
    if missing:
        raise DataError(f"splitting {len(files)} file(s) left {', '.join(missing)} empty: too few rows")
    for name in SPLITS:
        os.replace(out / f"{name}.parquet.tmp", out / f"{name}.parquet")
    return {name: [str(out / f"{name}.parquet")] for name in SPLITS}
