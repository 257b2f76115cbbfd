"""Simulated /recommend traffic with a known effect: request and feedback logs as a serve run writes them."""

from __future__ import annotations

import numpy as np
import pandas as pd


def traffic(users: int = 20_000, shares: tuple[float, float] = (0.5, 0.5), ctr: tuple[float, float] = (0.10, 0.12),
            seed: int = 0, drop_b: float = 0.0, pre_period: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(requests, feedback). Users are split between variants a and b by ``shares``; each makes 1-6 /recommend
    requests of 5 items; a user's own click propensity is drawn around the variant's CTR (Beta(2, 18) scaled: users
    differ, as they do), and every shown item is clicked with it. ``drop_b``: a share of b's users lost before
    logging (a bug, a redirect): a sample-ratio mismatch. ``pre_period``: each user also has requests before t=1000,
    under no treatment, from the same propensity (CUPED's covariate)."""
    rng = np.random.default_rng(seed)
    variant = np.where(rng.random(users) < shares[0], "a", "b")
    if drop_b:
        keep = (variant == "a") | (rng.random(users) >= drop_b)
        variant = np.where(keep, variant, "")
    base = rng.beta(2, 18, users)  # mean 0.10
    propensity = np.where(variant == "b", base * ctr[1] / 0.10, base * ctr[0] / 0.10)
    req, fb = [], []
    for u in range(users):
        if not variant[u]:
            continue
        periods = [(0.0, base[u]), (2000.0, propensity[u])] if pre_period else [(2000.0, propensity[u])]
        for t0, p in periods:
            for r in range(rng.integers(1, 7)):
                rid = f"{u}-{t0:.0f}-{r}"
                items = rng.choice(1000, 5, replace=False).tolist()
                req.append({"request_id": rid, "time": t0 + r, "endpoint": "recommend", "variant": variant[u],
                            "forced": False, "user": str(u), "items": items})
                clicked = rng.random(5) < p
                fb += [{"request_id": rid, "item": i, "position": 0, "reward": 1.0, "time": t0 + r}
                       for i, c in zip(items, clicked) if c]
    return pd.DataFrame(req), pd.DataFrame(fb)
