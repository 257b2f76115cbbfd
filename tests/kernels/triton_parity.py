"""Run by test_triton_interpreter.py in a subprocess with TRITON_INTERPRET=1 (Triton on the CPU)."""

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1"
import torch  # noqa: E402
from raytrain.kernels.distill import distill_loss_reference  # noqa: E402
from raytrain.kernels.distill_triton import distill_forward_triton  # noqa: E402
from raytrain.kernels.topk import topk_scores_reference  # noqa: E402
from raytrain.kernels.topk_triton import topk_scores_triton  # noqa: E402

torch.manual_seed(0)
results = []
for b, d, n, k in [(5, 8, 100, 7), (3, 4, 10, 30), (17, 20, 70, 16)]:
    q, items = torch.randn(b, d), torch.randn(n, d)
    mask = torch.rand(n) > 0.3
    ex = (torch.tensor([0] + [min(i, 3) for i in range(b)]).cumsum(0), torch.randint(0, n, (sum(min(i, 3) for i in range(b)),)))
    for name, kw in (("plain", {}), ("mask", {"item_mask": mask}), ("exclude", {"exclude": ex})):
        want = topk_scores_reference(q, items, k, **kw)
        got = topk_scores_triton(q, items, k, **kw)
        results.append({"case": f"topk {b}x{d} n={n} k={k} {name}",
                        "max_err": float((torch.nan_to_num(got[0], neginf=0) - torch.nan_to_num(want[0], neginf=0)).abs().max()),
                        "same_empty": bool(torch.equal(got[1] == -1, want[1] == -1)),
                        "same_index": bool(torch.equal(got[1], want[1]))})
items = torch.tensor([[1.0], [1.0], [2.0], [1.0]] * 8)
v, i = topk_scores_triton(torch.tensor([[1.0]]), items, 12)
results.append({"case": "ties", "max_err": float((v - topk_scores_reference(torch.tensor([[1.0]]), items, 12)[0]).abs().max()),
                "same_empty": True, "same_index": i[0, :8].tolist() == [2, 6, 10, 14, 18, 22, 26, 30]})
# every score equal: every item clears the threshold, the candidate buffer overflows, the exact path answers
same = torch.ones(1000, 4)
v, i = topk_scores_triton(torch.ones(2, 4), same, 5)
results.append({"case": "overflow fallback", "max_err": float((v - 4.0).abs().max()), "same_empty": True,
                "same_index": bool(((i >= 0) & (i < 1000)).all()) and all(len(set(r.tolist())) == 5 for r in i)})
# a larger table than the threshold sample: the strided sample sets the thresholds
q, items = torch.randn(20, 16), torch.randn(40_000, 16)
for kw in ({}, {"item_mask": torch.rand(40_000) > 0.5}):
    want, got = topk_scores_reference(q, items, 50, **kw), topk_scores_triton(q, items, 50, **kw)
    results.append({"case": f"topk 20x16 n=40000 k=50 {'mask' if kw else 'plain'}",
                    "max_err": float((got[0] - want[0]).abs().max()),
                    "same_empty": bool(torch.equal(got[1] == -1, want[1] == -1)),
                    "same_index": bool(torch.equal(got[1], want[1]))})
s = torch.randn(2500) * 3
s_ref = s.clone().requires_grad_()
t, y = torch.randn(2500) * 3, (torch.rand(2500) > 0.5).float()
ref = distill_loss_reference(s_ref, t, y, 0.3, 2.0)
ref.backward()
loss, grad = distill_forward_triton(s, t, y, 0.3, 2.0)
results.append({"case": "distill", "max_err": max(abs(float(loss - ref)), float((grad - s_ref.grad).abs().max())),
                "same_empty": True, "same_index": True})
json.dump(results, sys.stdout)
