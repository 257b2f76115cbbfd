"""Serving load test on loopback: one model vs the 3-member ensemble, each with and without dynamic batching.

    python benchmarks/serve_load.py RUN     # RUN: one pipeline run holding an ensemble run, or one ensemble run
                                            # (make one: raytrain run jobs/pipeline_ml100k.yaml)

Each configuration is deployed in turn on one embedded Ray (the same machine, the same Serve proxy), warmed
up, then driven by a bounded closed-loop generator: ``--requests`` POST /predict requests of ``--rows`` rows
(random test-split users and items, ids only), ``--concurrency`` in flight, stopped after ``--duration`` s
at the latest; then ``--quiet-requests`` one at a time (latency without queueing). Latency is client-side
wall time per request. Goals (issue 5): ensemble p50 <= 1.5x the single
model's; batching >= 5x the requests/s of no batching at a p99 no worse than 2x; every request answered
200 (any other status counts as failed, and latencies and rates count 200 answers only). A fifth configuration
(the single model, batching on, ``serve.request_log: false``) shows what logging every request costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def drive(url: str, bodies: list[bytes], concurrency: int, duration: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    codes: dict[int, int] = {}
    it = iter(bodies)
    deadline = time.perf_counter() + duration

    async def worker(session):
        for body in it:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    code = r.status
            except aiohttp.ClientError:
                code = 0
            if code == 200:  # latencies and rates count answers only: a fast 422 or 500 is not a served request
                latencies.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    import numpy as np

    lat = np.array(latencies or [float("nan")]) * 1000
    sent = sum(codes.values())
    # every body sent is a valid request: any answer but 200 (a 4xx as much as a 5xx or no answer) is a failure
    return {"requests": sent, "ok": codes.get(200, 0), "failed": sent - codes.get(200, 0),
            "4xx": sum(v for k, v in codes.items() if 400 <= k < 500),
            "5xx_or_no_answer": sum(v for k, v in codes.items() if k >= 500 or k == 0),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "req_per_s": len(latencies) / wall, "wall_s": wall}


def test_bodies(run_dir: str, requests: int, rows: int) -> list[bytes]:
    """``requests`` /predict bodies of ``rows`` random test rows each (seed 0) of the run's data."""
    import pyarrow.parquet as pq

    from raytrain.data import prepare
    from raytrain.spec import load_spec

    data = load_spec(Path(run_dir) / "spec.yaml").data
    test = pq.read_table(prepare(data).paths["test"][0], columns=["user_id", "item_id"]).to_pylist()
    rng = random.Random(0)
    return [json.dumps({"rows": [rng.choice(test) for _ in range(rows)]}).encode() for _ in range(requests)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="one pipeline run holding an ensemble run, or one ensemble run")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per configuration, at most")
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    ap.add_argument("--quiet-requests", type=int, default=200,
                    help="then this many requests one at a time: latency without queueing")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--combine", default="stacked")
    ap.add_argument("--out", default=None, help="also write the table here (JSON)")
    args = ap.parse_args()

    import pandas as pd
    import ray
    from ray import serve

    from raytrain.serve.runner import deploy
    from raytrain.spec.loader import parse_spec

    found = sorted(p.parent for p in Path(args.run).glob("**/ensemble.json"))
    if len(found) != 1:  # the run it is given, never whichever is newest (possibly made by an older build)
        raise SystemExit(f"{len(found)} ensemble runs under {args.run}: give one pipeline or ensemble run directory")
    ens_dir = found[0]
    ens = json.loads((ens_dir / "ensemble.json").read_text())
    best = ens["members"][0]  # members are listed best trial first
    print(f"ensemble {ens_dir}: {len(ens['members'])} members; single model: {best['name']}")
    bodies = test_bodies(best["run_dir"], args.requests, args.rows)
    port = free_port()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    # the request log's cost from a side-by-side pair: the single model with the log off, then on, first in the run
    # (run last, the log-off arm measured 0.83x of an earlier build's rate; alone, 0.93-0.98x)
    configs = [("single", {"run": best["run_dir"]}, args.max_batch_size, False),
               ("single", {"run": best["run_dir"]}, args.max_batch_size, True),
               ("single", {"run": best["run_dir"]}, 1, True),
               ("ensemble", {"ensemble": str(ens_dir), "combine": args.combine}, args.max_batch_size, True),
               ("ensemble", {"ensemble": str(ens_dir), "combine": args.combine}, 1, True)]
    rows = []
    for name, source, mbs, request_log in configs:
        spec = parse_spec({"name": "serve-load", "kind": "serve", "storage": "/tmp/raytrain-serve-load",
                           "serve": {"variants": {name: source}, "port": port, "max_batch_size": mbs,
                                     "max_request_rows": max(1024, args.rows), "request_log": request_log}},
                          "serve_load")
        out = deploy(spec)
        url = out["url"] + "/predict"
        asyncio.run(drive(url, bodies[:100], min(8, args.concurrency), 30.0))  # warm-up
        res = asyncio.run(drive(url, bodies, args.concurrency, args.duration))
        quiet = asyncio.run(drive(url, bodies[:args.quiet_requests], 1, args.duration))  # one request at a time
        res.update(model=name, batching="on" if mbs > 1 else "off", max_batch_size=mbs, request_log=request_log,
                   p50_ms_alone=quiet["p50_ms"], p99_ms_alone=quiet["p99_ms"])
        rows.append(res)
        print(f"{name:9s} batching {res['batching']:3s} log {'on' if request_log else 'off'}: {res['requests']} "
              f"requests, {res['req_per_s']:.0f} req/s, "
              f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, failed (not 200) {res['failed']}", flush=True)
        serve.delete(spec.name)
    serve.shutdown()
    table = pd.DataFrame(rows)[["model", "batching", "max_batch_size", "request_log", "requests", "ok", "4xx",
                                "failed", "p50_ms", "p99_ms", "req_per_s", "p50_ms_alone", "p99_ms_alone"]]
    print(f"\n{args.requests} requests of {args.rows} row(s), concurrency {args.concurrency}, "
          f"{args.duration:.0f}s max per configuration\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))

    def get(model, batching, col, request_log=True):
        pick = (table.model == model) & (table.batching == batching) & (table.request_log == request_log)
        return float(table[pick][col].iloc[0])

    logged = get("single", "on", "req_per_s") / get("single", "on", "req_per_s", request_log=False)
    print(f"\nthe request log (every request's variant, user and items, batched to the decision log): "
          f"{logged:.2f}x the requests/s without it, p50 alone {get('single', 'on', 'p50_ms_alone'):.1f} vs "
          f"{get('single', 'on', 'p50_ms_alone', request_log=False):.1f} ms")
    goals = [("ensemble_vs_single_p50_under_load", get("ensemble", "on", "p50_ms") / get("single", "on", "p50_ms"),
              "<=1.50", lambda v: v <= 1.5),
             ("ensemble_vs_single_p50_alone", get("ensemble", "on", "p50_ms_alone") / get("single", "on", "p50_ms_alone"),
              "<=1.50", lambda v: v <= 1.5)]
    for m in ("single", "ensemble"):
        goals.append((f"batching_req_per_s_{m}", get(m, "on", "req_per_s") / get(m, "off", "req_per_s"), ">=5.00",
                      lambda v: v >= 5))
        goals.append((f"batching_p99_ratio_{m}", get(m, "on", "p99_ms") / get(m, "off", "p99_ms"), "<=2.00",
                      lambda v: v <= 2))
    goals.append(("failed_requests", float(table["failed"].sum()), "0", lambda v: v == 0))
    for name, value, target, ok in goals:
        print(f"GOAL {name} {value:.2f} {target} {'met' if ok(value) else 'missed'}")
    if args.out:
        Path(args.out).write_text(table.to_json(orient="records", indent=2))


if __name__ == "__main__":
    main()
