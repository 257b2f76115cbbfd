"""Compute kernels for raytrain's hot paths (shipped as ``raytrain.kernels``).

- ``topk_scores``: the top-K items per query by dot product, streamed over item blocks so the
  B x N score matrix never exists. CPU: blocked GEMM + a running threshold; CUDA: a Triton kernel.
- ``distill_loss``: BCE with labels plus temperature-scaled KD against teacher logits, value and
  gradient in one pass. CPU: one fused autograd Function; CUDA: a Triton kernel.

Each has a plain PyTorch reference (``*_reference``) that the parity tests compare against.
"""

from .distill import distill_loss, distill_loss_reference
from .topk import topk_scores, topk_scores_reference

__all__ = ["distill_loss", "distill_loss_reference", "topk_scores", "topk_scores_reference"]
