"""Criteo-format click logs generated from a seed, so the reader, converter and scale benchmark run here.

The text is the published format (label, 13 integers, 26 eight-digit hex categoricals, tabs, empty
fields); the shape is Criteo Kaggle's: the 26 cardinalities (``KAGGLE_CARDINALITIES``), power-law
id frequencies (a value's rank ``r`` in ``[0, C)`` is drawn as ``floor(C ** u)`` for uniform ``u``:
the hottest values take most of the traffic), missing values in some features, a few negative
integers, and a click rate of the order of Kaggle's 25.6% (it varies with the seed). The label is learnable: its
log-odds are a sum of hidden per-value weights of eight features and two integer features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .criteo import CAT_COLUMNS, INT_COLUMNS, KAGGLE_CARDINALITIES, LABEL
from .synthetic import _splitmix

CHUNK_ROWS = 500_000
# share of missing values per categorical / integer feature (a rough echo of the Kaggle set)
CAT_MISSING = [0.0, 0.0, 0.03, 0.03, 0.0, 0.12, 0.0, 0.0, 0.0, 0.0, 0.0, 0.03, 0.0, 0.0, 0.0, 0.03, 0.0, 0.0,
               0.44, 0.44, 0.03, 0.76, 0.0, 0.03, 0.44, 0.44]
INT_MISSING = [0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22]
SIGNAL = (0, 1, 4, 5, 8, 13, 16, 19)  # features whose values move the click rate
_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _hex8(values: np.ndarray, missing: np.ndarray) -> pa.Array:
    """uint32 values as 8-digit lower-case hex strings; missing -> null (an empty field in the file)."""
    n = len(values)
    shifts = np.arange(28, -4, -4, dtype=np.uint32)
    chars = _DIGITS[(values[:, None] >> shifts) & np.uint32(15)]
    offsets = (np.arange(n + 1, dtype=np.int32) * 8)
    arr = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes())])
    return pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), arr)


def _weight(feature: int, rank: np.ndarray, seed: int) -> np.ndarray:
    """A hidden weight per (feature, value rank), roughly N(0, 0.6)."""
    h = _splitmix(rank.astype(np.uint64) ^ np.uint64((seed * 1_000_003 + feature * 7919 + 17) & (2**63 - 1)))
    u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    return 0.6 * np.sqrt(3.0) * (2.0 * u - 1.0)  # uniform with sd 0.6


def chunk(rows: int, seed: int, day: int, index: int, cardinalities: list[int] = KAGGLE_CARDINALITIES) -> pa.Table:
    """``rows`` rows of one chunk of one day: the raw columns (label, integers with nulls, hex strings)."""
    rng = np.random.default_rng([seed, day, index])
    cols: dict[str, pa.Array] = {}
    logit = np.full(rows, -1.3)
    ints = []
    for k in range(13):
        x = np.floor(rng.lognormal(mean=1.0 + 0.15 * k, sigma=1.2, size=rows)).astype(np.int64)
        if k == 1:  # Criteo's second integer feature has a few negative values
            x = np.where(rng.random(rows) < 0.05, -rng.integers(1, 4, rows), x)
        ints.append(x)
    logit += 0.35 * (np.log1p(np.maximum(ints[0], 0)) - 1.2) - 0.25 * (np.log1p(np.maximum(ints[4], 0)) - 2.0)
    ranks = []
    for j, card in enumerate(cardinalities):
        r = np.minimum(np.floor(np.power(float(card), rng.random(rows))).astype(np.int64) - 1, card - 1)
        r = np.maximum(r, 0)
        ranks.append(r)
        if j in SIGNAL:
            logit += _weight(j, r, seed)
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    cols[LABEL] = pa.array(label)
    for k, name in enumerate(INT_COLUMNS):
        cols[name] = pa.array(ints[k], mask=rng.random(rows) < INT_MISSING[k])
    for j, name in enumerate(CAT_COLUMNS):
        salt = np.uint64((seed * 31 + j + 1) * 0x9E3779B97F4A7C15 & (2**64 - 1))
        values = (_splitmix(ranks[j].astype(np.uint64) ^ salt) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        cols[name] = _hex8(values, rng.random(rows) < CAT_MISSING[j])
    return pa.table(cols)


def write_day(path: str | Path, rows: int, seed: int, day: int, gz: bool = False) -> int:
    """One day file of ``rows`` lines; returns its size in bytes."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    sink = pa.CompressedOutputStream(str(tmp), "gzip") if gz else pa.OSFile(str(tmp), "wb")
    with sink:
        for i, start in enumerate(range(0, rows, CHUNK_ROWS)):
            pacsv.write_csv(chunk(min(CHUNK_ROWS, rows - start), seed, day, i), sink, opts)
    tmp.replace(path)
    return path.stat().st_size


def day_rows(rows: int, days: int) -> list[int]:
    return [rows * (d + 1) // days - rows * d // days for d in range(days)]
