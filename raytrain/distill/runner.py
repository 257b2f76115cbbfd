"""Kind ``distill``: score the training split with the teacher once, train the student on Ray Train with
``alpha * BCE + (1 - alpha) * T^2 * KD``, then compare teacher and student side by side.

The student is the teacher's spec with ``distill.student`` overrides (smaller embeddings, narrower MLPs),
trained with the same sharding machinery. Run directory: the student's training run (checkpoints,
metrics), ``teacher/train.parquet`` (the training split plus ``teacher_logit``) and ``distill.json``.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data import prepare
from ..data.batches import TEACHER_COLUMN, Columns
from ..ensemble.members import load_member, score, split_table
from ..log import get_logger
from ..spec.job import JobSpec
from ..spec.loader import student_spec
from ..storage import Mirror
from ..train.metrics import binary_metrics
from .teacher import Teacher, load_teacher

log = get_logger(__name__)


def _params(module: torch.nn.Module) -> tuple[int, int]:
    ps = list(module.parameters())
    return int(sum(p.numel() for p in ps)), int(sum(p.numel() * p.element_size() for p in ps))


@torch.no_grad()
def latency(teacher: Teacher, student_module: torch.nn.Module, cols: Columns, batch: int, rounds: int = 5,
            calls: int = 20) -> dict[str, float]:
    """Median milliseconds per scoring call, teacher and student alternating round by round."""
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"teacher": [], "student": []}
    for _ in range(rounds):
        idx = [torch.from_numpy(rng.integers(0, len(cols), batch)) for _ in range(calls)]
        batches = [cols.batch(i) for i in idx]
        for name, fn in (("teacher", teacher.forward), ("student", lambda b: student_module(b)[1])):
            fn(batches[0])  # warm
            t0 = time.perf_counter()
            for b in batches:
                fn(b)
            times[name].append((time.perf_counter() - t0) / calls * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def run_distill(spec: JobSpec, address: str | None = None) -> dict:
    from ..runs import new_run_location
    from ..train.runner import run_train

    assert spec.distill is not None
    from .sequential import run_sequential_distill, sequential_teacher_run

    sequential = sequential_teacher_run(spec.distill.teacher)
    if sequential is not None:
        return run_sequential_distill(spec, sequential, address)
    t0 = time.time()
    teacher = load_teacher(spec.distill.teacher)
    log.info(f"teacher: {teacher.source}, {len(teacher.members)} model(s), {teacher.parameters():,} parameters")
    student = student_spec(teacher.members[0].model.spec, spec)
    run_dir, location = new_run_location(student)  # on a URI: run_dir is its local mirror
    mirror = Mirror(run_dir, location)
    # teacher scores once, into the training split's parquet (the workers read them with the features)
    train_logits, _ = teacher.logits("train")
    table = split_table(teacher.members[0], "train")
    (run_dir / "teacher").mkdir()
    path = run_dir / "teacher" / "train.parquet"
    pq.write_table(table.append_column(TEACHER_COLUMN, pa.array(train_logits.astype(np.float32))), path)
    log.info(f"teacher scored {len(train_logits):,} training rows in {time.time() - t0:.0f}s -> {path}")
    prepared = prepare(student.data, work_dir=str(run_dir))
    prepared.paths["train"] = [str(path)]
    summary = run_train(student, run_dir=run_dir, address=address, prepared=prepared, location=location)

    # side by side on the test split: quality, size, latency (a URI run's checkpoints are downloaded into the mirror)
    s_member = load_member(location, "student")
    t_test, labels = teacher.logits("test")
    s_test, _ = score(s_member, "test")
    tm, sm = binary_metrics(labels, 1 / (1 + np.exp(-t_test))), binary_metrics(labels, 1 / (1 + np.exp(-s_test)))
    s_params, s_bytes = _params(s_member.model.module)
    cols = Columns.from_arrow(s_member.model.schema, split_table(s_member, "test"), "test split")
    lat = {b: latency(teacher, s_member.model.module, cols, b) for b in (1, 512)}
    report: dict = {
        "teacher": {"source": teacher.source, "parameters": teacher.parameters(), "bytes": teacher.bytes(),
                    "test_auc": tm["auc"], "test_logloss": tm["logloss"],
                    "latency_ms_batch1": lat[1]["teacher"], "latency_ms_batch512": lat[512]["teacher"]},
        "student": {"run_dir": location, "parameters": s_params, "bytes": s_bytes, "test_auc": sm["auc"],
                    "test_logloss": sm["logloss"], "latency_ms_batch1": lat[1]["student"],
                    "latency_ms_batch512": lat[512]["student"], "student_overrides": spec.distill.student},
        "parameter_ratio": s_params / teacher.parameters(),
        "auc_retained_pct": 100 * sm["auc"] / tm["auc"],
        "latency_ratio_batch1": lat[1]["student"] / lat[1]["teacher"],
        "latency_ratio_batch512": lat[512]["student"] / lat[512]["teacher"],
        "alpha": spec.distill.alpha, "temperature": spec.distill.temperature, "wall_s": time.time() - t0,
        "train": summary,
    }
    (run_dir / "distill.json").write_text(json.dumps(report, indent=2, default=str))
    mirror.publish(skip_dirs=("ray/", "data/"))
    log.info(f"teacher: {report['teacher']['parameters']:,} params, test AUC {tm['auc']:.4f}, "
         f"{lat[1]['teacher']:.2f} / {lat[512]['teacher']:.2f} ms (batch 1 / 512)")
    log.info(f"student: {s_params:,} params ({report['parameter_ratio']:.3f}x), test AUC {sm['auc']:.4f} "
         f"({report['auc_retained_pct']:.2f}% retained), {lat[1]['student']:.2f} / {lat[512]['student']:.2f} ms "
         f"({report['latency_ratio_batch1']:.2f}x / {report['latency_ratio_batch512']:.2f}x)")
    return report
