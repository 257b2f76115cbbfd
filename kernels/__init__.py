"""Compute kernels for raytrain's hot paths (shipped as ``raytrain.kernels``).

- ``topk_scores``: the top-K items per query by dot product, streamed over item blocks so the
  B x N score matrix never exists. CPU: blocked GEMM + a running threshold; CUDA: a Triton kernel.
- ``distill_loss``: BCE with labels plus temperature-scaled KD against teacher logits, value and
  gradient in one pass. CPU: one fused autograd Function; CUDA: a Triton kernel.

Each has a plain PyTorch reference (``*_reference``) that the parity tests compare against. The package picks
the path for the tensors' device (``topk_scores`` here), so the CPU path (``topk.py``) never imports the Triton one
and the Triton one imports the CPU path only for its exact fallback.
"""

from __future__ import annotations

from .distill import distill_loss, distill_loss_reference
from .topk import topk_scores_cpu, topk_scores_reference


def topk_scores(queries, items, k: int, item_mask=None, exclude=None, block: int | None = None):
    """Top-K items per query by dot product; the fused path for the tensors' device."""
    if queries.dim() != 2 or items.dim() != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(f"queries [B, d] and items [N, d] must share d; got {tuple(queries.shape)} and "
                         f"{tuple(items.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if item_mask is not None and item_mask.shape != (items.shape[0],):
        raise ValueError(f"item_mask must have shape [N] = [{items.shape[0]}], got {tuple(item_mask.shape)}")
    if queries.is_cuda:
        from .topk_triton import topk_scores_triton

        return topk_scores_triton(queries, items, k, item_mask=item_mask, exclude=exclude)
    return topk_scores_cpu(queries, items, k, item_mask=item_mask, exclude=exclude, block=block or 2048)


__all__ = ["distill_loss", "distill_loss_reference", "topk_scores", "topk_scores_reference"]
