"""Id dropout (``train.id_dropout``): in each training batch a seeded share of the named features' ids becomes the
unknown id 0, so the model learns the unknown row and learns to score from an item's other features (genres, text)
when its id says nothing, as for an item it never saw (cold start; DropoutNet, Volkovs et al., NeurIPS 2017).
Evaluation and serving see the ids as they are.

The draw is fixed by (seed, epoch, rank, step): a resumed epoch drops the same ids as the run it continues.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ..data.schema import FeatureSchema
from ..errors import SpecError


def check(rates: dict[str, float], schema: FeatureSchema) -> None:
    """Every named feature is a single-valued sparse feature of the data (on the driver, before workers start)."""
    single = [f.name for f in schema.sparse if not f.multi_valued]
    bad = [f"train.id_dropout.{k}: not a single-valued sparse feature of this data ({', '.join(single)})"
           for k in rates if k not in single]
    if bad:
        raise SpecError(bad)


def drop_ids(batches: Iterator, rates: dict[str, float], seed: int, epoch: int, rank: int,
             start_step: int = 0) -> Iterator:
    """The batches with a share ``rates[name]`` of each named feature's ids set to 0."""
    for step, batch in enumerate(batches, start=start_step):
        kjt = batch.sparse
        keys, ends = kjt.keys(), kjt.offset_per_key()
        g = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 65_537 + rank) * 1_000_033 + step)
        values = kjt.values().clone()
        for name, p in rates.items():
            i = keys.index(name)
            part = values[ends[i]:ends[i + 1]]
            part[torch.rand(len(part), generator=g) < p] = 0
        sparse = KeyedJaggedTensor(keys=keys, values=values, lengths=kjt.lengths(), stride=kjt.stride())
        yield dataclasses.replace(batch, sparse=sparse)
