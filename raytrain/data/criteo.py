"""The Criteo click-log format (Display Advertising Challenge, Criteo 1TB) and its DLRM preprocessing.

A file is tab-separated text, one example a line: ``label``, 13 integer features, 26 categorical
features written as hex strings; any feature may be empty. Plain or gzip (``.gz``), one file per
day. The preprocessing is the one DLRM and TorchRec apply: missing integers are 0, negative
integers are clipped to 0, integers become ``log(x + 1)``; a categorical value is its hex number
modulo the feature's table size (``num_embeddings``), a missing one is 0.

A bad line (wrong number of fields, a non-integer label or integer feature, a non-hex
categorical) is an error naming the file and the line, or, with ``bad_lines: skip``, is counted
and left out, never trained on.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import DataError
from ..spec.sections import _KAGGLE
from .schema import FeatureSchema, SparseFeature

LABEL = "label"
INT_COLUMNS = [f"int_{i}" for i in range(13)]
CAT_COLUMNS = [f"cat_{i}" for i in range(26)]
RAW_COLUMNS = [LABEL, *INT_COLUMNS, *CAT_COLUMNS]
# Criteo Kaggle (Display Advertising Challenge): distinct values of each categorical feature in its
# 45,840,617 training rows, as DLRM's Kaggle configuration counts them
KAGGLE_CARDINALITIES = list(_KAGGLE)
KAGGLE_ROWS = 45_840_617
ROW_GROUP_ROWS = 65_536  # parquet written by raytrain: a row group is the unit ranks read and shuffle

_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def output_schema() -> pa.Schema:
    return pa.schema([(LABEL, pa.float32()), *[(c, pa.float32()) for c in INT_COLUMNS],
                      *[(c, pa.int64()) for c in CAT_COLUMNS]])


def _open_text(path: str) -> pa.NativeFile | io.BufferedReader:
    if path.endswith(".gz"):
        return pa.CompressedInputStream(pa.OSFile(path), "gzip")
    return pa.OSFile(path)


def _hex_values(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values as uint64, rows that are not 0-16 hex digits) of a string column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
    bad = lengths > 16
    padded = pc.utf8_lpad(pc.if_else(pa.array(bad), "", arr), width=16, padding="0")
    offsets = np.frombuffer(padded.buffers()[1], np.int32, len(padded) + 1, padded.offset * 4)
    data = np.frombuffer(padded.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    nib = _HEX[data.reshape(len(padded), 16)]
    bad |= (nib == 255).any(axis=1)
    nib = np.where(nib == 255, 0, nib).astype(np.uint64)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    return (nib << shifts).sum(axis=1, dtype=np.uint64), bad


_INT_PATTERN = r"^-?[0-9]{1,18}$"


def _convert(table: pa.Table, num_embeddings: list[int]) -> tuple[pa.Table, np.ndarray, list[str]]:
    """Raw string columns -> the preprocessed table; also a mask of bad rows and, per bad row, why."""
    n = table.num_rows
    bad = np.zeros(n, bool)
    why = np.empty(n, object)

    def flag(mask: np.ndarray, reason: str) -> None:
        new = mask & ~bad
        why[new] = reason
        bad[:] |= mask

    def ints(name: str) -> np.ndarray:
        col = table.column(name)
        empty = pc.equal(col, "").to_numpy(zero_copy_only=False)
        ok = pc.match_substring_regex(col, _INT_PATTERN).to_numpy(zero_copy_only=False) | empty
        flag(~ok, f"{name} is not an integer")
        clean = pc.if_else(pa.array(ok & ~empty), col, "0")
        return pc.cast(clean, pa.int64()).to_numpy()

    label = ints(LABEL)
    flag((label != 0) & (label != 1) & ~bad, "label is not 0 or 1")
    cols: dict[str, np.ndarray] = {LABEL: label.astype(np.float32)}
    for name in INT_COLUMNS:
        cols[name] = np.log1p(np.maximum(ints(name), 0).astype(np.float64)).astype(np.float32)
    for j, name in enumerate(CAT_COLUMNS):
        values, nonhex = _hex_values(table.column(name))
        flag(nonhex, f"{name} is not a hex value")
        cols[name] = (values % np.uint64(num_embeddings[j])).astype(np.int64)
    out = pa.table(cols, schema=output_schema())
    return out, bad, [str(w) for w in why[bad]]


def read_file(path: str, num_embeddings: list[int], bad_lines: str = "error",
              block_rows: int = 262_144) -> Iterator[tuple[pa.Table, int]]:
    """The preprocessed rows of one Criteo file in blocks, with the number of bad lines skipped in each."""
    if len(num_embeddings) != 26:
        raise DataError(f"criteo: num_embeddings needs 26 values, got {len(num_embeddings)}")
    wrong_width: list[tuple[int | None, int]] = []

    def on_invalid(row) -> str:
        wrong_width.append((row.number, row.actual_columns))
        return "skip"

    read = pacsv.ReadOptions(column_names=RAW_COLUMNS, block_size=1 << 24, use_threads=False)
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False, invalid_row_handler=on_invalid)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in RAW_COLUMNS}, strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    try:
        reader = pacsv.open_csv(_open_text(path), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, OSError) as e:
        if "Empty CSV file" in str(e):
            return
        raise DataError(f"{path}: not a readable Criteo file ({e})") from None
    rows_before = 0  # rows of earlier blocks that parsed into 40 fields
    width_lines: list[int] = []  # line numbers of the lines skipped for their width so far
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: cannot be read after line {rows_before + len(width_lines)} ({e})") from None
        new_width = [(n if n is not None else rows_before + len(width_lines) + 1, got) for n, got in wrong_width]
        wrong_width.clear()
        if new_width and bad_lines == "error":
            line, got = new_width[0]
            raise DataError(f"{path}, line {line}: {got} tab-separated field(s), a Criteo line has 40")
        width_lines += [n for n, _ in new_width]
        table = pa.Table.from_batches([batch])
        out, bad, why = _convert(table, num_embeddings)
        skipped = len(new_width)
        if bad.any():
            if bad_lines == "error":
                # no line was skipped for its width (that raised already), so rows and lines agree
                raise DataError(f"{path}, line {rows_before + int(np.flatnonzero(bad)[0]) + 1}: {why[0]}")
            out = out.filter(pa.array(~bad))
            skipped += int(bad.sum())
        rows_before += table.num_rows
        yield out, skipped


def convert_file(src: str, dest: str, num_embeddings: list[int], bad_lines: str = "error") -> dict:
    """One Criteo file -> one parquet file (row groups of ROW_GROUP_ROWS); returns rows written and skipped."""
    tmp = Path(dest + ".tmp")
    rows = skipped = 0
    with pq.ParquetWriter(tmp, output_schema()) as w:
        for table, n_bad in read_file(src, num_embeddings, bad_lines):
            w.write_table(table, row_group_size=ROW_GROUP_ROWS)
            rows += table.num_rows
            skipped += n_bad
    tmp.replace(dest)
    return {"file": src, "rows": rows, "skipped": skipped}


def input_files(path: str) -> list[str]:
    """A file, a directory of day files, or a glob -> sorted Criteo files (plain or .gz)."""
    import glob

    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    elif any(ch in path for ch in "*?["):
        files = sorted(glob.glob(str(p)))
    else:
        files = [str(p)] if p.exists() else []
    if not files:
        raise DataError(f"{path}: no Criteo files found")
    return files




def schema_for(data_spec) -> FeatureSchema:
    sizes = data_spec.criteo.table_sizes()
    return FeatureSchema(sparse=tuple(SparseFeature(c, n, False, "context") for c, n in zip(CAT_COLUMNS, sizes)),
                         dense=tuple(INT_COLUMNS), label=LABEL, timestamp=None, positive_if=None,
                         info={"source": "criteo"})


def converted(files: list[str], sizes: list[int], bad_lines: str) -> list[str]:
    """Parquet copies of Criteo files, one task per file, made once per (files, sizes, bad_lines) and cached."""
    import json

    from .parallel import cache_key, cached_dir, fan_out, log

    def build(tmp: Path) -> None:
        calls = [(src, str(tmp / f"{i:05d}-{Path(src).name.removesuffix('.gz')}.parquet"), sizes, bad_lines)
                 for i, src in enumerate(files)]
        stats = fan_out(convert_file, calls, f"converted {len(files)} Criteo file(s)")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1))
        rows, skipped = sum(s["rows"] for s in stats), sum(s["skipped"] for s in stats)
        log.info(f"criteo: {rows:,} rows from {len(files)} file(s)" + (f", {skipped:,} bad line(s) skipped" if skipped else ""))

    out, _ = cached_dir("criteo", cache_key("criteo", {"sizes": sizes, "bad_lines": bad_lines}, files), build)
    return sorted(str(p) for p in out.glob("*.parquet"))


def prepare(data_spec) -> tuple[FeatureSchema, dict[str, list[str]]]:
    """Convert (cached) and split: ``paths`` name each split's files (days); ``path`` is split by ``split``."""
    from .split import SPLITS

    schema = schema_for(data_spec)
    sizes, bad = data_spec.criteo.table_sizes(), data_spec.criteo.bad_lines
    if data_spec.paths is not None:
        paths = {s: converted(input_files(getattr(data_spec.paths, s)), sizes, bad) for s in SPLITS}
    else:
        from . import _split_cached

        paths = _split_cached(data_spec, schema, converted(input_files(data_spec.path), sizes, bad), validate=False)
    schema.info["rows"] = {s: sum(pq.read_metadata(f).num_rows for f in fs) for s, fs in paths.items()}
    return schema, paths
