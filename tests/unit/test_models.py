"""Model building: dropout in the top MLP."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from raytrain.data.schema import FeatureSchema, SparseFeature
from raytrain.errors import SpecError
from raytrain.models import build_model
from raytrain.spec import parse_spec

SCHEMA = FeatureSchema(sparse=(SparseFeature("user", 10), SparseFeature("item", 20)), dense=("x",), label="y")


def _batch(n=64):
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.randint(0, 10, (n,), generator=g), torch.randint(0, 20, (n,), generator=g)])
    sparse = KeyedJaggedTensor.from_lengths_sync(["user", "item"], ids, torch.ones(2 * n, dtype=torch.int32))
    return torch.randn(n, 1, generator=g), sparse


@pytest.mark.parametrize("arch", ["dlrm", "dcn_v2"])
def test_dropout_acts_in_training_only_and_keeps_checkpoint_keys(arch):
    spec = parse_spec({"name": "m", "model": {"arch": arch, "embedding_dim": 8, "over_arch": [32, 16],
                                              "dropout": 0.5}})
    torch.manual_seed(0)
    model = build_model(spec.model, SCHEMA)
    plain = build_model(spec.model.model_copy(update={"dropout": 0.0}), SCHEMA)
    assert model.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(model.state_dict())
    dense, sparse = _batch()
    model.train()
    a, b = model(dense, sparse), model(dense, sparse)
    assert not torch.allclose(a, b)  # a different mask each call
    model.eval()
    plain.eval()
    assert torch.equal(model(dense, sparse), model(dense, sparse))
    assert torch.allclose(model(dense, sparse), plain(dense, sparse))  # eval: exactly the model without dropout


def test_dropout_is_refused_for_two_tower_and_out_of_range():
    with pytest.raises(SpecError, match="model.dropout: applies to the top MLP"):
        parse_spec({"name": "m", "model": {"arch": "two_tower", "dropout": 0.2}})
    with pytest.raises(SpecError, match="model.dropout"):
        parse_spec({"name": "m", "model": {"dropout": 1.0}})
