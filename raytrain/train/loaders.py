"""Per-worker data: which rows this rank trains and evaluates on, batch by batch, streamed.

Every rank must run the same number of forward passes (the sharded embedding lookup is a
collective), so the training step count is the minimum over ranks (known from the parquet footers
alone: each rank's share is fixed to the row) and evaluation pads the ranks that run out with
zero-weight batches. No evaluation row is dropped or counted twice: each rank reads its own rows
(``raytrain.data.stream``). A background thread reads and builds the next batches while the model
steps on the current one; nothing holds more than a window of rows.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import torch
import torch.distributed as dist

from ..data import PreparedData
from ..data.batches import Batch, Columns
from ..data.schema import FeatureSchema
from ..data.stream import RankStream, SplitIndex, prefetched


def _agree(n: int, op, device: torch.device | None = None, group=None) -> int:
    """One integer agreed over all ranks of ``group`` (default: all). The tensor lives on the process group's
    device: a CPU tensor under the ``cpu:gloo,cuda:nccl`` backend raytrain selects for CUDA runs, or ``device``."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return n
    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=op, group=group)
    return int(t.item())


def split_files(prepared: PreparedData, split: str) -> list[str]:
    """Where the workers read a split: a URI run's shared copy if there is one, else the driver's paths."""
    return (prepared.shared or {}).get(split) or prepared.paths[split]


class TrainData:
    """This rank's training rows, fed in local batches of ``batch_size // world``."""

    def __init__(self, prepared: PreparedData, global_batch: int, rank: int, world: int, seed: int,
                 buffer_rows: int = 262_144, prefetch: int = 4):
        self.prepared, self.rank, self.world, self.seed = prepared, rank, world, seed
        self.local_batch = global_batch // world
        self.buffer_rows, self.prefetch = buffer_rows, prefetch
        self._window: dict = {}  # the last window decoded, reused when the next epoch's first window is the same
        if prepared.synthetic is not None:
            import hashlib
            import json

            from ..data.synthetic import SyntheticRows
            from ..spec.sections import SyntheticSpec

            self.rows = SyntheticRows(SyntheticSpec.model_validate(prepared.synthetic), "train")
            local_steps = self.rows.num_rows // global_batch
            data = hashlib.sha256(json.dumps(prepared.synthetic, sort_keys=True).encode()).hexdigest()[:16]
        else:
            self.index = SplitIndex.of(split_files(prepared, "train"))
            local_steps = min(self.index.rank_rows(r, world) for r in range(world)) // self.local_batch
            data = self.index.fingerprint
        self.steps = _agree(local_steps, dist.ReduceOp.MIN)
        # every input that fixes which example comes at which step: what a mid-epoch checkpoint records
        self.order = {"world_size": world, "batch_size": global_batch, "seed": seed, "shuffle_buffer_rows": buffer_rows,
                      "train_files": data}

    @property
    def examples_per_epoch(self) -> int:
        return self.steps * self.local_batch * self.world

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The epoch's batches from ``start_step`` on (a resumed epoch skips what it already trained on)."""
        return prefetched(itertools.islice(self._batches(epoch, start_step), self.steps - start_step), self.prefetch)

    def _batches(self, epoch: int, start_step: int) -> Iterator[Batch]:
        if self.prepared.synthetic is None:
            stream = RankStream(self.index, self.prepared.schema, self.rank, self.world, batch=self.local_batch,
                                buffer_rows=self.buffer_rows, seed=self.seed, epoch=epoch, source="train split",
                                keep=self._window)
            yield from stream.batches(start_row=start_step * self.local_batch)
            return
        b, B = self.local_batch, self.local_batch * self.world
        for s in range(start_step, self.steps):
            start = s * B + self.rank * b
            cols = self.rows.rows(start, start + b)
            yield Columns.from_numpy(self.prepared.schema, cols, f"synthetic train rows {start}+").batch(
                torch.arange(b), row_ids=torch.arange(start, start + b))


def padding_batch(schema: FeatureSchema) -> Batch:
    """One row of id 0 everywhere: what a rank without rows left runs so the others' collectives complete."""
    ids = {f.name: torch.zeros(1, dtype=torch.int64) for f in schema.sparse if not f.multi_valued}
    lists = {f.name: (torch.zeros(1, dtype=torch.int64), torch.tensor([0, 1])) for f in schema.sparse if f.multi_valued}
    cols = Columns(schema, ids, lists, torch.zeros((1, len(schema.dense))), torch.zeros(1))
    return cols.batch(torch.zeros(1, dtype=torch.int64))


class EvalData:
    """One evaluation split, this rank's part of it: its own rows of the split laid end to end in file order."""

    def __init__(self, prepared: PreparedData, split: str, batch_size: int, rank: int, world: int,
                 prefetch: int = 2, buffer_rows: int = 262_144):
        self.prepared, self.split, self.rank, self.world = prepared, split, rank, world
        self.batch_size, self.prefetch, self.buffer_rows = batch_size, prefetch, max(batch_size, buffer_rows)
        if prepared.synthetic is not None:
            from ..data.synthetic import SyntheticRows
            from ..spec.sections import SyntheticSpec

            rows = SyntheticRows(SyntheticSpec.model_validate(prepared.synthetic), split)
            n = rows.num_rows
            lo, hi = n * rank // world, n * (rank + 1) // world
            self.columns: Columns | None = Columns.from_numpy(prepared.schema, rows.rows(lo, hi), f"synthetic {split}")
            self.num_rows = len(self.columns)
            counts = [n * (r + 1) // world - n * r // world for r in range(world)]
        else:
            self.columns = None
            self.index = SplitIndex.of(split_files(prepared, split))
            self.num_rows = self.index.rank_rows(rank, world)
            counts = [self.index.rank_rows(r, world) for r in range(world)]
        self.total_rows = sum(counts)
        self.steps = max(-(-c // batch_size) for c in counts)
        self._window: dict = {}

    def _real(self) -> Iterator[Batch]:
        if self.columns is not None:
            for lo in range(0, self.num_rows, self.batch_size):
                yield self.columns.batch(torch.arange(lo, min(lo + self.batch_size, self.num_rows)))
            return
        stream = RankStream(self.index, self.prepared.schema, self.rank, self.world, batch=self.batch_size,
                            buffer_rows=self.buffer_rows, shuffle=False, source=f"{self.split} split",
                            keep=self._window)
        yield from stream.batches()

    def batches(self) -> Iterator[tuple[Batch, int]]:
        """(batch, number of real rows in it); padding batches count 0 real rows."""
        n = 0
        for batch in prefetched(self._real(), self.prefetch):
            n += 1
            yield batch, batch.size
        pad = padding_batch(self.prepared.schema)
        for _ in range(n, self.steps):
            yield pad, 0
