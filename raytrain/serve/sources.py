"""Where a served variant's models come from: run directories on storage, never the training process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..ensemble.members import best_checkpoint, member_name, read_ensemble, top_trials
from ..errors import CheckpointError
from ..kinds.serve import VariantSpec
from ..runs import newest_local_run


@dataclass(frozen=True)
class MemberRef:
    """One model to load: a run directory and the checkpoint in it."""

    name: str
    run_dir: str
    checkpoint: str


@dataclass
class ResolvedVariant:
    name: str
    members: list[MemberRef]
    combiner: dict | None  # Combiner.to_dict(); None: a single model's own probability
    source: str


def newest(path: str | Path, marker: str) -> Path:
    """``path`` itself if it holds ``marker``, else the newest run directory below it that does (raytrain.runs);
    a URI is downloaded into the local cache first."""
    return newest_local_run(path, marker)


def is_sequential(run_dir: str | Path) -> bool:
    """A sequential model's run (sasrec, hstu): it keeps its histories beside its checkpoints."""
    return (Path(run_dir) / "sequences.npz").exists()


def _ref(run_dir: str | Path, name: str) -> MemberRef:
    run_dir = Path(run_dir)
    metric = "val_ndcg@10" if is_sequential(run_dir) else "val_auc"
    return MemberRef(name, str(run_dir), str(best_checkpoint(run_dir, metric)))


def resolve(name: str, v: VariantSpec) -> ResolvedVariant:
    if v.ensemble is not None:
        run, doc = read_ensemble(v.ensemble, v.combine, f"serve.variants.{name}")
        members = [MemberRef(m["name"], m["run_dir"], m["checkpoint"]) for m in doc["members"]]
        return ResolvedVariant(name, members, doc["combiners"][v.combine], f"ensemble {run} ({v.combine})")
    if v.tune_run is not None:
        runs = top_trials(v.tune_run, v.top_k)
        members = [_ref(r, member_name(r)) for r in runs]
        combiner = None if len(members) == 1 else {"kind": "mean", "weights": None, "coef": None, "intercept": None}
        return ResolvedVariant(name, members, combiner, f"top {v.top_k} of tune run {v.tune_run}")
    if v.distill is not None:
        run = newest(v.distill, "distill.json")
        return ResolvedVariant(name, [_ref(run, name)], None, f"distilled student {run}")
    if v.run is not None:
        run = newest(v.run, "spec.yaml")
        return ResolvedVariant(name, [_ref(run, name)], None, f"run {run}")
    raise CheckpointError(f"serve.variants.{name}: no source (a pipeline resolves 'step' before serving)")
