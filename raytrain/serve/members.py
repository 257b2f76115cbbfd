"""A member deployment: one trained model, loaded unsharded from its run directory; one forward pass per call."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from ray import serve

from .features import from_wire
from .sources import MemberRef


@serve.deployment
class MemberModel:
    """Batching happens upstream: the ingress merges concurrent requests and sends each member one call per batch
    (``scoring.Scorer``), which saves the per-call cost (a Ray actor call costs several times a forward pass of these
    models) as well as forward passes."""

    def __init__(self, ref: MemberRef, threads: int):
        from ..train.export import load_model

        torch.set_num_threads(threads)
        self.ref = ref
        self.model = load_model(ref.run_dir, ref.checkpoint)
        self.forward_passes = 0

    async def score(self, rows: dict) -> np.ndarray:
        """Logits of parsed rows (``features.to_wire``)."""
        self.forward_passes += 1
        cols = from_wire(self.model.schema, [rows])
        with torch.inference_mode():
            _, logits = self.model.module(cols.batch(torch.arange(len(cols))))
        return logits.double().numpy()

    def info(self) -> dict:
        m = self.model
        return {**asdict(self.ref), "epoch": m.epoch, "arch": m.spec.model.arch,
                "embedding_dim": m.spec.model.embedding_dim,
                "parameters": int(sum(p.numel() for p in m.module.parameters())),
                "forward_passes": self.forward_passes}
