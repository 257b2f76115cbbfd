"""Per-worker data: which rows this rank trains and evaluates on, batch by batch.

Every rank must run the same number of forward passes (the sharded embedding lookup is a
collective), so the training step count is the minimum over ranks and evaluation pads the ranks
that run out with zero-weight batches. No evaluation row is dropped: metrics cover the whole split.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from ..data import PreparedData
from ..data.batches import Batch, Columns


def _agree(n: int, op) -> int:
    t = torch.tensor([n], dtype=torch.int64)
    dist.all_reduce(t, op=op)
    return int(t.item())


class TrainData:
    """This rank's training rows, fed in local batches of ``batch_size // world``."""

    def __init__(self, prepared: PreparedData, global_batch: int, rank: int, world: int, seed: int, shard=None):
        self.prepared, self.rank, self.world, self.seed = prepared, rank, world, seed
        self.local_batch = global_batch // world
        self.columns: Columns | None = None
        if prepared.synthetic is not None:
            from ..data.synthetic import SyntheticRows
            from ..spec.schema import SyntheticSpec

            self.rows = SyntheticRows(SyntheticSpec.model_validate(prepared.synthetic), "train")
            local_steps = self.rows.num_rows // global_batch
        else:
            # this rank's Ray Data shard, read once and kept as tensors for the following epochs
            tables = list(shard.iter_batches(batch_format="pyarrow", batch_size=65536))
            table = pa.concat_tables(tables) if tables else None
            if table is None:
                self.columns = Columns.concat([], prepared.schema)
            else:
                self.columns = Columns.from_arrow(prepared.schema, table, f"train shard of rank {rank}")
            local_steps = len(self.columns) // self.local_batch
        self.steps = _agree(local_steps, dist.ReduceOp.MIN)

    @property
    def examples_per_epoch(self) -> int:
        return self.steps * self.local_batch * self.world

    def epoch(self, epoch: int) -> Iterator[Batch]:
        if self.columns is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + self.rank)
            perm = torch.randperm(len(self.columns), generator=g)
            for s in range(self.steps):
                yield self.columns.batch(perm[s * self.local_batch : (s + 1) * self.local_batch])
        else:
            b, B = self.local_batch, self.local_batch * self.world
            for s in range(self.steps):
                start = s * B + self.rank * b
                cols = self.rows.rows(start, start + b)
                yield Columns.from_numpy(self.prepared.schema, cols, f"synthetic train rows {start}+").batch(
                    torch.arange(b)
                )


class EvalData:
    """One evaluation split, this rank's part of it: rows ``rank::world`` of the whole split."""

    def __init__(self, prepared: PreparedData, split: str, batch_size: int, rank: int, world: int, dataset=None):
        self.prepared, self.split, self.rank, self.world = prepared, split, rank, world
        self.batch_size = batch_size
        if prepared.synthetic is not None:
            from ..data.synthetic import SyntheticRows
            from ..spec.schema import SyntheticSpec

            rows = SyntheticRows(SyntheticSpec.model_validate(prepared.synthetic), split)
            n = rows.num_rows
            lo, hi = n * rank // world, n * (rank + 1) // world
            cols = rows.rows(lo, hi)
            self.columns = Columns.from_numpy(prepared.schema, cols, f"synthetic {split}")
        else:
            tables = list(dataset.iter_batches(batch_format="pyarrow", batch_size=65536))
            table = pa.concat_tables(tables)
            idx = np.arange(rank, table.num_rows, world)
            self.columns = Columns.from_arrow(prepared.schema, table.take(pa.array(idx)), f"{split} split")
        self.num_rows = len(self.columns)
        self.steps = _agree(-(-self.num_rows // batch_size), dist.ReduceOp.MAX)

    def batches(self) -> Iterator[tuple[Batch, int]]:
        """(batch, number of real rows in it); padding batches repeat row 0 and count 0 real rows."""
        for s in range(self.steps):
            lo = s * self.batch_size
            hi = min(lo + self.batch_size, self.num_rows)
            if hi > lo:
                yield self.columns.batch(torch.arange(lo, hi)), hi - lo
            else:
                yield self.columns.batch(torch.zeros(1, dtype=torch.int64)), 0
