"""History features for any data set with user, item and rating (or label) columns, without a label leak.

Label-free features, from all training rows: each user's and item's log count and the items the user rated (a
training row leaves itself out: its own item and one from the counts). Which items a user rated says nothing of a
row's label, so nothing leaks.

Label-derived features, only with ``history.fraction > 0``: the user's and item's shrunk mean rating and the
items the user liked, from **history rows**: a seeded ``fraction`` of the training split that is used only for
them and is not trained on. The model's targets are the other training rows; validation and test rows see the
same history rows' statistics, so training and evaluation rows are described alike.

Why not leave-one-out or out-of-fold statistics over all training rows: the model also learns each user's (and
item's) embedding from those rows' labels, which is enough to recover the label sum the statistic left out. With
leave-one-out that sum is the row's own label; with k folds it is the mean label of the row's fold. A model given
shuffled labels then still "learns" its training rows from the features (``tests/unit/test_history.py`` measures
both controls: +0.44 and about +0.07 training AUC); with disjoint history rows it gains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .schema import Group
from .synthetic import _splitmix

DENSE = ["user_mean_rating", "item_mean_rating", "user_log_count", "item_log_count"]
LISTS = ["user_rated_items", "user_liked_items"]
GROUPS: dict[str, Group] = {"user_mean_rating": "user", "item_mean_rating": "item", "user_log_count": "user",
                            "item_log_count": "item", "user_rated_items": "user", "user_liked_items": "user"}
LABEL_FREE = ["user_log_count", "item_log_count", "user_rated_items"]
USER_VECTOR_PREFIX = "user_seq_"  # the columns of a user-vectors file (raytrain data user-vectors)
PRIOR = 5.0  # means are shrunk towards the global mean as if every id had this many more ratings at it


def columns(fraction: float) -> tuple[list[str], list[str]]:
    """(dense, list) columns the history adds: label-derived ones only when some rows are held out for them."""
    keep = DENSE + LISTS if fraction > 0 else LABEL_FREE
    return [c for c in DENSE if c in keep], [c for c in LISTS if c in keep]


def history_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of ``n`` training rows (in their global order) are history rows: a seeded hash of the row number, so
    the choice is the same however the files are cut."""
    h = _splitmix(np.arange(n, dtype=np.uint64) ^ np.uint64(seed * 0x2545F491 + 0x9E37))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


@dataclass
class _Lists:
    """Per user, items in time order (CSR: ``items[ends[u] - counts[u]:ends[u]]``)."""

    items: np.ndarray
    ends: np.ndarray
    counts: np.ndarray

    @classmethod
    def build(cls, users: np.ndarray, items: np.ndarray, order: np.ndarray, num_users: int) -> "_Lists":
        idx = np.lexsort((order, users))
        counts = np.bincount(users, minlength=num_users)
        return cls(items[idx], np.cumsum(counts), counts)

    def gather(self, users: np.ndarray, max_items: int | None, pad: int | None,
               own: np.ndarray | None = None) -> pa.ListArray:
        """Each query user's last ``max_items`` items, less the row's own item ``own`` where it is not -1 (an empty
        list holds ``pad`` when it is given)."""
        known = users < len(self.counts)
        safe = np.where(known, users, 0)
        lengths = np.where(known, self.counts[safe], 0)
        starts = np.where(known, self.ends[safe], 0) - lengths
        flat_pos = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        values = self.items[flat_pos + np.arange(int(lengths.sum()))]
        if own is not None:  # a row that is itself in the lists: leave its item out
            keep = values != np.repeat(own, lengths)
            lengths = np.bincount(np.repeat(np.arange(len(users)), lengths)[keep], minlength=len(users))
            values = values[keep]
        if max_items is not None and (lengths > max_items).any():
            ends = np.cumsum(lengths)
            cut = np.minimum(lengths, max_items)
            pos = np.repeat(ends - cut - np.concatenate([[0], np.cumsum(cut)[:-1]]), cut)
            values, lengths = values[pos + np.arange(int(cut.sum()))], cut
        if pad is not None:
            empty = lengths == 0
            lengths = np.where(empty, 1, lengths)
            out = np.empty(int(lengths.sum()), dtype=np.int64)
            filled = np.repeat(~empty, lengths)
            out[filled] = values
            out[~filled] = pad
            values = out
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int64)))


class History:
    """Statistics for any rows (training targets, validation, test, serving). Label-derived ones (mean rating,
    liked items) come from the held-out history rows only; label-free ones (counts, rated items) from the
    ``seen`` rows when given (all training rows: which items a user rated says nothing of a row's label), else
    from the history rows too."""

    def __init__(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, liked: np.ndarray,
                 order: np.ndarray | None, num_users: int, num_items: int,
                 seen: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None):
        users, items = users.astype(np.int64), items.astype(np.int64)
        ratings = ratings.astype(np.float64)
        order = np.arange(len(users)) if order is None else order
        self.global_mean = float(ratings.mean()) if len(ratings) else 0.0
        seen_users, seen_items, seen_order = (users, items, order) if seen is None else seen
        seen_users, seen_items = seen_users.astype(np.int64), seen_items.astype(np.int64)
        seen_order = np.arange(len(seen_users)) if seen_order is None else seen_order
        self.stats = {}
        for name, ids, seen_ids, size in (("user", users, seen_users, num_users), ("item", items, seen_items, num_items)):
            self.stats[name] = (np.bincount(ids, weights=ratings, minlength=size), np.bincount(ids, minlength=size),
                                np.bincount(seen_ids, minlength=size))
        liked = liked.astype(bool)
        self.rated = _Lists.build(seen_users, seen_items, seen_order, num_users)
        self.liked = _Lists.build(users[liked], items[liked], order[liked], num_users)

    def features(self, users: np.ndarray, items: np.ndarray, max_items: int | None = None, pad: int | None = None,
                 is_seen: np.ndarray | None = None) -> dict[str, pa.Array]:
        """``is_seen``: which query rows are among the seen rows (their own row leaves the counts and lists)."""
        users, items = users.astype(np.int64), items.astype(np.int64)
        seen = np.zeros(len(users), dtype=bool) if is_seen is None else is_seen
        out: dict[str, pa.Array] = {}
        for name, ids in (("user", users), ("item", items)):
            total, count, seen_count = self.stats[name]
            known = ids < len(count)
            safe = np.where(known, ids, 0)
            s = np.where(known, total[safe], 0.0)
            c = np.where(known, count[safe], 0).astype(np.float64)
            mean = (s + PRIOR * self.global_mean) / (c + PRIOR)
            out[f"{name}_mean_rating"] = pa.array((mean - self.global_mean).astype(np.float32))
            n = np.where(known, seen_count[safe], 0) - seen
            out[f"{name}_log_count"] = pa.array((np.log1p(n) / 6.0).astype(np.float32))
        out["user_rated_items"] = self.rated.gather(users, max_items, pad, np.where(seen, items, -1))
        out["user_liked_items"] = self.liked.gather(users, max_items, pad)
        return {k: out[k] for k in DENSE + LISTS}


def user_vector_names(path: str) -> list[str]:
    """The vector columns of a user-vectors file (``raytrain data user-vectors``: ``user_id``, ``user_seq_*``)."""
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"history.user_vectors: {path} is not a readable parquet file ({e})") from None
    vec = [n for n in names if n.startswith(USER_VECTOR_PREFIX)]
    if "user_id" not in names or not vec:
        raise DataError(f"history.user_vectors: {path} needs user_id and {USER_VECTOR_PREFIX}* columns (write it "
                        "with raytrain data user-vectors); it has " + ", ".join(names))
    return vec


def user_vector_columns(source: str | pa.Table, users: np.ndarray) -> dict[str, pa.Array]:
    """Each row's user vector from the file (or the table read from it once: ``read_user_vectors``), a user-level
    feature that holds no label; users the file lacks get zeros."""
    table = read_user_vectors(source) if isinstance(source, str) else source
    names = [n for n in table.column_names if n.startswith(USER_VECTOR_PREFIX)]
    ids = table.column("user_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[order], users), 0, max(len(ids) - 1, 0))
    found = (ids[order][pos] == users) if len(ids) else np.zeros(len(users), dtype=bool)
    rows = order[pos]
    return {n: pa.array(np.where(found, table.column(n).to_numpy()[rows], 0.0).astype(np.float32)) for n in names}


def read_user_vectors(path: str) -> pa.Table:
    """A user-vectors file, its columns checked (``user_vector_names``)."""
    user_vector_names(path)
    return pq.read_table(path)
