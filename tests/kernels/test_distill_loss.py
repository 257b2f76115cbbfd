"""Fused distillation loss: value and gradient against the autograd reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from raytrain.kernels import distill_loss, distill_loss_reference


@pytest.mark.parametrize("n", [1, 7, 1024, 5000])
@pytest.mark.parametrize("alpha,temperature", [(0.5, 2.0), (0.0, 1.0), (1.0, 4.0), (0.3, 0.5)])
def test_value_and_gradient_match_reference(n, alpha, temperature):
    g = torch.Generator().manual_seed(n)
    s = (torch.randn(n, generator=g) * 4).requires_grad_()
    t = torch.randn(n, generator=g) * 4
    y = (torch.rand(n, generator=g) > 0.5).float()
    ref = distill_loss_reference(s, t, y, alpha, temperature)
    (gref,) = torch.autograd.grad(ref, s)
    got = distill_loss(s, t, y, alpha, temperature)
    (ggot,) = torch.autograd.grad(got, s)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ggot, gref, rtol=1e-4, atol=1e-7)


def test_alpha_one_is_plain_bce_and_teacher_is_not_differentiated():
    s = torch.randn(100, requires_grad=True)
    t = torch.randn(100, requires_grad=True)
    y = (torch.rand(100) > 0.5).float()
    loss = distill_loss(s, t, y, alpha=1.0, temperature=3.0)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(s, y))
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_kd_term_is_zero_when_student_equals_teacher():
    s = torch.randn(50)
    assert distill_loss(s, s.clone(), torch.zeros(50), alpha=0.0, temperature=2.0).abs() < 1e-6


def test_bf16_student():
    s = (torch.randn(300) * 3).bfloat16().requires_grad_()
    t, y = torch.randn(300) * 3, (torch.rand(300) > 0.5).float()
    got = distill_loss(s, t, y, 0.5, 2.0)
    got.backward()
    s32 = s.detach().float().requires_grad_()
    ref = distill_loss_reference(s32, t, y, 0.5, 2.0)
    ref.backward()
    assert s.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.grad.float(), s32.grad, rtol=1e-2, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="1-d of one length"):
        distill_loss(torch.randn(3), torch.randn(4), torch.randn(3))
    with pytest.raises(ValueError, match="0 <= alpha <= 1 and temperature > 0"):
        distill_loss(torch.randn(3), torch.randn(3), torch.randn(3), alpha=1.5)
