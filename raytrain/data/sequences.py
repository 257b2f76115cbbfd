"""Users' time-ordered action histories (jagged), and the leave-one-out split by position.

A history is every action of a user sorted by time (ties keep the order of the source). Items are ids ``1..n`` (``0``
is padding). The split (``leave_one_out``): each user's last item is the test target, the one before it the
validation target; training sees only the rest, so no history used to predict an item holds anything after it.
Users with fewer than 3 actions are left out of the protocol (they have nothing to train on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class Sequences:
    items: np.ndarray  # [T] int64 item ids, users' histories one after another
    timestamps: np.ndarray  # [T] int64 (seconds)
    offsets: np.ndarray  # [U + 1] int64: user u's history is items[offsets[u]:offsets[u + 1]]
    num_items: int  # ids lie in [1, num_items); 0 is padding
    actions: Optional[np.ndarray] = None  # [T] the action or rating, where the data has one
    user_ids: Optional[np.ndarray] = None  # [U] each history's user id in the source (serving looks users up)
    item_ids: Optional[np.ndarray] = None  # [num_items] the source's id of each item id (0: padding); None: the same

    @property
    def users(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, drop_last: int) -> Sequences:
        """Every history without its last ``drop_last`` actions."""
        lengths = self.lengths()
        user_of = np.repeat(np.arange(self.users), lengths)
        keep = (np.arange(len(self.items)) - self.offsets[user_of]) < (lengths - drop_last)[user_of]
        new_lengths = np.maximum(lengths - drop_last, 0)
        return Sequences(self.items[keep], self.timestamps[keep], np.r_[0, np.cumsum(new_lengths)].astype(np.int64),
                         self.num_items, None if self.actions is None else self.actions[keep], self.user_ids,
                         self.item_ids)


def from_columns(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, action: np.ndarray | None = None,
                 where: str = "data", num_items: int | None = None) -> Sequences:
    """Histories from one row per action. Item ids are remapped to 1..n in sorted order of the source's ids, or, with
    ``num_items``, kept as they are (they must lie in [1, num_items): the id space another model shares)."""
    n = len(user)
    if not (len(item) == len(timestamp) == n) or (action is not None and len(action) != n):
        raise DataError(f"{where}: user, item, timestamp (and action) columns differ in length")
    if n == 0:
        raise DataError(f"{where}: no rows")
    for name, col in (("user", user), ("item", item), ("timestamp", timestamp)):
        if not np.issubdtype(np.asarray(col).dtype, np.integer):
            raise DataError(f"{where}: the {name} column must hold integers, got {np.asarray(col).dtype}")
    if num_items is not None:
        bad = (np.asarray(item) < 1) | (np.asarray(item) >= num_items)
        if bad.any():
            raise DataError(f"{where}: item id {np.asarray(item)[bad][0]} outside [1, {num_items}) (num_items)")
        uniq, dense = np.arange(1, num_items), np.asarray(item, dtype=np.int64) - 1
    else:
        uniq, dense = np.unique(np.asarray(item), return_inverse=True)
    order = np.lexsort((np.arange(n), np.asarray(timestamp), np.asarray(user)))  # by user, time, source order
    users_sorted = np.asarray(user)[order]
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
    offsets = np.r_[starts, n].astype(np.int64)
    return Sequences(items=(dense[order] + 1).astype(np.int64), timestamps=np.asarray(timestamp, np.int64)[order],
                     offsets=offsets, num_items=len(uniq) + 1,
                     actions=None if action is None else np.asarray(action)[order], user_ids=users_sorted[starts],
                     item_ids=None if num_items is not None else np.r_[0, uniq])


@dataclass(frozen=True)
class Split:
    """Leave-one-out by position. ``train``: histories without their last two items (what the model learns from);
    ``validation`` / ``test``: for each user, the history before the target and the target."""

    train: Sequences
    validation_history: Sequences
    validation_target: np.ndarray  # [U]
    test_history: Sequences
    test_target: np.ndarray  # [U]


def leave_one_out(seqs: Sequences, min_length: int = 3) -> Split:
    keep = np.flatnonzero(seqs.lengths() >= min_length)
    if len(keep) == 0:
        raise DataError(f"no user has {min_length} or more actions: nothing to train on and hold out")
    kept = subset(seqs, keep)
    last = kept.offsets[1:] - 1
    return Split(train=kept.take(2), validation_history=kept.take(2), validation_target=kept.items[last - 1],
                 test_history=kept.take(1), test_target=kept.items[last])


def subset(seqs: Sequences, users: np.ndarray) -> Sequences:
    lengths = seqs.lengths()
    keep = np.repeat(np.isin(np.arange(seqs.users), users), lengths)
    kept = lengths[users]
    return Sequences(seqs.items[keep], seqs.timestamps[keep], np.r_[0, np.cumsum(kept)].astype(np.int64),
                     seqs.num_items, None if seqs.actions is None else seqs.actions[keep],
                     None if seqs.user_ids is None else seqs.user_ids[users], seqs.item_ids)


def movielens_sequences(path: str | None = None) -> Sequences:
    """MovieLens-100K's ratings as histories (the rating is the action), from the same source as the CTR data."""
    from .movielens import _raw_files, build_frame

    frame, _, rating = build_frame(_raw_files(path))
    return from_columns(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), frame["timestamp"].to_numpy(),
                        rating.to_numpy(), where="movielens-100k")


def _read_columns(path: str, cols: list[str]):
    """One file's declared columns (a Ray task per file when Ray is up: ``fan_out``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=cols)
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise DataError(f"{path}: cannot read columns {', '.join(cols)} ({e})") from None


def parquet_sequences(files: list[str], user: str, item: str, timestamp: str, action: str | None = None,
                      num_items: int | None = None) -> Sequences:
    """Histories from parquet files with the declared columns (every other column is ignored), read one Ray task per
    file (threads without Ray), as the rest of the driver's data work."""
    import pyarrow as pa

    from .parallel import fan_out

    cols = [user, item, timestamp] + ([action] if action else [])
    table = pa.concat_tables(fan_out(_read_columns, [(f, cols) for f in files], f"read {len(files)} history file(s)"))
    for c in cols:
        if table.column(c).null_count:
            raise DataError(f"{files[0] if len(files) == 1 else 'parquet'}: column {c!r} has nulls")

    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy()

    return from_columns(col(user), col(item), col(timestamp), col(action) if action else None, where="parquet",
                        num_items=num_items)
