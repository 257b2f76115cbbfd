"""Gradient averaging through shared memory for CPU ranks on one machine.

On CPU, DDP averages gradients with gloo over loopback TCP. A gloo all-reduce is latency-bound at the sizes
of a recommender's replicated part: 0.5 ms for 4 bytes and 3 ms for 1.2 MB between two processes on the
2-core machine, more inside a step, when both cores are busy and each transfer waits for a gloo thread to be
scheduled. The demo model's step does two (TorchRec wraps data-parallel tables in a DDP of their own):
4-6 ms of a 13-17 ms step. When every rank of the group runs on this machine, raytrain registers a DDP comm
hook on each of the model's DDP modules that exchanges the bucket through shared memory instead: 0.05 ms
for 4 bytes, 0.18 ms for 1.2 MB (``benchmarks/allreduce.py``).

The hook does not exchange each bucket as DDP hands it over: it collects the buckets of the backward pass,
from every DDP of the model, and averages them together when the pass ends (an autograd engine callback, which
runs before any DDP waits on its buckets). Each exchange is a point where the ranks wait for each other: on
the 2-core machine the demo model's step waited 1.1-2.4 ms in its two exchanges: one exchange a step
instead of one per DDP gives the ranks one point to wait at. (Over gloo, DDP overlaps a bucket's transfer with the rest of
the backward pass; a shared-memory exchange is a memory copy, with nothing to overlap.)

Each rank owns a segment of two slots; ranks signal each other through named pipes, one per ordered pair
(a kernel round trip, which also orders the memory writes). The n-th exchange (the step's buckets end to
end, or a slot's worth of them): rank r writes them, divided by the world size as DDP's own reducer does, into
its slot ``n % 2``, writes a byte to each peer, reads a byte from each peer, then sums slot ``n % 2`` of every
rank in rank order, so every rank computes the same bits. Two slots suffice: before a rank writes slot
``n % 2`` again (exchange n + 2) it has read every peer's byte of exchange n + 1, which each peer wrote
after summing exchange n.

Segments and pipes are unlinked once every rank has opened them, and whatever set-up fails with: nothing stays in
/dev/shm, even when a worker is killed. A peer that dies closes its pipes, so the others fail at once; a peer that
is alive and stuck (stopped, deadlocked, swapping) makes every wait end after ``timeout_s`` (the run's
``train.collective_timeout_s``, also the process group's) with ``CollectiveTimeout``, where gloo would raise after
the same time: either way the worker fails and Ray Train restarts the group. Setup that fails on any rank (no
shared /dev/shm, no space) leaves every rank on gloo.
"""

import os
import secrets
import select
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..log import get_logger
from .loaders import _agree

log = get_logger(__name__)

SLOT_NUMEL_MAX = 1 << 20  # 4 MiB slots (8 MiB per rank): a larger bucket goes through in chunks


class CollectiveTimeout(RuntimeError):
    """A rank of the shared-memory all-reduce waited longer than the collective timeout for a peer."""


def _shm_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class ShmAllReduce:
    """The shared slots and pipes of the group's ranks; ``hook`` is a DDP comm hook. Build with ``create``."""

    def __init__(self, group, slot_numel: int, timeout_s: float = 1800.0) -> None:
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.slot_numel, self.timeout_s = slot_numel, timeout_s
        self.slots: list[torch.Tensor] = []
        self._reads: dict[int, int] = {}
        self._writes: dict[int, int] = {}
        self._paths: list[Path] = []  # what this rank created, unlinked once every rank has opened it
        self.exchanges = 0
        self._pending: list[tuple[torch.Tensor, torch.futures.Future]] = []  # buckets of the running backward pass

    @classmethod
    def create(cls, group, numel: int, timeout_s: float = 1800.0) -> "ShmAllReduce | None":
        """Set up on every rank of ``group`` (a collective); None on every rank if any rank could not. ``numel``: the
        most this rank exchanges at once (a step's buckets); the ranks agree on the largest (slots laid out alike).
        ``timeout_s``: the longest any exchange waits for a peer."""
        largest = _agree(numel, dist.ReduceOp.MAX, group=group)
        self = cls(group, max(1, min(largest, SLOT_NUMEL_MAX)), timeout_s)
        token = [secrets.token_hex(8) if self.rank == 0 else None]
        dist.broadcast_object_list(token, src=dist.get_global_rank(group, 0) if group else 0, group=group)
        base = f"{_shm_dir()}/raytrain-grad-{token[0]}"
        try:
            ok = self._all_ok(self._create_own, base, group) and self._all_ok(self._open_peers, base, group)
        finally:  # whatever happened: the names go (what is open stays usable)
            self._unlink()
        if not ok:
            self.close()
            return None
        return self

    def _all_ok(self, step, base: str, group) -> bool:
        """Run a set-up step here; whether it succeeded on every rank (a collective). Any error counts (a rank
        that raised instead of answering would leave the others waiting in the collective)."""
        try:
            step(base)
            ok = 1
        except Exception as e:
            log.warning(f"shared-memory gradient averaging unavailable on rank {self.rank} ({type(e).__name__}: "
                        f"{e}): using gloo")
            ok = 0
        return bool(_agree(ok, dist.ReduceOp.MIN, group=group))

    def _create_own(self, base: str) -> None:
        mine = Path(f"{base}-r{self.rank}")
        fd = os.open(mine, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._paths.append(mine)
        try:
            os.posix_fallocate(fd, 0, 2 * self.slot_numel * 4)  # no space fails here, not as SIGBUS mid-step
        finally:
            os.close(fd)
        for peer in range(self.world):
            if peer != self.rank:  # the pipe peer -> this rank
                path = Path(f"{base}-p{peer}to{self.rank}")
                os.mkfifo(path, 0o600)
                self._paths.append(path)
                self._reads[peer] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def _open_peers(self, base: str) -> None:
        for r in range(self.world):
            t = torch.from_file(f"{base}-r{r}", shared=True, size=2 * self.slot_numel, dtype=torch.float32)
            self.slots.append(t.view(2, self.slot_numel))
        for peer in range(self.world):
            if peer != self.rank:  # its reader is open (previous step), so this does not block
                self._writes[peer] = os.open(f"{base}-p{self.rank}to{peer}", os.O_WRONLY | os.O_NONBLOCK)
                os.set_blocking(self._writes[peer], True)

    def _unlink(self) -> None:
        for path in self._paths:
            path.unlink(missing_ok=True)
        self._paths = []

    def close(self) -> None:
        for fd in [*self._reads.values(), *self._writes.values()]:
            os.close(fd)
        self._reads, self._writes, self.slots = {}, {}, []

    def _exchange(self) -> None:
        """Signal every peer, then wait for every peer's signal, at most ``timeout_s`` in all."""
        deadline = time.monotonic() + self.timeout_s
        try:
            for fd in self._writes.values():  # a byte per exchange into a 64 KiB pipe the peer drains: never full
                os.write(fd, b"\x01")
            for peer, fd in self._reads.items():  # non-blocking reads, each after poll says there is a byte
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([fd], [], [], left)[0]:
                        raise CollectiveTimeout(
                            f"shared-memory gradient averaging: rank {self.rank} waited {self.timeout_s:g} s for rank "
                            f"{peer} (train.collective_timeout_s), which is alive but not stepping (stopped, "
                            "deadlocked or swapping?)")
                    try:
                        got = os.read(fd, 1)
                    except BlockingIOError:
                        continue
                    if got != b"\x01":
                        raise EOFError(f"rank {peer}")
                    break
        except (BrokenPipeError, EOFError) as e:
            raise RuntimeError(f"shared-memory gradient averaging: a rank on this machine is gone ({e})") from e

    def average_(self, *flats: torch.Tensor) -> None:
        """Average ``flats`` (float32, contiguous, CPU) over the ranks, in place, as if laid end to end: one exchange
        per slot's worth, not one per tensor. The same bits on every rank."""
        pieces = [f.view(-1) for f in flats if f.numel()]
        total = sum(p.numel() for p in pieces)
        i = off = 0  # the next element to exchange: pieces[i][off]
        for lo in range(0, total, self.slot_numel):
            n, parity = min(self.slot_numel, total - lo), self.exchanges % 2
            self.exchanges += 1
            parts, at = [], 0  # (elements of a piece, where they sit in the slot)
            while at < n:
                take = min(pieces[i].numel() - off, n - at)
                parts.append((pieces[i][off:off + take], at))
                at, off = at + take, off + take
                if off == pieces[i].numel():
                    i, off = i + 1, 0
            for part, at in parts:
                torch.div(part, self.world, out=self.slots[self.rank][parity, at:at + part.numel()])
            self._exchange()
            for part, at in parts:
                k = part.numel()
                torch.add(self.slots[0][parity, at:at + k], self.slots[1][parity, at:at + k], out=part)
                for r in range(2, self.world):
                    part.add_(self.slots[r][parity, at:at + k])

    # the annotations are what DDP checks (this module does not use postponed annotations)
    def hook(self, state: dict, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """Collect the bucket; the backward pass's buckets, from every DDP of the model, are averaged together when
        the pass ends (``_flush``, queued before any DDP queues the wait for its buckets): one synchronisation of
        the ranks a step. Except in a DDP's first backward pass: a static-graph DDP (TorchRec's) then hands over all
        its buckets and waits for them inside one engine callback, so each is averaged at once (``state``: the
        DDP's own, whether its first pass is over)."""
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        if not state["warm"]:
            state["warm"] = bucket.is_last()
            self._pending.append((bucket.buffer(), fut))
            self._flush()
            return fut
        if not self._pending:
            torch.autograd.Variable._execution_engine.queue_callback(self._flush)
        self._pending.append((bucket.buffer(), fut))
        return fut

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        work = [b if b.dtype == torch.float32 and b.is_contiguous() and b.device.type == "cpu"
                else b.to(torch.float32).contiguous() for b, _ in pending]
        self.average_(*work)
        for (buf, fut), w in zip(pending, work):
            if w is not buf:
                buf.copy_(w)
            fut.set_result(buf)


def ddp_modules(model: torch.nn.Module) -> list[DistributedDataParallel]:
    """Every DDP in a DistributedModelParallel: the dense part's, and those TorchRec wraps data-parallel table
    lookups in (kept in a plain list, ``_lookups``, which ``modules()`` does not reach)."""
    found: dict[int, DistributedDataParallel] = {}
    for m in model.modules():
        for cand in [m, *(getattr(m, "_lookups", None) or [])]:
            if isinstance(cand, DistributedDataParallel):
                found.setdefault(id(cand), cand)
    return list(found.values())


def use_shared_memory(model: torch.nn.Module, group=None, timeout_s: float = 1800.0) -> ShmAllReduce | None:
    """Average every DDP bucket of ``model`` through shared memory (a collective; call before the first forward,
    only when every rank of ``group`` runs on this machine). None, with gloo left in place, if setup failed.
    ``timeout_s``: the longest an exchange waits for a peer (``CollectiveTimeout``)."""
    ddps = ddp_modules(model)  # the same modules on every rank: one plan
    if not ddps:
        return None
    # parameters() also lists those DDP ignores (this rank's shards of sharded tables): more than its buckets hold
    numel = sum(sum(p.numel() for p in d.parameters() if p.requires_grad) for d in ddps)
    ar = ShmAllReduce.create(group, numel, timeout_s)
    if ar is not None:
        for d in ddps:
            d.register_comm_hook({"warm": False}, ar.hook)
    return ar
