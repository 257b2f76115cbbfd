"""Generic history features on plain parquet: MovieLens-100K written as parquet (user, item, timestamp and rating
columns plus the user and item columns, the same seed-2020 80/10/10 split as jobs/train_ml100k.yaml), DCN-v2 of the
demo job trained on it with and without ``data.history``, next to the MovieLens source with its history features.

Arms (each ``--seeds`` training seeds, 5 epochs, 2 workers; test AUC at the best validation epoch):
  movielens source       jobs/train_ml100k.yaml as it is (history features on, fraction 0)
  parquet + history      the parquet copy with data.history {rating: rating}
  parquet, no history    the parquet copy alone: what raytrain offered plain parquet before
  parquet + history 0.2  with history.fraction 0.2 (label-derived features from held-out rows)

    python benchmarks/history_parquet.py [--seeds 2]

Goals: the parquet copy with history matches the MovieLens source (within 0.003 AUC), and the history lifts AUC on
plain parquet.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytrain.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
USER = ["user_id", "age", "gender", "occupation", "zip_prefix"]
ITEM = ["item_id", "release_year"]


def write_parquet(out: Path, spec) -> dict:
    """The MovieLens frame with its raw rating, split as the MovieLens source splits it; returns the data section."""
    from raytrain.data.movielens import _raw_files, build_frame, split_indices

    frame, card, rating = build_frame(_raw_files(None))
    frame["rating"] = rating.to_numpy(np.float64)
    s = spec.data.split
    parts = split_indices(len(frame), s.method, s.fractions, s.seed, frame["timestamp"].to_numpy())
    paths = {}
    for name, idx in zip(("train", "validation", "test"), parts):
        paths[name] = str(out / f"{name}.parquet")
        pq.write_table(pa.Table.from_pandas(frame.iloc[idx].reset_index(drop=True), preserve_index=False), paths[name])
    return {"source": "parquet", "paths": paths, "label": {"column": "rating", "positive_if": ">= 4"},
            "columns": {"sparse": {c: card[c] for c in USER + ITEM}, "multi_valued": {"genres": card["genres"]},
                        "dense": ["age_scaled", "year_scaled"], "timestamp": "timestamp",
                        "user_features": USER + ["age_scaled"], "item_features": ITEM + ["genres", "year_scaled"]}}


def main() -> None:
    from raytrain.train.runner import run_train

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=2)
    a = p.parse_args()
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml")
    work = Path(tempfile.mkdtemp(prefix="raytrain-history-"))
    data = write_parquet(work, spec)
    base = spec.model_dump(mode="json")
    arms = {"movielens source": base["data"], "parquet + history": {**data, "history": {"rating": "rating"}},
            "parquet, no history": data,
            "parquet + history 0.2": {**data, "history": {"rating": "rating", "fraction": 0.2}}}
    results: dict[str, list[float]] = {}
    for seed in range(a.seeds):
        for arm, section in arms.items():
            doc = {**base, "name": "history", "storage": str(work / "runs"), "data": section,
                   "train": {**base["train"], "seed": seed}}
            out = run_train(parse_spec(doc))
            results.setdefault(arm, []).append(out["test_auc"])
            print(f"{arm:24s} seed {seed}: test AUC {out['test_auc']:.4f} (best epoch {out.get('test_epoch')})",
                  flush=True)
    print(f"\n{'arm':24s}{'test AUC (mean +- sd)':>24s}")
    for arm, vals in results.items():
        print(f"{arm:24s}{np.mean(vals):>15.4f} +- {np.std(vals):.4f}")
    mean = {arm: float(np.mean(v)) for arm, v in results.items()}
    gap = abs(mean["parquet + history"] - mean["movielens source"])
    lift = mean["parquet + history"] - mean["parquet, no history"]
    print(f"GOAL parquet_history_matches_movielens_source {gap:.4f} <=0.003 {'met' if gap <= 0.003 else 'missed'}")
    from common.paired import paired_lower_bound

    _, low = paired_lower_bound(results["parquet + history"], results["parquet, no history"])
    print(f"history lift on parquet: {lift:+.4f} (means), one-sided 95% lower bound {low:+.4f} over {a.seeds} seeds")
    print(f"GOAL history_lift_on_parquet_lower95 {low:+.4f} >0 {'met' if low > 0 else 'missed'}")


if __name__ == "__main__":
    main()
