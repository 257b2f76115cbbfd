"""data.label.ordinal: the other cuts of a graded label trained beside positive_if's as one cumulative-logit model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from raytrain.data.batches import Columns
from raytrain.data.schema import FeatureSchema, SparseFeature
from raytrain.errors import SpecError
from raytrain.spec import load_spec
from raytrain.train.distributed import OFFSET_SCALE, TrainModule

ROOT = Path(__file__).resolve().parents[2]
CUTS = "data.label.ordinal=[5, 2, 3]"


class Linear(nn.Module):
    """logit = dense @ w + b, the shape of a RecModel (no embedding penalty)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dims, 1)

    def forward(self, dense, sparse):
        return self.fc(dense).reshape(-1)

    def penalty(self):
        return None


def test_the_cuts_become_rules_with_positive_ifs_operator_lowest_first():
    label = load_spec(ROOT / "jobs/train_ml100k.yaml", [CUTS]).data.label
    assert label.extra_rules() == (">= 2", ">= 3", ">= 5")
    assert load_spec(ROOT / "jobs/train_ml100k.yaml").data.label.extra_rules() == ()


@pytest.mark.parametrize("overrides, words", [
    (["data.label.positive_if=null", CUTS], "need positive_if with >= or >"),
    (["data.label.positive_if='<= 3'", CUTS], "need positive_if with >= or >"),
    (["data.label.ordinal=[2, 4]"], "repeat a value or positive_if's own (4)"),
    (["data.label.ordinal=[2, 2]"], "repeat a value"),
    ([CUTS, "data.label.ordinal_weight=0"], "ordinal_weight"),
    ([CUTS, "model.arch=content", "data.text={item: [movie_title]}"], "content does not read them"),
])
def test_cuts_that_do_not_fit_the_label_rule_are_refused(overrides, words):
    with pytest.raises(SpecError, match="label") as e:
        load_spec(ROOT / "jobs/train_ml100k.yaml", overrides)
    assert words in str(e.value)


def test_movielens_rows_carry_every_cuts_label_from_their_own_rating():
    from raytrain.data import prepare

    prepared = prepare(load_spec(ROOT / "jobs/train_ml100k.yaml", [CUTS]).data)
    schema = prepared.schema
    assert schema.grade == "rating" and schema.extra_labels == (">= 2", ">= 3", ">= 5")
    table = pq.read_table(prepared.paths["train"][0])
    cols = Columns.from_arrow(schema, table, "train")
    rating = table.column("rating").to_numpy()
    assert set(np.unique(rating)) == {1, 2, 3, 4, 5}
    np.testing.assert_array_equal(cols.label.numpy(), (rating >= 4).astype(np.float32))
    want = np.stack([rating >= 2, rating >= 3, rating >= 5], axis=1).astype(np.float32)
    np.testing.assert_array_equal(cols.extra.numpy(), want)
    idx = torch.tensor([7, 3, 11])  # batches and row subsets keep each row's cut labels with it
    np.testing.assert_array_equal(cols.batch(idx).extra.numpy(), want[[7, 3, 11]])
    np.testing.assert_array_equal(Columns.concat([cols.take(idx), cols.take(idx)], schema).extra.numpy(),
                                  want[[7, 3, 11, 7, 3, 11]])
    plain = prepare(load_spec(ROOT / "jobs/train_ml100k.yaml").data)  # without cuts: no raw rating, no extra labels
    assert plain.schema.grade is None and "rating" not in pq.read_schema(plain.paths["train"][0]).names


def test_a_parquet_label_is_its_own_grade():
    schema = FeatureSchema(sparse=(SparseFeature("u", 3),), dense=("x",), label="stars", positive_if=">= 4",
                           grade="stars", extra_labels=("> 1.5",))
    table = pa.table({"u": [0, 1, 2, 1], "x": [0.0, 1.0, 2.0, 3.0], "stars": [1.0, 2.0, 4.0, 5.0]})
    cols = Columns.from_arrow(schema, table, "f.parquet")
    assert cols.label.tolist() == [0, 0, 1, 1] and cols.extra[:, 0].tolist() == [0, 1, 1, 1]
    assert schema.columns() == ["u", "x", "stars"]


def _batch(x: torch.Tensor, label: torch.Tensor, extra: torch.Tensor | None):
    from raytrain.data.batches import Batch

    return Batch(x, None, label, len(label), extra=extra)  # type: ignore[arg-type]  # the stand-in model reads no ids


def test_the_loss_mixes_positive_ifs_and_the_cuts_by_ordinal_weight():
    torch.manual_seed(0)
    module = TrainModule(Linear(2), ordinal=((">= 2", ">= 3", ">= 5"), ">= 4", 0.25))
    assert (module.ordinal_offsets * OFFSET_SCALE).tolist() == [2.0, 1.0, -1.0]  # one logit apart, cut 4 at 0
    x, label, extra = torch.randn(32, 2), (torch.rand(32) > 0.5).float(), (torch.rand(32, 3) > 0.5).float()
    loss, logits = module(_batch(x, label, extra))
    bce = nn.functional.binary_cross_entropy_with_logits
    cuts = logits[:, None] + torch.tensor([2.0, 1.0, -1.0])
    assert loss.item() == pytest.approx(0.25 * bce(logits, label).item() + 0.75 * bce(cuts, extra).item(), rel=1e-6)
    module.eval()  # evaluation reads positive_if's label alone
    assert module(_batch(x, label, extra))[0].item() == pytest.approx(bce(logits, label).item(), rel=1e-6)


def test_the_offsets_learn_the_distances_between_the_cuts():
    """Grades from a latent logistic score with known thresholds: the fitted offsets are the thresholds' distances
    from positive_if's, and the logit's weights the score's."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40_000, 2, generator=gen)
    u = x @ torch.tensor([1.5, -1.0]) + torch.logit(torch.rand(40_000, generator=gen))  # logistic noise
    thresholds = torch.tensor([-2.0, -0.5, 0.3, 2.5])  # grade >= k+2 when u > thresholds[k]
    grade = 1 + (u[:, None] > thresholds).sum(1)
    module = TrainModule(Linear(2), ordinal=((">= 2", ">= 3", ">= 5"), ">= 4", 0.5))
    batch = _batch(x, (grade >= 4).float(), torch.stack([grade >= 2, grade >= 3, grade >= 5], 1).float())
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        module(batch)[0].backward()
        opt.step()
    offsets = (module.ordinal_offsets * OFFSET_SCALE).detach()
    want = thresholds[2] - thresholds[[0, 1, 3]]  # 2.3, 0.8, -2.2
    assert torch.allclose(offsets, want, atol=0.15), offsets
    assert torch.allclose(module.model.fc.weight.detach().reshape(-1), torch.tensor([1.5, -1.0]), atol=0.1)
