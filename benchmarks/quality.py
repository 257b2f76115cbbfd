"""Model quality against the peers, on the peers' own protocols: one command for every quality goal.

    python benchmarks/quality.py [--quick] [--sections sasrec,hstu,ctr,pipeline] [--storage /tmp/raytrain-quality]

Sections (each its own process, so one Ray at a time and nothing shared between them):
- sasrec: ``benchmarks/sequential.py --archs sasrec --negatives all``: raytrain's SASRec with a full softmax against
  RecBole 1.2.1's SASRec (test NDCG@10 0.0670, HR@10 0.1442; MovieLens-100K, leave-one-out by time, the whole
  catalogue ranked, seen items excluded: RecBole's protocol, measured on this machine).
- hstu: the shipped ``jobs/pretrain_hstu_ml100k.yaml`` as ``raytrain run`` runs it, one run per seed
  (``train.seed``), on Ray Train: mean test NDCG@10 at the best validation epoch against 0.0880 (1.31x RecBole's
  SASRec), and its wall time against 15 minutes.
- pipeline: ``jobs/pipeline_ml100k.yaml`` (tune, stacked ensemble of the top 3, distilled student) with the items'
  text (``data.text``, TEXT below: every trial and the student read it) then ``benchmarks/distill.py`` on its run:
  ensemble test AUC >= 0.800, student >= 99.5% of it at <= 0.2x parameters. One pipeline run per seed
  (``tune.search.seed`` and ``train.seed``).

- ctr: RecBole 1.2.1's own CTR split of ML-100K, exported by ``scripts/recbole_split.py`` run with
  ``--recbole-python`` (a Python with ``recbole==1.2.1``; see that script), then ``benchmarks/ctr_recbole.py``: a single
  raytrain model's mean test AUC against 0.795 (RecBole's DeepFM: 0.7885). Without a RecBole environment the section
  says so and measures nothing.

Seeds: 3 (``--quick``: 1). Every section's GOAL lines are printed again at the end, means with the spread in the
line's note.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = re.compile(r"^GOAL \S+ \S+ \S+ (met|missed)\b.*$")
HSTU_TARGET, HSTU_MINUTES = 0.0880, 15.0
RAYTRAIN = str(Path(sys.executable).parent / "raytrain")  # the CLI of this environment
TEXT = "data.text={item: [movie_title, release_year, class], dims: 32}"


def run(cmd: list[str], log: Path) -> tuple[int, list[str]]:
    """Run ``cmd``, its output into ``log`` and this terminal's progress lines; (exit code, its GOAL lines)."""
    print("$ " + " ".join(cmd), flush=True)
    goals = []
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # the log follows the section live
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if GOAL.match(line.strip()):
                goals.append(line.strip())
                print(line.strip(), flush=True)
        return proc.wait(), goals


def sasrec(seeds: int, work: Path) -> list[str]:
    code, goals = run([sys.executable, "benchmarks/sequential.py", "--archs", "sasrec", "--negatives", "all",
                       "--seeds", str(seeds)], work / "sasrec.log")
    return [g for g in goals if "recbole" in g] if code == 0 else [f"(sasrec section failed: exit {code})"]


def hstu(seeds: int, work: Path) -> list[str]:
    ndcg, hr, minutes = [], [], []
    for seed in range(seeds):
        storage = work / f"hstu-{seed}"
        t0 = time.perf_counter()
        code, _ = run([RAYTRAIN, "run", "jobs/pretrain_hstu_ml100k.yaml",
                       f"storage={storage}", f"train.seed={seed}", "--embedded"], work / f"hstu-{seed}.log")
        minutes.append((time.perf_counter() - t0) / 60)
        if code != 0:
            return [f"(hstu section failed: exit {code}, {work / f'hstu-{seed}.log'})"]
        result = json.loads(next(storage.glob("*/*/result.json")).read_text())
        ndcg.append(result["test_ndcg@10"])
        hr.append(result["test_hr@10"])
        print(f"hstu seed {seed}: test NDCG@10 {ndcg[-1]:.4f}, HR@10 {hr[-1]:.4f}, {minutes[-1]:.1f} min "
              f"(best epoch {result['best_epoch']})", flush=True)
    mean = statistics.mean(ndcg)
    spread = f"+- {statistics.stdev(ndcg):.4f} over {seeds} seeds" if seeds > 1 else "1 seed"
    return [f"GOAL hstu_job_test_ndcg10 {mean:.4f} >={HSTU_TARGET:.4f} {'met' if mean >= HSTU_TARGET else 'missed'} "
            f"({spread}; HR@10 {statistics.mean(hr):.4f})",
            f"GOAL hstu_job_minutes {max(minutes):.1f} <={HSTU_MINUTES:.0f} "
            f"{'met' if max(minutes) <= HSTU_MINUTES else 'missed'} (the slowest seed)"]


def ctr(seeds: int, work: Path, recbole_python: str) -> list[str]:
    if not Path(recbole_python).exists():
        print(f"ctr: no RecBole environment at {recbole_python} (--recbole-python): not measured", flush=True)
        return []
    code, _ = run([recbole_python, "scripts/recbole_split.py", "--out", str(work / "recbole")],
                  work / "recbole_split.log")
    if code != 0:
        return [f"(recbole split export failed: exit {code}, {work / 'recbole_split.log'})"]
    code, goals = run([sys.executable, "benchmarks/ctr_recbole.py", "--split", str(work / "recbole" / "split.parquet"),
                       "--seeds", str(seeds), "--storage", str(work / "ctr")], work / "ctr.log")
    return goals if code == 0 else [f"(ctr section failed: exit {code})"]


def pipeline(seeds: int, work: Path) -> list[str]:
    """One pipeline run per seed (its tune's sampler and its trials' training seeded), distill.py on each; the
    goals' means over the seeds (the student's parameter ratio: the largest)."""
    measured: dict[str, list[float]] = {}
    targets: dict[str, str] = {}  # as distill.py prints them: ">=99.500", "<=0.200", ">0"
    for seed in range(seeds):
        storage = work / f"pipeline-{seed}"
        code, _ = run([RAYTRAIN, "run", "jobs/pipeline_ml100k.yaml", f"storage={storage}", TEXT,
                       f"tune.search.seed={seed}", f"train.seed={seed}", "--embedded"], work / f"pipeline-{seed}.log")
        if code != 0:
            return [f"(pipeline section failed: exit {code}, {work / f'pipeline-{seed}.log'})"]
        run_dir = next(p.parent for p in storage.glob("**/pipeline.json"))
        code, goals = run([sys.executable, "benchmarks/distill.py", str(run_dir)], work / f"distill-{seed}.log")
        if code != 0:
            return [f"(distill section failed: exit {code}, {work / f'distill-{seed}.log'})"]
        for g in goals:
            name, value, targets[name] = g.split()[1:4]
            if value == "not_measured":
                return [f"(pipeline seed {seed}: {name} not measured, {work / f'distill-{seed}.log'})"]
            measured.setdefault(name, []).append(float(value))
    return [summarise(f"pipeline_{name}", values, targets[name]) for name, values in measured.items()]


def summarise(name: str, values: list[float], target: str) -> str:
    """One GOAL line over the seeds' values: their mean, or the largest for an upper bound (the worst seed)."""
    op = next(o for o in ("<=", ">=", "<", ">") if target.startswith(o))
    bound = float(target[len(op):])
    worst = op.startswith("<")
    value = max(values) if worst else statistics.mean(values)
    ok = {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]
    note = ", ".join(f"{v:.4f}" for v in values)
    spread = f"+- {statistics.stdev(values):.4f} over {len(values)} seeds: {note}" if len(values) > 1 else "1 seed"
    return (f"GOAL {name} {value:.4f} {target} {'met' if ok else 'missed'} "
            f"({'the largest' if worst else 'mean'}, {spread})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed per section")
    ap.add_argument("--sections", default="sasrec,hstu,ctr,pipeline")
    ap.add_argument("--recbole-python", default="/tmp/rbvenv/bin/python",
                    help="a Python with recbole==1.2.1, for the ctr section")
    ap.add_argument("--storage", default="/tmp/raytrain-quality")
    args = ap.parse_args()
    seeds = 1 if args.quick else 3
    work = Path(args.storage) / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"sasrec", "hstu", "ctr", "pipeline"}
    if unknown:
        sys.exit(f"--sections: unknown {', '.join(sorted(unknown))} (sasrec, hstu, ctr, pipeline)")
    goals: list[str] = []
    for name in sections:
        print(f"\n== {name} ({seeds} seed{'s' if seeds > 1 else ''}) ==", flush=True)
        goals += {"sasrec": lambda: sasrec(seeds, work), "hstu": lambda: hstu(seeds, work),
                  "ctr": lambda: ctr(seeds, work, args.recbole_python), "pipeline": lambda: pipeline(seeds, work)}[name]()
    print(f"\nlogs: {work}\n")
    failed = [g for g in goals if not g.startswith("GOAL")]
    for g in goals:
        print(g)
    if failed:
        sys.exit(f"{len(failed)} section(s) failed: their goals are not measured")


if __name__ == "__main__":
    main()
