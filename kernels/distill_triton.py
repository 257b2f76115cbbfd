"""Triton distillation loss: per-block partial loss sums and the gradient in one pass (CUDA)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _distill_kernel(s_ptr, t_ptr, y_ptr, grad_ptr, partial_ptr, n, alpha, T, inv_n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    s = tl.load(s_ptr + offs, mask=m, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + offs, mask=m, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=m, other=0.0).to(tl.float32)
    sT = s / T
    tT = t / T
    p_t = 1.0 / (1.0 + tl.exp(-tT))
    hard = _softplus(s) - s * y
    kl = _softplus(sT) - _softplus(tT) - (sT - tT) * p_t
    loss = tl.where(m, alpha * hard + (1.0 - alpha) * T * T * kl, 0.0)
    grad = (alpha * (1.0 / (1.0 + tl.exp(-s)) - y) + (1.0 - alpha) * T * (1.0 / (1.0 + tl.exp(-sT)) - p_t)) * inv_n
    tl.store(grad_ptr + offs, grad, mask=m)
    tl.store(partial_ptr + pid, tl.sum(loss, axis=0))


def distill_forward_triton(student, teacher, labels, alpha: float, temperature: float, block: int = 1024):
    n = student.numel()
    grid = (triton.cdiv(n, block),)
    grad = torch.empty(n, dtype=torch.float32, device=student.device)
    partial = torch.empty(grid[0], dtype=torch.float32, device=student.device)
    _distill_kernel[grid](student.contiguous(), teacher.contiguous(), labels.contiguous(), grad, partial, n,
                          float(alpha), float(temperature), 1.0 / n, BLOCK=block)
    return partial.sum() / n, grad
