"""The decision log's memory under a long run of exploring requests, and what a restart reads back.

Two arms side by side, each in its own process (so RSS is its own): the decision log as served (feedback window
60 s) and the same log with a window longer than the run (what it did before the window: every request id kept
for ever). Each takes 100,000 exploring decisions (k = 10 positions each, like /recommend with k 10) at a simulated
100 requests/s (1,000 s of traffic), flushing a parquet file every 1,000 decisions; RSS is read after the first
10,000 and after all 100,000. Then a fresh log over the same folder (a restart) counts the files it reads back.

    python benchmarks/decision_log.py [--requests 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def arm(window_s: float, requests: int, folder: str) -> dict:
    import gc
    import uuid

    from raytrain.serve.decisions import DecisionLog

    rate, k, flush_every = 100.0, 10, 1000
    clock = [1.8e9]  # a simulated wall clock: 100 requests per second
    log = DecisionLog.func_or_class(folder, clock=lambda: clock[0], window_s=window_s)
    items = list(range(k))
    out: dict = {}

    async def run() -> None:
        for i in range(requests):
            clock[0] = 1.8e9 + i / rate
            rid = uuid.uuid4().hex
            await log.log([{"request_id": rid, "time": clock[0], "variant": "explore", "forced": False,
                            "policy": "{}", "user": i % 943, "context": "{}", "position": p, "item": items[p],
                            "propensity": 0.1, "score": 0.5, "candidates": items, "scores": [0.5] * k,
                            "probabilities": [0.1] * k} for p in range(k)],
                          [{"request_id": rid, "time": clock[0], "endpoint": "recommend", "variant": "explore",
                            "forced": False, "user": str(i % 943), "items": items}])
            if (i + 1) % flush_every == 0:
                log.flush()
            if i + 1 == requests // 10:
                gc.collect()
                out["rss_warm_mib"] = _rss_mib()
        log.flush()
        if log._task is not None:
            log._task.cancel()

    t0 = time.perf_counter()
    asyncio.run(run())
    gc.collect()
    out.update(rss_end_mib=_rss_mib(), open_decisions=len(log.open), seconds=time.perf_counter() - t0)
    restarted = DecisionLog.func_or_class(folder, clock=lambda: clock[0], window_s=window_s)
    from pathlib import Path

    out.update(files=len(list((Path(folder) / "requests").glob("part-*.parquet"))), restart_files_read=restarted.restored,
               restart_open=len(restarted.open))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--arm", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.arm is not None:
        print(json.dumps(arm(a.arm, a.requests, a.folder)))
        return
    results = {}
    for name, window in (("window_60s", 60.0), ("unbounded", 1e12)):
        with tempfile.TemporaryDirectory(prefix="raytrain-declog-") as d:
            proc = subprocess.run([sys.executable, __file__, "--arm", str(window), "--requests", str(a.requests),
                                   "--folder", d], capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:11s} rss after {a.requests // 10:,} {r['rss_warm_mib']:.1f} MiB, after {a.requests:,} "
              f"{r['rss_end_mib']:.1f} MiB; open decisions {r['open_decisions']:,}; {r['seconds']:.1f} s; restart read "
              f"{r['restart_files_read']} of {r['files']} files ({r['restart_open']:,} open)", flush=True)
    bounded, unbounded = results["window_60s"], results["unbounded"]
    growth = bounded["rss_end_mib"] - bounded["rss_warm_mib"]
    growth_old = unbounded["rss_end_mib"] - unbounded["rss_warm_mib"]
    print(f"growth from {a.requests // 10:,} to {a.requests:,} requests: window 60 s {growth:.1f} MiB, "
          f"unbounded {growth_old:.1f} MiB")
    share = bounded["restart_files_read"] / bounded["files"]
    print(f"GOAL decision_log_rss_growth_mib {growth:.1f} <=16 {'met' if growth <= 16 else 'missed'}")
    print(f"GOAL restart_reads_window_only {share:.3f} <=0.10 {'met' if share <= 0.10 else 'missed'}")


if __name__ == "__main__":
    main()
