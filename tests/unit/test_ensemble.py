"""Ensemble combiners: fitted on validation only, exact on identical members, weights that make sense."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from raytrain.ensemble.combine import Combiner, fit_combiner
from raytrain.ensemble.runner import combine_and_report
from raytrain.errors import SpecError
from raytrain.spec import parse_spec


def _members(rng, n, noise):
    """Labels from a latent score; each member sees it through its own noise level."""
    z = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * z))).astype(np.float64)
    logits = np.stack([2 * z + rng.normal(scale=s, size=n) for s in noise], axis=1)
    return logits, y


def test_combiners_are_fitted_on_validation_only():
    rng = np.random.default_rng(0)
    val, test = _members(rng, 4000, [0.5, 1.0, 2.0]), _members(rng, 4000, [0.5, 1.0, 2.0])
    combiners, table = combine_and_report(["mean", "weighted", "stacked"], ["a", "b", "c"], val, test)
    # scrambled test rows and labels change nothing that was fitted, nor any validation number
    scrambled = (rng.normal(size=test[0].shape), rng.permutation(test[1]))
    again, table2 = combine_and_report(["mean", "weighted", "stacked"], ["a", "b", "c"], val, scrambled)
    assert {k: c.to_dict() for k, c in combiners.items()} == {k: c.to_dict() for k, c in again.items()}
    assert table["val_auc"].tolist() == table2["val_auc"].tolist()
    assert table["test_auc"].tolist() != table2["test_auc"].tolist()
    assert list(table["model"]) == ["a", "b", "c", "ensemble:mean", "ensemble:weighted", "ensemble:stacked"]


def test_an_ensemble_of_identical_members_equals_the_member():
    rng = np.random.default_rng(1)
    logits, y = _members(rng, 3000, [1.0])
    same = np.repeat(logits, 3, axis=1)
    member = 1 / (1 + np.exp(-logits[:, 0]))
    for kind in ("mean", "weighted"):
        np.testing.assert_allclose(fit_combiner(kind, same, y).predict(same), member, rtol=1e-12)
    stacked = fit_combiner("stacked", same, y).predict(same)
    assert roc_auc_score(y, stacked) == pytest.approx(roc_auc_score(y, member), abs=1e-12)  # a monotone recalibration


def test_weights_favour_the_informative_member_and_stacking_beats_the_mean():
    rng = np.random.default_rng(2)
    logits, y = _members(rng, 6000, [0.3, 3.0, 6.0])
    w = fit_combiner("weighted", logits, y).weights
    assert w is not None and w[0] > 0.8 and abs(sum(w) - 1) < 1e-9 and min(w) >= 0
    test_logits, test_y = _members(rng, 6000, [0.3, 3.0, 6.0])
    auc = {k: roc_auc_score(test_y, fit_combiner(k, logits, y).predict(test_logits)) for k in ("mean", "stacked")}
    assert auc["stacked"] > auc["mean"]
    c = Combiner.from_dict(fit_combiner("stacked", logits, y).to_dict())
    np.testing.assert_allclose(c.predict(test_logits), fit_combiner("stacked", logits, y).predict(test_logits))


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown combine 'median'"):
        fit_combiner("median", np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match=r"must be \[rows, members\]"):
        fit_combiner("mean", np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(SpecError, match="give exactly one of 'tune_run' \\(with top_k\\) or 'runs'"):
        parse_spec({"name": "e", "kind": "ensemble", "ensemble": {"tune_run": "x", "runs": ["a", "b"]}})
    with pytest.raises(SpecError, match="an ensemble spec needs an 'ensemble' section"):
        parse_spec({"name": "e", "kind": "ensemble"})
    spec = parse_spec({"name": "e", "kind": "ensemble", "ensemble": {"tune_run": "runs/t", "combine": ["stacked"]}})
    assert spec.ensemble.top_k == 3 and spec.ensemble.combine == ["stacked"]


def test_member_names_are_trial_ids_whatever_tune_named_the_trial_directory():
    from pathlib import Path

    from raytrain.ensemble.members import member_name

    for directory in ("trial_ab12f_00001_1_model.embedding_dim=32_2026-12-02", "pbt_trial_ab12f_00001_1",
                      "_trial_ab12f_00001_1_lr=0.01"):  # the last: runs of older versions
        assert member_name(Path("/runs/t/tune") / directory / "run") == "ab12f_00001"
    assert member_name(Path("/runs/student")) == "student"
