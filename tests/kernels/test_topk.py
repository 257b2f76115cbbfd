"""Fused top-K scoring against the matmul + topk reference: many shapes, K > N, ties, masks, bf16."""

from __future__ import annotations

import pytest
import torch
from raytrain.kernels import topk_scores, topk_scores_reference


def _check(got, want, queries, items, k, rtol=1e-5, atol=1e-5):
    gv, gi = got
    wv, wi = want
    assert gv.shape == wv.shape == (queries.shape[0], k) and gi.dtype == torch.int64
    torch.testing.assert_close(gv, wv, rtol=rtol, atol=atol)
    assert torch.equal(gi == -1, wi == -1)  # the same slots are empty
    real = gi >= 0
    # every returned index really has the returned score, and no item appears twice in a row
    scores = (queries.float() @ items.float().T)
    recomputed = torch.gather(scores, 1, gi.clamp(min=0))
    torch.testing.assert_close(recomputed[real], gv[real], rtol=5e-2 if queries.dtype == torch.bfloat16 else 1e-5,
                               atol=5e-2 if queries.dtype == torch.bfloat16 else 1e-5)
    for row in gi:
        ids = row[row >= 0]
        assert ids.unique().numel() == ids.numel()


@pytest.mark.parametrize("b,d,n,k,block", [
    (1, 4, 10, 3, 4), (7, 16, 1000, 10, 64), (64, 32, 5000, 100, 512), (3, 8, 50, 50, 16),
    (5, 8, 20, 64, 8),  # K > N
    (33, 64, 20000, 1, 2048), (2, 3, 100_000, 7, 2048),
])
def test_matches_reference(b, d, n, k, block):
    g = torch.Generator().manual_seed(b * 1000 + n)
    q, items = torch.randn(b, d, generator=g), torch.randn(n, d, generator=g)
    _check(topk_scores(q, items, k, block=block), topk_scores_reference(q, items, k), q, items, k)


def test_k_larger_than_n_pads_with_minus_one():
    q, items = torch.randn(2, 4), torch.randn(3, 4)
    v, i = topk_scores(q, items, 5, block=2)
    assert i[:, 3:].eq(-1).all() and torch.isneginf(v[:, 3:]).all()
    assert sorted(i[0, :3].tolist()) == [0, 1, 2]


def test_ties_return_equal_scores_and_valid_items():
    items = torch.tensor([[1.0], [1.0], [1.0], [1.0], [0.5], [2.0]] * 50)  # many equal scores
    q = torch.tensor([[1.0], [2.0]])
    got = topk_scores(q, items, 70, block=16)
    want = topk_scores_reference(q, items, 70)
    _check(got, want, q, items, 70)
    assert got[0][0, :50].eq(2.0).all() and got[0][0, 50:].eq(1.0).all()


def test_item_mask_and_per_query_exclusions():
    g = torch.Generator().manual_seed(3)
    q, items = torch.randn(6, 8, generator=g), torch.randn(3000, 8, generator=g)
    mask = torch.rand(3000, generator=g) > 0.5
    full = topk_scores_reference(q, items, 10)
    # exclude each query's current top-3 (the "already seen" case) plus some random items
    seen = [full[1][r, :3].tolist() + torch.randint(0, 3000, (r,), generator=g).tolist() for r in range(6)]
    offsets = torch.tensor([0] + [len(s) for s in seen]).cumsum(0)
    exclude = (offsets, torch.tensor([x for s in seen for x in s]))
    for kw in ({"item_mask": mask}, {"exclude": exclude}, {"item_mask": mask, "exclude": exclude}):
        got = topk_scores(q, items, 10, block=256, **kw)
        _check(got, topk_scores_reference(q, items, 10, **kw), q, items, 10)
        if "exclude" in kw:
            for r in range(6):
                assert not set(got[1][r].tolist()) & set(seen[r])
        if "item_mask" in kw:
            assert mask[got[1].clamp(min=0)][got[1] >= 0].all()


def test_empty_masks_and_everything_masked():
    q, items = torch.randn(3, 4), torch.randn(40, 4)
    none_excluded = (torch.zeros(4, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    _check(topk_scores(q, items, 5, exclude=none_excluded, block=8), topk_scores_reference(q, items, 5), q, items, 5)
    v, i = topk_scores(q, items, 5, item_mask=torch.zeros(40, dtype=torch.bool), block=8)
    assert i.eq(-1).all() and torch.isneginf(v).all()


def test_bf16():
    g = torch.Generator().manual_seed(5)
    q, items = torch.randn(16, 32, generator=g).bfloat16(), torch.randn(4000, 32, generator=g).bfloat16()
    got = topk_scores(q, items, 20, block=512)
    want = topk_scores_reference(q, items, 20)
    _check(got, want, q, items, 20, rtol=2e-2, atol=2e-2)


def test_single_thread_equals_threaded():
    from raytrain.kernels.topk import topk_scores_cpu

    q, items = torch.randn(9, 16), torch.randn(10_000, 16)
    a = topk_scores_cpu(q, items, 15, block=128, threads=1)
    b = topk_scores_cpu(q, items, 15, block=128, threads=3)
    torch.testing.assert_close(a[0], b[0])  # GEMM rounding may differ with the thread count
    assert torch.equal(a[1], b[1])


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"must share d; got \(2, 3\) and \(5, 4\)"):
        topk_scores(torch.randn(2, 3), torch.randn(5, 4), 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_scores(torch.randn(2, 3), torch.randn(5, 3), 0)
    with pytest.raises(ValueError, match=r"item_mask must have shape \[N\] = \[5\]"):
        topk_scores(torch.randn(2, 3), torch.randn(5, 3), 1, item_mask=torch.ones(4, dtype=torch.bool))


def test_large_k_streaming_path():
    """The exact path the Triton filter falls back to when a query overflows its candidate buffer."""
    from raytrain.kernels.topk import topk_scores_cpu

    g = torch.Generator().manual_seed(11)
    q, items = torch.randn(8, 16, generator=g), torch.randn(150_000, 16, generator=g)
    mask = torch.rand(150_000, generator=g) > 0.2
    got = topk_scores_cpu(q, items, 1000, item_mask=mask, block=65536, threads=1)
    _check(got, topk_scores_reference(q, items, 1000, item_mask=mask), q, items, 1000)
