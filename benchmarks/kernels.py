"""Fused top-K scoring vs the naive matmul + topk, side by side: time and peak memory.

    python benchmarks/kernels.py [--b 256] [--d 64] [--n 1000000] [--k 100] [--rounds 3]

Each measurement runs in a fresh subprocess (so peak memory is that arm's alone), arms alternate
round by round, and each subprocess times several calls after one warm-up. Peak memory is the
growth of the process's peak RSS over its RSS once the inputs exist and a small warm-up call has
set up the libraries (ru_maxrss, so it counts every allocator, not just torch's).
On a CUDA machine ``--device cuda`` compares the Triton kernel with
torch's matmul + topk and reports bandwidth (see benchmarks/kernels_gpu.sh).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (resource.getpagesize() // 1024)


def child(arm: str, b: int, d: int, n: int, k: int, repeats: int, device: str, dtype: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from kernels.topk import topk_scores, topk_scores_reference

    g = torch.Generator().manual_seed(0)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    q = torch.randn(b, d, generator=g).to(device=device, dtype=dt)
    items = torch.randn(n, d, generator=g).to(device=device, dtype=dt)
    fn = topk_scores if arm == "fused" else topk_scores_reference
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # a small call first: one-time library set-up (thread pools, GEMM scratch) is not the kernel's memory
    fn(q[:4], items[: 4 * 4096], k)
    sync()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kib()
    fn(q, items, k)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(q, items, k)
        sync()
        times.append(time.perf_counter() - t)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"seconds": statistics.median(times), "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--b", type=int, default=256)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = (args.b, args.d, args.n, args.k, args.repeats, args.device, args.dtype)
    if args.child:
        print(json.dumps(child(args.child, *shape)))
        return
    res: dict[str, list[dict]] = {"naive": [], "fused": []}
    for r in range(args.rounds):
        for arm in ("naive", "fused"):
            cmd = [sys.executable, __file__, "--child", arm] + [
                f"--{k}={v}" for k, v in (("b", args.b), ("d", args.d), ("n", args.n), ("k", args.k),
                                          ("repeats", args.repeats), ("device", args.device), ("dtype", args.dtype))]
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            res[arm].append(out)
            print(f"round {r + 1} {arm:<6} {out['seconds'] * 1000:9.1f} ms  peak +{out['peak_mib']:8.1f} MiB", flush=True)
    t = {a: statistics.median(x["seconds"] for x in res[a]) for a in res}
    m = {a: statistics.median(x["peak_mib"] for x in res[a]) for a in res}
    print()
    print(f"top-{args.k} of N={args.n:,} items, B={args.b}, d={args.d}, {args.dtype}, {args.device}")
    print(f"{'arm':<8}{'time (median)':>16}{'peak memory':>16}")
    for a in ("naive", "fused"):
        print(f"{a:<8}{t[a] * 1000:>13.1f} ms{m[a]:>12.1f} MiB")
    if args.device == "cuda":
        bytes_streamed = args.n * args.d * (4 if args.dtype == "fp32" else 2)
        print(f"fused streaming bandwidth: {bytes_streamed / t['fused'] / 1e9:.0f} GB/s of item table read")
    speed, memory = t["naive"] / t["fused"], m["fused"] / m["naive"]
    print(f"GOAL fused_topk_speedup {speed:.2f} >=2.00 {'met' if speed >= 2 else 'missed'}")
    print(f"GOAL fused_topk_peak_memory_ratio {memory:.3f} <=0.100 {'met' if memory <= 0.1 else 'missed'}")


if __name__ == "__main__":
    main()
