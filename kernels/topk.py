"""Top-K retrieval scoring without the B x N score matrix.

Result convention (every path): ``(scores [B, K], indices [B, K] int64)``, best first. When fewer
than K items are eligible (K > N, or masks), the tail holds score ``-inf`` and index ``-1``.
Ties between equal scores may come back in any order; the scores are what the tests compare exactly.

Masks: ``item_mask`` (bool [N], True = eligible) applies to every query; ``exclude`` removes items
per query, given as CSR ``(offsets [B+1], item_ids)``, e.g. the items a user has already seen.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
GROUP = 64  # columns per group in the two-level threshold search


def _exclusion_pairs(exclude, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """CSR exclusions -> (rows, items) sorted by item, so each block finds its pairs by bisection."""
    if exclude is None:
        return None
    offsets, items = exclude
    offsets = torch.as_tensor(offsets, dtype=torch.int64)
    items = torch.as_tensor(items, dtype=torch.int64)
    if offsets.numel() != batch + 1:
        raise ValueError(f"exclude offsets must have B+1 = {batch + 1} entries, got {offsets.numel()}")
    rows = torch.repeat_interleave(torch.arange(batch), offsets[1:] - offsets[:-1])
    order = torch.argsort(items, stable=True)
    return rows[order], items[order]


def _finish(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    indices = torch.where(torch.isneginf(values), torch.full_like(indices, -1), indices)
    return values, indices


def _pad(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    missing = k - values.shape[1]
    if missing <= 0:
        return values, indices
    b = values.shape[0]
    return (torch.cat([values, values.new_full((b, missing), NEG_INF)], 1),
            torch.cat([indices, indices.new_full((b, missing), -1)], 1))


def topk_scores_reference(queries, items, k: int, item_mask=None, exclude=None):
    """The obvious way: materialise queries @ items.T, mask, torch.topk."""
    scores = (queries @ items.T).float()
    if item_mask is not None:
        scores.masked_fill_(~item_mask.to(torch.bool)[None, :], NEG_INF)
    pairs = _exclusion_pairs(exclude, queries.shape[0])
    if pairs is not None:
        scores[pairs[0].to(scores.device), pairs[1].to(scores.device)] = NEG_INF
    v, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    return _finish(*_pad(v, i, k))


def _merge(best_v, best_i, rows, vals, idx):
    """Merge flat candidates (row, score, item) into the running [B, K] top-K."""
    b, kk = best_v.shape
    order = torch.argsort(rows, stable=True)
    rows, vals, idx = rows[order], vals[order], idx[order]
    counts = torch.bincount(rows, minlength=b)
    pos = torch.arange(rows.numel(), device=rows.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    width = int(counts.max())
    pad_v = best_v.new_full((b, width), NEG_INF)
    pad_i = best_i.new_full((b, width), -1)
    pad_v[rows, pos] = vals
    pad_i[rows, pos] = idx
    v, j = torch.topk(torch.cat([best_v, pad_v], 1), kk, dim=1)
    return v, torch.gather(torch.cat([best_i, pad_i], 1), 1, j)


def _stream_range(queries, items, kk, lo, hi, block, mask, pairs):
    """Running top-K of queries against items[lo:hi].

    A query's K-th best score so far is a threshold: only scores above it can enter its top-K.
    Each block costs one small GEMM (in cache) and one comparison with the thresholds; the few
    scores above them are buffered, and merged into the top-K (which raises the thresholds) only
    once about K per query have piled up. A stale threshold is still a valid lower bound, so
    buffering never loses an item; it only saves merges.
    """
    b = queries.shape[0]
    dev = queries.device
    best_v = torch.full((b, kk), NEG_INF, device=dev)
    best_i = torch.full((b, kk), -1, dtype=torch.int64, device=dev)
    thresh = torch.full((b, 1), NEG_INF, device=dev)
    buf: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    buffered = 0
    merge_at = b * kk
    # one score buffer per range, reused by every full block (allocation churn of multi-MB blocks
    # makes the allocator hold on to far more memory than the kernel needs)
    s_buf = torch.empty((b, block), dtype=queries.dtype, device=dev)
    for start in range(lo, hi, block):
        stop = min(start + block, hi)
        if stop - start == block:
            s = torch.matmul(queries, items[start:stop].T, out=s_buf).float()
        else:
            s = (queries @ items[start:stop].T).float()
        if mask is not None:
            s.masked_fill_(~mask[None, start:stop], NEG_INF)
        if pairs is not None:
            a, z = torch.searchsorted(pairs[1], torch.tensor([start, stop], device=pairs[1].device)).tolist()
            if z > a:
                s[pairs[0][a:z], pairs[1][a:z] - start] = NEG_INF
        if start == lo:  # the first block fills the top-K directly
            v, i = torch.topk(s, min(kk, stop - start), dim=1)
            best_v, best_i = _merge(best_v, best_i, torch.arange(b, device=dev).repeat_interleave(v.shape[1]), v.reshape(-1),
                                    (i + start).reshape(-1))
            thresh = best_v[:, -1:]
            continue
        # two-level search: maxima of groups of GROUP columns first (one cheap reduction), then
        # the columns of the few groups whose maximum beats the threshold
        width = s.shape[1]
        if width % GROUP:
            s = torch.nn.functional.pad(s, (0, GROUP - width % GROUP), value=NEG_INF)
        groups = s.view(b, -1, GROUP)
        gr, gg = (groups.amax(dim=2) > thresh).nonzero(as_tuple=True)
        if gr.numel() == 0:
            continue
        vals = groups[gr, gg]  # [hits, GROUP]
        hr, hc = (vals > thresh[gr]).nonzero(as_tuple=True)
        buf.append((gr[hr], vals[hr, hc], start + gg[hr] * GROUP + hc))
        buffered += hr.numel()
        if buffered >= merge_at:
            best_v, best_i = _merge(best_v, best_i, *(torch.cat(x) for x in zip(*buf)))
            thresh = best_v[:, -1:]
            buf, buffered = [], 0
    if buf:
        best_v, best_i = _merge(best_v, best_i, *(torch.cat(x) for x in zip(*buf)))
    return best_v, best_i


@torch.no_grad()
def topk_scores_cpu(queries, items, k: int, item_mask=None, exclude=None, block: int = 2048,
                    threads: int | None = None):
    """Split the item table into one contiguous range per thread, stream each, merge the partial top-Ks.

    The small per-block GEMMs run best single-threaded side by side (each in its own core's cache),
    so torch's intra-op pool is set to 1 thread for the duration of the call and restored after.
    """
    b, n = queries.shape[0], items.shape[0]
    kk = min(k, n)
    pairs = _exclusion_pairs(exclude, b)
    if pairs is not None:
        pairs = (pairs[0].to(queries.device), pairs[1].to(queries.device))
    mask = item_mask.to(torch.bool) if item_mask is not None else None
    threads = max(1, min(threads or torch.get_num_threads(), -(-n // block)))
    bounds = [n * t // threads for t in range(threads + 1)]
    ranges = [(bounds[t], bounds[t + 1]) for t in range(threads)]
    if threads == 1:
        parts = [_stream_range(queries, items, kk, 0, n, block, mask, pairs)]
    else:
        from concurrent.futures import ThreadPoolExecutor

        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                parts = list(pool.map(lambda r: _stream_range(queries, items, kk, r[0], r[1], block, mask, pairs),
                                      ranges))
        finally:
            torch.set_num_threads(saved)
    if len(parts) == 1:
        v, i = parts[0]
    else:
        v, j = torch.topk(torch.cat([p[0] for p in parts], 1), kk, dim=1)
        i = torch.gather(torch.cat([p[1] for p in parts], 1), 1, j)
    return _finish(*_pad(v, i, k))
