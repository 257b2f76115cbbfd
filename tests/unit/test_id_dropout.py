"""train.id_dropout: a seeded share of one feature's ids becomes 0 in training batches; nothing else changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raytrain.data.batches import Columns
from raytrain.data.schema import FeatureSchema, SparseFeature
from raytrain.errors import SpecError
from raytrain.train.id_dropout import check, drop_ids

SCHEMA = FeatureSchema(sparse=(SparseFeature("user_id", 1000, False, "user"), SparseFeature("genres", 20, True, "item"),
                               SparseFeature("item_id", 5000, False, "item")), dense=("x",), label="y",
                       timestamp=None, positive_if=None, info={})


def _batches(n_batches=20, b=500):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_batches):
        lens = rng.integers(1, 4, b)
        cols = Columns(SCHEMA, {"user_id": torch.from_numpy(rng.integers(1, 1000, b)),
                                "item_id": torch.from_numpy(rng.integers(1, 5000, b))},
                       {"genres": (torch.from_numpy(rng.integers(1, 20, lens.sum())),
                                   torch.from_numpy(np.concatenate([[0], np.cumsum(lens)])))},
                       torch.randn(b, 1), torch.zeros(b))
        out.append(cols.batch(torch.arange(b)))
    return out


def test_a_seeded_share_of_the_named_ids_becomes_unknown_and_nothing_else_changes():
    batches = _batches()
    dropped = list(drop_ids(iter(batches), {"item_id": 0.2}, seed=3, epoch=1, rank=0))
    zero = 0
    for before, after in zip(batches, dropped):
        a, b = before.sparse.to_dict(), after.sparse.to_dict()
        for name in ("user_id", "genres"):
            assert torch.equal(a[name].values(), b[name].values()) and torch.equal(a[name].lengths(), b[name].lengths())
        changed = a["item_id"].values() != b["item_id"].values()
        assert torch.all(b["item_id"].values()[changed] == 0)
        zero += int(changed.sum())
        assert torch.equal(before.dense, after.dense) and torch.equal(before.label, after.label)
    assert abs(zero / (20 * 500) - 0.2) < 0.02  # the share asked for (10,000 draws)
    # the same (seed, epoch, rank, step): the same ids; a resumed epoch from step 5 drops what the full one did
    again = list(drop_ids(iter(batches), {"item_id": 0.2}, seed=3, epoch=1, rank=0))
    assert all(torch.equal(x.sparse.values(), y.sparse.values()) for x, y in zip(dropped, again))
    resumed = list(drop_ids(iter(batches[5:]), {"item_id": 0.2}, seed=3, epoch=1, rank=0, start_step=5))
    assert all(torch.equal(x.sparse.values(), y.sparse.values()) for x, y in zip(dropped[5:], resumed))
    other = list(drop_ids(iter(batches), {"item_id": 0.2}, seed=3, epoch=2, rank=0))
    assert not torch.equal(other[0].sparse.values(), dropped[0].sparse.values())


def test_only_single_valued_features_of_the_data_can_be_dropped():
    check({"item_id": 0.1}, SCHEMA)
    with pytest.raises(SpecError, match=r"train.id_dropout.genres: not a single-valued sparse feature of this data "
                                        r"\(user_id, item_id\)"):
        check({"genres": 0.1, "item_id": 0.1}, SCHEMA)
    from raytrain.spec import parse_spec

    with pytest.raises(SpecError, match=r"id_dropout shares must be in \[0, 1\): item_id: 1.0"):
        parse_spec({"name": "x", "kind": "train", "train": {"id_dropout": {"item_id": 1.0}}})
