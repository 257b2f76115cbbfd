"""Do the A/B analysis's intervals and its sample-ratio check hold up? Repeated simulated experiments
(raytrain.abtest.simulate) with known truth, side by side:

- A/A (no effect, 50/50): how often the 95% interval of the lift holds 0 (coverage, target 0.93-0.97) and how often
  the sample-ratio check raises a false alarm (target <= 0.01 at srm_alpha 0.001);
- a 20% relative lift: how often the interval holds the true lift, and how often the test finds it (power);
- 8% of b's users lost: how often the sample-ratio check flags it, at 4,000 users (shown: a loss that size is
  hard to tell from chance there) and at 20,000 (target >= 0.95).

    python benchmarks/abtest_coverage.py [--runs 200] [--users 4000] [--srm-users 20000] [--srm-runs 100]
"""

from __future__ import annotations

import argparse
import time

from raytrain.abtest import analyze
from raytrain.abtest.simulate import traffic


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--users", type=int, default=4000)
    p.add_argument("--srm-users", type=int, default=20_000)
    p.add_argument("--srm-runs", type=int, default=100)
    a = p.parse_args()
    shares = {"a": 0.5, "b": 0.5}
    t0 = time.time()
    aa_cover = aa_srm = lift_cover = lift_found = lost_flagged = 0
    for seed in range(a.runs):
        req, fb = traffic(users=a.users, ctr=(0.10, 0.10), seed=seed)
        r = analyze(req, fb, shares)
        lo, hi = r["comparisons"]["b"]["abs_ci"]
        aa_cover += lo < 0 < hi
        aa_srm += r["srm"]["flagged"]
        req, fb = traffic(users=a.users, ctr=(0.10, 0.12), seed=10_000 + seed)
        cmp = analyze(req, fb, shares)["comparisons"]["b"]
        lift_cover += cmp["rel_ci"][0] < 0.20 < cmp["rel_ci"][1]
        lift_found += cmp["p_value"] < 0.05
        req, fb = traffic(users=a.users, ctr=(0.10, 0.10), seed=20_000 + seed, drop_b=0.08)
        lost_flagged += analyze(req, fb, shares)["srm"]["flagged"]
    big_flagged = 0
    for seed in range(a.srm_runs):
        req, fb = traffic(users=a.srm_users, ctr=(0.10, 0.10), seed=30_000 + seed, drop_b=0.08)
        big_flagged += analyze(req, fb, shares)["srm"]["flagged"]
    n = a.runs
    print(f"{n} experiments of {a.users:,} users each ({time.time() - t0:.0f} s)")
    print(f"A/A: interval holds 0 in {aa_cover / n:.3f}; false sample-ratio alarms {aa_srm / n:.3f}")
    print(f"20% lift: interval holds it in {lift_cover / n:.3f}; found (p < 0.05) in {lift_found / n:.3f}")
    print(f"8% of b's users lost: flagged in {lost_flagged / n:.3f} at {a.users:,} users, "
          f"{big_flagged / a.srm_runs:.3f} at {a.srm_users:,} users ({a.srm_runs} experiments)")
    cover, false_srm, flagged = aa_cover / n, aa_srm / n, big_flagged / a.srm_runs
    print(f"GOAL aa_interval_coverage {cover:.3f} 0.93-0.97 {'met' if 0.93 <= cover <= 0.97 else 'missed'}")
    print(f"GOAL lift_interval_coverage {lift_cover / n:.3f} 0.93-0.97 "
          f"{'met' if 0.93 <= lift_cover / n <= 0.97 else 'missed'}")
    print(f"GOAL aa_false_srm_rate {false_srm:.3f} <=0.010 {'met' if false_srm <= 0.01 else 'missed'}")
    print(f"GOAL lost_users_srm_detection {flagged:.3f} >=0.95 {'met' if flagged >= 0.95 else 'missed'}")


if __name__ == "__main__":
    main()
