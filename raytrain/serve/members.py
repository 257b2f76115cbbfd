"""A member deployment: one trained model, loaded unsharded from its run directory, its tables stored as the variant
asks (``quantize``); one forward pass per call. A two-tower or content member also retrieves: it embeds every item of its
catalogue with the item tower when it starts and searches them by the user tower's vector (``retrieval``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from ray import serve

from .refs import MemberRef
from .wire import from_wire


@serve.deployment
class MemberModel:
    """Batching happens upstream: the ingress merges concurrent requests and sends each member one call per batch
    (``scoring.Scorer``), which saves the per-call cost (a Ray actor call costs several times a forward pass of these
    models) as well as forward passes."""

    def __init__(self, ref: MemberRef, threads: int):
        from ..models.build import table_name
        from ..train.export import load_model
        from .quantize import quantize_tables, table_dtypes, table_storage

        torch.set_num_threads(threads)
        self.ref = ref
        self.model = load_model(ref.run_dir, ref.checkpoint)
        features = [f.name for f in self.model.schema.sparse]
        dtypes = table_dtypes(features, ref.quantize, dict(ref.quantize_tables), f"member {ref.name}")
        self.model.module = quantize_tables(self.model.module,  # type: ignore[assignment]
                                            {table_name(f): d for f, d in dtypes.items()})
        self.tables = table_storage(self.model.module)
        self.forward_passes = 0
        self.index = self._build_index() if ref.retrieval else None

    def _towers(self, rows: dict) -> tuple[torch.Tensor, torch.Tensor]:
        cols = from_wire(self.model.schema, [rows])
        with torch.inference_mode():
            net: Any = self.model.module.model.net
            batch = cols.batch(torch.arange(len(cols)))
            return net.towers(batch.sparse, batch.dense)  # dense: an item's text features (its content branch)

    def _build_index(self):
        """The item tower's vector of every item the run's data holds, in an index (``retrieval.ItemIndex``)."""

        from ..spec.serve import RetrievalSpec
        from .features import FeatureStore, prepared_rows
        from .retrieval import ItemIndex
        from .wire import to_wire

        store = FeatureStore(self.model.schema, prepared_rows(self.model.spec.data))
        assert store.user_key is not None and store.item_key is not None
        items = store.known_items
        vectors = []
        for start in range(0, len(items), 65536):
            chunk = items[start:start + 65536].tolist()
            parsed = store.parse([{store.user_key: 0, store.item_key: i} for i in chunk], where="catalogue")
            vectors.append(self._towers(to_wire(parsed.columns))[1].float().numpy())
        cfg = RetrievalSpec.model_validate(json.loads(self.ref.retrieval))
        return ItemIndex(np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32), items, cfg)

    async def score(self, rows: dict) -> tuple[np.ndarray, str]:
        """Logits of parsed rows (``wire.to_wire``), and the model version that made them (``MemberRef.version``:
        during a rolling update, replicas of two versions answer side by side)."""
        self.forward_passes += 1
        cols = from_wire(self.model.schema, [rows])
        with torch.inference_mode():
            _, logits = self.model.module(cols.batch(torch.arange(len(cols))))
        return logits.double().numpy(), self.ref.version

    async def retrieve(self, rows: dict, k: int, exclude: list[list[int]] | None
                       ) -> tuple[np.ndarray, np.ndarray, str]:
        """(logits [B, k], item ids [B, k], model version) of each parsed row's user, best first, without its
        ``exclude`` items; a row with fewer eligible items ends in -inf / -1. The logits are the model's own
        (user . item)."""
        if self.index is None:
            raise ValueError(f"member {self.ref.name}: not a two-tower or content model; it cannot retrieve")
        self.forward_passes += 1
        user, _ = self._towers(rows)
        ex = [np.asarray(e, dtype=np.int64) for e in exclude] if exclude is not None else None
        return (*self.index.search(user.float().numpy(), k, ex), self.ref.version)

    def info(self) -> dict:
        m = self.model
        return {**asdict(self.ref), "version": self.ref.version, "epoch": m.epoch, "arch": m.spec.model.arch,
                "embedding_dim": m.spec.model.embedding_dim,
                "parameters": int(sum(p.numel() for p in m.module.parameters())),
                "tables": self.tables, "table_bytes": sum(t["bytes"] for t in self.tables.values()),
                **({"retrieval": self.index.describe()} if self.index is not None else {}),
                "forward_passes": self.forward_passes}
