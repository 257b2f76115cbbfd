"""The teacher of a distillation: one trained model, or an ensemble's members plus its fitted combiner."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logit

from ..data.batches import Batch
from ..ensemble.combine import Combiner
from ..ensemble.members import Member, load_member, read_ensemble, score, top_trials
from ..errors import CheckpointError


@dataclass
class Teacher:
    members: list[Member]
    combiner: Combiner | None  # None: a single model, its own logits
    source: str

    def logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Teacher logits and labels of a split (an ensemble's probability as a logit)."""
        parts, labels = [], None
        for m in self.members:
            x, y = score(m, split)
            if labels is not None and not np.array_equal(y, labels):
                raise CheckpointError(f"teacher member {m.name} was trained on other {split} rows")
            parts.append(x)
            labels = y
        assert labels is not None
        if self.combiner is None:
            return parts[0], labels
        p = np.clip(self.combiner.predict(np.stack(parts, axis=1)), 1e-7, 1 - 1e-7)
        return logit(p), labels

    @torch.no_grad()
    def forward(self, batch: Batch) -> torch.Tensor:
        """Scores of one batch (for latency measurements); members run one after another on this process."""
        outs = [m.model.module(batch)[1].double() for m in self.members]
        if self.combiner is None:
            return outs[0]
        return torch.from_numpy(self.combiner.predict(torch.stack(outs, 1).numpy()))

    def parameters(self) -> int:
        return sum(int(sum(p.numel() for p in m.model.module.parameters())) for m in self.members)

    def bytes(self) -> int:
        return sum(int(sum(p.numel() * p.element_size() for p in m.model.module.parameters())) for m in self.members)


def load_teacher(cfg) -> Teacher:
    """From a distill spec's ``teacher`` section."""
    if cfg.ensemble is not None:
        run, doc = read_ensemble(cfg.ensemble, cfg.combine, "distill.teacher.combine")
        members = [load_member(m["run_dir"], m["name"]) for m in doc["members"]]
        return Teacher(members, Combiner.from_dict(doc["combiners"][cfg.combine]), f"ensemble {run} ({cfg.combine})")
    if cfg.tune_run is not None:
        best = top_trials(cfg.tune_run, 1)[0]
        return Teacher([load_member(best)], None, f"best trial {best}")
    return Teacher([load_member(cfg.run)], None, f"run {cfg.run}")
