"""Kind ``ensemble``: score the members on validation and test, fit each combiner on validation, report.

Run directory: ``ensemble.json`` (members, their checkpoints, every fitted combiner: what serving
loads), ``report.parquet`` (validation and test AUC / log loss of each member and each combiner).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CheckpointError
from ..log import get_logger
from ..spec import resolved_yaml
from ..spec.job import JobSpec
from ..train.metrics import binary_metrics
from .combine import Combiner, fit_combiner
from .members import Member, load_member, member_info, score, top_trials

log = get_logger(__name__)


def member_dirs(cfg) -> list[Path]:
    """The members' run directories: a tune run's best trials, or the listed runs (each a run directory or a directory
    above runs, for its newest finished one)."""
    if cfg.tune_run is not None:
        return top_trials(cfg.tune_run, cfg.top_k)
    from ..runs import newest_local_run

    return [newest_local_run(p, "result.json") for p in cfg.runs]


def combine_and_report(kinds: list[str], names: list[str], val: tuple[np.ndarray, np.ndarray],
                       test: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, Combiner], pd.DataFrame]:
    """Fit every combiner on (val logits [n, m], val labels); evaluate members and combiners on both splits.

    The test split is only ever predicted, never fitted on.
    """
    (val_x, val_y), (test_x, test_y) = val, test
    rows = []
    for j, name in enumerate(names):
        v = binary_metrics(val_y, 1 / (1 + np.exp(-val_x[:, j])))
        t = binary_metrics(test_y, 1 / (1 + np.exp(-test_x[:, j])))
        rows.append({"model": name, "role": "member", "val_auc": v["auc"], "val_logloss": v["logloss"],
                     "test_auc": t["auc"], "test_logloss": t["logloss"]})
    combiners = {}
    for kind in kinds:
        c = fit_combiner(kind, val_x, val_y)
        combiners[kind] = c
        v, t = binary_metrics(val_y, c.predict(val_x)), binary_metrics(test_y, c.predict(test_x))
        rows.append({"model": f"ensemble:{kind}", "role": "ensemble", "val_auc": v["auc"],
                     "val_logloss": v["logloss"], "test_auc": t["auc"], "test_logloss": t["logloss"]})
    return combiners, pd.DataFrame(rows)


def score_members(members: list[Member]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split in ("validation", "test"):
        logits, labels = [], None
        for m in members:
            x, y = score(m, split)
            if labels is not None and (len(y) != len(labels) or not np.array_equal(y, labels)):
                raise CheckpointError(f"member {m.name} was trained on other {split} rows than {members[0].name}: "
                                      "ensemble members must share data (source, split, label)")
            labels = y
            logits.append(x)
        assert labels is not None
        out[split] = (np.stack(logits, axis=1), labels)
    return out


def run_ensemble(spec: JobSpec) -> dict:
    from ..runs import new_run_dir

    cfg = spec.ensemble
    assert cfg is not None
    t0 = time.time()
    run_dir = new_run_dir(spec)
    log.info(f"run directory: {run_dir}")
    (run_dir / "spec.yaml").write_text(resolved_yaml(spec))
    dirs = member_dirs(cfg)
    members = [load_member(d) for d in dirs]
    for m in members:
        log.info(f"member {m.name}: {m.model.spec.model.arch}, dim {m.model.spec.model.embedding_dim}, "
             f"checkpoint {m.checkpoint.name}")
    scores = score_members(members)
    combiners, table = combine_and_report(list(cfg.combine), [m.name for m in members], scores["validation"],
                                          scores["test"])
    table.to_parquet(run_dir / "report.parquet", index=False)
    doc = {"members": [member_info(m) for m in members],
           "combiners": {k: c.to_dict() for k, c in combiners.items()},
           "report": table.to_dict(orient="records"), "wall_s": time.time() - t0}
    (run_dir / "ensemble.json").write_text(json.dumps(doc, indent=2))
    log.info("ensemble (combiners fitted on validation only):\n"
         + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    best_member = table[table["role"] == "member"]["test_auc"].max()
    for kind in combiners:
        auc = float(table.loc[table["model"] == f"ensemble:{kind}", "test_auc"].iloc[0])
        log.info(f"{kind}: test AUC {auc:.4f} ({auc - best_member:+.4f} vs the best member)")
    return {"run_dir": str(run_dir), **doc}
