"""RecBole 1.2.1's own split of MovieLens-100K for its context-aware (CTR) models, exported for raytrain.

Run with a Python that has RecBole (kept out of raytrain's environment; its wheel also carries the data):

    python3 -m venv /tmp/rbvenv && /tmp/rbvenv/bin/pip install recbole==1.2.1 torch==2.13.0 'numpy<2' pyarrow
    /tmp/rbvenv/bin/python scripts/recbole_split.py --out /tmp/recbole-ml100k [--peer DeepFM]

RecBole's settings, as its quick start applies them to a context-aware model on ml-100k
(``properties/quick_start_config/context-aware*.yaml``): the label is rating >= 4, the interactions are shuffled and
split 80/10/10 (``RS``, ``RO``, ``labeled``) with seed 2020, the inputs are the user's age, gender and occupation and the
item's release year and genres. ``split.parquet`` names each interaction's split by its raw user and item ids, which
is what raytrain's ``data.split: {method: given, path: ...}`` reads (``benchmarks/ctr_recbole.py``). ``--peer MODEL``
also trains that RecBole model with its default config on this split and prints its test AUC (the peer's figure,
measured here).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/recbole-ml100k")
    p.add_argument("--peer", default=None, help="a RecBole context-aware model to train on the split (e.g. DeepFM)")
    a = p.parse_args()
    import pandas as pd
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    data_path = os.path.join(os.path.dirname(recbole.__file__), "dataset_example")
    settings = {"data_path": data_path, "seed": 2020, "reproducibility": True, "show_progress": False,
                "checkpoint_dir": str(Path(a.out) / "saved")}
    config = Config(model=a.peer or "DeepFM", dataset="ml-100k", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    loaders = data_preparation(config, dataset)
    frames = []
    for name, loader in zip(("train", "validation", "test"), loaders):
        inter = loader.dataset.inter_feat
        users = dataset.id2token("user_id", inter["user_id"].numpy())
        items = dataset.id2token("item_id", inter["item_id"].numpy())
        frames.append(pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str), "split": name,
                                    "label": inter["label"].numpy().astype("float32")}))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.concat(frames, ignore_index=True)
    table.to_parquet(out / "split.parquet", index=False)
    summary = {"rows": {s: int((table["split"] == s).sum()) for s in ("train", "validation", "test")},
               "positive_rate": float(table["label"].mean()), "recbole": recbole.__version__,
               "settings": {k: str(config[k]) for k in ("threshold", "eval_args", "load_col", "seed")}}
    print(json.dumps(summary, indent=2))
    if a.peer:
        from recbole.trainer import Trainer
        from recbole.utils import get_model

        train, valid, test = loaders
        model = get_model(config["model"])(config, train.dataset).to(config["device"])
        trainer = Trainer(config, model)
        trainer.fit(train, valid, saved=True, show_progress=False)
        result = trainer.evaluate(test, load_best_model=True, show_progress=False)
        summary["peer"] = {"model": a.peer, "test": {k: float(v) for k, v in result.items()}}
        print(f"RecBole {a.peer}: test AUC {result['auc']:.4f}, log loss {result['logloss']:.4f}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
