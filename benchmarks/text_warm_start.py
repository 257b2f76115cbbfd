"""HSTU's item table started from item text against a random start, on MovieLens-100K (leave-one-out, the whole
catalogue ranked; docs/sequential.md), the Ray Train path of jobs/pretrain_hstu_ml100k.yaml, paired seeds.

    python benchmarks/text_warm_start.py [--seeds 3] [--epochs 10] [--storage /tmp/raytrain-text-warm-start]

Arm "random": the job as it ships (TorchRec's initialisation of the item table). Arm "text": ``data.text`` with the
items' "title | year | genres" through all-MiniLM-L6-v2, each item's row started at its sentence vector's principal
components (raytrain/train/sequential/text_init.py). Same seed, same data, same epochs; the epoch with the best
validation NDCG@10 is tested.

Goals: the text start's test NDCG@10 above the random start's after the first epoch (a warm start shows there
first) and at the best epoch, each by a paired one-sided 95% bound above 0 (benchmarks/common/paired.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SPEC = ROOT / "jobs" / "pretrain_hstu_ml100k.yaml"
TEXT = "data.text={item: [movie_title, release_year, class]}"


def run(seed: int, epochs: int, storage: str, text: bool) -> tuple[dict, dict]:
    """(the run's summary, its first epoch's metrics)."""
    from raytrain.spec import load_spec
    from raytrain.train.sequential.run import run_sequential

    spec = load_spec(SPEC, [f"storage={storage}", f"train.epochs={epochs}", f"train.seed={seed}",
                            "train.checkpoint.keep=1", *([TEXT] if text else [])])
    summary = run_sequential(spec)
    first = json.loads((Path(summary["run_dir"]) / "metrics" / "epoch_0001.json").read_text())
    return summary, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--storage", default="/tmp/raytrain-text-warm-start")
    args = p.parse_args()
    import ray
    from common.paired import paired_lower_bound

    from raytrain.train.runner import local_runtime_env

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env=local_runtime_env())
    test: dict[str, list[float]] = {"random": [], "text": []}
    first: dict[str, list[float]] = {"random": [], "text": []}
    for seed in range(args.seeds):
        for arm in ("random", "text"):
            summary, one = run(seed, args.epochs, args.storage, arm == "text")
            test[arm].append(summary["test_ndcg@10"])
            first[arm].append(one["test_ndcg@10"])
            print(f"seed {seed} {arm:<6}: test NDCG@10 {summary['test_ndcg@10']:.4f} (best epoch "
                  f"{summary['best_epoch']}), after epoch 1 {one['test_ndcg@10']:.4f} ({summary['run_dir']})", flush=True)
    for name, vals in (("best epoch", test), ("epoch 1", first)):
        print(f"{name}: random {statistics.mean(vals['random']):.4f}, text {statistics.mean(vals['text']):.4f}; "
              f"text - random per seed {', '.join(f'{a - b:+.4f}' for a, b in zip(vals['text'], vals['random']))}")
    for name, vals in (("epoch1", first), ("best_epoch", test)):
        mean, low = paired_lower_bound(vals["text"], vals["random"])
        print(f"{name}: paired gain {mean:+.4f}, one-sided 95% lower bound {low:+.4f}")
        print(f"GOAL hstu_text_start_{name}_ndcg10_gain_lower_bound {low:.4f} >0 {'met' if low > 0 else 'missed'}")


if __name__ == "__main__":
    main()
