"""A sequential teacher inside the training workers (kind distill over sasrec / hstu): the frozen model, unsharded in
every worker, scores each batch's candidates (the positions' next items and the shared negatives) and the student
learns ``alpha * sampled softmax + (1 - alpha) * T^2 * KL(teacher || student)`` over those candidates."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...models.sequential import SequentialModel, candidate_logits, distill_loss


@dataclass
class SequenceTeacher:
    model: SequentialModel
    temperature: float  # the teacher's own sampled-softmax temperature: its logits on the scale it learned
    alpha: float
    kd_temperature: float

    @classmethod
    def load(cls, cfg: dict | None) -> SequenceTeacher | None:
        """From ``{"run_dir", "checkpoint", "alpha", "temperature"}``; None without a teacher."""
        if not cfg:
            return None
        from .load import load_sequential

        spec, model, _ = load_sequential(cfg["run_dir"], cfg["checkpoint"])
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model.eval(), spec.train.sampled_softmax.temperature, float(cfg["alpha"]), float(cfg["temperature"]))

    def mix(self, hard: torch.Tensor, student_logits: torch.Tensor, batch) -> torch.Tensor:
        with torch.no_grad():
            user, looked = self.model(*batch.inputs())
            teacher_logits = candidate_logits(user, looked["target"], looked["negative"], batch.targets,
                                              batch.negatives, self.temperature)
        soft = distill_loss(student_logits, teacher_logits, self.kd_temperature)
        return self.alpha * hard + (1.0 - self.alpha) * soft
