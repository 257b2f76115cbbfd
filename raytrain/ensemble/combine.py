"""How members' scores become one probability. Every combiner is fitted on validation rows only.

- ``mean``: the average of the members' probabilities (nothing to fit).
- ``weighted``: a convex combination of probabilities; weights = softmax(z), z fitted by L-BFGS to the
  validation log loss.
- ``stacked``: logistic regression on the members' logits (a meta-model; L2, C = 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, softmax

COMBINES = ("mean", "weighted", "stacked")
EPS = 1e-7


@dataclass
class Combiner:
    kind: str
    weights: list[float] | None = None  # weighted
    coef: list[float] | None = None  # stacked
    intercept: float | None = None  # stacked

    def predict(self, logits: np.ndarray) -> np.ndarray:
        """Members' logits [n, m] -> ensemble probabilities [n]."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.kind == "mean":
            return expit(logits).mean(axis=1)
        if self.kind == "weighted":
            return expit(logits) @ np.asarray(self.weights)
        if self.kind == "stacked":
            return expit(logits @ np.asarray(self.coef) + float(self.intercept or 0.0))
        raise ValueError(f"unknown combine {self.kind!r}; available: {', '.join(COMBINES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Combiner:
        return cls(**d)


def _fit_weights(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    m = probs.shape[1]

    def loss(z):
        w = softmax(z)
        p = np.clip(probs @ w, EPS, 1 - EPS)
        value = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
        g_w = -np.mean(((labels / p) - (1 - labels) / (1 - p))[:, None] * probs, axis=0)
        return value, w * (g_w - g_w @ w)  # through the softmax

    res = minimize(loss, np.zeros(m), jac=True, method="L-BFGS-B")
    return softmax(res.x)


def fit_combiner(kind: str, val_logits: np.ndarray, val_labels: np.ndarray) -> Combiner:
    """Fit ``kind`` on the validation split's member logits [n, m] and labels [n]."""
    val_logits = np.asarray(val_logits, dtype=np.float64)
    val_labels = np.asarray(val_labels, dtype=np.float64)
    if val_logits.ndim != 2 or val_logits.shape[0] != val_labels.shape[0]:
        raise ValueError(f"member logits must be [rows, members] with one label per row; got {val_logits.shape} "
                         f"and {val_labels.shape}")
    if kind == "mean":
        return Combiner("mean")
    if kind == "weighted":
        return Combiner("weighted", weights=[float(w) for w in _fit_weights(expit(val_logits), val_labels)])
    if kind == "stacked":
        from sklearn.linear_model import LogisticRegression

        meta = LogisticRegression(C=1.0, max_iter=1000).fit(val_logits, val_labels)
        return Combiner("stacked", coef=[float(c) for c in meta.coef_[0]], intercept=float(meta.intercept_[0]))
    raise ValueError(f"unknown combine {kind!r}; available: {', '.join(COMBINES)}")
