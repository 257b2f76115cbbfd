"""Serving throughput of two builds of raytrain side by side: this checkout against an older one (a git worktree).

    git worktree add /tmp/old f629cfa        # the last commit before the restructure (issue 18)
    PYTHONPATH=/tmp/old python -m raytrain.cli.main run /tmp/old/jobs/train_ml100k.yaml storage=/tmp/ab/old
    python -m raytrain.cli.main run jobs/train_ml100k.yaml storage=/tmp/ab/new
    python benchmarks/serve_versions.py /tmp/old /tmp/ab/old/train-ml100k/<run> /tmp/ab/new/train-ml100k/<run>

Each build serves its own demo-job run (a run's files follow its build's format): the single model, dynamic batching
(32), one-row /predict requests, 16 concurrent clients, then 200 one at a time; each arm in a fresh process with its
build first on PYTHONPATH (so Serve's replicas import it too), arms alternating for ``--rounds``. The current build
runs with the request log off and on (the older one has none). Goal: the current build, log off, at least 0.95x the
older build's requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arm(run: str, request_log: str) -> None:
    """One arm, in this process: deploy ``run``'s model with the raytrain first on sys.path, drive it, print a JSON
    line."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ray
    from ray import serve
    from serve_load import drive, free_port, test_bodies

    sys.path.insert(0, os.getcwd())  # the arm's build (serve_load put this checkout first); test_bodies imports it late
    from raytrain.serve.runner import deploy
    from raytrain.spec.loader import parse_spec

    bodies = test_bodies(run, 3000, 1)
    port = free_port()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    cfg: dict = {"variants": {"single": {"run": run}}, "port": port, "max_batch_size": 32, "max_request_rows": 1024}
    if request_log != "none":
        cfg["request_log"] = request_log == "on"
    spec = parse_spec({"name": "serve-versions", "kind": "serve", "storage": "/tmp/raytrain-serve-versions",
                       "serve": cfg}, "serve_versions")
    url = deploy(spec)["url"] + "/predict"
    asyncio.run(drive(url, bodies[:100], 8, 30.0))  # warm-up
    res = asyncio.run(drive(url, bodies, 16, 60.0))
    alone = asyncio.run(drive(url, bodies[:200], 1, 60.0))
    serve.shutdown()
    print("ARM " + json.dumps({"req_per_s": res["req_per_s"], "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
                               "p50_ms_alone": alone["p50_ms"], "failed": res["failed"]}), flush=True)


def run_arm(tree: str, run: str, request_log: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, __file__, "--arm", run, request_log], env=env, cwd=tree,
                         capture_output=True, text=True)
    lines = [x for x in out.stdout.splitlines() if x.startswith("ARM ")]
    if not lines:
        raise SystemExit(f"arm {tree} {request_log} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][4:])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--arm":
        arm(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("old_tree", help="a checkout of the older build")
    ap.add_argument("old_run", help="a demo-job run made by the older build")
    ap.add_argument("new_run", help="a demo-job run made by this checkout")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    arms = {"older build": (a.old_tree, a.old_run, "none"), "this build, log off": (str(ROOT), a.new_run, "off"),
            "this build, log on": (str(ROOT), a.new_run, "on")}
    got: dict[str, list[dict]] = {k: [] for k in arms}
    for r in range(a.rounds):
        for name, (tree, run, log) in arms.items():
            res = run_arm(tree, run, log)
            got[name].append(res)
            print(f"round {r + 1} {name:20s} {res['req_per_s']:6.1f} req/s, p50 {res['p50_ms']:.1f} ms, p99 "
                  f"{res['p99_ms']:.1f} ms, alone p50 {res['p50_ms_alone']:.1f} ms, failed {res['failed']}", flush=True)
    mean = {k: statistics.mean(x["req_per_s"] for x in v) for k, v in got.items()}
    for k, v in mean.items():
        print(f"{k:20s} mean {v:6.1f} req/s")
    ratio = mean["this build, log off"] / mean["older build"]
    logged = mean["this build, log on"] / mean["older build"]
    print(f"GOAL this_build_vs_older_req_per_s {ratio:.3f} >=0.95 {'met' if ratio >= 0.95 else 'missed'}")
    print(f"GOAL this_build_logged_vs_older_req_per_s {logged:.3f} >=0.90 {'met' if logged >= 0.90 else 'missed'}")
    failed = sum(x["failed"] for v in got.values() for x in v)
    print(f"GOAL failed_requests {failed} 0 {'met' if failed == 0 else 'missed'}")


if __name__ == "__main__":
    main()
