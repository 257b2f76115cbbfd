"""Off-policy evaluation: estimators against obp on real logs, coverage on simulated logs, policies."""

from __future__ import annotations

import numpy as np
import pytest

from raytrain.bandit.estimators import ESTIMATORS, estimate
from raytrain.bandit.policies import (
    POLICIES,
    BernoulliTS,
    EpsilonGreedy,
    LinearTS,
    LinUCB,
    Softmax,
    plackett_luce_marginals,
)
from raytrain.bandit.reward_model import cross_fit
from raytrain.data.open_bandit import LoggedBandit, load_open_bandit, zozotown_prior
from raytrain.errors import DataError, SpecError
from raytrain.spec import bandit as spec_schema
from raytrain.spec import parse_spec


def test_registries_match_the_spec():
    assert POLICIES == spec_schema.POLICIES and ESTIMATORS == spec_schema.ESTIMATORS


@pytest.fixture(scope="module")
def obd():
    return load_open_bandit("random", "all")


def test_open_bandit_logs(obd):
    assert (obd.n_rounds, obd.n_actions, obd.len_list) == (10_000, 80, 3)
    assert obd.context.shape == (10_000, 20) and obd.action_context.shape == (80, 4)
    np.testing.assert_allclose(obd.pscore, 1 / 80)  # the uniform random behaviour policy, per position
    assert set(np.unique(obd.position)) == {0, 1, 2}
    assert obd.reward.sum() == 38


def test_bad_logs_are_named(obd):
    bad = obd.subset(np.arange(100))
    bad.pscore = bad.pscore.copy()
    bad.pscore[7] = 0.0
    with pytest.raises(DataError, match=r"1 rounds have pscore not in \(0, 1\] \(first: round 7, value 0.0\)"):
        bad.validate()
    with pytest.raises(DataError, match="campaign 'kids'"):
        load_open_bandit("random", "kids")


def test_estimates_agree_with_obp_on_identical_inputs(obd):
    """BernoulliTS with the ZOZOTOWN prior judged on random logs: raytrain vs obp, same inputs."""
    obp_ope = pytest.importorskip("obp.ope")
    obp_policy = pytest.importorskip("obp.policy")
    from sklearn.linear_model import LogisticRegression

    alpha, beta = zozotown_prior("all")
    mine_pi = BernoulliTS(80, 3, alpha, beta, n_sim=100_000, seed=12345).action_dist(obd.context)
    theirs_pi = obp_policy.BernoulliTS(n_actions=80, len_list=3, is_zozotown_prior=True, campaign="all",
                                       random_state=12345).compute_batch_action_dist(n_sim=100_000,
                                                                                     n_rounds=obd.n_rounds)
    np.testing.assert_allclose(mine_pi, theirs_pi, atol=1e-12)  # the same simulation, draw for draw
    q_mine = cross_fit(obd, folds=3, seed=12345)
    reg = obp_ope.RegressionModel(n_actions=80, len_list=3, action_context=obd.action_context,
                                  base_model=LogisticRegression(max_iter=1000, random_state=12345))
    q_theirs = reg.fit_predict(context=obd.context, action=obd.action, reward=obd.reward, position=obd.position,
                               pscore=obd.pscore, n_folds=3, random_state=12345)
    np.testing.assert_allclose(q_mine, q_theirs, rtol=1e-6, atol=1e-9)
    feedback = {"n_rounds": obd.n_rounds, "n_actions": 80, "action": obd.action, "position": obd.position,
                "reward": obd.reward, "pscore": obd.pscore, "context": obd.context,
                "action_context": obd.action_context}
    ope = obp_ope.OffPolicyEvaluation(bandit_feedback=feedback, ope_estimators=[
        obp_ope.InverseProbabilityWeighting(), obp_ope.SelfNormalizedInverseProbabilityWeighting(),
        obp_ope.DirectMethod(), obp_ope.DoublyRobust(), obp_ope.SwitchDoublyRobust(lambda_=100.0),
        obp_ope.DoublyRobustWithShrinkage(lambda_=100.0)])
    theirs = ope.estimate_policy_values(action_dist=theirs_pi, estimated_rewards_by_reg_model=q_theirs)
    mine = {e.name: e.value for e in estimate(list(ESTIMATORS), obd.reward, obd.action, obd.position, obd.pscore,
                                              mine_pi, q_mine, tau=100.0, lam=100.0, n_bootstrap=0)}
    pairs = {"ips": "ipw", "snips": "snipw", "dm": "dm", "dr": "dr", "switch_dr": "switch-dr", "dr_os": "dr-os"}
    for ours, their_name in pairs.items():
        assert mine[ours] == pytest.approx(theirs[their_name], rel=0.01), ours
    # obp 0.5.5's published numbers for this setting (the issue's reference table)
    for ours, ref in {"dm": 0.003545, "ips": 0.004553, "snips": 0.004776, "dr": 0.004728}.items():
        assert mine[ours] == pytest.approx(ref, rel=0.01), ours


def _simulated(rng, n, contexts, n_actions, true_p, logging):
    x = rng.integers(0, contexts, n)
    probs = logging[x]
    a = (probs.cumsum(1) > rng.random((n, 1))).argmax(1)
    r = (rng.random(n) < true_p[x, a]).astype(np.float64)
    return LoggedBandit(n_actions, 1, a, np.zeros(n, np.int64), r, probs[np.arange(n), a],
                        np.eye(contexts)[x], np.eye(n_actions), "simulated"), x


def test_ips_and_dr_intervals_cover_the_true_value():
    """Known true value: over repeated draws the 95% intervals of IPS and DR cover it >= 90% of the time."""
    rng = np.random.default_rng(0)
    contexts, n_actions, n, draws = 4, 5, 2000, 60
    true_p = rng.uniform(0.1, 0.7, (contexts, n_actions))
    logging = rng.dirichlet(np.full(n_actions, 5.0), contexts)  # every action has real support
    target = rng.dirichlet(np.full(n_actions, 1.0), contexts)
    true_value = float((target * true_p).sum(1).mean())  # contexts are uniform
    covered = {"ips": 0, "dr": 0}
    for _ in range(draws):
        data, x = _simulated(rng, n, contexts, n_actions, true_p, logging)
        pi = target[x][:, :, None]
        q = cross_fit(data, folds=2, seed=int(rng.integers(1 << 30)))
        for e in estimate(["ips", "dr"], data.reward, data.action, data.position, data.pscore, pi, q,
                          n_bootstrap=300, seed=int(rng.integers(1 << 30))):
            covered[e.name] += e.low <= true_value <= e.high
    assert covered["ips"] / draws >= 0.9 and covered["dr"] / draws >= 0.9, covered


def test_estimator_input_errors():
    pi = np.full((3, 2, 1), 0.5)
    a, p, r, ps = np.zeros(3, np.int64), np.zeros(3, np.int64), np.ones(3), np.full(3, 0.5)
    with pytest.raises(ValueError, match="needs a reward model"):
        estimate(["dm"], r, a, p, ps, pi)
    with pytest.raises(ValueError, match="must sum to 1 over actions"):
        estimate(["ips"], r, a, p, ps, pi * 0.9)
    assert estimate(["ips"], r, a, p, ps, pi, n_bootstrap=0)[0].value == pytest.approx(1.0)


def test_policies_give_distributions_over_distinct_items(obd):
    learn, held = obd.subset(np.arange(5000)), obd.subset(np.arange(5000, 5400))
    for policy in (EpsilonGreedy(80, 3, epsilon=0.2), Softmax(80, 3, temperature=0.01), LinUCB(80, 3),
                   LinearTS(80, 3, n_sim=300)):
        pi = policy.fit(learn).action_dist(held.context)
        assert pi.shape == (400, 80, 3) and (pi >= 0).all(), policy.name
        np.testing.assert_allclose(pi.sum(1), 1.0, atol=1e-9, err_msg=policy.name)
        if policy.name in ("epsilon_greedy", "linucb", "linear_ts"):  # slates: an item is in at most one slot
            assert (pi.sum(2) <= 1 + 1e-9).all(), policy.name
    eg = EpsilonGreedy(80, 3, epsilon=0.2).fit(learn)
    pi = eg.action_dist(held.context[:1])[0]
    top = np.argsort(-eg.scores(held.context[:1])[0], kind="stable")[:3]
    np.testing.assert_allclose(pi[top, [0, 1, 2]], 0.8 + 0.2 / 80)
    assert np.isclose(pi, 0.2 / 80).sum() == 80 * 3 - 3


def test_plackett_luce_marginals_match_sampling():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(1, 6))
    p = np.exp(scores) / np.exp(scores).sum()
    exact = plackett_luce_marginals(p, 3)[0]
    gumbel = scores - np.log(-np.log(rng.random((400_000, 6))))
    order = np.argsort(-gumbel, axis=1)[:, :3]
    sampled = np.stack([np.bincount(order[:, k], minlength=6) / 400_000 for k in range(3)], 1)
    np.testing.assert_allclose(exact, sampled, atol=4e-3)
    np.testing.assert_allclose(exact.sum(0), 1.0)
    np.testing.assert_allclose(exact.sum(1), 1 - _prob_not_in_top3(p[0]), atol=1e-12)


def _prob_not_in_top3(p):
    # brute force over ordered triples without the item
    n = p.shape[0]
    out = np.zeros(n)
    for a in range(n):
        for b in range(n):
            for c in range(n):
                for d in range(n):
                    if len({b, c, d}) == 3 and a not in (b, c, d):
                        out[a] += p[b] * p[c] / (1 - p[b]) * p[d] / (1 - p[b] - p[c])
    return out


def _bandit(**bandit):
    return {"name": "b", "kind": "bandit", "data": {"source": "open-bandit"}, "bandit": bandit}


def test_bandit_spec_errors():
    with pytest.raises(SpecError) as e:
        parse_spec(_bandit(policy={"name": "linucb"}))
    assert "bandit.learn_fraction: policy 'linucb' learns from logged rounds" in str(e.value)
    with pytest.raises(SpecError) as e:
        parse_spec(_bandit(estimators=["ips", "dre"]))
    assert "bandit.estimators.1: 'dre' is not allowed (did you mean 'dr'?)" in str(e.value)
    with pytest.raises(SpecError, match="data.source: kind bandit evaluates logged bandit feedback; use open-bandit"):
        parse_spec({"name": "b", "kind": "bandit"})
    with pytest.raises(SpecError, match="open-bandit holds logged bandit feedback for kind bandit, not train"):
        parse_spec({"name": "t", "data": {"source": "open-bandit"}})
    spec = parse_spec(_bandit(policy={"name": "softmax", "temperature": 0.05}, learn_fraction=0.5))
    assert spec.bandit.policy.learns and spec.bandit.learn_fraction == 0.5


def test_bandit_job_writes_its_report(tmp_path):
    import json
    from pathlib import Path

    import pandas as pd

    from raytrain.bandit.runner import run_bandit
    from raytrain.spec import load_spec

    job = Path(__file__).resolve().parents[2] / "jobs/bandit_obd_bts.yaml"
    spec = load_spec(job, [f"storage={tmp_path}", "bandit.bootstrap.samples=50", "bandit.policy.n_sim=2000"])
    out = run_bandit(spec)
    run_dir = Path(out["run_dir"])
    table = pd.read_parquet(run_dir / "estimates.parquet")
    assert list(table["estimator"]) == list(ESTIMATORS)
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert json.loads((run_dir / "report.json").read_text())["on_policy"]["value"] == pytest.approx(0.0042)
    assert (run_dir / "estimates.png").read_bytes()[:4] == b"\x89PNG"
