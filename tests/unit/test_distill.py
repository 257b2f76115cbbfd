"""Distillation: teacher logits travel with the training rows; alpha = 1 is plain training; student specs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raytrain.data.batches import TEACHER_COLUMN, Columns
from raytrain.data.schema import FeatureSchema, SparseFeature
from raytrain.errors import DataError, SpecError
from raytrain.spec import parse_spec
from raytrain.spec.job import JobSpec

SCHEMA = FeatureSchema(sparse=(SparseFeature("user", 50, False, "user"), SparseFeature("item", 80, False, "item")),
                       dense=("d0", "d1"))
N = 64


def _table(teacher: bool = True) -> pa.Table:
    rng = np.random.default_rng(0)
    cols = {"user": rng.integers(0, 50, N), "item": rng.integers(0, 80, N), "d0": rng.normal(size=N),
            "d1": rng.normal(size=N), "label": (rng.random(N) > 0.5).astype(np.float64)}
    if teacher:
        cols[TEACHER_COLUMN] = rng.normal(size=N).astype(np.float32)
    return pa.table(cols)


def _spec(distill: dict | None) -> JobSpec:
    doc = {"name": "d", "kind": "distill" if distill else "train", "data": {"source": "synthetic"},
           "model": {"arch": "dlrm", "embedding_dim": 8, "dense_arch": [8], "over_arch": [8]},
           "train": {"workers": 1, "seed": 5, "optimizer": {"sparse": "rowwise_adagrad", "dense": "adam", "lr": 0.05}}}
    if distill:
        doc["distill"] = {"teacher": {"run": "unused"}, **distill}
    return JobSpec.model_validate(doc)


def _step(spec: JobSpec, table: pa.Table):
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from raytrain.train.distributed import build_train_module, dense_optimizer_factory

    module = build_train_module(spec, SCHEMA, torch.device("cpu"), meta_tables=False)
    opt = dense_optimizer_factory(spec.train.optimizer)([p for _, p in in_backward_optimizer_filter(module.named_parameters())])
    batch = Columns.from_arrow(SCHEMA, table, "test rows").batch(torch.arange(N))
    loss, _ = module(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss), {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_teacher_logits_ride_with_the_rows():
    table = _table()
    cols = Columns.from_arrow(SCHEMA, table, "rows")
    batch = cols.batch(torch.tensor([3, 1, 7]))
    np.testing.assert_array_equal(batch.teacher.numpy(), table.column(TEACHER_COLUMN).to_numpy()[[3, 1, 7]])
    assert Columns.from_arrow(SCHEMA, _table(teacher=False), "rows").batch(torch.arange(2)).teacher is None
    bad = table.set_column(table.column_names.index(TEACHER_COLUMN), TEACHER_COLUMN,
                           pa.array(np.r_[np.nan, np.zeros(N - 1)].astype(np.float32)))
    with pytest.raises(DataError, match="rows: column teacher_logit has 1 NaN/inf value"):
        Columns.from_arrow(SCHEMA, bad, "rows")


def test_alpha_one_is_plain_training_and_alpha_below_one_is_not():
    plain_loss, plain = _step(_spec(None), _table())
    same_loss, same = _step(_spec({"alpha": 1.0, "temperature": 2.0}), _table())
    assert same_loss == pytest.approx(plain_loss, rel=1e-6)
    for k in plain:
        torch.testing.assert_close(same[k], plain[k], rtol=1e-5, atol=1e-6)
    kd_loss, kd = _step(_spec({"alpha": 0.3, "temperature": 2.0}), _table())
    assert kd_loss != pytest.approx(plain_loss, rel=1e-3)
    assert any(not torch.allclose(kd[k], plain[k]) for k in plain)


def test_student_spec_is_the_teacher_spec_with_overrides(tmp_path):
    from raytrain.spec.loader import student_spec

    teacher = parse_spec({"name": "t", "model": {"arch": "dcn_v2", "embedding_dim": 64, "over_arch": [128, 64]},
                          "train": {"epochs": 5}})
    spec = parse_spec({"name": "s", "kind": "distill", "storage": str(tmp_path), "distill": {
        "teacher": {"run": "x"}, "student": {"model.embedding_dim": 8, "model.over_arch": [32]}, "alpha": 0.2}})
    student = student_spec(teacher, spec)
    assert (student.name, student.kind, student.storage) == ("s", "distill", str(tmp_path))
    assert student.model.embedding_dim == 8 and student.model.over_arch == [32] and student.model.arch == "dcn_v2"
    assert student.train.epochs == 5 and student.distill.alpha == 0.2
    bad = parse_spec({"name": "s", "kind": "distill", "distill": {"teacher": {"run": "x"},
                                                                    "student": {"model.embedding_dims": 8}}})
    with pytest.raises(SpecError, match="model.embedding_dims: unknown key"):
        student_spec(teacher, bad)


def test_distill_spec_errors():
    one_of = "distill.teacher: give exactly one of 'ensemble', 'run' or 'tune_run' \\(got run, tune_run\\)"
    with pytest.raises(SpecError, match=one_of):
        parse_spec({"name": "s", "kind": "distill", "distill": {"teacher": {"run": "a", "tune_run": "b"}}})
    with pytest.raises(SpecError, match="a distill spec needs a 'distill' section"):
        parse_spec({"name": "s", "kind": "distill"})


def test_pipeline_spec_checks_step_order_and_what_feeds_what():
    base = {"name": "p", "kind": "pipeline", "tune": {"space": {"train.optimizer.lr": "loguniform(0.001, 0.01)"}},
            "ensemble": {"top_k": 2}, "distill": {"student": {"model.embedding_dim": 8}}}
    spec = parse_spec(base)
    assert spec.pipeline is None and spec.distill.teacher.given() == []
    with pytest.raises(SpecError) as e:
        parse_spec({**base, "pipeline": {"steps": ["distill", "tune"]}, "ensemble": {"tune_run": "x"},
                    "distill": {"teacher": {"run": "r"}}})
    assert sorted(str(e.value).splitlines()[1:]) == [
        "  - distill.teacher: the pipeline's earlier step is the teacher; remove run",
        "  - ensemble: the pipeline has no ensemble step (steps: distill, tune)",
        "  - pipeline.steps: ['distill', 'tune']: each step once, in the order train, tune, ensemble, distill, serve",
    ]
