"""Parsed request rows between the ingress and the member deployments: plain numpy arrays, which pickle in
microseconds (tensors and the schema do not)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.batches import Columns
from ..data.schema import FeatureSchema


def to_wire(cols: Columns) -> dict:
    """Parsed rows as plain numpy arrays: what the ingress sends a member (pickles in microseconds, unlike
    tensors and the schema)."""
    return {"ids": {k: v.numpy() for k, v in cols.ids.items()},
            "lists": {k: (v.numpy(), o.numpy()) for k, (v, o) in cols.lists.items()},
            "dense": cols.dense.numpy()}


def concat_wire(parts: list[dict]) -> dict:
    """Several requests' parsed rows as one, in order."""
    if len(parts) == 1:
        return parts[0]
    lists = {}
    for k in parts[0]["lists"]:
        offs, base = [np.zeros(1, dtype=np.int64)], 0
        for p in parts:
            o = p["lists"][k][1]
            offs.append(o[1:] + base)
            base += int(o[-1])
        lists[k] = (np.concatenate([p["lists"][k][0] for p in parts]), np.concatenate(offs))
    return {"ids": {k: np.concatenate([p["ids"][k] for p in parts]) for k in parts[0]["ids"]},
            "lists": lists, "dense": np.concatenate([p["dense"] for p in parts])}


def from_wire(schema: FeatureSchema, parts: list[dict]) -> Columns:
    """One Columns of several requests' rows, in order (a member's batch)."""
    w = concat_wire(parts)
    dense = torch.from_numpy(w["dense"])
    return Columns(schema, {k: torch.from_numpy(v) for k, v in w["ids"].items()},
                   {k: (torch.from_numpy(v), torch.from_numpy(o)) for k, (v, o) in w["lists"].items()},
                   dense, torch.zeros(dense.shape[0]))
