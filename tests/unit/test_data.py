"""Data sources, validation of bad data, and batches -> KeyedJaggedTensor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raytrain.data import prepare
from raytrain.data.batches import Columns
from raytrain.data.parquet import validate_files
from raytrain.data.schema import FeatureSchema, SparseFeature
from raytrain.data.synthetic import CHUNK, SyntheticRows, _hidden_weight, generate_chunk
from raytrain.errors import DataError
from raytrain.spec import parse_spec

SCHEMA = FeatureSchema(
    sparse=(SparseFeature("user", 10), SparseFeature("item", 20), SparseFeature("tags", 5, multi_valued=True)),
    dense=("x",),
    label="y",
)


def _table(n=100, seed=0, **replace):
    rng = np.random.default_rng(seed)
    cols = {
        "user": pa.array(rng.integers(0, 10, n)),
        "item": pa.array(rng.integers(0, 20, n)),
        "tags": pa.array([list(rng.integers(0, 5, rng.integers(1, 4))) for _ in range(n)], pa.list_(pa.int64())),
        "x": pa.array(rng.standard_normal(n)),
        "y": pa.array(rng.integers(0, 2, n).astype(float)),
        "ts": pa.array(np.arange(n)),
    }
    cols.update(replace)
    return pa.table(cols)


def _write(tmp_path, table, name="d.parquet", row_group_size=50):
    path = tmp_path / name
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def test_parquet_valid_files_pass(tmp_path):
    assert validate_files([_write(tmp_path, _table())], SCHEMA) == 100


def test_out_of_range_id_names_file_row_group_and_column(tmp_path):
    items = np.zeros(100, dtype=np.int64)
    items[73] = 20  # cardinality is 20: ids 0..19
    path = _write(tmp_path, _table(item=pa.array(items)))
    with pytest.raises(DataError) as info:
        validate_files([path], SCHEMA)
    assert str(info.value) == f"{path} (row group 1): column item has id 20, outside [0, 20) (the declared cardinality)"


def test_negative_multi_valued_id(tmp_path):
    tags = [[1]] * 99 + [[2, -1]]
    path = _write(tmp_path, _table(tags=pa.array(tags, pa.list_(pa.int64()))))
    with pytest.raises(DataError, match=r"\(row group 1\): column tags has id -1, outside \[0, 5\)"):
        validate_files([path], SCHEMA)


def test_nan_label_and_missing_column_and_corrupt_file(tmp_path):
    y = np.ones(100)
    y[[3, 60, 61]] = np.nan
    path = _write(tmp_path, _table(y=pa.array(y)))
    with pytest.raises(DataError) as info:
        validate_files([path], SCHEMA)
    assert str(info.value) == f"{path} (row group 0): label column y has 1 NaN value(s)"

    path = _write(tmp_path, _table().drop_columns(["item"]), "missing.parquet")
    with pytest.raises(DataError) as info:
        validate_files([path], SCHEMA)
    assert str(info.value).startswith(f"{path}: missing column(s) item; the file has user, tags, x, y, ts")

    good = _write(tmp_path, _table(), "good.parquet")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(open(good, "rb").read()[: 700])
    with pytest.raises(DataError, match=f"{corrupt}: not a readable parquet file"):
        validate_files([str(corrupt)], SCHEMA)


def test_worker_side_check_names_the_row():
    t = _table(n=10, item=pa.array([0, 1, 2, 3, 4, 5, 6, 99, 8, 9]))
    with pytest.raises(DataError) as info:
        Columns.from_arrow(SCHEMA, t, "train shard of rank 1")
    assert str(info.value) == (
        "train shard of rank 1: column item has id 99 at row 7, outside [0, 20) (1 bad id(s) in all)"
    )


def test_batch_builds_feature_major_kjt_with_multi_valued_rows():
    t = _table(n=6, tags=pa.array([[0], [1, 2], [3], [4, 4, 4], [0, 1], [2]], pa.list_(pa.int64())))
    cols = Columns.from_arrow(SCHEMA, t, "t")
    b = cols.batch(torch.tensor([3, 1]))
    kjt = b.sparse
    assert kjt.keys() == ["user", "item", "tags"]
    d = kjt.to_dict()
    assert d["tags"].lengths().tolist() == [3, 2]
    assert d["tags"].values().tolist() == [4, 4, 4, 1, 2]
    assert d["user"].values().tolist() == [t["user"][3].as_py(), t["user"][1].as_py()]
    assert b.label.tolist() == [t["y"][3].as_py(), t["y"][1].as_py()]
    assert b.dense.shape == (2, 1)


def test_label_rule_applies_to_parquet_labels(tmp_path):
    schema = FeatureSchema(SCHEMA.sparse, ("x",), "y", positive_if=">= 4")
    t = _table(n=4, y=pa.array([5.0, 3.0, 4.0, 1.0]))
    assert Columns.from_arrow(schema, t, "t").label.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_parquet_source_splits_one_dataset_deterministically(tmp_path):
    src = _write(tmp_path, _table(n=4000), "all.parquet", row_group_size=700)
    doc = {"name": "p", "data": {"source": "parquet", "path": src, "label": {"column": "y"},
                                "columns": {"sparse": {"user": 10, "item": 20}, "multi_valued": {"tags": 5},
                                            "dense": ["x"], "timestamp": "ts"},
                                "split": {"fractions": [0.8, 0.1, 0.1], "seed": 5}}}
    a = prepare(parse_spec(doc).data, str(tmp_path / "a"))
    b = prepare(parse_spec(doc).data, str(tmp_path / "b"))
    sizes = {s: pq.read_metadata(f[0]).num_rows for s, f in a.paths.items()}
    assert sum(sizes.values()) == 4000
    assert 3000 < sizes["train"] < 3400 and 250 < sizes["validation"] < 550
    for s in a.paths:
        assert pq.read_table(a.paths[s][0]).equals(pq.read_table(b.paths[s][0]))
    doc["data"]["split"]["method"] = "time"
    c = prepare(parse_spec(doc).data, str(tmp_path / "c"))
    ts = {s: pq.read_table(c.paths[s][0]).column("ts").to_numpy() for s in c.paths}
    assert ts["train"].max() < ts["validation"].min() <= ts["validation"].max() < ts["test"].min()


def test_a_split_is_made_once_per_spec_and_input_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAYTRAIN_CACHE", str(tmp_path / "cache"))
    src = _write(tmp_path, _table(n=3000), "all.parquet", row_group_size=400)
    doc = {"name": "p", "data": {"source": "parquet", "path": src, "label": {"column": "y"},
                                "columns": {"sparse": {"user": 10, "item": 20}, "multi_valued": {"tags": 5},
                                            "dense": ["x"]}}}
    a = prepare(parse_spec(doc).data)
    assert "reusing the split" not in capsys.readouterr().out
    b = prepare(parse_spec(doc).data)
    assert b.paths == a.paths and "data: reusing the split prepared earlier" in capsys.readouterr().out
    doc["data"]["split"] = {"seed": 9}  # another spec: another split
    c = prepare(parse_spec(doc).data)
    assert c.paths["train"] != a.paths["train"]
    del doc["data"]["split"]
    _write(tmp_path, _table(n=3001), "all.parquet", row_group_size=400)  # the input changed: split again
    d = prepare(parse_spec(doc).data)
    assert sum(pq.read_metadata(f).num_rows for fs in d.paths.values() for f in fs) == 3001


def test_parquet_prepare_stops_on_bad_ids_before_training(tmp_path):
    src = _write(tmp_path, _table(user=pa.array(np.full(100, 10))), "bad.parquet")
    doc = {"name": "p", "data": {"source": "parquet", "paths": {"train": src, "validation": src, "test": src},
                                "label": {"column": "y"},
                                "columns": {"sparse": {"user": 10, "item": 20}, "multi_valued": {"tags": 5},
                                            "dense": ["x"]}}}
    with pytest.raises(DataError, match="column user has id 10, outside"):
        prepare(parse_spec(doc).data)


def _synthetic(**kw):
    return parse_spec({"name": "s", "data": {"source": "synthetic", "synthetic": kw}}).data.synthetic


def test_synthetic_is_deterministic_and_independent_of_how_rows_are_cut():
    spec = _synthetic(num_sparse=3, cardinality=[1000, 10**9, 2**40], num_dense=2, seed=7)
    whole = SyntheticRows(spec, "train").rows(0, 3 * CHUNK)
    again = SyntheticRows(spec, "train")
    parts = [again.rows(a, b) for a, b in [(0, 5000), (5000, CHUNK + 17), (CHUNK + 17, 3 * CHUNK)]]
    for k in whole:
        np.testing.assert_array_equal(whole[k], np.concatenate([p[k] for p in parts]))
    assert whole["s2"].max() < 2**40 and whole["s1"].max() < 10**9 and whole["s0"].min() >= 0
    other = generate_chunk(_synthetic(num_sparse=3, cardinality=[1000, 10**9, 2**40], num_dense=2, seed=8), "train", 0)
    assert not np.array_equal(other["s0"], whole["s0"][:CHUNK])


def test_synthetic_ids_follow_a_power_law_and_the_label_is_learnable():
    spec = _synthetic(num_sparse=2, cardinality=100_000, num_dense=0, zipf_alpha=1.1)
    rows = SyntheticRows(spec, "train").rows(0, 4 * CHUNK)
    _, counts = np.unique(rows["s0"], return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[:100].sum() > 0.3 * counts.sum()  # the 100 hottest of 100k ids take > 30% of traffic
    z = sum(_hidden_weight(f, rows[f"s{f}"], spec.seed) for f in range(2))
    hi, lo = rows["label"][z > 0.5].mean(), rows["label"][z < -0.5].mean()
    assert hi - lo > 0.3


def test_movielens_label_derived_history_comes_from_held_out_rows():
    spec = parse_spec({"name": "m", "data": {"source": "movielens-100k",
                                             "label": {"column": "rating", "positive_if": ">= 4"},
                                             "split": {"method": "random", "seed": 2020},
                                             "history": {"rating": "rating", "fraction": 0.2}}})
    prepared = prepare(spec.data)
    held = prepared.schema.info["history_rows"]
    assert 15_000 < held < 17_000  # 0.2 of the 80,000 training rows, not trained on
    sizes = {s: pq.read_metadata(p[0]).num_rows for s, p in prepared.paths.items()}
    assert sizes == {"train": 80000 - held, "validation": 10000, "test": 10000}
    frames = [pq.read_table(prepared.paths[s][0]).to_pandas() for s in ("train", "validation", "test")]
    rows = pd.concat(frames)
    # the liked lists come from the held-out rows only: the same for every row of a user, never the row's own item
    liked = rows.groupby("user_id")["user_liked_items"].apply(lambda lists: {tuple(sorted(x)) for x in lists})
    assert (liked.apply(len) == 1).all()
    assert not any(r.item_id in set(r.user_liked_items) for r in rows.itertuples())
    assert abs(float(frames[1]["user_mean_rating"].mean())) < 0.2  # centred on the history rows' mean


def test_movielens_is_fetched_split_and_featurised():
    spec = parse_spec({"name": "m", "data": {"source": "movielens-100k",
                                             "label": {"column": "rating", "positive_if": ">= 4"},
                                             "split": {"method": "random", "seed": 2020}}})
    prepared = prepare(spec.data)
    assert prepared.schema.sparse_names == ["user_id", "age", "gender", "occupation", "zip_prefix", "item_id",
                                             "genres", "release_year", "user_rated_items"]
    card = {f.name: f.cardinality for f in prepared.schema.sparse}
    assert card["user_id"] == 944 and card["item_id"] == 1683 and card["gender"] == 3
    assert prepared.schema.feature("genres").multi_valued
    sizes = {s: pq.read_metadata(p[0]).num_rows for s, p in prepared.paths.items()}
    assert sizes == {"train": 80000, "validation": 10000, "test": 10000}
    t = pq.read_table(prepared.paths["train"][0])
    assert 0.5 < np.mean(t.column("label").to_numpy()) < 0.6  # 55% of ratings are >= 4
    validate_files(prepared.paths["test"], prepared.schema)
    # label-free history from the training split: a training row leaves its own item (and count) out
    train = t.to_pandas()
    assert "user_mean_rating" not in train and "user_liked_items" not in train  # label-derived: fraction > 0 only
    val = pq.read_table(prepared.paths["validation"][0]).to_pandas()
    history = train.groupby("user_id")["item_id"].apply(set)
    for row in train.head(200).itertuples():
        assert set(row.user_rated_items) == (history[row.user_id] - {row.item_id} or {0})
        assert np.expm1(row.user_log_count * 6) == pytest.approx(len(history[row.user_id]) - 1, abs=1e-3)
    for row in val.head(200).itertuples():
        assert set(row.user_rated_items) == history.get(row.user_id, {0})
    # a second call reuses the cache
    assert prepare(spec.data).paths == prepared.paths


def test_movielens_local_copy_must_hold_the_files(tmp_path):
    spec = parse_spec({"name": "m", "data": {"source": "movielens-100k", "path": str(tmp_path),
                                             "label": {"column": "rating", "positive_if": ">= 4"}}})
    with pytest.raises(DataError) as info:
        prepare(spec.data)
    assert str(info.value) == f"data.path {tmp_path}: missing ml-100k.inter, ml-100k.user, ml-100k.item"


def _fuzz_cases():
    """A valid file with one thing wrong: a column of another type, nulls, lists where scalars belong (and the
    reverse), or the file cut short."""
    from hypothesis import strategies as st

    columns = st.sampled_from(["user", "item", "tags", "x", "y"])
    wrong = st.sampled_from(["string", "float", "bool", "list", "scalar", "nulls", "null_in_list", "struct"])
    return st.one_of(st.tuples(st.just("column"), columns, wrong, st.integers(0, 99)),
                     st.tuples(st.just("truncate"), st.just(""), st.just(""), st.integers(0, 10_000)))


def _mutated(column: str, how: str, at: int) -> pa.Table:
    t = _table()
    n = t.num_rows
    values = t.column(column).to_pylist()
    if how == "string":
        arr = pa.array([str(v) for v in values])
    elif how == "float":
        arr = pa.array([float(v[0]) if isinstance(v, list) else float(v) for v in values])
    elif how == "bool":
        arr = pa.array([bool(v) for v in values])
    elif how == "list":
        arr = pa.array([v if isinstance(v, list) else [v] for v in values])
    elif how == "scalar":
        arr = pa.array([v[0] if isinstance(v, list) else v for v in values])
    elif how == "nulls":
        arr = pa.array([None if i == at % n else v for i, v in enumerate(values)], t.column(column).type)
    elif how == "null_in_list":
        arr = pa.array([[None, *v] if isinstance(v, list) and i == at % n else v for i, v in enumerate(values)],
                       t.column(column).type)
    else:
        arr = pa.array([{"v": v} for v in values])
    return t.set_column(t.schema.get_field_index(column), column, arr)


def test_fuzzed_parquet_files_pass_or_fail_with_a_data_error_naming_file_and_column(tmp_path):
    from hypothesis import HealthCheck, given, settings

    good = tmp_path / "good.parquet"
    pq.write_table(_table(), good, row_group_size=50)
    data = good.read_bytes()
    outcomes = {"passed": 0, "refused": 0}

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=_fuzz_cases())
    def check(case):
        kind, column, how, at = case
        path = tmp_path / "case.parquet"
        if kind == "truncate":
            path.write_bytes(data[: at % len(data)])
        else:
            pq.write_table(_mutated(column, how, at), path, row_group_size=50)
        try:
            rows = validate_files([str(path)], SCHEMA)
        except DataError as e:
            outcomes["refused"] += 1
            assert str(path) in str(e)
            if kind == "column":
                assert column in str(e), str(e)
            return
        outcomes["passed"] += 1
        # what passes is what training reads as it is: no change at all (a scalar column made scalar, a list
        # column made lists), or another numeric type for the dense feature or the label
        no_change = (how in ("scalar", "null_in_list") and column != "tags") or (how == "list" and column == "tags")
        assert rows == 100 and kind == "column" and (no_change or (column in ("x", "y") and how in ("float", "bool"))), case

    check()
    assert outcomes["refused"] > 100, outcomes
