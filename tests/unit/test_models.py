"""Model building: dropout in the top MLP, the embedding L2 penalty."""

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


@pytest.mark.parametrize("arch", ["dlrm", "dcn_v2"])
def test_embedding_l2_penalises_the_rows_a_training_batch_looks_up(arch):
    spec = parse_spec({"name": "m", "model": {"arch": arch, "embedding_dim": 8, "embedding_l2": 0.01}})
    model = build_model(spec.model, SCHEMA)
    dense, sparse = _batch()
    model.train()
    model(dense, sparse)
    penalty = model.penalty()
    # by hand: each row of the batch looks up one user row and one item row
    tables = {n.split(".")[-2]: p for n, p in model.named_parameters() if "embedding_bags" in n}
    ids = sparse.to_dict()
    rows = tables["t_user"][ids["user"].values()].pow(2).sum(1) + tables["t_item"][ids["item"].values()].pow(2).sum(1)
    assert penalty is not None and penalty.item() > 0
    assert penalty.item() == pytest.approx(0.01 * rows.mean().item(), rel=1e-5)
    assert model.penalty() is None  # taken once per forward
    # the penalty's gradient reaches exactly the looked-up rows
    model(dense, sparse)
    model.penalty().backward()
    grad = tables["t_user"].grad
    assert set(torch.nonzero(grad.abs().sum(1)).flatten().tolist()) == set(ids["user"].values().tolist())
    model.eval()
    model(dense, sparse)
    assert model.penalty() is None  # no penalty out of training
    plain = build_model(spec.model.model_copy(update={"embedding_l2": 0.0}), SCHEMA)
    plain.train()
    plain(dense, sparse)
    assert plain.penalty() is None


def test_embedding_l2_is_refused_for_two_tower_and_negative():
    with pytest.raises(SpecError, match="model.embedding_l2: applies to dlrm and dcn_v2"):
        parse_spec({"name": "m", "model": {"arch": "two_tower", "embedding_l2": 0.1}})
    with pytest.raises(SpecError, match="model.embedding_l2"):
        parse_spec({"name": "m", "model": {"embedding_l2": -1.0}})


def test_a_two_tower_item_tower_has_a_content_branch_only_where_items_have_text():
    """With text features (dense ``text_*`` of group item) an item's vector moves with its text, also for the unknown
    item id; without them the model is the plain two-tower (no content parameters, dense ignored)."""
    spec = parse_spec({"name": "m", "model": {"arch": "two_tower", "embedding_dim": 8, "tower": [16, 8]}})
    texted = FeatureSchema(sparse=(SparseFeature("user", 10, False, "user"), SparseFeature("item", 20, False, "item")),
                           dense=("age", "text_0", "text_1"), dense_groups={"age": "user", "text_0": "item",
                                                                            "text_1": "item"}, label="y")
    torch.manual_seed(0)
    net = build_model(spec.model, texted).net
    assert net.content == [1, 2]
    dense, sparse = _batch(8)
    dense = torch.cat([dense, torch.randn(8, 2)], dim=1)
    _, item = net.towers(sparse, dense)
    other = dense.clone()
    other[:, 1:] += 1.0
    _, moved = net.towers(sparse, other)
    assert not torch.allclose(item, moved)  # the text changed the item's vector
    aged = dense.clone()
    aged[:, 0] += 5.0
    assert torch.equal(net.towers(sparse, aged)[1], item)  # a user feature never reaches the item tower
    with pytest.raises(ValueError, match="content branch"):
        net.towers(sparse)
    plain = build_model(spec.model, FeatureSchema(sparse=texted.sparse, dense=("age",), label="y")).net
    assert plain.content == [] and not hasattr(plain, "content_tower")
    assert torch.equal(plain.towers(sparse)[1], plain.towers(sparse, torch.randn(8, 1))[1])


@pytest.mark.parametrize("arch", ["dlrm", "dcn_v2"])
def test_item_text_enters_the_interaction_as_an_embedding_of_its_own(arch):
    from torchrec.models.dlrm import DLRM

    from raytrain.models.build import TextSlot

    spec = parse_spec({"name": "m", "model": {"arch": arch, "embedding_dim": 8, "over_arch": [16], "dropout": 0.1,
                                              "embedding_l2": 0.01}})
    texted = FeatureSchema(sparse=SCHEMA.sparse, dense=("x", "text_0", "text_1", "text_2"),
                           dense_groups={"x": "user", "text_0": "item", "text_1": "item", "text_2": "item"}, label="y")
    torch.manual_seed(0)
    model = build_model(spec.model, texted)
    assert isinstance(model.net, TextSlot) and model.net.text_arch.in_features == 3
    assert isinstance(build_model(spec.model, SCHEMA).net, DLRM)  # no text: TorchRec's model as it is
    x, sparse = _batch(16)
    dense = torch.cat([x, torch.randn(16, 3)], dim=1)
    model.eval()
    with torch.no_grad():
        base = model(dense, sparse)
        moved = dense.clone()
        moved[:, 1:] += 1.0
        assert base.shape == (16,) and not torch.allclose(model(moved, sparse), base)  # the text counts
        other = dense.clone()
        other[:, 0] += 1.0
        assert not torch.allclose(model(other, sparse), base)  # and so does the other dense feature
    model.train()
    loss = model(dense, sparse).sum() + model.penalty()  # the embedding L2 hook still sees the tables
    loss.backward()
    assert model.net.text_arch.weight.grad is not None and model.net.text_arch.weight.grad.abs().sum() > 0
