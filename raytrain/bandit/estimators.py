"""Off-policy estimators of a policy's value from logged bandit feedback, with bootstrap intervals.

Notation (position-based, as in the Open Bandit Pipeline): round i shows action a_i at position p_i
and observes reward r_i; the behaviour policy chose it with probability pscore_i; the evaluation
policy's distribution is pi[i, a, p]; a reward model gives q[i, a, p]. With w_i = pi[i, a_i, p_i] / pscore_i:

    IPS       mean(w r)
    SNIPS     sum(w r) / sum(w)
    DM        mean(sum_a pi[i, a, p_i] q[i, a, p_i])
    DR        DM_i + w_i (r_i - q[i, a_i, p_i])                    averaged
    switch-DR DM_i + 1[w_i <= tau] w_i (r_i - q_i)                 (Wang et al. 2017)
    DR-OS     DM_i + lambda w_i / (w_i^2 + lambda) (r_i - q_i)     (Su et al. 2020, optimistic shrinkage)

Every estimator is a mean of per-round terms except SNIPS (a ratio), so the percentile bootstrap
resamples rounds and recomputes each estimate on the resample (SNIPS renormalised per resample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("ips", "snips", "dm", "dr", "switch_dr", "dr_os")
NEEDS_REWARD_MODEL = ("dm", "dr", "switch_dr", "dr_os")


@dataclass
class Estimate:
    name: str
    value: float
    low: float
    high: float
    ess: float  # effective sample size of the importance weights, (sum w)^2 / sum w^2

    def as_dict(self) -> dict:
        return {"estimator": self.name, "value": self.value, "ci_low": self.low, "ci_high": self.high,
                "ess": self.ess}


def importance_weights(action_dist: np.ndarray, action: np.ndarray, position: np.ndarray,
                       pscore: np.ndarray) -> np.ndarray:
    n = action.shape[0]
    return action_dist[np.arange(n), action, position] / pscore


def _terms(name: str, reward, w, action_dist, action, position, q, tau: float, lam: float):
    """Per-round terms (numerator, denominator): the estimate is sum(num) / sum(den)."""
    n = reward.shape[0]
    ones = np.ones(n)
    if name == "ips":
        return w * reward, ones
    if name == "snips":
        return w * reward, w
    if q is None:
        raise ValueError(f"estimator {name!r} needs a reward model's predictions")
    rows = np.arange(n)
    dm = np.einsum("na,na->n", action_dist[rows, :, position], q[rows, :, position])
    if name == "dm":
        return dm, ones
    residual = reward - q[rows, action, position]
    if name == "dr":
        return dm + w * residual, ones
    if name == "switch_dr":
        return dm + np.where(w <= tau, w, 0.0) * residual, ones
    if name == "dr_os":
        shrunk = lam * w / (w**2 + lam) if lam > 0 else np.zeros_like(w)
        return dm + shrunk * residual, ones
    raise ValueError(f"unknown estimator {name!r}; available: {', '.join(ESTIMATORS)}")


def estimate(names: list[str], reward: np.ndarray, action: np.ndarray, position: np.ndarray, pscore: np.ndarray,
             action_dist: np.ndarray, q: np.ndarray | None = None, *, tau: float = np.inf, lam: float = 1.0,
             n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 12345) -> list[Estimate]:
    """Point estimates with (1 - alpha) percentile-bootstrap intervals, one Estimate per name."""
    n = reward.shape[0]
    if action_dist.ndim != 3 or action_dist.shape[0] != n:
        raise ValueError(f"action_dist must be [n_rounds={n}, n_actions, len_list], got {action_dist.shape}")
    sums = action_dist.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise ValueError(f"action_dist must sum to 1 over actions at every (round, position); "
                         f"found sums from {sums.min():.6f} to {sums.max():.6f}")
    w = importance_weights(action_dist, action, position, pscore)
    ess = float(w.sum() ** 2 / max((w**2).sum(), 1e-300))
    rng = np.random.default_rng(seed)
    # resample counts instead of index arrays: [n_bootstrap, n] multinomial weights, same law, less memory
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap).astype(np.float64) if n_bootstrap else None
    out = []
    for name in names:
        num, den = _terms(name, reward, w, action_dist, action, position, q, tau, lam)
        value = float(num.sum() / den.sum())
        low = high = value
        if counts is not None:
            boot = (counts @ num) / np.maximum(counts @ den, 1e-300)
            low, high = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
        out.append(Estimate(name, value, low, high, ess))
    return out
