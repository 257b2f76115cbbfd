"""A sequential run's histories (``sequences.npz``) and its model, unsharded in this process from a checkpoint: what
the driver, a teacher, serving and the exports read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...data.sequences import Sequences


def load_sequences(path: str) -> Sequences:
    with np.load(path) as z:
        return Sequences(z["items"], z["timestamps"], z["offsets"], int(z["num_items"]),
                         actions=z["actions"] if "actions" in z else None,
                         user_ids=z["user_ids"] if "user_ids" in z else None,
                         item_ids=z["item_ids"] if "item_ids" in z else None)


def load_sequential(run_dir: str | Path, checkpoint: str | Path | None = None):
    """(spec, model, histories) of a sequential run, the model unsharded in this process from ``checkpoint`` (default:
    the best by validation NDCG@10): DCP reshards what the workers wrote, whatever their number."""
    import warnings

    from ...errors import CheckpointError
    from ...models.sequential import SequentialModel
    from ...spec import load_spec
    from ..checkpoint import load_state
    from ..export import best_checkpoint_location

    run_dir = Path(run_dir)
    spec = load_spec(run_dir / "spec.yaml")
    seqs = load_sequences(str(run_dir / "sequences.npz"))
    location = checkpoint or best_checkpoint_location(run_dir, "val_ndcg@10")
    if location is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint under ray/")
    model = SequentialModel(spec.model.arch, seqs.num_items, spec.model.embedding_dim, spec.model.sequence)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it runs without a process group: intended
        load_state(state, location)
    model.load_state_dict(state["model"])
    return spec, model.eval(), seqs
