"""Exploring slates over a ranker's scores, with exact position propensities.

A slate is k items chosen from n candidates. ``marginals`` gives P(item i at position p) for every
candidate and position: each column sums to 1, and it is the propensity a served decision logs and the
action distribution an off-line estimator weighs with (the position-wise model of the Open Bandit
Pipeline, as in ``policies``):

- ``epsilon_greedy``: the ranker's top k with probability 1 - epsilon, else a uniformly random slate of
  the candidates: P = (1 - epsilon) * [i is the greedy item at p] + epsilon / n.
- ``softmax``: a Plackett-Luce slate over softmax(score / temperature) (sampled with Gumbel top-k);
  its marginals are exact for k <= 3 (``policies.plackett_luce_marginals``).
"""

from __future__ import annotations

import numpy as np

from .policies import plackett_luce_marginals

SLATE_POLICIES = ("epsilon_greedy", "softmax")
MAX_SOFTMAX_K = 3


def _greedy(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:k]


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores / temperature
    p = np.exp(z - z.max())
    return p / p.sum()


def check_slate(policy: str, k: int, n: int) -> None:
    if policy not in SLATE_POLICIES:
        raise ValueError(f"unknown slate policy {policy!r}; policies: {', '.join(SLATE_POLICIES)}")
    if not 1 <= k <= n:
        raise ValueError(f"a slate of {k} from {n} candidates")
    if policy == "softmax" and k > MAX_SOFTMAX_K:
        raise ValueError(f"softmax slates have exact propensities up to k = {MAX_SOFTMAX_K}, asked for k = {k}")


def marginals(policy: str, scores: np.ndarray, k: int, epsilon: float = 0.1, temperature: float = 0.05) -> np.ndarray:
    """P(candidate i at position p) [n, k] for one decision; ``scores`` [n] (click probabilities)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    check_slate(policy, k, n)
    if policy == "epsilon_greedy":
        out = np.full((n, k), epsilon / n)
        out[_greedy(scores, k), np.arange(k)] += 1.0 - epsilon
        return out
    return plackett_luce_marginals(_softmax(scores, temperature)[None, :], k)[0]


def sample(policy: str, scores: np.ndarray, k: int, rng: np.random.Generator, epsilon: float = 0.1,
           temperature: float = 0.05) -> np.ndarray:
    """Candidate indices of one slate, position order, drawn from the policy ``marginals`` describes."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    check_slate(policy, k, n)
    if policy == "epsilon_greedy":
        return rng.permutation(n)[:k] if rng.random() < epsilon else _greedy(scores, k)
    # Gumbel top-k: the k largest of log p + Gumbel noise are a Plackett-Luce draw without replacement
    with np.errstate(divide="ignore"):
        keys = np.log(_softmax(scores, temperature)) + rng.gumbel(size=n)
    return np.argsort(-keys, kind="stable")[:k]
