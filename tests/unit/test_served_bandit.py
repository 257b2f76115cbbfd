"""Exploring slates (what a serve variant samples and logs) and off-line evaluation of served decision logs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raytrain.bandit import slates
from raytrain.bandit.runner import run_bandit
from raytrain.bandit.served import load_served_logs
from raytrain.errors import RaytrainError, SpecError
from raytrain.serve.decisions import DECISION_SCHEMA, FEEDBACK_SCHEMA, _write, read_logs
from raytrain.spec import parse_spec

SCORES = np.array([0.05, 0.4, 0.1, 0.3, 0.2, 0.02])


@pytest.mark.parametrize("policy,k,kw", [("epsilon_greedy", 4, {"epsilon": 0.3}), ("epsilon_greedy", 1, {"epsilon": 1.0}),
                                         ("softmax", 3, {"temperature": 0.1}), ("softmax", 2, {"temperature": 0.02})])
def test_slate_propensities_sum_to_one_and_match_sampling(policy, k, kw):
    m = slates.marginals(policy, SCORES, k, **kw)
    assert m.shape == (len(SCORES), k)
    np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-12)  # one distribution per position
    np.testing.assert_allclose(m.sum(axis=1).max(), min(1.0, m.sum(axis=1).max()))  # an item at most once
    rng = np.random.default_rng(0)
    n = 40_000
    counts = np.zeros_like(m)
    for _ in range(n):
        slate = slates.sample(policy, SCORES, k, rng, **kw)
        assert len(set(slate.tolist())) == k  # no item twice in a slate
        counts[slate, np.arange(k)] += 1
    # within 4.5 binomial standard deviations (plus a floor) of every exact marginal
    sd = np.sqrt(m * (1 - m) / n)
    assert np.all(np.abs(counts / n - m) <= 4.5 * sd + 1e-3), (counts / n, m)


def test_greedy_slates_and_slate_errors():
    rng = np.random.default_rng(1)
    assert slates.sample("epsilon_greedy", SCORES, 3, rng, epsilon=0.0).tolist() == [1, 3, 4]
    np.testing.assert_allclose(slates.marginals("epsilon_greedy", SCORES, 3, epsilon=0.0)[[1, 3, 4], [0, 1, 2]], 1.0)
    with pytest.raises(ValueError, match="exact propensities up to k = 3"):
        slates.marginals("softmax", SCORES, 4)
    with pytest.raises(ValueError, match="a slate of 7 from 6"):
        slates.sample("epsilon_greedy", SCORES, 7, rng)


def _simulate(tmp_path, n_requests=3000, k=2, epsilon=0.5, seed=0):
    """Logs as a serving variant writes them: epsilon-greedy slates over random scores, clicks ~ score x bias."""
    rng = np.random.default_rng(seed)
    bias = np.array([1.0, 0.6, 0.4])[:k]
    decisions, feedback = [], []
    for r in range(n_requests):
        n = int(rng.integers(4, 9))
        cands = rng.choice(1000, size=n, replace=False)
        scores = rng.uniform(0.02, 0.6, size=n)
        m = slates.marginals("epsilon_greedy", scores, k, epsilon)
        slate = slates.sample("epsilon_greedy", scores, k, rng, epsilon)
        rid = f"r{r}"
        for p, i in enumerate(slate):
            decisions.append({"request_id": rid, "time": 0.0, "variant": "explore", "policy": "{}", "user": r % 50,
                              "context": "{}", "position": p, "item": int(cands[i]), "propensity": float(m[i, p]),
                              "score": float(scores[i]), "candidates": cands.tolist(), "scores": scores.tolist(),
                              "probabilities": m[:, p].tolist()})
            if rng.random() < scores[i] * bias[p]:
                feedback.append({"request_id": rid, "item": int(cands[i]), "position": p, "reward": 1.0, "time": 0.0})
    logs = tmp_path / "serve-run" / "logs"
    for chunk in range(0, len(decisions), 1000):  # several files, as the flusher writes them
        _write(decisions[chunk:chunk + 1000], DECISION_SCHEMA, logs / "decisions", 1.0 + chunk)
    _write(feedback, FEEDBACK_SCHEMA, logs / "feedback", 1.0)
    return tmp_path / "serve-run", decisions, bias


def _true_value(decisions, bias, policy, **kw) -> float:
    """Mean click probability per (request, position) had ``policy`` chosen: the ground truth of the simulation."""
    total, n = 0.0, 0
    seen = set()
    for d in decisions:
        if d["request_id"] in seen:
            continue
        seen.add(d["request_id"])
        scores = np.array(d["scores"])
        m = slates.marginals(policy, scores, len(bias), **kw)
        total += float((m * scores[:, None] * bias[None, :]).sum())
        n += len(bias)
    return total / n


def test_served_logs_evaluate_new_policies(tmp_path):
    run, decisions, bias = _simulate(tmp_path)
    dec, fb = read_logs(run / "logs")
    assert dec.num_rows == len(decisions) and fb.num_rows > 0
    logs = load_served_logs(run)
    assert logs.n == len(decisions) and logs.n_requests == 3000
    # the logging policy evaluated on its own logs: every importance weight is 1, IPS is the mean reward
    base = {"name": "served-eval", "kind": "bandit", "storage": str(tmp_path / "runs"),
            "data": {"source": "served-logs", "path": str(run)}}
    same = run_bandit(parse_spec({**base, "bandit": {"policy": {"name": "epsilon_greedy", "epsilon": 0.5},
                                                     "estimators": ["ips", "snips"], "bootstrap": {"samples": 200}}}))
    for e in same["estimates"]:
        assert e["value"] == pytest.approx(logs.reward.mean(), rel=1e-9)
    # a greedier policy: IPS, SNIPS and DR land near the simulation's true value and their intervals cover it
    truth = _true_value(decisions, bias, "epsilon_greedy", epsilon=0.1)
    new = run_bandit(parse_spec({**base, "bandit": {"policy": {"name": "epsilon_greedy", "epsilon": 0.1},
                                                    "estimators": ["ips", "snips", "dm", "dr"],
                                                    "bootstrap": {"samples": 300}}}))
    got = {e["estimator"]: e for e in new["estimates"]}
    for name in ("ips", "snips", "dr"):
        assert got[name]["ci_low"] <= truth <= got[name]["ci_high"], (name, got[name], truth)
        assert abs(got[name]["value"] - truth) / truth < 0.1
    assert truth > logs.reward.mean()  # greedier is better here, and the estimates say so
    assert got["dr"]["value"] > new["logging_policy"]["value"]
    report = json.loads((tmp_path / "runs" / "served-eval").glob("*/report.json").__next__().read_text())
    assert report["requests"] == 3000 and report["logging_policy"]["n_rounds"] == len(decisions)


def test_served_logs_errors(tmp_path):
    with pytest.raises(RaytrainError, match="no serve.json in it or below it"):
        load_served_logs(tmp_path)  # neither a serve run nor a folder above one
    (tmp_path / "logs").mkdir()
    with pytest.raises(RaytrainError, match="no decision logs"):
        load_served_logs(tmp_path)
    base = {"name": "x", "kind": "bandit", "data": {"source": "served-logs"}}
    with pytest.raises(SpecError) as e:
        parse_spec({**base, "bandit": {"policy": {"name": "linucb"}}})
    assert "served-logs needs the serve run directory" in str(e.value)
    assert "evaluate epsilon_greedy or softmax over them, not 'linucb'" in str(e.value)
