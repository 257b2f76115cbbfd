"""Request rows -> model inputs: validation, out-of-vocabulary ids, and a feature store for the rest.

A client sends the user and item ids of each row and may send any other feature; the feature store fills
in the rest from the prepared data the models were trained on: a user's features from the user's latest row
(validation and test rows come after training rows, so their history features cover the whole training
split), an item's from the item's latest row. Which features belong to the user or to the item is declared by the
data source in the feature schema (``SparseFeature.group``, ``FeatureSchema.dense_groups``; for parquet, the spec's
``data.columns.user_features`` and ``item_features``); anything else is a context feature the client must send.

Out-of-vocabulary ids (documented in docs/serving.md): an id outside ``[0, cardinality)`` is mapped to the
reserved unknown id 0 with policy ``unknown`` (and counted in the reply) or refused with policy ``reject``.
A user or item id inside the range that the data never showed is "unknown" too: its features are the
store's defaults (id 0, empty lists as [0], dense 0.0, which is what unseen ids get from the history
features) and it is counted the same way.

Cold start (``raytrain.serve.cold_start``): where the model was trained with item text, a row may carry ``item_text``; its
dense text features then come from that text (encoded and projected as in training) instead of the store's. An item
registered by id and text (``serve.new_items``, ``raytrain.serve.registry``) is scored the same way from its id alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..data.batches import Columns
from ..data.schema import FeatureSchema
from .cold_start import MAX_TEXT


class RequestError(ValueError):
    """A bad request: ``status`` is the HTTP code, the message names the field and the row."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class Parsed:
    columns: Columns
    users: list  # the sticky key of each row, as sent
    unknown: dict[str, int] = field(default_factory=dict)  # feature -> rows whose id was unknown / out of range
    cold: list[bool] = field(default_factory=list)  # per row: scored from the item_text it carried


def prepared_rows(data_spec) -> pa.Table:
    """Every prepared row of a data spec, oldest split first: what a feature store is built from."""
    import pyarrow.parquet as pq

    from ..data import prepare

    prepared = prepare(data_spec)
    return pa.concat_tables([pq.read_table(p) for s in ("train", "validation", "test") for p in prepared.paths[s]])


def _key(schema: FeatureSchema, group: str, preferred: str) -> str | None:
    names = [f.name for f in schema.sparse if f.group == group and not f.multi_valued]
    return preferred if preferred in names else (names[0] if names else None)


class FeatureStore:
    def __init__(self, schema: FeatureSchema, table: pa.Table | None, user_key: str = "user_id",
                 item_key: str = "item_id", hashed: frozenset[str] = frozenset(), text=None):
        """``table``: all prepared rows, oldest split first (each user's and item's latest row is its features); None
        where the schema has no user or item id (a Criteo-format model: every row carries all its features).
        ``hashed``: features whose raw value (a hex string, as in the Criteo logs) is hashed as in training.
        ``text``: a ``cold_start.ItemText`` where the model has text features: rows may then carry ``item_text``."""
        self.schema = schema
        self.text = text
        self.new_items: Any = None  # a ``registry.NewItems`` where serve.new_items registers items by id and text
        self.user_key: str | None = _key(schema, "user", user_key)
        self.item_key: str | None = _key(schema, "item", item_key)
        self.hashed = hashed
        self.card = {f.name: f.cardinality for f in schema.sparse}
        self.multi = {f.name for f in schema.sparse if f.multi_valued}
        self.group: dict[str, str] = {f.name: f.group for f in schema.sparse}
        for d in schema.dense:  # declared by the source (parquet: data.columns.user_features / item_features)
            self.group[d] = schema.group_of(d)
        self.values: dict[str, object] = {}
        self.known: dict[str, np.ndarray] = {}
        for key, group in ((self.user_key, "user"), (self.item_key, "item")):
            if key is None or table is None:
                continue
            ids = np.asarray(table.column(key).to_numpy(), dtype=np.int64)
            size = self.card[key]
            last = np.full(size, -1, dtype=np.int64)
            last[ids] = np.arange(len(ids))  # later rows overwrite earlier ones: each id's latest row
            last[0] = -1  # the unknown id keeps the defaults (held-out items' rows carry id 0 and their own features)
            self.known[group] = last >= 0
            rows = last[last >= 0]
            where = np.flatnonzero(last >= 0)
            for name in self.features(group):
                if name == key:
                    continue
                col = table.column(name).take(pa.array(rows))
                if name in self.multi:
                    lists: list = [[0]] * size
                    for i, v in zip(where, col.to_pylist()):
                        lists[i] = v or [0]
                    self.values[name] = lists
                elif name in self.card:
                    arr = np.zeros(size, dtype=np.int64)
                    arr[where] = np.asarray(col.to_numpy(), dtype=np.int64)
                    self.values[name] = arr
                else:
                    arr = np.zeros(size, dtype=np.float32)
                    arr[where] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32)
                    self.values[name] = arr
        self.known_items = np.flatnonzero(self.known["item"]) if "item" in self.known else np.zeros(0, np.int64)
        # what every row must carry: the ids, context features, and the features of a group without an id to look
        # them up by
        kept = {g for g, k in (("user", self.user_key), ("item", self.item_key)) if k is not None and g in self.known}
        self.required = [k for k in (self.user_key, self.item_key) if k is not None] + [
            n for g in ("context", "user", "item") if g not in kept for n in self.features(g)
            if n not in (self.user_key, self.item_key)]

    @property
    def ranks_items(self) -> bool:
        """Whether /recommend can work here: a user id to know whom for, an item id to rank."""
        return self.user_key is not None and self.item_key is not None

    def features(self, group: str) -> list[str]:
        names = [f.name for f in self.schema.sparse] + list(self.schema.dense)
        return [n for n in names if self.group[n] == group]

    def describe(self) -> dict:
        return {
            "user_key": self.user_key, "item_key": self.item_key,
            "sparse": {f.name: {"cardinality": f.cardinality, "multi_valued": f.multi_valued,
                                "group": self.group[f.name]} for f in self.schema.sparse},
            "dense": {d: {"group": self.group[d]} for d in self.schema.dense},
            "required": self.required,
            "known_users": int(self.known["user"].sum()) if "user" in self.known else 0,
            "known_items": int(self.known["item"].sum()) if "item" in self.known else 0,
        }

    def user_context(self, uid: int) -> dict:
        """A user's features as the store holds them (JSON types): the context a decision log records."""
        out: dict = {self.user_key: int(uid)}
        for name in self.features("user"):
            v = self.values.get(name)
            if v is None:
                continue
            x = v[uid]  # type: ignore[index]
            out[name] = [int(i) for i in x] if isinstance(x, list) else x.item()
        return out

    # ---- request parsing ----------------------------------------------------------------------------------

    def parse(self, rows, oov: str = "unknown", max_rows: int | None = None, where: str = "rows") -> Parsed:
        if not isinstance(rows, list) or not rows:
            raise RequestError(f"{where}: expected a non-empty list of objects")
        if max_rows is not None and len(rows) > max_rows:
            raise RequestError(f"{where}: {len(rows)} rows, more than the {max_rows} allowed per request", 413)
        allowed = set(self.card) | set(self.schema.dense) | ({"item_text"} if self.text is not None else set())
        required = self.required
        n = len(rows)
        single = {name: np.zeros(n, dtype=np.int64) for name in self.card if name not in self.multi}
        lists: dict[str, list] = {name: [None] * n for name in self.multi}
        dense = np.zeros((n, len(self.schema.dense)), dtype=np.float32)
        unknown: dict[str, int] = {}
        users = []
        texts: dict[int, str] = {}
        registered = self.registered()
        for r, row in enumerate(rows):
            at = f"{where}[{r}]"
            if not isinstance(row, dict):
                raise RequestError(f"{at}: expected an object, got {type(row).__name__}")
            extra = sorted(set(row) - allowed)
            if "item_text" in extra:
                raise RequestError(f"{at}.item_text: this model was trained without item text (data.text), so it "
                                   "cannot score an item from its text")
            if extra:
                raise RequestError(f"{at}: unknown field(s) {', '.join(map(repr, extra))}; fields: "
                                   f"{', '.join(sorted(allowed))}")
            missing = [k for k in required if k not in row]
            if missing:
                raise RequestError(f"{at}: missing field(s) {', '.join(map(repr, missing))}")
            uid = iid = 0
            if self.user_key is not None:
                uid = self._id(row[self.user_key], self.user_key, at, oov, unknown, self.known.get("user"))
                single[self.user_key][r] = uid
            if self.item_key is not None:
                raw = row[self.item_key]
                if registered and "item_text" not in row and is_registered(raw, registered):
                    texts[r] = registered[raw]  # a registered new item: the unknown row, and its text
                else:
                    iid = self._id(raw, self.item_key, at, oov, unknown, self.known.get("item"))
                single[self.item_key][r] = iid
            users.append(row.get(self.user_key) if self.user_key is not None else None)
            for name in single:
                if name in (self.user_key, self.item_key):
                    continue
                if name in row:
                    single[name][r] = self._id(row[name], name, at, oov, unknown)
                elif self.group[name] in ("user", "item"):
                    single[name][r] = self.values[name][uid if self.group[name] == "user" else iid]  # type: ignore[index]
            for name in self.multi:
                if name in row:
                    v = row[name]
                    if not isinstance(v, list):
                        raise RequestError(f"{at}.{name}: expected a list of ids, got {type(v).__name__}")
                    lists[name][r] = [self._id(x, name, at, oov, unknown) for x in v] or [0]
                else:
                    lists[name][r] = self.values[name][uid if self.group[name] == "user" else iid]  # type: ignore[index]
            for j, name in enumerate(self.schema.dense):
                if name in row:
                    v = row[name]
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                        raise RequestError(f"{at}.{name}: expected a finite number, got {v!r}")
                    dense[r, j] = v
                elif self.group[name] in ("user", "item"):
                    dense[r, j] = self.values[name][uid if self.group[name] == "user" else iid]  # type: ignore[index]
            if "item_text" in row:
                t = row["item_text"]
                if not isinstance(t, str) or not t.strip() or len(t) > MAX_TEXT:
                    raise RequestError(f"{at}.item_text: expected a non-empty string of at most {MAX_TEXT} characters")
                texts[r] = t
        if texts:  # one encoder pass for every row that carried its item's text
            from_text = self.text.features(list(texts.values()))  # type: ignore[union-attr]
            for (r, _), v in zip(texts.items(), from_text):
                for k, j in enumerate(self.text.columns):  # type: ignore[union-attr]
                    if self.schema.dense[j] not in rows[r]:  # a value the client sent wins
                        dense[r, j] = v[k]
        ids = {k: torch.from_numpy(v) for k, v in single.items()}
        packed = {}
        for name, ls in lists.items():
            lens = np.fromiter((len(x) for x in ls), dtype=np.int64, count=n)
            offsets = np.concatenate([[0], np.cumsum(lens)])
            packed[name] = (torch.tensor([x for xs in ls for x in xs], dtype=torch.int64), torch.from_numpy(offsets))
        cols = Columns(self.schema, ids, packed, torch.from_numpy(dense), torch.zeros(n))
        return Parsed(cols, users, unknown, [r in texts for r in range(n)])

    def registered(self) -> dict[int, str]:
        """The items registered by id and text (serve.new_items), re-read if the file changed; {} without one."""
        return self.new_items.refresh() if self.new_items is not None else {}

    def _id(self, v, name: str, at: str, oov: str, unknown: dict, known: np.ndarray | None = None) -> int:
        if isinstance(v, str) and name in self.hashed:
            return _hashed(v, self.card[name], f"{at}.{name}")
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                also = ", or its raw hex value as a string" if name in self.hashed else ""
                raise RequestError(f"{at}.{name}: expected an integer id{also}, got {v!r}")
        if 0 <= v < self.card[name]:
            if known is not None and not known[v]:
                unknown[name] = unknown.get(name, 0) + 1
            return v
        if oov == "reject":
            raise RequestError(f"{at}.{name}: id {v} is outside [0, {self.card[name]}) (serve.oov: reject)")
        unknown[name] = unknown.get(name, 0) + 1
        return 0


def is_registered(v: object, registered: dict[int, str]) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v in registered


def _hashed(v: str, size: int, at: str) -> int:
    """A raw Criteo categorical (0-16 hex digits; empty: missing) -> its row, as ``data.criteo`` hashes it."""
    if v == "":
        return 0
    if len(v) > 16 or any(c not in "0123456789abcdefABCDEF" for c in v):
        raise RequestError(f"{at}: expected an integer id or 1-16 hex digits, got {v[:40]!r}")
    return int(v, 16) % size
