"""Columns -> model inputs: a dense float tensor, a KeyedJaggedTensor of ids, and labels.

Ids are checked against each table's size before they reach an embedding kernel: FBGEMM would
silently rewrite an out-of-range id to row 0 and train it (STACK.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from ..errors import DataError
from .schema import FeatureSchema


@dataclass
class Batch(Pipelineable):
    dense: torch.Tensor  # [B, D] float32
    sparse: KeyedJaggedTensor
    label: torch.Tensor  # [B] float32
    size: int
    teacher: torch.Tensor | None = None  # [B] float32 teacher logits (distillation), when the data has them
    row_ids: torch.Tensor | None = None  # [B] int64 global row ids in the split (streamed data; stays on the CPU)
    extra: torch.Tensor | None = None  # [B, K] float32 labels of the ordinal cuts (data.label.ordinal), if any

    # TorchRec's Pipelineable (TrainPipelineSparseDist checks the class, not only the methods): how a batch moves to
    # the device and is marked as used by the pipeline's streams
    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(self.dense.to(device, non_blocking=non_blocking),
                     self.sparse.to(device, non_blocking=non_blocking),
                     self.label.to(device, non_blocking=non_blocking), self.size,
                     None if self.teacher is None else self.teacher.to(device, non_blocking=non_blocking),
                     self.row_ids, None if self.extra is None else self.extra.to(device, non_blocking=non_blocking))

    def record_stream(self, stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.label.record_stream(stream)
        if self.teacher is not None:
            self.teacher.record_stream(stream)
        if self.extra is not None:
            self.extra.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return Batch(self.dense.pin_memory(), self.sparse.pin_memory(), self.label.pin_memory(), self.size,
                     None if self.teacher is None else self.teacher.pin_memory(), self.row_ids,
                     None if self.extra is None else self.extra.pin_memory())


def binarise(label: np.ndarray, rule: str | None) -> np.ndarray:
    if rule is None:
        return label.astype(np.float32)
    from ..spec.label import LabelSpec

    return LabelSpec(positive_if=rule).binarise(label)


def extra_labels(schema: FeatureSchema, grade: np.ndarray) -> torch.Tensor | None:
    """The ordinal cuts' 0/1 labels of raw grades ``grade``: float32 [N, K] (None without cuts)."""
    if not schema.extra_labels:
        return None
    return torch.from_numpy(np.stack([binarise(grade, rule) for rule in schema.extra_labels], axis=1))


TEACHER_COLUMN = "teacher_logit"  # written by a distillation run next to the training split's features


class Columns:
    """One shard of a split held as tensors, sliced into batches by row index."""

    def __init__(self, schema: FeatureSchema, ids: dict, lists: dict, dense: torch.Tensor, label: torch.Tensor,
                 teacher: torch.Tensor | None = None, extra: torch.Tensor | None = None):
        self.schema = schema
        self.ids = ids  # name -> int64 [N]
        self.lists = lists  # name -> (values int64 [M], offsets int64 [N+1])
        self.dense = dense
        self.label = label
        self.teacher = teacher  # float32 [N] teacher logits, present in a distillation's training split
        self.extra = extra  # float32 [N, K] labels of the ordinal cuts (schema.extra_labels), when the schema has them

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @classmethod
    def from_numpy(cls, schema: FeatureSchema, cols: dict[str, np.ndarray], source: str) -> "Columns":
        """From plain numpy columns (single-valued ids only), e.g. synthetic chunks."""
        ids = {f.name: torch.from_numpy(np.ascontiguousarray(cols[f.name], dtype=np.int64)) for f in schema.sparse}
        dense = (
            torch.from_numpy(np.stack([cols[d] for d in schema.dense], axis=1).astype(np.float32))
            if schema.dense
            else torch.zeros((len(cols[schema.label]), 0))
        )
        raw = np.asarray(cols[schema.label])
        label = torch.from_numpy(binarise(raw, schema.positive_if))
        grade = np.asarray(cols.get(schema.grade or schema.label, raw))
        out = cls(schema, ids, {}, dense, label, extra=extra_labels(schema, grade))
        out.check(source)
        return out

    @classmethod
    def from_arrow(cls, schema: FeatureSchema, table: pa.Table, source: str) -> "Columns":
        missing = [c for c in schema.columns() if c not in table.column_names]
        if missing:
            raise DataError(f"{source}: missing column(s) {', '.join(missing)}; has {', '.join(table.column_names)}")
        ids, lists = {}, {}
        for f in schema.sparse:
            col = table.column(f.name)
            if f.multi_valued:
                arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
                if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
                    raise DataError(f"{source}: column {f.name} must hold lists of ids, has {arr.type}")
                if arr.null_count:
                    raise DataError(f"{source}: column {f.name} has {arr.null_count} null list(s)")
                offsets = np.asarray(arr.offsets, dtype=np.int64)
                values = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=np.int64)[offsets[0] : offsets[-1]]
                lists[f.name] = (torch.from_numpy(values.copy()), torch.from_numpy(offsets - offsets[0]))
            else:
                if col.null_count:
                    raise DataError(f"{source}: column {f.name} has {col.null_count} null id(s)")
                ids[f.name] = torch.from_numpy(np.asarray(col.to_numpy(), dtype=np.int64).copy())
        dense_cols = []
        for d in schema.dense:
            vals = np.asarray(table.column(d).to_numpy(zero_copy_only=False), dtype=np.float32)
            if not np.isfinite(vals).all():
                raise DataError(f"{source}: dense column {d} has {int((~np.isfinite(vals)).sum())} NaN/inf value(s)")
            dense_cols.append(vals)
        n = table.num_rows
        dense = torch.from_numpy(np.stack(dense_cols, axis=1)) if dense_cols else torch.zeros((n, 0))
        raw = np.asarray(table.column(schema.label).to_numpy(zero_copy_only=False), dtype=np.float64)
        if np.isnan(raw).any():
            rows = np.flatnonzero(np.isnan(raw))
            raise DataError(f"{source}: label column {schema.label} has {len(rows)} NaN value(s), first at row {rows[0]}")
        label = torch.from_numpy(binarise(raw, schema.positive_if))
        teacher = None
        if TEACHER_COLUMN in table.column_names:
            t = np.asarray(table.column(TEACHER_COLUMN).to_numpy(zero_copy_only=False), dtype=np.float32)
            if not np.isfinite(t).all():
                raise DataError(f"{source}: column {TEACHER_COLUMN} has {int((~np.isfinite(t)).sum())} NaN/inf value(s)")
            teacher = torch.from_numpy(t)
        extra = None
        if schema.extra_labels:
            grade = raw if schema.grade in (None, schema.label) else np.asarray(
                table.column(schema.grade).to_numpy(zero_copy_only=False), dtype=np.float64)
            if np.isnan(grade).any():
                raise DataError(f"{source}: graded label column {schema.grade} has NaN value(s), first at row "
                                f"{int(np.flatnonzero(np.isnan(grade))[0])}")
            extra = extra_labels(schema, grade)
        out = cls(schema, ids, lists, dense, label, teacher, extra)
        out.check(source)
        return out

    @classmethod
    def concat(cls, parts: list["Columns"], schema: FeatureSchema) -> "Columns":
        if not parts:
            return cls(schema, {f.name: torch.zeros(0, dtype=torch.int64) for f in schema.sparse if not f.multi_valued},
                       {f.name: (torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
                        for f in schema.sparse if f.multi_valued},
                       torch.zeros((0, len(schema.dense))), torch.zeros(0))
        ids = {k: torch.cat([p.ids[k] for p in parts]) for k in parts[0].ids}
        lists = {}
        for k in parts[0].lists:
            vals, offs, base = [], [torch.zeros(1, dtype=torch.int64)], 0
            for p in parts:
                v, o = p.lists[k]
                vals.append(v)
                offs.append(o[1:] + base)
                base += int(o[-1])
            lists[k] = (torch.cat(vals), torch.cat(offs))
        teachers = [p.teacher for p in parts if p.teacher is not None]
        teacher = torch.cat(teachers) if len(teachers) == len(parts) else None
        extras = [p.extra for p in parts if p.extra is not None]
        return cls(schema, ids, lists, torch.cat([p.dense for p in parts]), torch.cat([p.label for p in parts]),
                   teacher, torch.cat(extras) if len(extras) == len(parts) else None)

    def check(self, source: str) -> None:
        """Every id inside its table: an error names the feature, the bad id and its row."""
        for f in self.schema.sparse:
            vals = self.lists[f.name][0] if f.multi_valued else self.ids[f.name]
            if vals.numel() == 0:
                continue
            bad = (vals < 0) | (vals >= f.cardinality)
            if bool(bad.any()):
                pos = int(bad.nonzero()[0, 0])
                if f.multi_valued:
                    row = int(torch.searchsorted(self.lists[f.name][1], torch.tensor(pos), right=True)) - 1
                else:
                    row = pos
                raise DataError(
                    f"{source}: column {f.name} has id {int(vals[pos])} at row {row}, outside [0, {f.cardinality}) "
                    f"({int(bad.sum())} bad id(s) in all)"
                )

    def take(self, idx: torch.Tensor) -> "Columns":
        """Rows ``idx`` as new Columns."""
        lists = {}
        for name, (vals, offs) in self.lists.items():
            values, lens = _gather_lists(vals, offs, idx)
            lists[name] = (values, torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)]))
        return Columns(self.schema, {k: v[idx] for k, v in self.ids.items()}, lists, self.dense[idx], self.label[idx],
                       None if self.teacher is None else self.teacher[idx], None if self.extra is None else self.extra[idx])

    def batch(self, idx: torch.Tensor, row_ids: torch.Tensor | None = None) -> Batch:
        """Rows ``idx`` as a Batch. KJT layout: feature-major (all rows of feature 1, then feature 2...)."""
        b = int(idx.numel())
        values, lengths = [], []
        for f in self.schema.sparse:
            if f.multi_valued:
                vals, lens = _gather_lists(self.lists[f.name][0], self.lists[f.name][1], idx)
                values.append(vals)
                lengths.append(lens)
            else:
                values.append(self.ids[f.name][idx])
                lengths.append(torch.ones(b, dtype=torch.int64))
        kjt = KeyedJaggedTensor(
            keys=self.schema.sparse_names,
            values=torch.cat(values),
            lengths=torch.cat(lengths).to(torch.int32),
        )
        return Batch(self.dense[idx], kjt, self.label[idx], b, None if self.teacher is None else self.teacher[idx],
                     row_ids, None if self.extra is None else self.extra[idx])


SLICE_FROM = 64  # mean list length from which a copy per row beats index arithmetic per value (2x at 160 ids a row)


def _gather_lists(vals: torch.Tensor, offs: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lists of rows ``idx``: (their values end to end, their lengths)."""
    starts, ends = offs[idx], offs[idx + 1]
    lens = ends - starts
    total = int(lens.sum())
    if idx.numel() and total >= SLICE_FROM * idx.numel():  # long lists (histories): one slice copied per row
        v = vals.numpy()
        return torch.from_numpy(np.concatenate([v[a:b] for a, b in zip(starts.tolist(), ends.tolist())])), lens
    out_starts = torch.cumsum(lens, 0) - lens
    gather = torch.repeat_interleave(starts - out_starts, lens, output_size=total) + torch.arange(total)
    return vals[gather], lens
