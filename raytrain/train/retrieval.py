"""Full-catalogue retrieval metrics for two-tower and content models: Recall@K and NDCG@K.

For every user with a positive in the evaluated split, the user tower embeds the user (features of
one of the user's rows in that split), the item tower embeds every item of the catalogue (every
distinct item seen in any split), and the fused top-K kernel ranks the whole catalogue, excluding
the items the user already interacted with in training. Recall@K = |top-K n positives| / |positives|,
NDCG@K with binary gains; both averaged over users.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.batches import Columns
from ..kernels import topk_scores


def _read(files: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in files])


@torch.no_grad()
def _tower_outputs(net, columns: Columns, side: int, batch: int = 4096) -> torch.Tensor:
    """The user (``side`` 0) or item (1) vectors of the rows: ``net.towers``, which two-tower and content models have."""
    out = []
    for lo in range(0, len(columns), batch):
        b = columns.batch(torch.arange(lo, min(lo + batch, len(columns))))
        out.append(net.towers(b.sparse, b.dense)[side])
    return torch.cat(out)


def retrieval_metrics(loaded, paths: dict[str, list[str]], split: str = "test", ks=(10, 50)) -> dict[str, float]:
    net = loaded.module.model.net
    schema = loaded.schema
    user_key, item_key = net.user_features[0], net.item_features[0]
    tables = {s: _read(f) for s, f in paths.items()}
    catalogue = pa.concat_tables([t for t in tables.values()])
    items, first = np.unique(catalogue.column(item_key).to_numpy(), return_index=True)
    item_cols = Columns.from_arrow(schema, catalogue.take(pa.array(first)), "catalogue")
    item_emb = _tower_outputs(net, item_cols, 1)
    position = {int(it): p for p, it in enumerate(items)}

    ev = tables[split]
    label = ev.column(schema.label).to_numpy()
    if schema.positive_if is not None:
        from ..data.batches import binarise

        label = binarise(label, schema.positive_if)
    pos_rows = np.flatnonzero(label > 0.5)
    ev_users = ev.column(user_key).to_numpy()
    ev_items = ev.column(item_key).to_numpy()
    users, first_row = np.unique(ev_users[pos_rows], return_index=True)
    query_cols = Columns.from_arrow(schema, ev.take(pa.array(pos_rows[first_row])), f"{split} users")
    user_emb = _tower_outputs(net, query_cols, 0)

    train = tables["train"]
    seen: dict[int, set[int]] = {}
    for u, it in zip(train.column(user_key).to_numpy(), train.column(item_key).to_numpy()):
        seen.setdefault(int(u), set()).add(position[int(it)])
    positives: dict[int, set[int]] = {}
    for r in pos_rows:
        positives.setdefault(int(ev_users[r]), set()).add(position[int(ev_items[r])])
    excl = [sorted(seen.get(int(u), set()) - positives[int(u)]) for u in users]
    offsets = torch.tensor([0] + [len(e) for e in excl]).cumsum(0)
    flat = torch.tensor([x for e in excl for x in e], dtype=torch.int64)

    kmax = max(ks)
    _, top = topk_scores(user_emb, item_emb, kmax, exclude=(offsets, flat))
    out: dict[str, float] = {}
    discounts = 1.0 / np.log2(np.arange(kmax) + 2)
    for k in ks:
        recalls, ndcgs = [], []
        for row, u in enumerate(users):
            pos = positives[int(u)]
            hits = np.array([int(x) in pos for x in top[row, :k].tolist()], dtype=float)
            recalls.append(hits.sum() / len(pos))
            ideal = discounts[: min(len(pos), k)].sum()
            ndcgs.append(float((hits * discounts[:k]).sum() / ideal))
        out[f"{split}_recall@{k}"] = float(np.mean(recalls))
        out[f"{split}_ndcg@{k}"] = float(np.mean(ndcgs))
    out[f"{split}_retrieval_users"] = int(len(users))
    out["catalogue_items"] = int(len(items))
    return out
