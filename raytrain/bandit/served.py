"""Off-line evaluation of a new slate policy on the decisions an exploring serve variant logged.

Every logged row is one (request, position) decision with the candidates, their ranker scores and the
logging policy's propensity of the shown item. The evaluated policy (epsilon-greedy or softmax over the
same scores, other parameters) gives its own P(candidate at position) per decision, so the estimators of
``estimators`` apply with "actions" = candidate slots of the decision (padded slots have probability 0).
The reward of a decision is the sum of the feedback rewards given for its (request, item); no feedback
is reward 0. The direct method's reward model: a logistic regression on [logit(score), position one-hot],
cross-fitted over requests (the rows of one request stay in one fold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression, LogisticRegression

from ..errors import RaytrainError
from . import slates


@dataclass
class ServedLogs:
    request: np.ndarray  # [n] request index (rows of one request share it)
    position: np.ndarray  # [n]
    action: np.ndarray  # [n] slot of the shown item among the decision's candidates
    reward: np.ndarray  # [n]
    pscore: np.ndarray  # [n] logging propensity of the shown item at its position
    scores: np.ndarray  # [n, S] ranker scores of the candidates (padded with nan)
    k: np.ndarray  # [n] slate length of the decision's request
    variants: list[str]
    n_requests: int

    @property
    def n(self) -> int:
        return int(self.reward.shape[0])


def load_served_logs(run_dir: str | Path) -> ServedLogs:
    from ..serve.decisions import read_logs
    from ..serve.sources import newest

    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "logs").is_dir() and run_dir.is_dir():  # a directory above serve runs: the newest one
        run_dir = newest(run_dir, "serve.json")
    logs = run_dir / "logs"
    dec, fb = read_logs(logs)
    if dec.num_rows == 0:
        raise RaytrainError(f"{logs}: no decision logs (serve a variant with `explore:` and call /recommend)")
    d = dec.to_pandas()
    rewards = fb.to_pandas().groupby(["request_id", "item"])["reward"].sum() if fb.num_rows else pd.Series(
        dtype=float)
    key = pd.MultiIndex.from_arrays([d["request_id"], d["item"]])
    reward = rewards.reindex(key).fillna(0.0).to_numpy(dtype=np.float64)
    width = int(d["candidates"].map(len).max())
    scores = np.full((len(d), width), np.nan)
    action = np.empty(len(d), dtype=np.int64)
    for i, (cands, sc, item) in enumerate(zip(d["candidates"], d["scores"], d["item"])):
        scores[i, : len(sc)] = sc
        action[i] = list(cands).index(item)
    request = pd.factorize(d["request_id"])[0]
    k = d.groupby("request_id")["position"].transform("max").to_numpy() + 1
    return ServedLogs(request=request, position=d["position"].to_numpy(dtype=np.int64), action=action, reward=reward,
                      pscore=d["propensity"].to_numpy(dtype=np.float64), scores=scores, k=k,
                      variants=sorted(d["variant"].unique()), n_requests=int(request.max()) + 1)


def action_dist(logs: ServedLogs, policy: str, epsilon: float, temperature: float) -> np.ndarray:
    """[n, S, L]: the evaluated policy's P(slot at position) for every decision (padded slots 0)."""
    n, width = logs.scores.shape
    length = int(logs.k.max())
    out = np.zeros((n, width, length))
    cache: dict[int, np.ndarray] = {}
    for i in range(n):
        r = int(logs.request[i])
        if r not in cache:
            valid = ~np.isnan(logs.scores[i])
            m = slates.marginals(policy, logs.scores[i, valid], int(logs.k[i]), epsilon, temperature)
            full = np.zeros((width, length))
            full[: m.shape[0], : m.shape[1]] = m
            full[: m.shape[0], m.shape[1]:] = m[:, :1]  # positions the request did not show: any distribution
            cache[r] = full
        out[i] = cache[r]
    return out


def _features(score: np.ndarray, position: np.ndarray, length: int) -> np.ndarray:
    s = np.clip(score, 1e-6, 1 - 1e-6)
    return np.c_[np.log(s / (1 - s)), np.eye(length)[position]]


def cross_fit_q(logs: ServedLogs, folds: int = 3, seed: int = 12345) -> np.ndarray:
    """Out-of-fold q [n, S, L]: the predicted reward of every candidate slot at every position."""
    n, width = logs.scores.shape
    length = int(logs.k.max())
    shown = logs.scores[np.arange(n), logs.action]
    x = _features(shown, logs.position, length)
    fold_of_request = np.random.default_rng(seed).permutation(logs.n_requests) % max(1, folds)
    fold = fold_of_request[logs.request]
    q = np.zeros((n, width, length))
    valid = ~np.isnan(logs.scores)
    for f in range(max(1, folds)):
        test = fold == f if folds > 1 else np.ones(n, dtype=bool)
        train = ~test if folds > 1 else test
        y = logs.reward[train]
        binary = bool(np.isin(y, (0.0, 1.0)).all())
        model = None
        if np.unique(y).size > 1:  # clicks: logistic regression; other rewards: least squares
            model = (LogisticRegression(max_iter=1000, random_state=seed) if binary else LinearRegression()).fit(
                x[train], y)
        rows = np.flatnonzero(test)
        for p in range(length):
            sc = np.where(valid[rows], logs.scores[rows], 0.5).reshape(-1)
            xp = _features(sc, np.full(sc.shape[0], p), length)
            pred = (np.full(sc.shape[0], float(y.mean()) if y.size else 0.0) if model is None
                    else model.predict_proba(xp)[:, 1] if binary else model.predict(xp))
            q[rows, :, p] = np.where(valid[rows], pred.reshape(len(rows), width), 0.0)
    return q
