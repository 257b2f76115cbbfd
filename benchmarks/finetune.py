"""Does a pretrained HSTU help the CTR task? DCN-v2 on MovieLens-100K (jobs/train_ml100k.yaml, without the history
features) trained from scratch vs with its item table initialised from HSTU's item embeddings (``train.init_from``),
on 100% and on 10% of the labelled training rows (the same validation and test rows), several seeds; and a run
continued on the last 10% of the training rows by time vs one trained from scratch on all of them.

HSTU is pretrained (next-item prediction, Ray Train, 2 workers) on the histories of the CTR training rows only: no
validation or test interaction reaches it. Item ids are kept as they are, so both models share the id space.

    python benchmarks/finetune.py [--seeds 3] [--pretrain-epochs 20] [--epochs 5] [--vectors]

With ``--vectors`` also: the label-free history features alone, and with HSTU's user vectors as dense features
(``raytrain data user-vectors``; goal: a gain over the history features alone at 10% of the labels).

Goal: a test AUC gain at 10% of the labels (reported whichever way it falls).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytrain.data import prepare
from raytrain.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def ctr_doc(base: dict, paths: dict[str, str], schema, seed: int, storage: str, epochs: int) -> dict:
    doc = {k: v for k, v in base.items() if k not in ("data", "storage", "name")}
    sparse = {f.name: f.cardinality for f in schema.sparse if not f.multi_valued}
    multi = {f.name: f.cardinality for f in schema.sparse if f.multi_valued}
    doc.update(name="ctr", storage=storage, data={
        "source": "parquet", "paths": paths, "label": {"column": "label"},
        "columns": {"sparse": sparse, "multi_valued": multi, "dense": list(schema.dense), "timestamp": "timestamp"}})
    doc["train"] = {**doc["train"], "seed": seed, "epochs": epochs}
    return doc


def main() -> None:
    from raytrain.train.runner import run_train
    from raytrain.train.sequential.run import run_sequential

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--vectors", action="store_true", help="also: the label-free history features alone, and with "
                                                          "HSTU's user vectors as features (data.history.user_vectors)")
    a = p.parse_args()
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml", ["data.history=null"])
    prepared = prepare(spec.data)
    train = pa.concat_tables([pq.read_table(f) for f in prepared.paths["train"]])
    work = Path(tempfile.mkdtemp(prefix="raytrain-finetune-"))
    split = {s: prepared.paths[s][0] for s in ("validation", "test")}
    dim = spec.model.embedding_dim
    t0 = time.time()
    pre = run_sequential(parse_spec({
        "name": "pretrain", "storage": str(work), "data": {
            "source": "parquet", "path": prepared.paths["train"][0],
            "sequences": {"user": "user_id", "item": "item_id", "timestamp": "timestamp",
                          "num_items": prepared.schema.feature("item_id").cardinality}},
        "model": {"arch": "hstu", "embedding_dim": dim, "sequence": {"max_len": 200, "blocks": 2, "heads": 1}},
        "train": {"workers": 2, "batch_size": 64, "eval_batch_size": 256, "epochs": a.pretrain_epochs,
                  "optimizer": {"dense": "adam", "sparse": "rowwise_adagrad", "lr": 0.001, "sparse_lr": 0.05}}}))
    print(f"HSTU pretrained on the CTR training rows' histories in {time.time() - t0:.0f} s: test NDCG@10 "
          f"{pre['test_ndcg@10']:.4f}, HR@10 {pre['test_hr@10']:.4f} (best epoch {pre['best_epoch']})", flush=True)
    base = spec.model_dump(mode="json")
    init = {"run": pre["run_dir"], "tables": {"t_item_id": "t_item"}}
    vectors = work / "user_vectors.parquet"
    if a.vectors:  # HSTU's vector of each user after their training-row history (no label in it)
        from raytrain.train.sequential.export import user_vector_table

        pq.write_table(user_vector_table(pre["run_dir"]), vectors)
    order = np.argsort(train.column("timestamp").to_numpy(), kind="stable")
    cut = int(len(order) * 0.9)
    files = {"early": order[:cut], "late": order[cut:]}
    for name, rows in files.items():
        pq.write_table(train.take(pa.array(rows)), work / f"{name}.parquet")
    results: dict[str, list[tuple[float, float]]] = {}

    def run(arm: str, paths: dict, seed: int, warm: dict | None, history: dict | None = None) -> dict:
        doc = ctr_doc(base, {**split, **paths}, prepared.schema, seed, str(work / arm), a.epochs)
        if warm is not None:
            doc["train"]["init_from"] = warm
        if history is not None:
            doc["data"]["history"] = history
        t = time.time()
        out = run_train(parse_spec(doc))
        results.setdefault(arm, []).append((out["test_auc"], time.time() - t))
        print(f"{arm:24s} seed {seed}: test AUC {out['test_auc']:.4f} ({time.time() - t:.0f} s)", flush=True)
        return out

    for seed in range(a.seeds):
        rng = np.random.default_rng(seed)
        few = work / f"fraction_{seed}.parquet"
        pq.write_table(train.take(pa.array(np.sort(rng.permutation(len(train))[:int(len(train) * a.fraction)]))), few)
        for label, path in (("100%", prepared.paths["train"][0]), (f"{a.fraction:.0%}", str(few))):
            run(f"{label} scratch", {"train": path}, seed, None)
            run(f"{label} from HSTU", {"train": path}, seed, init)
            if a.vectors:
                run(f"{label} + history", {"train": path}, seed, None, {})
                run(f"{label} + history + vectors", {"train": path}, seed, None, {"user_vectors": str(vectors)})
        early = run("first 90% by time", {"train": str(work / "early.parquet")}, seed, None)
        run("+ last 10% continued", {"train": str(work / "late.parquet")}, seed,
            {"run": early["run_dir"], "all": True})
    print(f"\n{'arm':24s}{'test AUC (mean +- sd)':>24s}{'wall s':>9s}")
    for arm, vals in results.items():
        auc = np.array([v[0] for v in vals])
        print(f"{arm:24s}{auc.mean():>15.4f} +- {auc.std():.4f}{np.mean([v[1] for v in vals]):>9.0f}")
    few_label = f"{a.fraction:.0%}"
    def mean_auc(arm: str) -> float:
        return float(np.mean([v[0] for v in results[arm]]))

    gain = mean_auc(f"{few_label} from HSTU") - mean_auc(f"{few_label} scratch")
    full_gain = mean_auc("100% from HSTU") - mean_auc("100% scratch")
    print(f"gain from HSTU's item embeddings: {full_gain:+.4f} AUC at 100% of the labels, {gain:+.4f} at {few_label}")
    from common.paired import paired_lower_bound

    def aucs(arm: str) -> list[float]:
        return [v[0] for v in results[arm]]

    pct = int(a.fraction * 100)
    _, low = paired_lower_bound(aucs(f"{few_label} from HSTU"), aucs(f"{few_label} scratch"))
    print(f"gain at {few_label}: one-sided 95% lower bound over {a.seeds} paired seeds {low:+.4f}")
    print(f"GOAL finetune_gain_at_{pct}pct_labels_lower95 {low:+.4f} >0 {'met' if low > 0 else 'missed'}")
    if a.vectors:
        lift = mean_auc(f"{few_label} + history + vectors") - mean_auc(f"{few_label} + history")
        print(f"HSTU user vectors as features: {mean_auc('100% + history + vectors') - mean_auc('100% + history'):+.4f} "
              f"AUC at 100% of the labels, {lift:+.4f} at {few_label} (over the label-free history features alone)")
        _, low = paired_lower_bound(aucs(f"{few_label} + history + vectors"), aucs(f"{few_label} + history"))
        print(f"GOAL user_vectors_gain_at_{pct}pct_labels_lower95 {low:+.4f} >0 {'met' if low > 0 else 'missed'}")


if __name__ == "__main__":
    main()
