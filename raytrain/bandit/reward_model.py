"""Reward model q(x, a, p) for the direct-method family, fitted by K-fold cross-fitting.

One classifier per position on [context, action context of the shown item] (the Open Bandit Pipeline's
default features); the rounds of each fold are predicted by a model that never saw them, which keeps DR
unbiased when the model overfits (Chernozhukov et al., double machine learning).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from ..data.open_bandit import LoggedBandit


def _features(context: np.ndarray, action: np.ndarray, action_context: np.ndarray) -> np.ndarray:
    return np.c_[context, action_context[action]]


class PositionwiseRewardModel:
    def __init__(self, n_actions: int, len_list: int, action_context: np.ndarray, seed: int = 12345,
                 max_iter: int = 1000):
        self.n_actions, self.len_list, self.action_context = n_actions, len_list, action_context
        self.models = [LogisticRegression(max_iter=max_iter, random_state=seed) for _ in range(len_list)]
        self.constant: list[float | None] = [None] * len_list

    def fit(self, context, action, reward, position) -> PositionwiseRewardModel:
        for p, model in enumerate(self.models):
            idx = position == p
            if not idx.any():
                raise ValueError(f"no logged rounds at position {p}: cannot fit the reward model there")
            y = reward[idx]
            if np.unique(y).size < 2:  # a fold with no click at a position: predict its constant rate
                self.constant[p] = float(y.mean())
                continue
            self.constant[p] = None
            model.fit(_features(context[idx], action[idx], self.action_context), y)
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        """q [n, n_actions, len_list]; computed once per distinct context row (logged contexts repeat a lot)."""
        uniq, inverse = np.unique(context, axis=0, return_inverse=True)
        return self._predict(uniq)[inverse.reshape(-1)]

    def _predict(self, context: np.ndarray) -> np.ndarray:
        n = context.shape[0]
        q = np.zeros((n, self.n_actions, self.len_list))
        # every (round, action) pair at once: rows ordered round-major
        x = _features(np.repeat(context, self.n_actions, axis=0), np.tile(np.arange(self.n_actions), n),
                      self.action_context)
        for p, model in enumerate(self.models):
            const = self.constant[p]
            q[:, :, p] = const if const is not None else model.predict_proba(x)[:, 1].reshape(n, self.n_actions)
        return q


def cross_fit(data: LoggedBandit, folds: int = 3, seed: int = 12345) -> np.ndarray:
    """Out-of-fold q [n_rounds, n_actions, len_list] (folds = 1: fit and predict on all rounds)."""
    def model() -> PositionwiseRewardModel:
        return PositionwiseRewardModel(data.n_actions, data.len_list, data.action_context, seed)

    if folds <= 1:
        return model().fit(data.context, data.action, data.reward, data.position).predict(data.context)
    q = np.zeros((data.n_rounds, data.n_actions, data.len_list))
    for train_idx, test_idx in KFold(n_splits=folds, shuffle=True, random_state=seed).split(data.context):
        m = model().fit(data.context[train_idx], data.action[train_idx], data.reward[train_idx],
                        data.position[train_idx])
        q[test_idx] = m.predict(data.context[test_idx])
    return q
