"""Streamed splits: each rank its own rows, exactly once, bounded windows, exact resume; merged metrics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from raytrain.data.schema import FeatureSchema, SparseFeature
from raytrain.data.stream import RankStream, SplitIndex, prefetched
from raytrain.train.metrics import BinaryAccumulator

SCHEMA = FeatureSchema(sparse=(SparseFeature("rid", 10_000, False, "context"), SparseFeature("tags", 50, True, "item")),
                       dense=("x",), label="label", timestamp=None, positive_if=None, info={})


def write_split(tmp_path, sizes: list[list[int]]) -> list[str]:
    """Files of row groups of the given sizes; column ``rid`` holds each row's global number."""
    files, n = [], 0
    for f, groups in enumerate(sizes):
        path = tmp_path / f"part-{f}.parquet"
        with pq.ParquetWriter(path, pa.schema([("rid", pa.int64()), ("tags", pa.list_(pa.int64())),
                                               ("x", pa.float32()), ("label", pa.float32())])) as w:
            for g in groups:
                rid = np.arange(n, n + g)
                w.write_table(pa.table({"rid": rid, "tags": [[int(r) % 50] * (int(r) % 3 + 1) for r in rid],
                                        "x": rid.astype(np.float32), "label": (rid % 2).astype(np.float32)}))
                n += g
        files.append(str(path))
    return files


def rids(batches) -> list[int]:
    out = []
    for b in batches:
        got = b.sparse["rid"].values().tolist()
        assert got == b.row_ids.tolist()  # the ids a batch reports are the rows it holds
        assert b.dense[:, 0].tolist() == [float(r) for r in got]  # dense values travel with their row
        tags = b.sparse["tags"].to_dense()
        assert [t.tolist() for t in tags] == [[r % 50] * (r % 3 + 1) for r in got]
        out += got
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_read_disjoint_parts_that_cover_the_split(tmp_path, world):
    index = SplitIndex.of(write_split(tmp_path, [[100, 37], [250], [1, 90, 90]]))
    assert index.total == 568
    for shuffle in (False, True):
        seen = []
        for rank in range(world):
            s = RankStream(index, SCHEMA, rank, world, batch=32, buffer_rows=64, seed=3, epoch=1, shuffle=shuffle)
            got = rids(s.batches())
            assert len(got) == index.rank_rows(rank, world)
            seen += got
        assert sorted(seen) == list(range(568))  # every row once, none twice


def test_shuffle_changes_with_epoch_and_is_reproducible(tmp_path):
    index = SplitIndex.of(write_split(tmp_path, [[200, 200], [200]]))

    def order(epoch):
        return rids(RankStream(index, SCHEMA, 0, 2, batch=50, buffer_rows=100, seed=7, epoch=epoch).batches())

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1) != sorted(order(1))  # rows are permuted, not read in file order


def test_windows_bound_what_a_rank_holds(tmp_path):
    index = SplitIndex.of(write_split(tmp_path, [[40] * 25]))
    s = RankStream(index, SCHEMA, 0, 1, batch=16, buffer_rows=100, seed=0, epoch=0)
    assert max(w.rows for w in s.windows) <= 100 + 40 - 1  # at most buffer + one row group
    assert len(s.windows) == 9


@pytest.mark.parametrize("start_step", [0, 1, 3, 7, 12])
def test_resume_at_a_step_continues_the_same_stream(tmp_path, start_step):
    index = SplitIndex.of(write_split(tmp_path, [[100, 37], [250], [1, 90, 90]]))

    def stream():
        return RankStream(index, SCHEMA, 1, 2, batch=20, buffer_rows=70, seed=5, epoch=4)

    full = rids(stream().batches())
    resumed = rids(stream().batches(start_row=start_step * 20))
    assert resumed == full[start_step * 20:]


def test_a_pass_over_the_same_single_window_reuses_it_without_reading(tmp_path):
    files = write_split(tmp_path, [[300]])
    index = SplitIndex.of(files)
    keep: dict = {}

    def epoch(e):
        return rids(RankStream(index, SCHEMA, 1, 2, batch=50, buffer_rows=1000, seed=0, epoch=e, keep=keep).batches())

    first = epoch(0)
    (tmp_path / "part-0.parquet").unlink()  # the next epoch's window has the same rows: nothing is read
    second = epoch(1)
    assert sorted(first) == sorted(second) == list(range(150, 300)) and first != second  # reshuffled
    assert len(keep) == 2  # one window held, no more


def test_prefetch_passes_items_and_errors_through():
    assert list(prefetched(iter(range(100)), 3)) == list(range(100))

    def broken():
        yield 1
        raise ValueError("bad row group")

    it = prefetched(broken(), 2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad row group"):
        next(it)
    early = prefetched(iter(range(10_000)), 2)
    assert next(early) == 0
    early.close()  # the producer stops; nothing hangs


def _data(n=200_000):
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.25).astype(np.float32)
    logits = rng.normal(0, 1.5, n) + 1.2 * y
    p = (1 / (1 + np.exp(-logits))).astype(np.float32)
    p[:1000] = 0.5  # exact ties count one half, as in sklearn
    return y, p


def _merged(rank, world):
    y, p = _data()
    acc = BinaryAccumulator()
    part = np.array_split(np.arange(len(y)), world)[rank]
    acc.add(y[part], p[part])
    acc.merge_across_ranks()  # the all-reduce the training loop runs
    return acc.result()


@pytest.mark.parametrize("ranks", [1, 2, 5])
def test_merged_histogram_auc_matches_sklearn(ranks):
    """Each gloo rank holds its own rows; after ``merge_across_ranks`` every rank's AUC and log loss are sklearn's
    on the pooled predictions."""
    from helpers import run_distributed

    y, p = _data()
    clipped = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    for r in run_distributed(_merged, ranks):
        assert r["rows"] == len(y)
        assert abs(r["auc"] - roc_auc_score(y, p)) < 1e-5
        assert r["auc_tie_bound"] < 1e-3
        assert abs(r["logloss"] - log_loss(y, clipped)) < 1e-6


def test_histogram_auc_of_narrow_predictions():
    """Predictions packed into a narrow range (a rare-click model) still give sklearn's AUC to 1e-4."""
    rng = np.random.default_rng(1)
    n = 300_000
    y = (rng.random(n) < 0.03).astype(np.float32)
    p = (0.03 + 0.004 * rng.normal(size=n) + 0.002 * y).clip(1e-4, 1).astype(np.float32)
    acc = BinaryAccumulator()
    acc.add(y, p)
    assert abs(acc.result()["auc"] - roc_auc_score(y, p)) < 1e-4


@pytest.mark.parametrize("mean_len", [1, 3, 200])  # short lists (index arithmetic) and long ones (a slice per row)
def test_batches_gather_each_rows_list_whatever_its_length(mean_len):
    import torch

    from raytrain.data.batches import SLICE_FROM, Columns, _gather_lists

    rng = np.random.default_rng(mean_len)
    n = 300
    lens = rng.integers(0, 2 * mean_len + 1, n)  # empty lists among them
    lists = [rng.integers(0, 50, k) for k in lens]
    schema = FeatureSchema(sparse=(SparseFeature("hist", 50, True, "hist"), SparseFeature("item", 50, False, "item")),
                           dense=())
    offs = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    vals = torch.from_numpy(np.concatenate(lists).astype(np.int64))
    item = torch.from_numpy(rng.integers(0, 50, n))
    cols = Columns(schema, {"item": item}, {"hist": (vals, offs)}, torch.zeros((n, 0)), torch.zeros(n))
    none = _gather_lists(vals, offs, torch.zeros(0, dtype=torch.int64))
    assert none[0].numel() == 0 and none[1].numel() == 0
    for size in (1, 64, n):
        idx = torch.from_numpy(rng.permutation(n)[:size])
        kjt = cols.batch(idx).sparse.to_dict()
        assert kjt["hist"].lengths().tolist() == [len(lists[i]) for i in idx.tolist()]
        want = np.concatenate([lists[i] for i in idx.tolist()] + [np.zeros(0, np.int64)])
        assert kjt["hist"].values().tolist() == want.tolist()
        assert kjt["item"].values().tolist() == item[idx].tolist()
    assert (mean_len >= SLICE_FROM) == (mean_len == 200)  # both paths ran


def test_a_mid_epoch_resume_in_another_data_order_is_refused_naming_what_changed(tmp_path):
    """The train files' fingerprint follows the file list and the files' contents (not their paths' folders); a
    mid-epoch marker records it with batch size, seed and shuffle buffer, and resume_point refuses a change of any
    of them by name. Another world size restarts the epoch (logged); a marker without the record is taken as is."""
    import shutil
    import types

    from raytrain.errors import CheckpointError
    from raytrain.train.worker_checkpoints import resume_point

    files = write_split(tmp_path, [[40, 40], [30]])
    same = SplitIndex.of(files).fingerprint
    assert len(same) == 16 and SplitIndex.of(files).fingerprint == same
    moved = tmp_path / "moved"
    moved.mkdir()
    copies = [str(shutil.copy(f, moved)) for f in files]
    assert SplitIndex.of(copies).fingerprint == same  # the same files elsewhere (a URI run's shared copy)
    assert SplitIndex.of(files[::-1]).fingerprint != same
    assert SplitIndex.of(files[:1]).fingerprint != same
    edited = pq.read_table(copies[1]).to_pandas()
    edited.loc[3, "x"] = 1e6  # one value of one row: the column statistics in the footer change
    pq.write_table(pa.Table.from_pandas(edited, preserve_index=False), copies[1], row_group_size=30)
    assert SplitIndex.of([files[0], copies[1]]).fingerprint != same

    order = {"world_size": 2, "batch_size": 64, "seed": 0, "shuffle_buffer_rows": 1024, "train_files": same}
    info = {"epoch": 1, "step": 7, "world_size": 2, "data_order": dict(order)}
    train = types.SimpleNamespace(order=dict(order), steps=20)
    assert resume_point(info, train, 2) == (1, 7)
    for key, value in (("batch_size", 128), ("seed", 1), ("shuffle_buffer_rows", 4096), ("train_files", "0" * 16)):
        changed = types.SimpleNamespace(order={**order, key: value}, steps=20)
        with pytest.raises(CheckpointError, match=rf"epoch 2, step 7\) was taken in another data order: {key} "
                                                  rf"{order[key]!r} -> {value!r}\. Resuming"):
            resume_point(info, changed, 2)
    assert resume_point(info, types.SimpleNamespace(order={**order, "world_size": 3}, steps=20), 3) == (1, 0)
    assert resume_point({k: v for k, v in info.items() if k != "data_order"}, train, 2) == (1, 7)
    assert resume_point({"epoch": 1, "world_size": 2}, train, 2) == (2, 0)  # an epoch end: the next epoch
