"""History features (raytrain.data.history): values, the held-out history rows, parquet files, and no label leak."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from raytrain.data import prepare
from raytrain.data.history import PRIOR, History, history_rows
from raytrain.errors import DataError, SpecError
from raytrain.spec import parse_spec


def test_statistics_and_lists_of_the_history_rows():
    users = np.array([1, 1, 1, 2])
    items = np.array([5, 6, 7, 5])
    ratings = np.array([5.0, 1.0, 4.0, 2.0])
    liked = ratings >= 4
    times = np.array([30, 10, 20, 5])
    h = History(users, items, ratings, liked, times, num_users=4, num_items=9)
    f = h.features(np.array([1, 2, 3, 99]), np.array([5, 8, 5, 1]))
    g = 3.0  # the history's mean rating
    assert f["user_mean_rating"].to_numpy() == pytest.approx(
        [(10 + PRIOR * g) / (3 + PRIOR) - g, (2 + PRIOR * g) / (1 + PRIOR) - g, 0.0, 0.0])
    item5 = (7 + PRIOR * g) / (2 + PRIOR) - g
    assert f["item_mean_rating"].to_numpy() == pytest.approx([item5, 0.0, item5, 0.0])
    assert np.expm1(f["user_log_count"].to_numpy() * 6) == pytest.approx([3, 1, 0, 0], abs=1e-5)
    assert f["user_rated_items"].to_pylist() == [[6, 7, 5], [5], [], []]  # in time order; unknown users: empty
    assert f["user_liked_items"].to_pylist() == [[7, 5], [], [], []]
    capped = h.features(np.array([1, 3]), np.array([5, 5]), max_items=2, pad=0)
    assert capped["user_rated_items"].to_pylist() == [[7, 5], [0]]  # the latest two; the padding id when empty


def test_history_rows_are_a_seeded_share():
    a = history_rows(100_000, 0.2, seed=3)
    assert 0.19 < a.mean() < 0.21
    assert (a == history_rows(100_000, 0.2, seed=3)).all()
    assert (a != history_rows(100_000, 0.2, seed=4)).any()
    assert (a[:500] == history_rows(500, 0.2, seed=3)).all()  # by row number: the same however the data is cut


def _training_auc_gain(users: np.ndarray, y: np.ndarray, feature: np.ndarray, rows: np.ndarray) -> float:
    """Training-row AUC of a logistic regression on the user id (one-hot, as an embedding would) plus the feature,
    minus the same without the feature."""
    n, n_users = len(users), int(users.max()) + 1
    onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), users)), shape=(n, n_users))

    def auc(x) -> float:
        model = LogisticRegression(C=10.0, max_iter=3000).fit(x[rows], y[rows])
        return roc_auc_score(y[rows], model.predict_proba(x[rows])[:, 1])

    return auc(sparse.hstack([onehot, feature[:, None]]).tocsr()) - auc(onehot)


def test_shuffled_labels_gain_nothing_from_history_features():
    """Labels shuffled: nothing is learnable, yet a user-mean feature that leaves a row's own label (or its fold's)
    out lets a model that also knows the user's full mean (its embedding) recover it. Held-out history rows do not."""
    rng = np.random.default_rng(0)
    n_users = 300
    users = np.repeat(np.arange(n_users), rng.integers(20, 150, n_users))
    y = rng.permutation((rng.random(len(users)) < rng.uniform(0.2, 0.8, n_users)[users]).astype(float))
    total, count = np.bincount(users, y, n_users), np.bincount(users, minlength=n_users).astype(float)
    everyone = np.arange(len(users))

    # controls that show the check can see a leak: leave-one-out, and 5-fold out-of-fold statistics
    loo = (total[users] - y) / (count[users] - 1)
    assert _training_auc_gain(users, y, loo, everyone) > 0.3
    fold = rng.integers(0, 5, len(users))
    fold_total = np.stack([np.bincount(users[fold == k], y[fold == k], n_users) for k in range(5)])
    fold_count = np.stack([np.bincount(users[fold == k], minlength=n_users) for k in range(5)])
    oof = (total[users] - fold_total[fold, users]) / np.maximum(count[users] - fold_count[fold, users], 1)
    assert _training_auc_gain(users, y, oof, everyone) > 0.03

    # raytrain's: statistics from held-out history rows; the model trains on the others
    held = history_rows(len(users), 0.2, seed=0)
    hist = History(users[held], np.zeros(held.sum(), dtype=np.int64), y[held], y[held] > 0.5, None, n_users, 1)
    ours = hist.features(users, np.zeros(len(users), dtype=np.int64))["user_mean_rating"].to_numpy()
    assert abs(_training_auc_gain(users, y, ours, np.flatnonzero(~held))) < 0.01


def _ratings_parquet(path, n=6000, seed=0):
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 200, n), rng.integers(0, 300, n)
    rating = np.clip(np.round(3 + rng.normal(size=n) + (users % 3 == 0)), 1, 5)
    df = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": rng.permutation(n), "rating": rating})
    for i in range(3):  # several files, several row groups
        part = df.iloc[i * n // 3:(i + 1) * n // 3]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path / f"part-{i}.parquet", row_group_size=700)
    return df


def _spec(path, **history):
    return parse_spec({"name": "h", "data": {
        "source": "parquet", "path": str(path), "label": {"column": "rating", "positive_if": ">= 4"},
        "columns": {"sparse": {"user_id": 200, "item_id": 300}, "timestamp": "timestamp"},
        "history": {"rating": "rating", **history}}})


def test_parquet_history_features(tmp_path):
    df = _ratings_parquet(tmp_path)
    prepared = prepare(_spec(tmp_path, max_items=5, fraction=0.2).data)
    schema = prepared.schema
    assert schema.seen_items == "user_rated_items" and schema.feature("user_liked_items").cardinality == 300
    assert {"user_mean_rating", "item_log_count"} <= set(schema.dense)
    parts = {s: pd.concat([pq.read_table(f).to_pandas() for f in fs]) for s, fs in prepared.paths.items()}
    trained = sum(len(p) for p in parts.values())
    held = len(df) - trained
    assert 0.1 * len(df) < held < 0.2 * len(df)  # 0.2 of the ~80% training rows
    rows = pd.concat(parts.values())
    lists = rows.groupby("user_id")["user_liked_items"].apply(lambda x: {tuple(v) for v in x})
    assert (lists.apply(len) == 1).all() and rows["user_rated_items"].apply(len).max() == 5
    # the held-out rows are the ones missing from the split, and their mean is what the features report
    merged = df.merge(rows[["user_id", "item_id", "timestamp"]], how="left", indicator=True)
    history = merged[merged["_merge"] == "left_only"]
    g = history["rating"].mean()
    u = history.groupby("user_id")["rating"].agg(["sum", "count"])
    row = rows[rows["user_id"].isin(u.index)].iloc[0]
    s, c = u.loc[row.user_id]
    assert row.user_mean_rating == pytest.approx((s + PRIOR * g) / (c + PRIOR) - g, abs=1e-5)
    assert prepare(_spec(tmp_path, max_items=5, fraction=0.2).data).paths == prepared.paths  # cached


def test_parquet_label_free_history_keeps_every_training_row(tmp_path):
    df = _ratings_parquet(tmp_path)
    prepared = prepare(_spec(tmp_path).data)
    assert "user_mean_rating" not in prepared.schema.dense and "user_liked_items" not in prepared.schema.sparse_names
    parts = {s: pd.concat([pq.read_table(f).to_pandas() for f in fs]) for s, fs in prepared.paths.items()}
    assert sum(len(p) for p in parts.values()) == len(df)
    train = parts["train"]
    items = train.groupby("user_id")["item_id"].apply(list)
    for row in train.head(100).itertuples():
        mine = list(items[row.user_id])
        mine.remove(row.item_id)  # the row itself is left out (one occurrence of its item, and one count)
        assert sorted(row.user_rated_items) == sorted(x for x in mine if x != row.item_id)
        assert np.expm1(row.user_log_count * 6) == pytest.approx(len(mine), abs=1e-3)
    for row in parts["test"].head(100).itertuples():
        assert sorted(row.user_rated_items) == sorted(items.get(row.user_id, []))


def test_parquet_history_errors(tmp_path):
    _ratings_parquet(tmp_path)
    with pytest.raises(DataError, match="history column\\(s\\) 'stars' missing"):
        prepare(_spec(tmp_path, rating="stars").data)
    with pytest.raises(SpecError, match="history.user 'uid' is not a declared sparse column"):
        _spec(tmp_path, user="uid")
    with pytest.raises(SpecError, match="'history' is for source"):
        parse_spec({"name": "h", "data": {"source": "synthetic", "history": {}}})


def test_user_vectors_file_joins_by_user_and_fills_missing_users_with_zeros(tmp_path):
    from raytrain.data.history import user_vector_columns, user_vector_names

    path = tmp_path / "vectors.parquet"
    pq.write_table(pa.table({"user_id": [7, 3, 150], "user_seq_0": [0.5, -1.0, 2.0], "user_seq_1": [1.0, 2.0, 3.0]}),
                   path)
    cols = user_vector_columns(str(path), np.array([3, 7, 7, 4, 150]))
    assert cols["user_seq_0"].to_pylist() == [-1.0, 0.5, 0.5, 0.0, 2.0]
    assert cols["user_seq_1"].to_pylist() == [2.0, 1.0, 1.0, 0.0, 3.0]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user": [1], "v": [0.1]}), bad)
    with pytest.raises(DataError, match="needs user_id and user_seq_"):
        user_vector_names(str(bad))
    with pytest.raises(DataError, match="not a readable parquet file"):
        user_vector_names(str(tmp_path / "missing.parquet"))
    # on a parquet data set: the vectors become dense user features of every split
    data = tmp_path / "data"
    data.mkdir()
    _ratings_parquet(data, n=900)
    prepared = prepare(_spec(data, user_vectors=str(path)).data)
    assert {"user_seq_0", "user_seq_1"} <= set(prepared.schema.dense)
    assert prepared.schema.dense_groups["user_seq_0"] == "user"
    rows = pd.concat([pq.read_table(f).to_pandas() for fs in prepared.paths.values() for f in fs])
    expected = rows["user_id"].map({7: 0.5, 3: -1.0, 150: 2.0}).fillna(0.0)
    assert np.allclose(rows["user_seq_0"].to_numpy(), expected.to_numpy())
