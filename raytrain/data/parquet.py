"""Parquet / Arrow data sets with a declared schema.

Files are checked on the driver before any worker starts: every declared column present, ids
inside their tables, no NaN labels, and every file readable. Errors name the file, column and
row group. Validation runs as one task per file; training workers stream their row groups (``raytrain.data.stream``).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError
from .schema import FeatureSchema, Group, SparseFeature


def schema_for(data_spec, history: bool = True) -> FeatureSchema:
    """The declared schema; with ``history`` (and ``data.history`` set), plus the history features' columns."""
    cols = data_spec.columns
    user = set(cols.user_features)
    item = set(cols.item_features)

    def group(name: str) -> Group:
        return "item" if name in item else ("user" if name in user else "context")

    sparse = [SparseFeature(n, int(c), False, group(n)) for n, c in cols.sparse.items()]
    sparse += [SparseFeature(n, int(c), True, group(n)) for n, c in cols.multi_valued.items()]
    dense = list(cols.dense)
    groups = {d: group(d) for d in cols.dense if group(d) != "context"}
    seen = None
    hspec = data_spec.history if history else None
    if hspec is not None:
        from .history import GROUPS, columns

        added, lists = columns(hspec.fraction)
        taken = sorted(set(added + lists) & (set(cols.sparse) | set(cols.multi_valued) | set(cols.dense)))
        if taken:
            raise DataError(f"data.history adds columns named {', '.join(taken)}: rename the declared column(s)")
        dense += added
        groups.update({d: GROUPS[d] for d in added})
        if hspec.user_vectors:
            from .history import user_vector_names

            vectors = user_vector_names(hspec.user_vectors)
            dense += vectors
            groups.update(dict.fromkeys(vectors, "user"))
        sparse += [SparseFeature(n, int(cols.sparse[hspec.item]), True, "user") for n in lists]
        seen = lists[0]
    return FeatureSchema(
        sparse=tuple(sparse),
        dense=tuple(dense),
        dense_groups=groups,
        seen_items=seen,
        label=data_spec.label.column,
        timestamp=cols.timestamp,
        positive_if=data_spec.label.positive_if,
        grade=data_spec.label.column if data_spec.label.ordinal else None,
        extra_labels=data_spec.label.extra_rules(),
        info={"source": "parquet"},
    )


def expand(path: str) -> list[str]:
    """A file, a directory of parquet files, or a glob -> sorted file list."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
    elif any(ch in path for ch in "*?["):
        files = sorted(glob.glob(os.path.expanduser(path), recursive=True))
    else:
        files = [str(p)] if p.exists() else []
    if not files:
        raise DataError(f"{path}: no parquet files found")
    return files


def _is_list_of_integers(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _id_range(rg_meta, col_index: int, column: pa.ChunkedArray) -> tuple[int, int]:
    stats = rg_meta.column(col_index).statistics if col_index >= 0 else None
    if stats is not None and stats.has_min_max and isinstance(stats.min, (int, np.integer)):
        return int(stats.min), int(stats.max)
    mm = pc.min_max(column)
    return int(mm["min"].as_py()), int(mm["max"].as_py())


def validate_files(files: list[str], schema: FeatureSchema) -> int:
    """Check every file and row group, one task per file (``fan_out``); returns the total row count. The first
    problem found is raised with the same text as a serial check."""
    from .parallel import fan_out

    return sum(fan_out(validate_file, [(f, schema) for f in files], f"validated {len(files)} file(s)"))


def validate_file(path: str, schema: FeatureSchema) -> int:
    """Check one file, row group by row group; returns its row count."""
    total = 0
    needed = schema.columns()
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    missing = [c for c in needed if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the file has {', '.join(names)}")
    leaf_index = {pf.metadata.schema.column(i).path.split(".")[0]: i for i in range(pf.metadata.num_columns)}
    for rg in range(pf.num_row_groups):
        where = f"{path} (row group {rg})"
        try:
            table = pf.read_row_group(rg, columns=needed)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{where}: cannot be read ({e})") from None
        meta = pf.metadata.row_group(rg)
        for f in schema.sparse:
            col = table.column(f.name)
            if f.multi_valued:
                if not _is_list_of_integers(col.type):
                    raise DataError(f"{where}: column {f.name} must hold lists of integer ids, has {col.type}")
                if col.null_count:
                    raise DataError(f"{where}: column {f.name} has {col.null_count} null list(s) (an empty list is "
                                    "a row without ids)")
                col = pc.list_flatten(col)
                if col.null_count:
                    raise DataError(f"{where}: column {f.name} has {col.null_count} null id(s) inside its lists")
                if len(col) == 0:
                    continue
                lo, hi = _id_range(meta, -1, col)
            else:
                if not pa.types.is_integer(col.type):
                    raise DataError(f"{where}: column {f.name} must hold integer ids, has {col.type}")
                if col.null_count:
                    raise DataError(f"{where}: column {f.name} has {col.null_count} null id(s)")
                if len(col) == 0:
                    continue
                lo, hi = _id_range(meta, leaf_index.get(f.name, -1), col)
            if lo < 0 or hi >= f.cardinality:
                bad = lo if lo < 0 else hi
                raise DataError(
                    f"{where}: column {f.name} has id {bad}, outside [0, {f.cardinality}) "
                    f"(the declared cardinality)"
                )
        label = table.column(schema.label)
        if not _is_number(label.type):
            raise DataError(f"{where}: label column {schema.label} must be numeric or boolean, has {label.type}")
        if label.null_count:
            raise DataError(f"{where}: label column {schema.label} has {label.null_count} null value(s)")
        if pa.types.is_floating(label.type):
            nan = int(pc.sum(pc.is_nan(label)).as_py() or 0)
            if nan:
                raise DataError(f"{where}: label column {schema.label} has {nan} NaN value(s)")
        for d in schema.dense:
            col = table.column(d)
            if not _is_number(col.type):
                raise DataError(f"{where}: dense column {d} must be numeric, has {col.type}")
            if col.null_count or (pa.types.is_floating(col.type) and int(pc.sum(pc.is_nan(col)).as_py() or 0)):
                raise DataError(f"{where}: dense column {d} has null or NaN value(s)")
        total += table.num_rows
    return total
