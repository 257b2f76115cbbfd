"""Distributed evaluation on gloo ranks: each rank reads its own rows of a multi-file, multi-row-group split; the
merged AUC and log loss equal one process's and sklearn's on the same predictions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from helpers import run_distributed
from sklearn.metrics import log_loss, roc_auc_score

from raytrain.data import PreparedData
from raytrain.data.schema import FeatureSchema, SparseFeature

SCHEMA = FeatureSchema(sparse=(SparseFeature("rid", 100_000, False, "context"),), dense=("x",), label="y",
                       timestamp=None, positive_if=None, info={})


class Scorer(torch.nn.Module):
    """A fixed score per row (from its id and dense value): predictions independent of how rows are batched."""

    def forward(self, batch):
        rid = batch.sparse["rid"].values().double()
        logits = (torch.sin(rid * 0.37) * 2 + batch.dense[:, 0].double()).float()
        return torch.zeros(()), logits


def _write(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    files, n = [], 0
    for f, groups in enumerate([[5000, 3000, 7], [1], [12000, 999]]):
        path = tmp_path / f"val-{f}.parquet"
        with pq.ParquetWriter(path, pa.schema([("rid", pa.int64()), ("x", pa.float32()), ("y", pa.float32())])) as w:
            for g in groups:
                rid = np.arange(n, n + g)
                x = rng.normal(size=g).astype(np.float32)
                p = 1 / (1 + np.exp(-(np.sin(rid * 0.37) * 2 + x)))
                w.write_table(pa.table({"rid": rid, "x": x, "y": (rng.random(g) < p * 0.8).astype(np.float32)}))
                n += g
        files.append(str(path))
    return files


def _evaluate(rank, world, files):
    from raytrain.train.loaders import EvalData
    from raytrain.train.metrics import evaluate

    prepared = PreparedData(SCHEMA, {"validation": files})
    data = EvalData(prepared, "validation", 1024, rank, world)
    m = evaluate(Scorer(), data, torch.device("cpu"))
    return {"metrics": m, "own_rows": data.num_rows, "steps": data.steps}


def test_ranks_count_every_row_once_and_merge_to_the_single_process_metrics(tmp_path):
    files = _write(tmp_path)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    rid, x, y = (table.column(c).to_numpy() for c in ("rid", "x", "y"))
    logits = (np.sin(rid.astype(np.float64) * 0.37) * 2 + x.astype(np.float64)).astype(np.float32)
    p = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    expect_auc = roc_auc_score(y, p)
    expect_loss = log_loss(y, np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7))
    single = run_distributed(_evaluate, 1, files)[0]["metrics"]
    for world in (2, 3):
        out = run_distributed(_evaluate, world, files)
        assert sum(r["own_rows"] for r in out) == table.num_rows == 21_007  # disjoint parts covering the split
        assert len({r["steps"] for r in out}) == 1  # every rank runs the same number of forward passes
        for r in out:
            m = r["metrics"]
            assert m["rows"] == table.num_rows
            assert abs(m["auc"] - expect_auc) < 1e-4 and abs(m["auc"] - single["auc"]) < 1e-9
            assert abs(m["logloss"] - expect_loss) < 1e-5


def test_validation_fanned_out_as_ray_tasks_raises_the_same_error_text(ray_local, tmp_path):
    from raytrain.data.parquet import validate_files
    from raytrain.errors import DataError

    good = _write(tmp_path)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"rid": np.array([5, 100_000]), "x": np.zeros(2, np.float32),
                             "y": np.zeros(2, np.float32)}), bad)
    assert validate_files(good, SCHEMA) == 21_007  # one Ray task per file
    try:
        validate_files([*good, str(bad)], SCHEMA)
    except DataError as e:
        assert str(e) == (f"{bad} (row group 0): column rid has id 100000, outside [0, 100000) "
                          f"(the declared cardinality)")
    else:
        raise AssertionError("an out-of-range id passed validation")
