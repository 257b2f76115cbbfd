"""A SASRec / HSTU item table started from item text (``data.text`` on a sequential run): the warm start of a
recommendation-native model from a pretrained language model.

The driver encodes every item's text (``raytrain.text``, cached) into ``sequences.npz`` as ``text`` ([num_items,
384], row i for the model's item i, padding zeros). Each worker projects the vectors to ``model.embedding_dim`` (their
principal components over the catalogue, whitened where it has more than 4 items a dimension, so every direction
spreads the items as a random start does), scales them to the mean row norm the table was initialised with, and
copies the rows it owns into the sharded table: items with similar text start near each other, and training moves
them from there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ...log import get_logger

log = get_logger(__name__)
TABLE = "t_item.weight"


def text_vectors(spec, item_ids: np.ndarray, num_items: int) -> np.ndarray:
    """[num_items, dim] sentence vectors of each model item (``item_ids``: model index -> source item id, the
    prepared MovieLens ``item_id``); the padding row and items without text stay zeros."""
    from ...data.item_text import item_texts
    from ...data.movielens import _raw_files
    from ...text.encode import encode_catalogue

    cfg = spec.data.text
    ids, texts = item_texts(_raw_files(spec.data.path), cfg.item)
    vectors, _ = encode_catalogue(ids, texts, cfg.encoder, cfg.batch_size, cfg.workers, cfg.cpus_per_worker)
    by_id = np.zeros((int(ids.max()) + 1, vectors.shape[1]), np.float32)
    by_id[ids] = vectors
    out = np.zeros((num_items, vectors.shape[1]), np.float32)
    src = np.asarray(item_ids[1:num_items], dtype=np.int64)
    ok = (src > 0) & (src < len(by_id))
    out[1:][ok] = by_id[src[ok]]
    return out


def init_from_text(dmp: torch.nn.Module, sequences: str | Path, rank: int) -> bool:
    """Copy the projected text vectors into the item table (each rank its own rows); False when the run has none."""
    from ...text.encode import fit_projection
    from ..distributed import load_full_state

    with np.load(sequences) as z:
        if "text" not in z.files:
            return False
        vectors = z["text"]
    state = dmp.state_dict()
    key = next(k for k in state if k.endswith(TABLE))
    table = state[key]
    d = int(table.size()[1])
    local = [s.tensor for s in table.local_shards()] if hasattr(table, "local_shards") else [table]
    norms = torch.tensor([sum(float(t.norm(dim=1).sum()) for t in local), float(sum(len(t) for t in local))],
                         dtype=torch.float64)
    if hasattr(table, "local_shards") and dist.is_initialized():
        dist.all_reduce(norms)
    target = float(norms[0] / norms[1])  # the initial rows' mean norm, over the whole table
    has = np.linalg.norm(vectors, axis=1) > 0
    proj = fit_projection(vectors[has], d)
    z = (vectors[has] - proj["mean"]) @ proj["components"].T
    if has.sum() > 4 * d:  # whitened where the catalogue is large enough: every direction the spread of a random start
        z = z / proj["scale"]
    z = np.pad(z, ((0, 0), (0, d - z.shape[1])))  # fewer items than dimensions: the rest start at 0
    full = torch.zeros(tuple(table.size()), dtype=torch.float32)
    full[torch.from_numpy(np.flatnonzero(has))] = torch.from_numpy(z * (target / np.linalg.norm(z, axis=1).mean()))
    load_full_state(dmp, {key: full})
    if rank == 0:
        log.info(f"item table started from item text: {int(has.sum()):,} items, {vectors.shape[1]}-d sentence vectors "
                 f"projected to {d}")
    return True
