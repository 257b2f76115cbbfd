"""Distillation loss for binary (CTR) models, value and gradient in one pass.

    loss = alpha * BCE(student, label) + (1 - alpha) * T^2 * KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T)))

averaged over the batch (``s``: student logits, ``t``: teacher logits, ``T``: temperature). The
gradient with respect to the student logits is closed-form:

    d loss / d s_i = [alpha * (sigmoid(s_i) - y_i) + (1 - alpha) * T * (sigmoid(s_i / T) - sigmoid(t_i / T))] / n

so the fused version computes it in the same pass as the loss and the backward is one multiply.
The teacher is not differentiated (its scores are targets). With alpha = 1 this is exactly BCE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))


def distill_loss_reference(student, teacher, labels, alpha: float = 0.5, temperature: float = 1.0):
    """Autograd through standard PyTorch ops; the definition the fused kernels must match."""
    T = temperature
    hard = F.binary_cross_entropy_with_logits(student, labels)
    soft_targets = torch.sigmoid(teacher.detach() / T)
    # KL(p || q) for Bernoulli = BCE(q_logits, p) - H(p)
    ce = F.binary_cross_entropy_with_logits(student / T, soft_targets)
    entropy = F.binary_cross_entropy_with_logits(teacher.detach() / T, soft_targets)
    return alpha * hard + (1 - alpha) * T * T * (ce - entropy)


def _fused_forward(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float, T: float):
    """One pass over the batch: per-row loss terms and the gradient, in fp32."""
    s, t, y = s.float(), t.float(), y.float()
    n = s.numel()
    sT, tT = s / T, t / T
    p_t = torch.sigmoid(tT)
    # BCE(x, z) = softplus(x) - x * z ; KL = BCE(sT, p_t) - BCE(tT, p_t) = softplus(sT) - softplus(tT) - (sT - tT) p_t
    hard = _softplus(s) - s * y
    kl = _softplus(sT) - _softplus(tT) - (sT - tT) * p_t
    loss = (alpha * hard.sum() + (1 - alpha) * T * T * kl.sum()) / n
    grad = (alpha * (torch.sigmoid(s) - y) + (1 - alpha) * T * (torch.sigmoid(sT) - p_t)) / n
    return loss, grad


class _DistillLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, labels, alpha, temperature):
        if student.is_cuda:
            from .distill_triton import distill_forward_triton

            loss, grad = distill_forward_triton(student, teacher, labels, alpha, temperature)
        else:
            loss, grad = _fused_forward(student, teacher, labels, alpha, temperature)
        ctx.save_for_backward(grad)
        ctx.student_dtype = student.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out).to(ctx.student_dtype), None, None, None, None


def distill_loss(student, teacher, labels, alpha: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """Fused distillation loss (scalar, mean over the batch); differentiable in ``student``."""
    if not (student.shape == teacher.shape == labels.shape) or student.dim() != 1:
        raise ValueError(f"student, teacher and labels must be 1-d of one length; got {tuple(student.shape)}, "
                         f"{tuple(teacher.shape)}, {tuple(labels.shape)}")
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError(f"need 0 <= alpha <= 1 and temperature > 0; got alpha={alpha}, temperature={temperature}")
    return _DistillLoss.apply(student, teacher, labels, float(alpha), float(temperature))
