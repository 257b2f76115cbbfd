"""The training loop's device-independent control flow, with TorchRec's own train pipeline running on CPU over gloo.

The pipeline (``raytrain.train.steps``; on by default on CUDA) reads up to two batches ahead of the step it runs and
rewrites the sharded modules' forward while attached. Run through the loop's real ``_train_epoch`` on 2 gloo ranks,
it must train exactly what plain steps train: the same batches in the same order at the same step numbers (what the
example audit and a mid-epoch checkpoint's position record), the same losses and weights after two epochs, the same
evaluation between epochs (called outside the pipeline, after ``detach``), and a checkpoint taken at step 2 holds
exactly two updates: training resumed from it at step 2 ends with the uninterrupted run's weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_distributed
from test_sharded_equivalence import SCHEMA, SHARDING, _columns, _reference, _spec

STEPS, EPOCHS = 5, 2


class _Data:
    """TrainData's interface over fixed batches: batch (epoch, step) of this rank, row ids naming it."""

    def __init__(self, rank: int, world: int, global_batch: int):
        self.rank, self.world, self.local_batch, self.steps = rank, world, global_batch // world, STEPS
        self.columns = _columns()

    def epoch(self, epoch: int, start_step: int = 0):
        for s in range(start_step, self.steps):
            rows = (torch.arange(self.local_batch) * 7 + 3 * s + epoch + self.rank * self.local_batch) % (
                self.local_batch * self.world)
            batch = self.columns.batch(rows)
            batch.row_ids = 1000 * epoch + 100 * s + 10 * self.rank + torch.arange(self.local_batch)
            yield batch


def _train(rank: int, world: int, doc: dict, init: dict, pipelined: bool, resume: dict | None):
    from raytrain.spec.job import JobSpec
    from raytrain.train.distributed import gather_full_state, load_full_state, shard_model
    from raytrain.train.loop import _train_epoch
    from raytrain.train.steps import Steps

    spec = JobSpec.model_validate(doc)
    spec.train.sharding.tables = SHARDING
    sharded = shard_model(spec, SCHEMA, torch.device("cpu"))
    load_full_state(sharded.module, {k: torch.as_tensor(v) for k, v in (resume or init).items()})
    data = _Data(rank, world, spec.train.batch_size)
    steps = Steps(sharded, torch.device("cpu"), pipelined)
    assert (steps.pipeline is not None) == pipelined
    trained, losses, evals, mid = [], [], [], None
    probe = _columns().batch(torch.arange(8))
    for epoch in range(EPOCHS):
        def after(step: int, batch, epoch: int = epoch) -> None:
            nonlocal mid
            trained.append((epoch, step, batch.row_ids.tolist()))
            if epoch == 0 and step == 2 and resume is None:  # a mid-epoch checkpoint: detached, then saved
                steps.detach()
                mid = {k: v.numpy().copy() for k, v in gather_full_state(sharded.module).items()}

        stats = _train_epoch(steps, data, epoch, rank, EPOCHS, 2 if (resume is not None and epoch == 0) else 0, after)
        losses.append(stats["train_loss"])
        steps.detach()  # as the loop does before evaluating
        sharded.module.eval()
        with torch.no_grad():
            evals.append(sharded.module(probe)[1].numpy().copy())
        sharded.module.train()
    final = {k: v.numpy() for k, v in gather_full_state(sharded.module).items()}
    return trained, losses, evals, mid, final


@pytest.fixture(scope="module")
def runs():
    spec = _spec("dcn_v2", "sgd", "sgd")  # stateless optimizers: a resume from weights alone is exact
    init, _, _ = _reference(spec)
    doc = spec.model_dump(mode="json")
    init = {k: v.numpy() for k, v in init.items()}
    plain = run_distributed(_train, 2, doc, init, False, None)
    piped = run_distributed(_train, 2, doc, init, True, None)
    resumed = run_distributed(_train, 2, doc, init, True, piped[0][3])
    return plain, piped, resumed


def test_pipelined_steps_train_what_plain_steps_train(runs):
    plain, piped, _ = runs
    for rank in range(2):
        p_trained, p_losses, p_evals, p_mid, p_final = plain[rank]
        q_trained, q_losses, q_evals, q_mid, q_final = piped[rank]
        # the same batches at the same step numbers: what the audit records and a checkpoint's position says
        assert q_trained == p_trained and len(q_trained) == EPOCHS * STEPS
        assert [(e, s) for e, s, _ in q_trained] == [(e, s) for e in range(EPOCHS) for s in range(1, STEPS + 1)]
        np.testing.assert_allclose(q_losses, p_losses, rtol=1e-6)
        for a, b in zip(q_evals, p_evals):  # evaluation outside the pipeline, between epochs
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert not np.allclose(q_evals[0], q_evals[1])  # the second epoch changed the model
        assert len(p_final) >= 8 and set(q_final) == set(p_final)
        for key in p_final:  # every weight, every table
            np.testing.assert_allclose(q_final[key], p_final[key], rtol=1e-5, atol=1e-6, err_msg=key)
            np.testing.assert_allclose(q_mid[key], p_mid[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_checkpoint_taken_mid_epoch_in_the_pipeline_holds_exactly_its_steps(runs):
    """Resumed at step 2 from the weights saved after step 2 (the pipeline had read batches 3 and 4 by then), the
    run trains steps 3-5 of epoch 1 and all of epoch 2, and ends where the uninterrupted run ended."""
    _, piped, resumed = runs
    for rank in range(2):
        trained, _, _, _, final = resumed[rank]
        assert [(e, s) for e, s, _ in trained] == [(0, s) for s in range(3, STEPS + 1)] + [
            (1, s) for s in range(1, STEPS + 1)]
        assert trained == [t for t in piped[rank][0] if (t[0], t[1]) >= (0, 3)]
        for key, ref in piped[rank][4].items():
            np.testing.assert_allclose(final[key], ref, rtol=1e-5, atol=1e-6, err_msg=key)
