"""A paired comparison over seeds for benchmark goals of the form "A beats B": the mean of the per-seed differences
and the lower end of its one-sided 95% confidence interval (Student's t). The goal is met only when that lower end
is above 0, so a difference that noise alone could make is missed, however it leans (with 2-3 seeds an effect must
be large and steady to count)."""

from __future__ import annotations

import math
from typing import Sequence


def paired_lower_bound(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean of a - b, lower confidence bound of that mean) over paired seeds; the bound is -inf with one seed."""
    from scipy import stats

    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples: {len(a)} against {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    if len(d) < 2:
        return mean, -math.inf
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return mean, mean - stats.t.ppf(confidence, len(d) - 1) * sd / math.sqrt(len(d))
