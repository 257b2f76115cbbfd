"""Kind ``bandit``: learn or define a policy, evaluate it off-line on logged feedback, write a report.

Run directory: ``spec.yaml``, ``estimates.parquet`` (one row per estimator), ``report.json`` (the same,
plus the logged data, the policy and the on-policy reference), ``estimates.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.open_bandit import load_open_bandit, zozotown_prior
from ..log import get_logger
from ..spec import resolved_yaml
from ..spec.bandit import BanditSpec
from ..spec.job import JobSpec
from .estimators import NEEDS_REWARD_MODEL, estimate
from .policies import make_policy
from .reward_model import cross_fit

log = get_logger(__name__)


def on_policy_value(reward: np.ndarray, samples: int, alpha: float, seed: int) -> dict:
    """Mean reward of logs gathered by the policy itself, with a percentile-bootstrap interval."""
    rng = np.random.default_rng(seed)
    n = reward.shape[0]
    value = float(reward.mean())
    low = high = value
    if samples:
        boot = rng.multinomial(n, np.full(n, 1.0 / n), size=samples) @ reward / n
        low, high = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    return {"value": value, "ci_low": low, "ci_high": high, "n_rounds": int(n)}


def evaluate(spec: JobSpec) -> dict:
    """The evaluation itself (no files): estimates, on-policy reference, what was evaluated."""
    cfg = spec.bandit or BanditSpec()
    if spec.data.source == "served-logs":
        return evaluate_served(spec)
    ob = spec.data.open_bandit
    t0 = time.time()
    logs = load_open_bandit(ob.behavior_policy, ob.campaign, spec.data.path)
    n_learn = int(round(cfg.learn_fraction * logs.n_rounds))
    learn, held_out = logs.subset(np.arange(n_learn)), logs.subset(np.arange(n_learn, logs.n_rounds))
    log.info(f"{logs.source}: {logs.n_rounds} rounds, {logs.n_actions} actions, {logs.len_list} positions, "
         f"click rate {logs.reward.mean():.4f}; policy learns from {learn.n_rounds}, estimators use "
         f"{held_out.n_rounds}")
    pol = cfg.policy
    prior = zozotown_prior(ob.campaign, spec.data.path) if pol.name == "bernoulli_ts" and pol.prior == "zozotown" \
        else None
    policy = make_policy(pol, logs, prior)
    if pol.learns:
        policy.fit(learn)
    action_dist = policy.action_dist(held_out.context)
    log.info(f"policy {pol.name}: action distribution {action_dist.shape} ({time.time() - t0:.1f} s)")
    q = None
    if any(name in NEEDS_REWARD_MODEL for name in cfg.estimators):
        q = cross_fit(held_out, cfg.reward_model.folds, cfg.reward_model.seed)
        log.info(f"reward model: {cfg.reward_model.folds}-fold cross-fitted logistic regression per position "
             f"({time.time() - t0:.1f} s)")
    bs = cfg.bootstrap
    estimates = estimate(list(cfg.estimators), held_out.reward, held_out.action, held_out.position, held_out.pscore,
                         action_dist, q, tau=cfg.switch_tau, lam=cfg.dr_os_lambda, n_bootstrap=bs.samples,
                         alpha=bs.alpha, seed=bs.seed)
    reference = None
    if cfg.on_policy_reference is not None:
        ref_logs = load_open_bandit(cfg.on_policy_reference, ob.campaign, spec.data.path)
        reference = on_policy_value(ref_logs.reward, bs.samples, bs.alpha, bs.seed)
        reference["logs"] = ref_logs.source
    rows = []
    for e in estimates:
        row = e.as_dict()
        if reference is not None:
            row["relative_error"] = abs(e.value - reference["value"]) / reference["value"]
        rows.append(row)
    return {"logs": held_out.source, "rounds_learn": learn.n_rounds, "rounds_eval": held_out.n_rounds,
            "policy": pol.model_dump(), "estimates": rows, "on_policy": reference,
            "confidence": 1 - bs.alpha, "wall_s": time.time() - t0}


def evaluate_served(spec: JobSpec) -> dict:
    """A slate policy evaluated on a serve run's logged exploring decisions (``served``)."""
    from .served import action_dist, cross_fit_q, load_served_logs

    cfg = spec.bandit or BanditSpec()
    pol = cfg.policy
    t0 = time.time()
    assert spec.data.path is not None
    logs = load_served_logs(spec.data.path)
    log.info(f"served logs {spec.data.path}: {logs.n_requests} requests, {logs.n} decisions (request x position), "
         f"variants {', '.join(logs.variants)}, mean reward {logs.reward.mean():.4f}")
    dist = action_dist(logs, pol.name, pol.epsilon, pol.temperature)
    q = None
    if any(name in NEEDS_REWARD_MODEL for name in cfg.estimators):
        q = cross_fit_q(logs, cfg.reward_model.folds, cfg.reward_model.seed)
    bs = cfg.bootstrap
    estimates = estimate(list(cfg.estimators), logs.reward, logs.action, logs.position, logs.pscore, dist, q,
                         tau=cfg.switch_tau, lam=cfg.dr_os_lambda, n_bootstrap=bs.samples, alpha=bs.alpha,
                         seed=bs.seed)
    logging_value = on_policy_value(logs.reward, bs.samples, bs.alpha, bs.seed)
    logging_value["logs"] = f"served decisions ({', '.join(logs.variants)}): the logging policy's own value"
    return {"logs": f"served-logs {spec.data.path}", "rounds_learn": 0, "rounds_eval": logs.n,
            "requests": logs.n_requests, "policy": pol.model_dump(), "estimates": [e.as_dict() for e in estimates],
            "on_policy": None, "logging_policy": logging_value, "confidence": 1 - bs.alpha,
            "wall_s": time.time() - t0}


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["estimates"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(rows))
    values = np.array([r["value"] for r in rows])
    err = np.array([[r["value"] - r["ci_low"] for r in rows], [r["ci_high"] - r["value"] for r in rows]])
    ax.errorbar(x, values, yerr=err, fmt="o", capsize=4, label=f"estimate, {result['confidence']:.0%} bootstrap CI")
    ref = result["on_policy"] or result.get("logging_policy")
    if ref is not None:
        ax.axhline(ref["value"], color="k", ls="--", label=f"on-policy ({ref['logs']})")
        ax.axhspan(ref["ci_low"], ref["ci_high"], color="k", alpha=0.08)
    ax.set_xticks(x, [r["estimator"] for r in rows])
    ax.set_ylabel("policy value (click rate)")
    ax.set_title(f"{result['policy']['name']} evaluated on {result['logs']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bandit(spec: JobSpec) -> dict:
    from ..runs import new_run_dir

    run_dir = new_run_dir(spec)
    log.info(f"run directory: {run_dir}")
    (run_dir / "spec.yaml").write_text(resolved_yaml(spec))
    result = evaluate(spec)
    table = pd.DataFrame(result["estimates"])
    table.to_parquet(run_dir / "estimates.parquet", index=False)
    (run_dir / "report.json").write_text(json.dumps(result, indent=2))
    _plot(result, run_dir / "estimates.png")
    log.info("estimates:\n" + table.to_string(index=False, float_format=lambda v: f"{v:.6f}"))
    ref = result["on_policy"] or result.get("logging_policy")
    if ref is not None:
        log.info(f"{'on-policy value of' if result['on_policy'] else 'value of the'} {ref['logs']}: {ref['value']:.6f} "
             f"[{ref['ci_low']:.6f}, {ref['ci_high']:.6f}] over {ref['n_rounds']} rounds")
    log.info(f"report: {run_dir / 'report.json'}, plot: {run_dir / 'estimates.png'}")
    result["run_dir"] = str(run_dir)
    return result
