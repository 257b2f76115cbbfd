"""Criteo-like synthetic data, generated deterministically and streamed, never materialised.

Rows are produced in fixed chunks of ``CHUNK`` rows; chunk ``c`` of split ``s`` is a pure function
of ``(seed, s, c)``, so any worker can produce any row range, the data is the same for every worker
count, and a table of 2^40 virtual ids costs nothing until an id is drawn.

Ids follow a power law (rank ``k`` has probability ~ ``k^-alpha``), scrambled over the id range so
hot ids do not cluster in the first rows. The label is Bernoulli(sigmoid(z)) with ``z`` a sum of a
fixed hidden weight per (feature, id) plus a linear term in the dense features: learnable, and
learnable better for frequent ids, as in real click logs.
"""

from __future__ import annotations

import numpy as np

from .schema import FeatureSchema, SparseFeature

CHUNK = 8192
SPLITS = {"train": 0, "validation": 1, "test": 2}
_SCRAMBLE = np.uint64(2654435761)  # a prime: k -> k * p mod card is a bijection unless p | card


def schema_for(spec) -> FeatureSchema:
    cards = spec.cardinalities()
    half = max(1, spec.num_sparse // 2)
    return FeatureSchema(
        sparse=tuple(
            SparseFeature(f"s{i}", int(c), False, "user" if i < half else "item") for i, c in enumerate(cards)
        ),
        dense=tuple(f"d{i}" for i in range(spec.num_dense)),
        label="label",
        info={"source": "synthetic", "rows": dict(spec.rows), "zipf_alpha": spec.zipf_alpha, "seed": spec.seed},
    )


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hidden_weight(feature: int, ids: np.ndarray, seed: int) -> np.ndarray:
    h = _splitmix(ids.astype(np.uint64) ^ np.uint64((feature + 1) * 0x1000193 + seed * 0x51ED27))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0  # uniform in [-1, 1)


def _power_law_ranks(u: np.ndarray, card: int, alpha: float) -> np.ndarray:
    top = float(card) + 1.0
    if abs(alpha - 1.0) < 1e-9:
        x = np.power(top, u)
    else:
        x = np.power(1.0 + u * (top ** (1.0 - alpha) - 1.0), 1.0 / (1.0 - alpha))
    return np.minimum(np.floor(x).astype(np.int64) - 1, card - 1).clip(0)


def generate_chunk(spec, split: str, chunk: int) -> dict[str, np.ndarray]:
    """Rows ``[chunk*CHUNK, (chunk+1)*CHUNK)`` of a split as numpy columns."""
    rng = np.random.default_rng([spec.seed, SPLITS[split], chunk])
    n = CHUNK
    cards = spec.cardinalities()
    cols: dict[str, np.ndarray] = {}
    z = np.full(n, -1.0)
    for f, card in enumerate(cards):
        ranks = _power_law_ranks(rng.random(n), card, spec.zipf_alpha)
        ids = ((ranks.astype(np.uint64) * _SCRAMBLE + np.uint64(f * 7919)) % np.uint64(card)).astype(np.int64)
        cols[f"s{f}"] = ids
        z += 1.5 * _hidden_weight(f, ids, spec.seed)
    if spec.num_dense:
        dense = rng.standard_normal((n, spec.num_dense)).astype(np.float32)
        v = np.random.default_rng([spec.seed, 99]).standard_normal(spec.num_dense) * (1.0 / np.sqrt(spec.num_dense))
        z += dense @ v
        for j in range(spec.num_dense):
            cols[f"d{j}"] = dense[:, j]
    p = 1.0 / (1.0 + np.exp(-z))
    cols["label"] = (rng.random(n) < p).astype(np.float32)
    return cols


class SyntheticRows:
    """Hands out row ranges of one split, generating (and caching the last) chunks as needed."""

    def __init__(self, spec, split: str) -> None:
        self.spec = spec
        self.split = split
        self.num_rows = int(spec.rows[split])
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None

    def _chunk(self, c: int) -> dict[str, np.ndarray]:
        if self._cached is None or self._cached[0] != c:
            self._cached = (c, generate_chunk(self.spec, self.split, c))
        return self._cached[1]

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        stop = min(stop, self.num_rows)
        parts: list[dict[str, np.ndarray]] = []
        pos = start
        while pos < stop:
            c = pos // CHUNK
            lo = pos - c * CHUNK
            hi = min(CHUNK, stop - c * CHUNK)
            chunk = self._chunk(c)
            parts.append({k: v[lo:hi] for k, v in chunk.items()})
            pos = c * CHUNK + hi
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
