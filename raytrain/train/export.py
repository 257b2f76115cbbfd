"""Load a trained model from a run directory into one process, unsharded, for scoring.

torch.distributed.checkpoint reshards on load: the shards the workers wrote are read straight
into the full tables of a plain (unsharded) model, so no training cluster is needed to use it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..data.schema import FeatureSchema
from ..errors import CheckpointError
from ..models import build_model
from ..spec import load_spec
from ..spec.job import JobSpec
from ..storage import Store, is_uri, join, materialize, redact
from .checkpoint import cause, load_state, read_marker
from .distributed import TrainModule


@dataclass
class LoadedModel:
    spec: JobSpec
    schema: FeatureSchema
    module: TrainModule  # eval mode, on the CPU
    checkpoint: Path
    epoch: int


def complete_markers(run: str | Path, experiment: str = "ray") -> list[tuple[str, dict]]:
    """(location, marker) of each complete epoch-end checkpoint of a run (a path or a pyarrow.fs URI) in its
    ``experiment`` folder, oldest first; each marker read once."""
    out = []
    for name in Store(run).dirs(experiment):
        if not name.startswith("epoch_"):
            continue
        location = join(str(run), experiment, name)
        try:
            out.append((location, read_marker(location)))
        except CheckpointError:
            continue
    return out


def checkpoint_locations(run: str | Path) -> list[str]:
    """Checkpoints of a run (a path or a pyarrow.fs URI) that finished writing, oldest first."""
    return [location for location, _ in complete_markers(run)]


def best_checkpoint_location(run: str | Path, metric: str = "val_auc", mode: str = "max") -> str | None:
    """The complete checkpoint of a run (a path or a URI) with the best validation metric (its last one if none
    recorded it); None when there is none. Mid-epoch checkpoints score -inf and so are never the best."""
    import math

    found = complete_markers(run)
    scored = [(info.get("metrics", {}).get(metric), location) for location, info in found]
    scored = [(v, c) for v, c in scored if v is not None and math.isfinite(v)]
    if not scored:
        return found[-1][0] if found else None
    return (max if mode == "max" else min)(scored, key=lambda vc: vc[0])[1]


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a local run directory that finished writing (marker present), oldest first."""
    return [Path(p) for p in checkpoint_locations(Path(run_dir))]


def load_model(run_dir: str | Path, checkpoint: str | Path | None = None) -> LoadedModel:
    """A run's model, unsharded on the CPU; ``run_dir`` and ``checkpoint`` may be pyarrow.fs URIs."""
    location = str(run_dir)
    run_dir = materialize(run_dir)
    if checkpoint is not None and is_uri(str(checkpoint)):  # the same checkpoint in the downloaded copy
        rel = str(checkpoint).split("?")[0].removeprefix(location.split("?")[0].rstrip("/") + "/")
        if rel == str(checkpoint).split("?")[0]:
            raise CheckpointError(f"{redact(str(checkpoint))}: not a checkpoint of run {redact(location)}")
        checkpoint = run_dir / rel
    if not (run_dir / "spec.yaml").exists():
        raise CheckpointError(f"{run_dir}: not a run directory (no spec.yaml)")
    spec = load_spec(run_dir / "spec.yaml")
    schema = FeatureSchema.from_dict(json.loads((run_dir / "schema.json").read_text()))
    if checkpoint is None:
        found = complete_checkpoints(run_dir)
        if not found:
            raise CheckpointError(f"{run_dir}: no complete checkpoint under ray/")
        checkpoint = found[-1]
    checkpoint = Path(checkpoint)
    info = read_marker(checkpoint)
    module = TrainModule(build_model(spec.model, schema, device="cpu"))
    state = {"model": module.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it runs without a process group: intended
        try:
            load_state(state, checkpoint)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - DCP raises several types for missing / mismatched shards
            refused = cause(e, checkpoint)
            if "cannot load into this model" not in str(refused):
                raise refused from None
            raise CheckpointError(f"{checkpoint}: cannot load into {spec.model.arch} ({type(e).__name__}: {e})") from None
    module.load_state_dict(state["model"])
    module.eval()
    return LoadedModel(spec, schema, module, checkpoint, int(info["epoch"]))
