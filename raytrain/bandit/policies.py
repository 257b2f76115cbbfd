"""Bandit policies that give, for every decision, the probability of each action at each position.

A policy's ``action_dist(context)`` returns pi [n_rounds, n_actions, len_list]; column p is the
distribution of the item shown at position p (each sums to 1). Slates hold distinct items. Policies
that learn (``fit``) learn from logged rounds that are not the ones they are evaluated on.

- ``bernoulli_ts``: Beta-Bernoulli Thompson sampling per action; the slate is the top-L of one draw.
  Its position marginals come from ``n_sim`` simulated draws with numpy's RandomState stream, the same
  procedure (and, for the same seed, the same numbers) as the Open Bandit Pipeline's BernoulliTS.
- ``epsilon_greedy``: the ranker's top-L slate with probability 1 - epsilon, else a uniformly random
  slate (marginal 1/A at each position).
- ``softmax``: a Plackett-Luce slate over scores / temperature; exact marginals for L <= 3.
- ``linucb``: disjoint LinUCB (Li et al. 2010); deterministic top-L by upper confidence bound.
- ``linear_ts``: linear Thompson sampling (Agrawal & Goyal 2013), marginals from ``n_sim`` draws.
"""

from __future__ import annotations

import numpy as np

from ..data.open_bandit import LoggedBandit
from .reward_model import PositionwiseRewardModel

POLICIES = ("bernoulli_ts", "epsilon_greedy", "softmax", "linucb", "linear_ts")


def _per_context(context: np.ndarray, fn) -> np.ndarray:
    """Apply fn to the distinct rows of context only, then expand back to every round."""
    uniq, inverse = np.unique(context, axis=0, return_inverse=True)
    return fn(uniq)[inverse.reshape(-1)]


def _slate_onehot(order: np.ndarray, n_actions: int, len_list: int) -> np.ndarray:
    """order [n, >= L] best-first item ids -> one-hot pi [n, A, L]."""
    n = order.shape[0]
    pi = np.zeros((n, n_actions, len_list))
    for p in range(len_list):
        pi[np.arange(n), order[:, p], p] = 1.0
    return pi


def _count_slates(order: np.ndarray, n_actions: int, len_list: int) -> np.ndarray:
    """order [n_sim, >= L] of sampled slates -> marginal frequencies [A, L]."""
    counts = np.zeros((n_actions, len_list))
    for p in range(len_list):
        counts[:, p] = np.bincount(order[:, p], minlength=n_actions)
    return counts / order.shape[0]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest along the last axis, best first (stable for ties: lower id first)."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


class Policy:
    name = "policy"
    learns = False

    def __init__(self, n_actions: int, len_list: int):
        self.n_actions, self.len_list = n_actions, len_list

    def fit(self, data: LoggedBandit) -> Policy:
        return self

    def action_dist(self, context: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class BernoulliTS(Policy):
    name = "bernoulli_ts"

    def __init__(self, n_actions: int, len_list: int, alpha: np.ndarray | None = None,
                 beta: np.ndarray | None = None, n_sim: int = 100_000, seed: int = 12345, learn: bool = False):
        super().__init__(n_actions, len_list)
        self.alpha = np.ones(n_actions) if alpha is None else np.asarray(alpha, dtype=np.float64)
        self.beta = np.ones(n_actions) if beta is None else np.asarray(beta, dtype=np.float64)
        if self.alpha.shape != (n_actions,) or self.beta.shape != (n_actions,):
            raise ValueError(f"prior alpha/beta need {n_actions} entries, got {self.alpha.shape} / {self.beta.shape}")
        self.n_sim, self.seed, self.learns = n_sim, seed, learn
        self.clicks = np.zeros(n_actions)
        self.shown = np.zeros(n_actions)

    def fit(self, data: LoggedBandit) -> BernoulliTS:
        if self.learns:  # posterior after the logged rounds
            self.clicks = np.asarray(np.bincount(data.action, weights=data.reward, minlength=self.n_actions),
                                     dtype=np.float64)
            self.shown = np.asarray(np.bincount(data.action, minlength=self.n_actions), dtype=np.float64)
        return self

    def marginals(self) -> np.ndarray:
        rs = np.random.RandomState(self.seed)
        a, b = self.clicks + self.alpha, (self.shown - self.clicks) + self.beta
        counts = np.zeros((self.n_actions, self.len_list))
        done = 0
        while done < self.n_sim:
            m = min(10_000, self.n_sim - done)
            draws = rs.beta(a, b, size=(m, self.n_actions))  # row-major: the same stream as m single draws
            counts += _count_slates(np.argsort(draws, axis=1)[:, ::-1][:, : self.len_list], self.n_actions,
                                    self.len_list) * m
            done += m
        return counts / self.n_sim

    def action_dist(self, context: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.marginals(), (context.shape[0], self.n_actions, self.len_list)).copy()


class RankerPolicy(Policy):
    """A policy over a ranker's scores: the reward model's click probability at the top position."""

    learns = True

    def __init__(self, n_actions: int, len_list: int, seed: int = 12345):
        super().__init__(n_actions, len_list)
        self.seed = seed
        self.ranker: PositionwiseRewardModel | None = None

    def fit(self, data: LoggedBandit) -> RankerPolicy:
        self.ranker = PositionwiseRewardModel(self.n_actions, self.len_list, data.action_context, self.seed).fit(
            data.context, data.action, data.reward, data.position)
        return self

    def scores(self, context: np.ndarray) -> np.ndarray:
        if self.ranker is None:
            raise RuntimeError(f"{self.name}: fit the policy on logged rounds first")
        return self.ranker.predict(context)[:, :, 0]


class EpsilonGreedy(RankerPolicy):
    name = "epsilon_greedy"

    def __init__(self, n_actions: int, len_list: int, epsilon: float = 0.1, seed: int = 12345):
        super().__init__(n_actions, len_list, seed)
        self.epsilon = epsilon

    def action_dist(self, context: np.ndarray) -> np.ndarray:
        greedy = _slate_onehot(_top(self.scores(context), self.len_list), self.n_actions, self.len_list)
        return (1 - self.epsilon) * greedy + self.epsilon / self.n_actions


def plackett_luce_marginals(p: np.ndarray, len_list: int) -> np.ndarray:
    """Exact position marginals of a Plackett-Luce slate. p [n, A] sums to 1 per row; L <= 3."""
    if len_list > 3:
        raise ValueError("exact Plackett-Luce marginals are implemented for slates of up to 3 positions")
    out = [p]
    if len_list >= 2:
        r = p / np.clip(1 - p, 1e-12, None)  # P(b first) * 1 / (1 - p_b)
        out.append(p * (r.sum(1, keepdims=True) - r))
    if len_list >= 3:
        # m[b, c] = p_b p_c / ((1 - p_b)(1 - p_b - p_c)) for b != c; P(a third) = p_a * sum over b, c != a
        m = r[:, :, None] * p[:, None, :] / np.clip(1 - p[:, :, None] - p[:, None, :], 1e-12, None)
        idx = np.arange(p.shape[1])
        m[:, idx, idx] = 0.0
        total = m.sum((1, 2))[:, None]
        out.append(p * (total - m.sum(2) - m.sum(1)))
    return np.stack(out, axis=2)


class Softmax(RankerPolicy):
    name = "softmax"

    def __init__(self, n_actions: int, len_list: int, temperature: float = 0.01, seed: int = 12345):
        super().__init__(n_actions, len_list, seed)
        self.temperature = temperature

    def action_dist(self, context: np.ndarray) -> np.ndarray:
        def one(ctx):
            z = self.scores(ctx) / self.temperature
            p = np.exp(z - z.max(1, keepdims=True))
            return plackett_luce_marginals(p / p.sum(1, keepdims=True), self.len_list)

        return _per_context(context, one)


class _Linear(Policy):
    """Per-action ridge statistics A_a = reg I + sum x x^T, b_a = sum r x over the logged rounds."""

    learns = True

    def __init__(self, n_actions: int, len_list: int, reg: float = 1.0):
        super().__init__(n_actions, len_list)
        self.reg = reg
        self.theta: np.ndarray | None = None
        self.a_inv: np.ndarray | None = None

    @staticmethod
    def _x(context: np.ndarray) -> np.ndarray:
        return np.c_[np.ones(context.shape[0]), context]

    def fit(self, data: LoggedBandit) -> _Linear:
        x = self._x(data.context)
        d = x.shape[1]
        self.a_inv = np.zeros((self.n_actions, d, d))
        self.theta = np.zeros((self.n_actions, d))
        for a in range(self.n_actions):
            xa = x[data.action == a]
            inv = np.linalg.inv(self.reg * np.eye(d) + xa.T @ xa)
            self.a_inv[a] = inv
            self.theta[a] = inv @ (xa.T @ data.reward[data.action == a])
        return self

    def _check(self) -> tuple[np.ndarray, np.ndarray]:
        if self.theta is None or self.a_inv is None:
            raise RuntimeError(f"{self.name}: fit the policy on logged rounds first")
        return self.theta, self.a_inv


class LinUCB(_Linear):
    name = "linucb"

    def __init__(self, n_actions: int, len_list: int, alpha: float = 1.0, reg: float = 1.0):
        super().__init__(n_actions, len_list, reg)
        self.alpha = alpha

    def action_dist(self, context: np.ndarray) -> np.ndarray:
        theta, a_inv = self._check()

        def one(ctx):
            x = self._x(ctx)
            width = np.sqrt(np.einsum("nd,ade,ne->na", x, a_inv, x))
            return _slate_onehot(_top(x @ theta.T + self.alpha * width, self.len_list), self.n_actions,
                                 self.len_list)

        return _per_context(context, one)


class LinearTS(_Linear):
    name = "linear_ts"

    def __init__(self, n_actions: int, len_list: int, v: float = 0.1, reg: float = 1.0, n_sim: int = 1000,
                 seed: int = 12345):
        super().__init__(n_actions, len_list, reg)
        self.v, self.n_sim, self.seed = v, n_sim, seed

    def action_dist(self, context: np.ndarray) -> np.ndarray:
        theta, a_inv = self._check()
        rng = np.random.default_rng(self.seed)
        chol = np.linalg.cholesky(a_inv)  # [A, d, d]

        def one(ctx):
            x = self._x(ctx)
            mean = x @ theta.T  # [n, A]
            # score of a under theta ~ N(theta_a, v^2 A_a^-1) is x.theta_a + v * |L_a^T x| * z
            std = self.v * np.linalg.norm(np.einsum("ade,nd->nae", chol, x), axis=2)
            out = np.zeros((x.shape[0], self.n_actions, self.len_list))
            for i in range(x.shape[0]):
                draws = mean[i] + std[i] * rng.standard_normal((self.n_sim, self.n_actions))
                out[i] = _count_slates(_top(draws, self.len_list), self.n_actions, self.len_list)
            return out

        return _per_context(context, one)


def make_policy(spec, data: LoggedBandit, prior: tuple[np.ndarray, np.ndarray] | None = None) -> Policy:
    """The policy a spec's ``bandit.policy`` section names, sized for the logged data."""
    a, l_ = data.n_actions, data.len_list
    if spec.name == "bernoulli_ts":
        alpha, beta = prior if prior is not None else (None, None)
        return BernoulliTS(a, l_, alpha, beta, n_sim=spec.n_sim, seed=spec.seed, learn=spec.learn)
    if spec.name == "epsilon_greedy":
        return EpsilonGreedy(a, l_, epsilon=spec.epsilon, seed=spec.seed)
    if spec.name == "softmax":
        return Softmax(a, l_, temperature=spec.temperature, seed=spec.seed)
    if spec.name == "linucb":
        return LinUCB(a, l_, alpha=spec.alpha, reg=spec.reg)
    if spec.name == "linear_ts":
        return LinearTS(a, l_, v=spec.v, reg=spec.reg, n_sim=spec.n_sim, seed=spec.seed)
    raise ValueError(f"unknown policy {spec.name!r}; available: {', '.join(POLICIES)}")
