"""History features for a parquet split: the training files' user, item, rating and time columns are read once,
then every file is rewritten with the history columns (``raytrain.data.history``), one task per file (``fan_out``).

The driver holds the training split's user, item, rating and time columns (about 32 bytes a row) and the
statistics; the rows themselves stream file by file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from ..log import get_logger
from .history import History, columns, history_rows, read_user_vectors, user_vector_columns
from .parallel import fan_out
from .schema import FeatureSchema
from .split import ROW_GROUP_ROWS

log = get_logger(__name__)
SPLITS = ("train", "validation", "test")


def _values(table: pa.Table, data_spec, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(the value averaged, whether the row is liked) of each row."""
    hspec = data_spec.history
    raw = table.column(data_spec.label.column).to_numpy(zero_copy_only=False).astype(np.float64)
    liked = np.asarray(data_spec.label.binarise(raw), dtype=np.float64) > 0.5
    if hspec.rating is None:
        return liked.astype(np.float64), liked
    if hspec.rating not in table.column_names:
        raise DataError(f"{path}: history.rating column {hspec.rating!r} is missing")
    col = table.column(hspec.rating)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) or col.null_count:
        raise DataError(f"{path}: history.rating column {hspec.rating!r} must be numeric without nulls, has "
                        f"{col.type} ({col.null_count} null)")
    values = col.to_numpy(zero_copy_only=False).astype(np.float64)
    if np.isnan(values).any():
        raise DataError(f"{path}: history.rating column {hspec.rating!r} has NaN value(s)")
    return values, liked


def _read_train(path: str, data_spec, ts: str | None) -> dict[str, np.ndarray]:
    hspec = data_spec.history
    cols = [hspec.user, hspec.item, data_spec.label.column] + [c for c in (hspec.rating, ts) if c]
    missing = [c for c in cols if c not in pq.read_schema(path).names]
    if missing:
        raise DataError(f"{path}: history column(s) {', '.join(repr(c) for c in missing)} missing")
    table = pq.read_table(path, columns=list(dict.fromkeys(cols)))
    values, liked = _values(table, data_spec, path)
    out = {"user": table.column(hspec.user).to_numpy(), "item": table.column(hspec.item).to_numpy(),
           "value": values, "liked": liked}
    if ts:
        out["time"] = table.column(ts).to_numpy()
    return out


def _write(path: str, out: str, keep: np.ndarray | None, history: History, data_spec,
           vectors: pa.Table | None) -> int:
    hspec = data_spec.history
    table = pq.read_table(path)
    if keep is not None:
        table = table.filter(pa.array(keep))
    feats = history.features(table.column(hspec.user).to_numpy(), table.column(hspec.item).to_numpy(),
                             hspec.max_items, is_seen=np.full(table.num_rows, keep is not None))
    dense, lists = columns(hspec.fraction)
    if vectors is not None:
        found = user_vector_columns(vectors, table.column(hspec.user).to_numpy())
        feats, dense = {**feats, **found}, dense + list(found)
    for name in dense + lists:
        table = table.append_column(name, feats[name])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, row_group_size=ROW_GROUP_ROWS)
    return table.num_rows


def with_history(paths: dict[str, list[str]], schema: FeatureSchema, data_spec, out_dir: Path) -> None:
    """Write ``out_dir/<split>/part-*.parquet``: the training files less their history rows, every file with the
    history features."""
    hspec = data_spec.history
    parts = fan_out(_read_train, [(f, data_spec, schema.timestamp) for f in paths["train"]], "read training history")
    sizes = [len(p["user"]) for p in parts]
    held = history_rows(sum(sizes), hspec.fraction, data_spec.split.seed)
    if held.all() or (hspec.fraction > 0 and not held.any()):
        raise DataError(f"history.fraction {hspec.fraction} of {len(held)} training rows leaves no history or no "
                        "training rows")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    cards = {f.name: f.cardinality for f in schema.sparse}
    history = History(cat["user"][held], cat["item"][held], cat["value"][held], cat["liked"][held],
                      cat["time"][held] if "time" in cat else None, cards[hspec.user], cards[hspec.item],
                      seen=(cat["user"], cat["item"], cat.get("time")))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    vectors = read_user_vectors(hspec.user_vectors) if hspec.user_vectors else None  # once, not once per file
    calls: list[tuple] = [(f, str(out_dir / "train" / f"part-{i:05d}.parquet"), ~held[bounds[i]:bounds[i + 1]],
                           history, data_spec, vectors) for i, f in enumerate(paths["train"])]
    for split in SPLITS[1:]:
        calls += [(f, str(out_dir / split / f"part-{i:05d}.parquet"), None, history, data_spec, vectors)
                  for i, f in enumerate(paths[split])]
    rows = fan_out(_write, calls, "history features")
    log.info(f"history features from {int(held.sum()):,} held-out training rows; {sum(rows):,} rows written "
             f"({int((~held).sum()):,} to train on)")
