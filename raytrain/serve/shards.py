"""Tables larger than a replica: a member served by N embedding-shard deployments and a dense part.

``plan_shards`` places the member's tables on N shards by their fp32 bytes: whole tables, largest first, on the
least loaded shard (table-wise), and a table larger than a shard's share split into row ranges spread over the
shards (row-wise). Each shard holds its rows in pieces of at most ``PIECE_BYTES``: a piece is read straight from
the training checkpoint (``train.checkpoint_rows``: only its rows' bytes) and, when the variant quantizes, quantized
before the next is read, so a shard's memory never holds more than its own (quantized) rows and one fp32 piece.

A request batch costs one call per shard: ``ShardedMember`` (the dense part: the model without its tables, loaded
from the same checkpoint) sends every shard the batch's ids; each shard sum-pools the ids that fall in its rows; the
dense part adds the shards' partial sums per feature (dividing by the bag sizes for mean-pooled features, which is
what the unsharded table computes) and runs the rest of the model.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ray import serve

if TYPE_CHECKING:
    from .refs import MemberRef

log = logging.getLogger("ray.serve")
PIECE_BYTES = 32 << 20  # fp32 bytes read (and quantized) at a time


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of the table of ``feature``."""

    feature: str
    start: int
    stop: int
    dim: int

    @property
    def name(self) -> str:
        return f"{self.feature}@{self.start}"

    @property
    def fp32_bytes(self) -> int:
        return (self.stop - self.start) * self.dim * 4


def shard_count(table_bytes: int, shards: int | None, shard_above: int | None) -> int:
    """How many shards a member with ``table_bytes`` of fp32 tables gets (0: served whole)."""
    if shards is not None:
        return shards
    if shard_above is not None and table_bytes > shard_above:
        return math.ceil(table_bytes / shard_above)
    return 0


def plan_shards(tables: list[tuple[str, int, int]], n: int, piece_bytes: int = PIECE_BYTES) -> list[list[Piece]]:
    """(feature, rows, dim) of every table -> the pieces of each of ``n`` shards: the tables no larger than a shard's
    share (total / n) whole, largest first on the least loaded shard; then each larger table cut into row ranges that
    fill the shards up to their share, least loaded first. Every range is then split into pieces of at most
    ``piece_bytes``."""
    share = math.ceil(sum(rows * dim * 4 for _, rows, dim in tables) / n)
    load = [0] * n
    ranges: list[list[tuple[str, int, int, int]]] = [[] for _ in range(n)]
    ordered = sorted(tables, key=lambda t: (-t[1] * t[2], t[0]))
    for feature, rows, dim in (t for t in ordered if t[1] * t[2] * 4 <= share):
        s = min(range(n), key=lambda i: (load[i], i))
        ranges[s].append((feature, 0, rows, dim))
        load[s] += rows * dim * 4
    for feature, rows, dim in (t for t in ordered if t[1] * t[2] * 4 > share):
        start = 0
        for s in sorted(range(n), key=lambda i: (load[i], i)):
            room = max(0, share - load[s]) // (dim * 4)
            stop = min(rows, start + room)
            if stop > start:
                ranges[s].append((feature, start, stop, dim))
                load[s] += (stop - start) * dim * 4
                start = stop
        if start < rows:  # rounding: what is left goes to the least loaded shard
            s = min(range(n), key=lambda i: (load[i], i))
            ranges[s].append((feature, start, rows, dim))
            load[s] += (rows - start) * dim * 4
    out: list[list[Piece]] = []
    for shard in ranges:
        pieces = []
        for feature, a, b, dim in shard:
            step = max(1, piece_bytes // (dim * 4))
            pieces += [Piece(feature, lo, min(b, lo + step), dim) for lo in range(a, b, step)]
        out.append(pieces)
    return out


def _pack(weight: torch.Tensor, dtype: str) -> torch.Tensor:
    """fp32 rows stored as ``dtype``: fp16, or row-wise quantized int8 / int4 (a scale and a bias per row)."""
    if dtype == "fp16":
        return weight.half()
    if dtype == "int8":
        return torch.ops.quantized.embedding_bag_byte_prepack(weight)
    return torch.ops.quantized.embedding_bag_4bit_prepack(weight, False)


def _pool(weight: torch.Tensor, dtype: str, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sums of the rows of each bag, whatever the rows are stored as."""
    if dtype in ("none", "fp16"):
        return torch.nn.functional.embedding_bag(ids, weight, offsets, mode="sum").float()
    op = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if dtype == "int8"
          else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)
    return op(weight, ids, offsets, mode=0, include_last_offset=False)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _bag(rows: dict, feature: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, bag lengths) of one feature of wire rows (``wire.to_wire``)."""
    if feature in rows["ids"]:
        ids = rows["ids"][feature]
        return ids, np.ones(len(ids), dtype=np.int64)
    values, offsets = rows["lists"][feature]
    return values, np.diff(offsets)


@serve.deployment
class EmbeddingShard:
    """Some rows of some tables of one member, sum-pooled on request."""

    def __init__(self, ref: MemberRef, pieces: list[Piece], dtypes: dict[str, str], threads: int) -> None:
        from ..data.schema import table_name
        from ..train.checkpoint import read_metadata
        from ..train.checkpoint_rows import read_rows

        torch.set_num_threads(threads)
        self.ref, self.pieces = ref, pieces
        metadata = read_metadata(ref.checkpoint)
        ebc_path = _ebc_path(ref)
        # pieces are plain tensors pooled by PyTorch's own kernels: embedding_bag for fp32 / fp16, its row-wise
        # quantized embedding-bag operators for int8 (D + 8 bytes a row) and int4 (D / 2 + 4); a shard process so
        # never imports TorchRec or FBGEMM, which weigh about 0.19 GiB a process here
        self.tables: list[tuple[Piece, torch.Tensor, str]] = []
        self.bytes = 0
        for p in pieces:
            key = f"model.model.net.{ebc_path}.embedding_bags.{table_name(p.feature)}.weight"
            dtype = dtypes.get(p.feature, "none")
            weight = read_rows(ref.checkpoint, key, p.start, p.stop, metadata=metadata)
            if dtype != "none":  # quantized before the next piece is read
                weight = _pack(weight, dtype)
            self.tables.append((p, weight, dtype))
            self.bytes += weight.numel() * weight.element_size()
        self.calls = 0

    async def lookup(self, rows: dict) -> dict[str, np.ndarray]:
        """feature -> [B, D] sums of the ids of each row that fall in this shard's rows."""
        self.calls += 1
        out: dict[str, np.ndarray] = {}
        bags = {}
        for p, weight, dtype in self.tables:
            if p.feature not in bags:
                bags[p.feature] = _bag(rows, p.feature)
            ids, lengths = bags[p.feature]
            inside = (ids >= p.start) & (ids < p.stop)
            if not inside.any():
                continue
            row_of = np.repeat(np.arange(len(lengths)), lengths)
            kept = np.bincount(row_of[inside], minlength=len(lengths))
            local = torch.from_numpy(ids[inside] - p.start)
            offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(kept)[:-1]]))
            with torch.inference_mode():
                pooled = _pool(weight, dtype, local, offsets).numpy()
            out[p.feature] = out[p.feature] + pooled if p.feature in out else pooled.copy()
        return out

    def info(self) -> dict:
        return {"pieces": len(self.pieces), "rows": {f: int(sum(p.stop - p.start for p in self.pieces if p.feature == f))
                                                     for f in dict.fromkeys(p.feature for p in self.pieces)},
                "table_bytes": self.bytes, "peak_rss_bytes": _peak_rss(), "calls": self.calls}


def _ebc_path(ref: MemberRef) -> str:
    """Where the architecture keeps its EmbeddingBagCollection (state-dict path below ``net``)."""
    from ..spec import load_spec

    arch = load_spec(f"{ref.run_dir}/spec.yaml").model.arch
    return "embedding_bag_collection" if arch == "two_tower" else "sparse_arch.embedding_bag_collection"


@serve.deployment
class ShardedMember:
    """The dense part of a sharded member: everything but the tables, which its shards hold."""

    def __init__(self, ref: MemberRef, shards: list[Any], threads: int) -> None:
        import json
        import warnings
        from pathlib import Path

        from ..data.schema import FeatureSchema
        from ..models import build_model
        from ..spec import load_spec
        from ..train.checkpoint import load_state
        from ..train.distributed import TrainModule

        torch.set_num_threads(threads)
        self.ref, self.shards = ref, shards
        self.spec = load_spec(Path(ref.run_dir) / "spec.yaml")
        self.schema = FeatureSchema.from_dict(json.loads((Path(ref.run_dir) / "schema.json").read_text()))
        module = TrainModule(build_model(self.spec.model, self.schema, device="cpu", ebc_device="meta"))
        state = {k: v for k, v in module.state_dict().items() if ".embedding_bags." not in k}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DCP warns that it runs without a process group: intended
            load_state({"model": state}, ref.checkpoint)  # reads only these keys
        module.load_state_dict(state, strict=False)
        self.net: Any = module.model.net.eval()
        self.mean = {f.name for f in self.schema.sparse if f.multi_valued}
        self.forward_passes = 0

    async def _lookup(self, handle: Any, rows: dict) -> dict[str, np.ndarray]:
        try:
            return await handle.lookup.remote(rows)
        except Exception as e:  # a shard replica died under us: one retry goes to a live (or restarted) replica
            log.warning("a table shard failed (%s: %s); retrying once", type(e).__name__, e)
            return await handle.lookup.remote(rows)

    def pooled(self, rows: dict, parts: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        n = len(rows["dense"])
        out = {}
        for f in self.schema.sparse:
            found = [p[f.name] for p in parts if f.name in p]
            total = np.sum(found, axis=0) if found else np.zeros((n, self.spec.model.embedding_dim), np.float32)
            if f.name in self.mean:
                total = total / np.maximum(_bag(rows, f.name)[1], 1)[:, None]
            out[f.name] = torch.from_numpy(np.ascontiguousarray(total, dtype=np.float32))
        return out

    async def score(self, rows: dict) -> tuple[np.ndarray, str]:
        """Logits of parsed rows, as ``MemberModel.score``: one call per shard, then the dense part."""
        self.forward_passes += 1
        parts = await asyncio.gather(*(self._lookup(h, rows) for h in self.shards))
        pooled = self.pooled(rows, list(parts))
        net = self.net
        with torch.inference_mode():
            if self.spec.model.arch == "two_tower":
                user = net.tower_output(pooled, net.user_features, net.user_tower)
                item = net.tower_output(pooled, net.item_features, net.item_tower)
                logits = (user * item).sum(dim=1)
            else:
                arch = net.sparse_arch
                sparse = torch.cat([pooled[name] for name in arch.sparse_feature_names], dim=1)
                dense = net.dense_arch(torch.from_numpy(rows["dense"]))
                inter = net.inter_arch(dense_features=dense, sparse_features=sparse.reshape(-1, arch.F, arch.D))
                logits = net.over_arch(inter).reshape(-1)
        return logits.double().numpy(), self.ref.version

    async def info(self) -> dict:
        shards = await asyncio.gather(*(h.info.remote() for h in self.shards))
        return {**asdict(self.ref), "version": self.ref.version, "arch": self.spec.model.arch,
                "embedding_dim": self.spec.model.embedding_dim, "dense_peak_rss_bytes": _peak_rss(),
                "shards": list(shards), "table_bytes": sum(s["table_bytes"] for s in shards),
                "forward_passes": self.forward_passes}
