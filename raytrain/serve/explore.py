"""Exploration on /recommend: a slate drawn by the variant's policy over the ranker's scores, with every position's
propensity for the decision log (docs/serving.md)."""

from __future__ import annotations

import json
import time

import numpy as np

from ..bandit import slates
from .features import FeatureStore, RequestError


def explore_slate(ex, rng: np.random.Generator, store: FeatureStore, rid: str, variant: str, uid: int,
                  items: np.ndarray, probs: np.ndarray, k: int, forced: bool) -> tuple[dict, list[dict]]:
    """A slate from the variant's ``pool`` best candidates (``ex``: its ``serve.variants.<v>.explore``), and its
    decision rows: every position with its propensity (P(item at that position))."""
    eligible = np.flatnonzero(np.isfinite(probs))
    pool = eligible[np.argsort(-probs[eligible], kind="stable")[:ex.pool]]
    k = min(k, len(pool))
    if k == 0:
        raise RequestError("candidates: none left to recommend (all rated or excluded)")
    scores = probs[pool]
    try:
        marg = slates.marginals(ex.policy, scores, k, ex.epsilon, ex.temperature)
    except ValueError as e:
        raise RequestError(f"k: {e} (variant {variant} explores with {ex.policy})") from None
    slate = slates.sample(ex.policy, scores, k, rng, ex.epsilon, ex.temperature)
    now = time.time()
    policy = json.dumps(ex.model_dump(mode="json"), sort_keys=True)
    context = json.dumps(store.user_context(uid))
    cands, score_list = items[pool].tolist(), scores.tolist()
    rows = [{"request_id": rid, "time": now, "variant": variant, "forced": forced, "policy": policy, "user": uid,
             "context": context, "position": p, "item": int(items[pool[i]]), "propensity": float(marg[i, p]),
             "score": float(scores[i]), "candidates": cands, "scores": score_list,
             "probabilities": marg[:, p].tolist()} for p, i in enumerate(slate)]
    item_key = store.item_key
    return {"request_id": rid, "policy": ex.policy,
            "items": [{item_key: r["item"], "score": r["score"], "position": r["position"],
                       "propensity": r["propensity"]} for r in rows]}, rows


def top_k(items: np.ndarray, probs: np.ndarray, k: int, rid: str, item_key: str) -> dict:
    """The plain ranking: the k best finite scores."""
    order = np.argsort(-probs, kind="stable")[:k]
    order = order[np.isfinite(probs[order])]
    return {"request_id": rid, "items": [{item_key: int(items[i]), "score": float(probs[i])} for i in order]}
