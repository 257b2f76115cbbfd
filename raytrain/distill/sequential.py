"""Kind ``distill`` with a sequential teacher (sasrec / hstu): the student is the teacher's spec with
``distill.student`` overrides (narrower, shallower), pretrained on the same histories by Ray Train with the teacher's
distribution over each position's candidates mixed into its loss (``train.sequential_teacher``); then teacher and
student side by side: test ranking metrics at their best epochs, parameters, and the time to rank the catalogue."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import SpecError
from ..log import get_logger
from ..runs import newest_local_run
from ..spec.job import JobSpec

log = get_logger(__name__)
METRICS = ("ndcg@10", "hr@10", "ndcg@50", "hr@50", "mrr")


def sequential_teacher_run(cfg) -> Path | None:
    """The teacher's run directory when it is a sequential model's (it keeps ``sequences.npz``), else None."""
    if cfg.run is not None:
        run = newest_local_run(cfg.run, "spec.yaml")
    elif cfg.tune_run is not None:
        from ..ensemble.members import top_trials

        run = top_trials(cfg.tune_run, 1)[0]
    else:
        return None
    return run if (run / "sequences.npz").exists() else None


@torch.no_grad()
def ranking_ms(model, seqs, users: int = 256, rounds: int = 3) -> float:
    """Median milliseconds to encode ``users`` histories and rank the whole catalogue for them (top 10)."""
    from ..data.sequences import subset
    from ..kernels import topk_scores
    from ..train.sequential.ranking import user_vectors

    history = subset(seqs, np.arange(min(users, seqs.users)))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        topk_scores(user_vectors(model, history), model.item_embeddings(), 10)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def run_sequential_distill(spec: JobSpec, teacher_run: Path, address: str | None = None) -> dict:
    from ..spec import load_spec
    from ..spec.loader import student_spec
    from ..train.export import best_checkpoint_location
    from ..train.sequential.load import load_sequential
    from ..train.sequential.run import run_sequential

    assert spec.distill is not None
    t0 = time.time()
    t_spec = load_spec(teacher_run / "spec.yaml")
    student = student_spec(t_spec, spec)
    if student.model.arch not in ("sasrec", "hstu") or student.data != t_spec.data:
        raise SpecError("distill.student: a sequential teacher's student is a sasrec / hstu model on the teacher's "
                        "histories (change model fields only)")
    if student.model.sequence.max_len > t_spec.model.sequence.max_len:
        raise SpecError(f"distill.student: model.sequence.max_len {student.model.sequence.max_len} is longer than "
                        f"the teacher's {t_spec.model.sequence.max_len}")
    checkpoint = best_checkpoint_location(teacher_run, "val_ndcg@10")
    log.info(f"teacher: {t_spec.model.arch} run {teacher_run} (checkpoint {checkpoint}); student overrides "
             f"{spec.distill.student}, alpha {spec.distill.alpha}, temperature {spec.distill.temperature}")
    summary = run_sequential(student, address, teacher={
        "run_dir": str(teacher_run), "checkpoint": checkpoint, "alpha": spec.distill.alpha,
        "temperature": spec.distill.temperature})
    t_result = json.loads((teacher_run / "result.json").read_text())
    _, t_model, seqs = load_sequential(teacher_run, checkpoint)
    _, s_model, _ = load_sequential(summary["run_dir"])
    t_params, s_params = (int(sum(p.numel() for p in m.parameters())) for m in (t_model, s_model))
    t_ms, s_ms = ranking_ms(t_model, seqs), ranking_ms(s_model, seqs)
    report = {
        "teacher": {"run_dir": str(teacher_run), "parameters": t_params, "ranking_ms_256_users": t_ms,
                    **{f"test_{k}": t_result[f"test_{k}"] for k in METRICS}},
        "student": {"run_dir": summary["run_dir"], "parameters": s_params, "ranking_ms_256_users": s_ms,
                    "best_epoch": summary["best_epoch"], "student_overrides": spec.distill.student,
                    **{f"test_{k}": summary[f"test_{k}"] for k in METRICS}},
        "parameter_ratio": s_params / t_params,
        "ndcg10_retained_pct": 100 * summary["test_ndcg@10"] / max(t_result["test_ndcg@10"], 1e-12),
        "ranking_time_ratio": s_ms / t_ms,
        "alpha": spec.distill.alpha, "temperature": spec.distill.temperature, "wall_s": time.time() - t0,
    }
    (Path(summary["run_dir"]) / "distill.json").write_text(json.dumps(report, indent=2, default=str))
    log.info(f"teacher: {t_params:,} params, test NDCG@10 {t_result['test_ndcg@10']:.4f}; student: {s_params:,} "
             f"params ({report['parameter_ratio']:.3f}x), test NDCG@10 {summary['test_ndcg@10']:.4f} "
             f"({report['ndcg10_retained_pct']:.1f}% retained), ranking {s_ms:.1f} vs {t_ms:.1f} ms per 256 users")
    return report
