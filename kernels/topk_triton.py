"""Triton top-K scoring for CUDA: one pass over the item table, no B x N score matrix.

Each program owns BLOCK_B queries and one contiguous split of the items. It streams the split in
tiles of K_PAD items (K_PAD = next power of two >= K): a tile's scores come from ``tl.dot``; each
(score, item) pair becomes one int64 key that orders by score, then by lower item id; the tile's
keys sorted ascending are merged into the running top-K (sorted descending) by an elementwise max,
which keeps exactly the K largest of both (the bitonic-merge property), and one sort restores order.
Programs write their K_PAD best keys; the host picks the final K among splits with torch.topk.

Per-query exclusions are applied after the kernel: it returns K + (largest exclusion list) keys per
query, so removing excluded items still leaves K. Runs under TRITON_INTERPRET=1 on the CPU too,
which is how the parity tests check it on machines without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

EMPTY_KEY = -(2**63)  # the smallest int64: no item
EMPTY = tl.constexpr(EMPTY_KEY)  # the same, readable inside @triton.jit (compiled kernels reject plain globals)
# A program sorts BLOCK_B x K_PAD int64 keys in shared memory (~32 bytes per key on an H200): K_PAD = 1024
# with BLOCK_B = 16 asked for 520 KiB against 227 KiB there. tl.dot needs BLOCK_B >= 16, so the Triton path
# stops at K_PAD = 256 (~130 KiB) and larger K go through the streaming torch path (kernels.topk).
MAX_K_PAD = 256


def fits(k: int, n: int, extra: int = 0) -> bool:
    """Whether top-``k`` (plus ``extra`` excluded items per query) over ``n`` items fits the Triton kernel."""
    return max(16, _next_pow2(min(min(k, n) + extra, n))) <= MAX_K_PAD


@triton.jit
def _topk_kernel(q_ptr, it_ptr, mask_ptr, out_ptr, B, N, D, per_split,
                 s_qb, s_qd, s_in, s_id, s_ob,
                 HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, K_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                 IEEE: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    lo = pid_s * per_split
    hi = tl.minimum(lo + per_split, N)
    best = tl.full((BLOCK_B, K_PAD), EMPTY, dtype=tl.int64)
    for start in range(lo, hi, K_PAD):
        offs_n = start + tl.arange(0, K_PAD)
        acc = tl.zeros((BLOCK_B, K_PAD), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            q = tl.load(q_ptr + offs_b[:, None] * s_qb + offs_d[None, :] * s_qd,
                        mask=(offs_b[:, None] < B) & (offs_d[None, :] < D), other=0.0)
            it = tl.load(it_ptr + offs_n[None, :] * s_in + offs_d[:, None] * s_id,
                         mask=(offs_n[None, :] < hi) & (offs_d[:, None] < D), other=0.0)
            if IEEE:
                acc += tl.dot(q, it, input_precision="ieee")
            else:
                acc += tl.dot(q, it)
        valid = offs_n < hi
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + offs_n, mask=offs_n < hi, other=0) != 0)
        # float -> int32 with the same order, then (score, -item) packed into one int64
        bits = acc.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        key = ordered.to(tl.int64) * 4294967296 + (4294967295 - offs_n.to(tl.int64))[None, :]
        key = tl.where(valid[None, :], key, EMPTY)
        best = tl.maximum(best, tl.sort(key, dim=1, descending=False))
        best = tl.sort(best, dim=1, descending=True)
    offs_k = tl.arange(0, K_PAD)
    tl.store(out_ptr + offs_b[:, None] * s_ob + (pid_s * K_PAD + offs_k)[None, :], best,
             mask=(offs_b[:, None] < B))


def _decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    empty = keys == EMPTY_KEY
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    scores = bits.view(torch.float32).clone()
    index = 4294967295 - (keys & 0xFFFFFFFF)
    scores[empty] = float("-inf")
    index[empty] = -1
    return scores, index


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def topk_scores_triton(queries, items, k: int, item_mask=None, exclude=None, block_b: int = 16):
    b, d = queries.shape
    n = items.shape[0]
    kk = min(k, n)
    extra = 0
    if exclude is not None:
        offsets = torch.as_tensor(exclude[0], dtype=torch.int64)
        extra = int((offsets[1:] - offsets[:-1]).max()) if offsets.numel() > 1 else 0
    k_pad = max(16, _next_pow2(min(kk + extra, n)))
    if k_pad > MAX_K_PAD:
        raise ValueError(f"the Triton path handles K + exclusions <= {MAX_K_PAD}, got {kk + extra}")
    block_d = max(16, min(64, _next_pow2(d)))
    device = queries.device
    sms = torch.cuda.get_device_properties(device).multi_processor_count if queries.is_cuda else 4
    q_blocks = triton.cdiv(b, block_b)
    splits = max(1, min(triton.cdiv(n, k_pad), (4 * sms) // q_blocks))
    per_split = triton.cdiv(triton.cdiv(n, splits), k_pad) * k_pad
    splits = triton.cdiv(n, per_split)
    out = torch.empty((b, splits * k_pad), dtype=torch.int64, device=device)
    mask = item_mask.to(torch.int8).contiguous() if item_mask is not None else out  # dummy pointer if unused
    _topk_kernel[(q_blocks, splits)](
        queries, items, mask, out, b, n, d, per_split,
        queries.stride(0), queries.stride(1), items.stride(0), items.stride(1), out.stride(0),
        HAS_MASK=item_mask is not None, BLOCK_B=block_b, K_PAD=k_pad, BLOCK_D=block_d,
        IEEE=queries.dtype == torch.float32,
    )
    keep = min(kk + extra, out.shape[1])
    keys, _ = torch.topk(out, keep, dim=1)
    scores, index = _decode(keys)
    if exclude is not None and extra:
        offsets, ex_items = (torch.as_tensor(t, dtype=torch.int64, device=device) for t in exclude)
        rows = torch.repeat_interleave(torch.arange(b, device=device), offsets[1:] - offsets[:-1])
        banned = torch.isin(torch.arange(b, device=device)[:, None] * n + index, rows * n + ex_items)
        scores = scores.masked_fill(banned & (index >= 0), float("-inf"))
        scores, j = torch.topk(scores, kk, dim=1)
        index = torch.gather(index, 1, j)
        index = torch.where(torch.isneginf(scores), torch.full_like(index, -1), index)
    else:
        scores, index = scores[:, :kk], index[:, :kk]
    if kk < k:
        scores = torch.cat([scores, scores.new_full((b, k - kk), float("-inf"))], 1)
        index = torch.cat([index, index.new_full((b, k - kk), -1)], 1)
    return scores, index
