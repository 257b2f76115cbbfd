"""Retrieval over the catalogue: the top ``k`` items by inner product with a query vector.

Below ``retrieval.exact_below`` items the search is exact: one score vector and ``torch.topk`` for a few queries,
``raytrain.kernels.topk_scores`` (the fused top-K, without the B x N score matrix) for many. Above it, an
approximate index from faiss: IVF (``nlist`` clusters of the items, ``nprobe`` of them searched per query) by
default, HNSW on request, both on L2 over the vectors with one added coordinate that makes the nearest item the one
with the largest inner product (``_mips_to_l2``). The exact path is the recall reference
(``benchmarks/serve_scale.py``). Items a query must not get (its history) are left out by asking the index for
``k`` plus that many and dropping them, so every index answers with the same rule.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class IndexInfo:
    kind: str  # exact | ivf | hnsw
    items: int
    dim: int
    build_s: float
    params: dict[str, Any]


class ItemIndex:
    """Item vectors ([N, d] float32, row i is item ``ids[i]``) searched by inner product."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, cfg: Any) -> None:
        """``cfg``: a ``kinds.serve.RetrievalSpec``."""
        t0 = time.perf_counter()
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.position = {int(x): i for i, x in enumerate(self.ids)}
        n, d = self.vectors.shape
        kind = cfg.index
        if kind == "auto":
            kind = "exact" if n < cfg.exact_below else "ivf"
        params: dict[str, Any] = {}
        self._faiss: Any = None
        if kind == "exact":
            self._torch_items = torch.from_numpy(self.vectors)
        else:
            import faiss

            augmented = _mips_to_l2(self.vectors)
            if kind == "ivf":
                # about 4 sqrt(N) clusters, but at least 39 items each (fewer and faiss's k-means is unreliable)
                nlist = min(cfg.nlist or int(min(65536, 4 * math.sqrt(n), n / 39)), n) or 1
                ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(d + 1), d + 1, nlist)
                # k-means on a sample: faiss's own advice is 30-256 points a cluster
                sample = augmented if n <= 64 * nlist else augmented[
                    np.random.default_rng(0).choice(n, 64 * nlist, replace=False)]
                ivf.train(sample)
                ivf.add(augmented)
                ivf.nprobe = min(cfg.nprobe, nlist)
                params = {"nlist": nlist, "nprobe": ivf.nprobe}
                self._faiss = ivf
            else:
                hnsw = faiss.IndexHNSWFlat(d + 1, cfg.hnsw_m)
                hnsw.hnsw.efConstruction = max(40, 2 * cfg.hnsw_m)
                hnsw.add(augmented)
                hnsw.hnsw.efSearch = cfg.ef_search
                params = {"m": cfg.hnsw_m, "ef_search": cfg.ef_search}
                self._faiss = hnsw
        self.info = IndexInfo(kind, n, d, round(time.perf_counter() - t0, 3), params)

    def search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k], item ids [B, k]) best first, each row without its ``exclude`` item ids; a row with fewer
        eligible items ends in score -inf and id -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        b = q.shape[0]
        excl = [np.asarray(e, dtype=np.int64) for e in exclude] if exclude is not None else [np.zeros(0, np.int64)] * b
        if self._faiss is None:
            from ..kernels import topk_scores, topk_scores_reference

            # a few queries: one score vector each and torch.topk is fastest (4x the fused kernel at 1 query x 1M
            # items here, benchmarks/serve_scale.py); many: the fused kernel, which never holds the B x N scores
            topk = topk_scores_reference if b * len(self.ids) <= (1 << 24) else topk_scores

            pos = [np.array([self.position[int(x)] for x in e if int(x) in self.position], dtype=np.int64)
                   for e in excl]
            offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(p) for p in pos])]), dtype=torch.int64)
            flat = torch.from_numpy(np.concatenate(pos)) if pos else torch.zeros(0, dtype=torch.int64)
            scores, top = topk(torch.from_numpy(q), self._torch_items, min(k, len(self.ids)),
                               exclude=(offsets, flat) if len(flat) else None)
            s, t = scores.numpy(), top.numpy()
            found = np.where(t >= 0, self.ids[np.maximum(t, 0)], -1)
            return _pad(s, found, k)
        extra = max((len(e) for e in excl), default=0)
        fetch = min(k + extra, len(self.ids))
        if self.info.kind == "hnsw":  # the candidate list must be longer than what is asked of it
            self._faiss.hnsw.efSearch = max(self.info.params["ef_search"], 2 * fetch)
        _, at = self._faiss.search(np.concatenate([q, np.zeros((b, 1), np.float32)], 1), fetch)
        # the exact inner products of what the index found (its L2 distances only order them), best first
        scores = np.einsum("bd,bkd->bk", q, self.vectors[np.maximum(at, 0)])
        scores[at < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        scores, at = np.take_along_axis(scores, order, 1), np.take_along_axis(at, order, 1)
        ids = np.where(at >= 0, self.ids[np.maximum(at, 0)], -1)
        out_s = np.full((b, k), -np.inf, dtype=np.float32)
        out_i = np.full((b, k), -1, dtype=np.int64)
        for r in range(b):
            keep = (ids[r] >= 0) & ~np.isin(ids[r], excl[r])
            s, i = scores[r][keep][:k], ids[r][keep][:k]
            out_s[r, :len(s)], out_i[r, :len(i)] = s, i
        return out_s, out_i

    def describe(self) -> dict:
        return {"index": self.info.kind, "items": self.info.items, "dim": self.info.dim,
                "build_s": self.info.build_s, **self.info.params}


def _mips_to_l2(x: np.ndarray) -> np.ndarray:
    """Items for a nearest-neighbour index that finds the largest inner products: each row gets one more coordinate,
    sqrt(M^2 - |x|^2) with M the largest norm, so every row has norm M and for a query (q, 0) the L2 distance is
    |q|^2 + M^2 - 2 q.x (Bachrach et al., 2014). Inner product is not a metric: an HNSW graph or IVF clustering built
    on it directly recalls far less (tests/unit/test_serve_scale.py)."""
    norms = np.einsum("nd,nd->n", x, x)
    extra = np.sqrt(np.maximum(norms.max(initial=0.0) - norms, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([x, extra[:, None]], 1))


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores, ids
    b = scores.shape[0]
    return (np.concatenate([scores, np.full((b, missing), -np.inf, np.float32)], 1),
            np.concatenate([ids, np.full((b, missing), -1, np.int64)], 1))
