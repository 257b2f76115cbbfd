"""How much work does Ray's asynchronous successive halving save, by trial count? A simulation.

    python benchmarks/asha_simulation.py [--runs 20]

Drives Ray Tune's own ASHA rung logic (``ray.tune.schedulers.async_hyperband._Bracket``) with
simulated trials: each has a random final AUC, a learning curve that rises towards it, evaluation
noise, a start-up cost and 2 trials at a time (as benchmarks/tune_efficiency.py runs them). Prints
ASHA's trial-epochs as a share of FIFO's (every trial to max_t), mean and worst over ``--runs`` seeds.
Early trials of a rung are promoted before the rung has results to compare them with, so the share
falls with the number of trials; this is why tune_efficiency.py defaults to 24 trials x 16 epochs, rf 4.
"""

from __future__ import annotations

import argparse
import heapq

import numpy as np
from ray.tune.schedulers.async_hyperband import _Bracket


class _Trial:
    def __init__(self, i: int):
        self.trial_id = str(i)


def share(trials: int, max_t: int, rf: int, seed: int, concurrency: int = 2, startup: float = 3.0) -> float:
    rng = np.random.default_rng(seed)
    bracket = _Bracket(1, max_t, rf, 0)
    final = rng.normal(0.78, 0.01, trials)
    events: list[tuple[float, int, int]] = []
    started = 0
    for _ in range(concurrency):
        heapq.heappush(events, (startup + 1, started, 1))
        started += 1
    epochs = 0
    while events:
        now, i, epoch = heapq.heappop(events)
        epochs += 1
        auc = final[i] - 0.03 * np.exp(-epoch / 2) + rng.normal(0, 0.002)
        if bracket.on_result(_Trial(i), epoch, auc) == "STOP" or epoch >= max_t:
            if started < trials:
                heapq.heappush(events, (now + startup + 1, started, 1))
                started += 1
        else:
            heapq.heappush(events, (now + 1, i, epoch + 1))
    return epochs / (trials * max_t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    print(f"{'trials':>7}{'max_t':>7}{'rf':>4}{'mean share':>12}{'worst':>8}")
    shares = {}
    for trials, max_t, rf in [(9, 9, 3), (12, 9, 3), (18, 9, 3), (27, 9, 3), (16, 16, 4), (24, 16, 4), (32, 16, 4)]:
        r = [share(trials, max_t, rf, seed) for seed in range(args.runs)]
        shares[(trials, max_t, rf)] = float(np.mean(r))
        print(f"{trials:>7}{max_t:>7}{rf:>4}{np.mean(r):>12.3f}{np.max(r):>8.3f}")
    # the configuration benchmarks/tune_efficiency.py runs: ASHA at a third of FIFO's trial-epochs or less
    mean = shares[(24, 16, 4)]
    print(f"GOAL asha_share_of_fifo_trial_epochs_24x16_rf4 {mean:.3f} <=0.333 {'met' if mean <= 0.333 else 'missed'}")


if __name__ == "__main__":
    main()
