"""k-fold cross-validation (``train.cross_validation: {folds: k}``).

The training and validation rows of the prepared data are pooled and dealt into k folds by a permutation drawn
from ``cross_validation.seed``; fold i validates on its rows and trains on the others, each fold a full Ray Train
run; the test split is the same for every fold. A train run's result is each fold's best validation AUC and its
test AUC at that checkpoint, with their mean and standard deviation; a tune trial reports, per epoch, the mean
over folds (so Tune optimises the fold mean; its scheduler sees the trial once all folds ran).

The folds are written as parquet under the run directory (``cv_data/fold_<i>/{train,validation}``): k times the
training rows, meant for data sets that fit on the driver's disk (MovieLens, parquet of millions of rows).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ..data import PreparedData
from ..errors import DataError
from ..log import get_logger

log = get_logger(__name__)


def fold_data(prepared: PreparedData, folds: int, seed: int, out_dir: Path) -> list[PreparedData]:
    """The k folds of ``prepared``'s training and validation rows, each a PreparedData of its own."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [f for split in ("train", "validation") for f in prepared.paths.get(split, [])]
    if not files:
        raise DataError("train.cross_validation: the data has no training files to fold (synthetic data is "
                        "generated per run; give parquet or MovieLens data)")
    pool = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    if pool.num_rows < folds:
        raise DataError(f"train.cross_validation.folds: {folds} folds of {pool.num_rows} rows")
    fold = np.random.default_rng(seed).permutation(pool.num_rows) % folds
    out = []
    for i in range(folds):
        paths = {"test": list(prepared.paths.get("test", []))}
        for split, rows in (("train", fold != i), ("validation", fold == i)):
            path = out_dir / f"fold_{i}" / split / "part-00000.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pool.filter(pa.array(rows)), path, row_group_size=65_536)
            paths[split] = [str(path)]
        out.append(PreparedData(prepared.schema, paths))
    return out


def fold_epochs(fold_runs: list[Path]) -> list[dict]:
    """Per epoch, the mean (and standard deviation) over folds of every metric the folds recorded for it."""
    per_fold = [[json.loads(f.read_text()) for f in sorted((run / "metrics").glob("epoch_*.json"))] for run in fold_runs]
    epochs = min(len(rows) for rows in per_fold)
    out = []
    for e in range(epochs):
        rows = [rows[e] for rows in per_fold]
        row: dict = {"epoch": rows[0]["epoch"]}
        for key in ("train_loss", "val_auc", "val_logloss"):
            values = [r[key] for r in rows]
            row[key], row[f"{key}_std"] = statistics.fmean(values), statistics.pstdev(values)
        out.append(row)
    return out


def summarize(folds: list[dict]) -> dict:
    """Mean and standard deviation over folds of each fold's best validation AUC and test metrics."""
    out: dict = {"folds": len(folds), "per_fold": folds}
    for key in ("best_val_auc", "test_auc", "test_logloss"):
        values = [f[key] for f in folds if f.get(key) is not None]
        if values:
            out[f"{key}_mean"] = statistics.fmean(values)
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def run_cross_validation(spec, address: str | None = None) -> dict:
    """k Ray Train runs, one per fold, in ``<run>/folds/fold_<i>``; ``<run>/cv.json`` and result.json summarise."""
    from ..data import prepare
    from ..runs import open_run
    from .runner import init_ray, run_train

    cv = spec.train.cross_validation
    run_dir = open_run(spec, f"; {cv.folds}-fold cross-validation")
    t0 = time.time()
    init_ray(spec, address)
    prepared = prepare(spec.data, work_dir=str(run_dir))
    folds = fold_data(prepared, cv.folds, cv.seed, run_dir / "cv_data")
    results = []
    for i, fold in enumerate(folds):
        log.info(f"fold {i + 1}/{cv.folds}")
        fold_dir = run_dir / "folds" / f"fold_{i}"
        fold_dir.mkdir(parents=True)
        s = run_train(spec, run_dir=fold_dir, address=address, prepared=fold)
        results.append({"fold": i, "run_dir": str(fold_dir), "best_epoch": s.get("best_epoch"),
                        "best_val_auc": s.get("best_val_auc"), "test_auc": s.get("test_auc"),
                        "test_logloss": s.get("test_logloss"), "test_epoch": s.get("test_epoch")})
    summary = summarize(results)
    summary["epochs"] = fold_epochs([Path(str(r["run_dir"])) for r in results])
    summary.update(run_dir=str(run_dir), wall_seconds=time.time() - t0)
    (run_dir / "cv.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    for r in results:
        log.info(f"fold {r['fold']}: best val_auc {r['best_val_auc']:.4f} (epoch {r['best_epoch']}), test_auc "
             f"{r['test_auc']:.4f}")
    log.info(f"{cv.folds}-fold cross-validation done in {summary['wall_seconds']:.0f}s: val_auc "
         f"{summary['best_val_auc_mean']:.4f} +- {summary['best_val_auc_std']:.4f}, test_auc "
         f"{summary['test_auc_mean']:.4f} +- {summary['test_auc_std']:.4f}")
    return summary
