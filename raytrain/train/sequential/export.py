"""A sequential model's user representations as a table: each user's vector after their whole history in the run's
data, for other models to use as features (``data.history.user_vectors``; ``raytrain data user-vectors``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from ...data.history import USER_VECTOR_PREFIX as PREFIX


def user_vector_table(run_dir: str | Path, checkpoint: str | None = None) -> pa.Table:
    """``user_id`` (the source's id) and ``user_seq_0 .. user_seq_{d-1}``, from the run's best checkpoint by
    validation NDCG@10 (or ``checkpoint``) over every history in the run's ``sequences.npz``."""
    from ...errors import CheckpointError
    from .load import load_sequential
    from .ranking import user_vectors

    _, model, seqs = load_sequential(run_dir, checkpoint)
    if seqs.user_ids is None:
        raise CheckpointError(f"{run_dir}: its sequences.npz has no user ids (written by an older raytrain); rerun it")
    vectors = user_vectors(model, seqs).numpy().astype(np.float32)
    cols = {"user_id": pa.array(seqs.user_ids.astype(np.int64))}
    cols.update({f"{PREFIX}{i}": pa.array(vectors[:, i]) for i in range(vectors.shape[1])})
    return pa.table(cols)
