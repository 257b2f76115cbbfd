"""Item text as features, and items held out entirely (cold start), for the prepared MovieLens-100K splits.

``text_features``: each item's text (the ``data.text.item`` columns of ml-100k.item, joined with ' | ') encoded by a
pretrained language model (``raytrain.text``, cached), projected to ``data.text.dims`` dense item features
``text_0..``; the projection and every item's text are saved beside the splits (``text.npz``, ``item_text.parquet``)
so serving can place a new item's text in the same space.

``hold_out_items``: a seeded share of the items never appears in training or validation; their rows join the test
split with the item id set to the unknown id 0, exactly what a served model sees for an item it has never seen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TEXT_PREFIX = "text_"
PROJECTION_FILE = "text.npz"


def item_texts(raw: dict[str, bytes], columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """(item index 1..n, text) of every item the interactions name, from MovieLens' atomic files (``raw``, as
    ``movielens._raw_files`` reads them): the index is the prepared ``item_id`` (raw ids sorted, as
    ``movielens._index`` numbers them)."""
    from .movielens import _read_atomic

    uniq = sorted(set(_read_atomic(raw["ml-100k.inter"], "ml-100k.inter")["item_id"]) - {""})
    table = _read_atomic(raw["ml-100k.item"], "ml-100k.item").set_index("item_id")
    texts = []
    for raw in uniq:
        row = table.loc[raw] if raw in table.index else None
        parts = [str(row[c]).strip() for c in columns] if row is not None else []
        texts.append(" | ".join(p for p in parts if p))
    return np.arange(1, len(uniq) + 1, dtype=np.int64), texts


def text_features(frame: pd.DataFrame, ids: np.ndarray, texts: list[str], spec) -> tuple[pd.DataFrame, list[str],
                                                                                      dict[str, np.ndarray]]:
    """The frame with ``dims`` dense text columns (by the row's item), their names, and what to save:
    the projection and the per-item features (row 0, the unknown item: zeros)."""
    from ..text.encode import encode_catalogue, fit_projection, project

    vectors, identity = encode_catalogue(ids, texts, spec.encoder, spec.batch_size, spec.workers, spec.cpus_per_worker)
    proj = fit_projection(vectors, spec.dims)
    per_item = np.zeros((int(ids.max()) + 1, proj["components"].shape[0]), np.float32)
    per_item[ids] = project(proj, vectors)
    names = [f"{TEXT_PREFIX}{j}" for j in range(per_item.shape[1])]
    cols = per_item[frame["item_id"].to_numpy()]
    extra = pd.DataFrame(cols, columns=names, index=frame.index)
    saved = {**proj, "per_item": per_item, "identity": np.array(identity)}
    return pd.concat([frame, extra], axis=1), names, saved


def hold_out_items(frame: pd.DataFrame, parts: list[np.ndarray], share: float, seed: int,
                   num_items: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(train / validation / test indices with every row of the held-out items in test, the held-out item ids);
    their rows' ``item_id`` becomes 0 in ``frame``."""
    rng = np.random.default_rng([seed, 7919])
    k = int(round(share * (num_items - 1)))
    cold = np.sort(rng.choice(np.arange(1, num_items), size=k, replace=False)) if k else np.zeros(0, np.int64)
    is_cold = np.isin(frame["item_id"].to_numpy(), cold)
    train, val, test = parts
    moved = np.concatenate([train[is_cold[train]], val[is_cold[val]]])
    parts = [train[~is_cold[train]], val[~is_cold[val]], np.concatenate([test, moved])]
    frame.loc[is_cold, "item_id"] = 0
    return parts, cold


def save(out_dir: Path, saved: dict[str, np.ndarray], ids: np.ndarray, texts: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    np.savez(str(out_dir / PROJECTION_FILE), **saved)  # type: ignore[arg-type]
    pq.write_table(pa.table({"item_id": ids, "text": texts}), out_dir / "item_text.parquet")


def load_projection(prepared_dir: Path) -> dict[str, np.ndarray] | None:
    path = Path(prepared_dir) / PROJECTION_FILE
    if not path.exists():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
