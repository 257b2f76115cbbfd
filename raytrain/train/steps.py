"""Training steps, plain or through TorchRec's sparse-data-distribution pipeline.

``Steps.epoch(batches)`` yields ``(loss, batch)`` for each batch as its optimizer step ends, in order, whichever way
the steps run, so the loop above (progress, mid-epoch checkpoints, the example audit) is the same on every device:

- plain: one ``train_step`` per batch.
- pipelined (``train.pipeline``; on by default on CUDA): one ``TrainPipelineSparseDist`` for the whole run, which
  overlaps the next batch's copy to the device and input all-to-all with the current batch's forward and backward.
  It reads up to two batches ahead of the step it runs; the batch yielded with a loss is the one that step trained
  (the ones read are kept in order until the pipeline returns them), and the step count is the number of steps
  that returned, so a checkpoint taken after step ``k`` records position ``k`` and holds ``k`` updates. An epoch
  ends when the pipeline runs out of batches (``StopIteration``), not after a fixed number of calls. The pipeline
  rewrites the sharded modules' forward while attached; ``detach()`` restores it before anything calls the module
  outside the pipeline (evaluation, checkpoints), and the next ``progress`` re-attaches it, as TorchRec documents
  (its in-flight batches kept).

TorchRec's pipeline runs on CPU too, over gloo: ``tests/integration/test_train_steps.py`` checks that the pipelined
steps train exactly what the plain ones train, across epochs, with evaluation and a mid-epoch checkpoint between
steps, so the CUDA control flow is exercised on machines without a GPU.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator

import torch

from .distributed import train_step


class Steps:
    def __init__(self, sharded: Any, device: torch.device, pipelined: bool) -> None:
        self.sharded, self.pipeline = sharded, None
        if pipelined:
            from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

            def forward(batch):  # the pipeline returns the second value: the loss, for the loop's bookkeeping
                loss, _ = sharded.module(batch)
                return loss, loss.detach()

            self.pipeline = TrainPipelineSparseDist(sharded.module, sharded.optimizer, device, custom_model_fwd=forward)

    def epoch(self, batches: Iterable) -> Iterator[tuple[torch.Tensor, Any]]:
        """(loss, batch) per step, in order; the batch is the one that step trained (on the CPU as read)."""
        if self.pipeline is None:
            for batch in batches:
                yield train_step(self.sharded, batch), batch
            return
        read: collections.deque = collections.deque()

        def recorded():
            for batch in batches:
                read.append(batch)
                yield batch

        source = recorded()  # a new iterator each epoch: the pipeline starts reading it afresh
        while True:
            try:
                loss = self.pipeline.progress(source)
            except StopIteration:
                return
            yield loss, read.popleft()

    def detach(self) -> None:
        """Before the module is called outside the pipeline (evaluation) or its state is saved."""
        if self.pipeline is not None:
            self.pipeline.detach()
