"""Scoring a variant: its members called concurrently and combined, concurrent requests merged into one call per
member (``@serve.batch``).

On these models a Ray call costs several times a forward pass, so merging only the forward passes inside the members
saved almost nothing (docs/serving.md); the ingress merges whole requests instead. A request alone in the ingress
goes straight through: waiting for company that is not coming would only add ``batch_wait_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from ray import serve

from ..data.batches import Columns
from .refs import MemberRef, ResolvedVariant
from .wire import concat_wire, to_wire

log = logging.getLogger("ray.serve")


class Scorer:
    """Mixed into the ingress: ``variants``, ``handles`` (checkpoint -> member handle), ``combiners`` and the
    batching settings are set by ``init_scoring``."""

    variants: list[ResolvedVariant]
    handles: dict[str, Any]
    combiners: dict[str, Any]

    def init_scoring(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.batching = max_batch_size > 1
        self.merged = {"batches": 0, "requests": 0}  # what batching merged: requests per batch of member calls
        self.in_flight = 0  # /predict and /recommend requests being answered
        self._scores_batched.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._scores_batched.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Counts the /predict and /recommend requests being answered (``in_flight``)."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def scores(self, variant: str, cols: Columns) -> tuple[np.ndarray, list[str]]:
        """Probabilities of one variant for parsed rows, and the versions of the models that scored them (one per
        member): merged with concurrent requests' rows when batching."""
        rows = to_wire(cols)
        if self.batching and self.in_flight > 1:
            return await self._scores_batched((variant, rows))
        return await self._variant_scores(variant, rows)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _scores_batched(self, requests: list[tuple[str, dict]]) -> list[tuple[np.ndarray, list[str]]]:
        """Concurrent requests' rows, grouped by variant: one call per member of each variant for the whole
        group, then each request gets its own slice back."""
        out: list[tuple[np.ndarray, list[str]]] = [(np.empty(0), [])] * len(requests)
        self.merged["batches"] += 1
        self.merged["requests"] += len(requests)
        groups: dict[str, list[int]] = {}
        for i, (variant, _) in enumerate(requests):
            groups.setdefault(variant, []).append(i)

        async def score_group(variant: str, idx: list[int]) -> None:
            parts = [requests[i][1] for i in idx]
            probs, versions = await self._variant_scores(variant, concat_wire(parts))
            bounds = np.cumsum([0] + [len(p["dense"]) for p in parts])
            for i, a, b in zip(idx, bounds[:-1], bounds[1:]):
                out[i] = (probs[a:b], versions)

        await asyncio.gather(*(score_group(v, idx) for v, idx in groups.items()))
        return out

    async def retrieve(self, key: str, rows: dict, n: int, exclude: list[list[int]]
                       ) -> tuple[np.ndarray, np.ndarray, str]:
        """A two-tower or content member's top ``n`` (logits, item ids) for each parsed row's user, and its version
        (``MemberModel.retrieve``)."""
        handle = self.handles[key]
        try:
            return await handle.retrieve.remote(rows, n, exclude)
        except Exception as e:  # as for scoring: one retry goes to a live (or restarted) replica
            log.warning("retrieval from %s failed (%s: %s); retrying once", key.split("|")[0], type(e).__name__, e)
            return await handle.retrieve.remote(rows, n, exclude)

    async def _variant_scores(self, variant: str, rows: dict) -> tuple[np.ndarray, list[str]]:
        """Members of a variant scored concurrently, then combined; with the versions that scored."""
        v = next(x for x in self.variants if x.name == variant)

        async def call(ref: MemberRef) -> tuple[np.ndarray, str]:
            handle = self.handles[ref.key]
            try:
                return await handle.score.remote(rows)
            except Exception as e:  # a replica died under us: one retry goes to a live (or restarted) replica
                log.warning("member %s failed (%s: %s); retrying once", ref.name, type(e).__name__, e)
                return await handle.score.remote(rows)

        answers = await asyncio.gather(*(call(m) for m in v.members))
        logits, versions = [a[0] for a in answers], [a[1] for a in answers]
        combiner = self.combiners[variant]
        if combiner is None:
            return 1.0 / (1.0 + np.exp(-logits[0])), versions
        return combiner.predict(np.stack(logits, axis=1)), versions
