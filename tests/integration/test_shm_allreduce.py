"""Gradient averaging through shared memory (raytrain.train.shm_allreduce) on real processes.

The same averages as gloo's all-reduce, the same bits on every rank, across chunked buckets and reused
slots; nothing left in /dev/shm; every rank back on gloo when one rank cannot set up; a rank that dies
makes the others fail instead of wait. The training-level check (a sharded model that averages through
shared memory trains exactly what one unsharded process trains) is in test_sharded_equivalence.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import _free_port, run_distributed


def _leftovers() -> list[str]:
    from raytrain.train.shm_allreduce import _shm_dir

    return sorted(p.name for p in _shm_dir().glob("raytrain-grad-*"))


def _average_rounds(rank: int, world: int, sizes: list[int], slot: int):
    import torch.distributed as dist

    from raytrain.train import shm_allreduce

    if slot is not None:
        shm_allreduce.SLOT_NUMEL_MAX = slot  # small slots: buckets go through in several chunks
        ar = shm_allreduce.ShmAllReduce.create(None, max(sizes))
    else:  # ranks that expect different largest buckets (a sharded model's DDP lists other parameters per rank)
        ar = shm_allreduce.ShmAllReduce.create(None, max(sizes) - 300 * rank)
    assert ar is not None and ar.slot_numel == (slot or max(sizes))
    dist.barrier()
    left = _leftovers()
    out = []
    for i, n in enumerate(sizes):
        x = torch.randn(n, generator=torch.Generator().manual_seed(1000 * i + rank)) * (rank + 1)
        ref = x.clone()
        dist.all_reduce(ref)
        ref /= world
        ar.average_(x)
        out.append((x.numpy().copy(), ref.numpy()))
    exchanges = ar.exchanges
    # all of them in one call (a step's buckets): laid end to end, across slot boundaries, an empty one among them
    xs = [torch.randn(n, generator=torch.Generator().manual_seed(7 * i + rank)) for i, n in enumerate([*sizes, 0])]
    refs = [x.clone() for x in xs]
    for r in refs:
        dist.all_reduce(r)
        r /= world
    ar.average_(*xs)
    out += [(x.numpy().copy(), r.numpy()) for x, r in zip(xs, refs)]
    together = ar.exchanges - exchanges
    ar.close()
    return out, left, (exchanges, together)


@pytest.mark.parametrize("world,slot", [(2, 64), (3, 64), (3, None)])
def test_averages_match_gloo_with_the_same_bits_on_every_rank(world, slot):
    sizes = [1, 5, 64, 1000, 257, 64, 3]
    results = run_distributed(_average_rounds, world, sizes, slot)
    for rank, (out, left, exchanges) in enumerate(results):
        assert left == [], f"rank {rank} found {left} in shared memory after setup"
        # with 64-element slots, 1000 -> 16 chunks: the two slots are reused many times
        assert exchanges == (sum(-(-n // (slot or max(sizes))) for n in sizes), -(-sum(sizes) // (slot or max(sizes))))
        for i, (mine, ref) in enumerate(out):
            np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-6, err_msg=f"rank {rank} bucket {i}")
            # bit-identical replicas: every rank sums the same slots in the same order
            assert mine.tobytes() == results[0][0][i][0].tobytes(), f"rank {rank} bucket {i} differs from rank 0"


def _setup_fails_on_rank_1(rank: int, world: int):
    from pathlib import Path

    from raytrain.train import shm_allreduce

    if rank == 1:
        shm_allreduce._shm_dir = lambda: Path("/nonexistent-raytrain-dir")
    ar = shm_allreduce.ShmAllReduce.create(None, 100)
    return ar is None, _leftovers()


def test_a_rank_that_cannot_set_up_leaves_every_rank_on_gloo():
    before = _leftovers()
    for none, _ in run_distributed(_setup_fails_on_rank_1, 2):
        assert none  # every rank, not only the one that failed: a mixed group would deadlock
    assert _leftovers() == before


def _setup_raises_on_rank_1(rank: int, world: int):
    """Not an OSError: torch.from_file failing (or anything else) after the segment and pipes exist."""
    import torch as torch_

    from raytrain.train import shm_allreduce

    if rank == 1:
        def broken(*args, **kwargs):
            raise RuntimeError("from_file broke")

        torch_.from_file = broken
    return shm_allreduce.ShmAllReduce.create(None, 100) is None


def test_any_setup_error_on_a_rank_leaves_every_rank_on_gloo_and_nothing_in_shared_memory():
    before = _leftovers()
    assert run_distributed(_setup_raises_on_rank_1, 2) == [True, True]
    assert _leftovers() == before  # listed once both ranks are done (each unlinks what it made as it leaves)


def _dies_after_setup(rank: int, world: int, port: int, queue, ddp: bool, how: str = "exit") -> None:
    import torch.distributed as dist

    from raytrain.train.shm_allreduce import ShmAllReduce

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if ddp:  # inside a DDP's backward pass: the step's exchange runs in an autograd engine callback
        from torch.nn.parallel import DistributedDataParallel

        from raytrain.train.shm_allreduce import use_shared_memory

        model = DistributedDataParallel(torch.nn.Linear(4, 4))
        assert use_shared_memory(model, timeout_s=3.0) is not None
        for _ in range(2):  # with the peer: the first pass (bucket by bucket), the second (DDP rebuilds its buckets)
            model(torch.ones(2, 4)).sum().backward()
    else:
        ar = ShmAllReduce.create(None, 16, timeout_s=3.0)
    if rank == 1:
        if how == "stop":  # alive and stuck, its pipes open: only the timeout can end the others' wait
            import signal

            queue.put("stopping")
            os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)  # gone without a word: the kernel closes its pipes
    import time

    t0 = time.monotonic()
    try:
        if ddp:
            model(torch.ones(2, 4)).sum().backward()
        else:
            ar.average_(torch.ones(16))
        queue.put("averaged without its peer")
    except RuntimeError as e:
        queue.put(f"raised {type(e).__name__} after {time.monotonic() - t0:.1f} s: {e}")
    queue.close()
    queue.join_thread()  # the message is out before this process ends without cleaning up
    os._exit(0)


@pytest.mark.parametrize("how", ["exit", "stop"])
@pytest.mark.parametrize("ddp", [False, True])
def test_a_rank_that_dies_or_stops_makes_the_others_fail_instead_of_wait(ddp, how):
    """exit: the peer's pipes close, the others fail at once. stop (SIGSTOP): the peer is alive and silent; the
    others raise CollectiveTimeout after the collective timeout (3 s here), as gloo would. Nothing stays in
    /dev/shm either way."""
    before = _leftovers()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_dies_after_setup, args=(r, 2, port, queue, ddp, how)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        said = queue.get(timeout=120)
        if said == "stopping":
            said = queue.get(timeout=120)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()  # the stopped one: SIGKILL ends a stopped process
                p.join(timeout=30)
    assert said.startswith("raised"), said
    seconds = float(said.split(" after ")[1].split(" s")[0])
    if how == "exit":
        assert "RuntimeError" in said and "gone" in said and seconds < 2.5, said
    else:
        assert "CollectiveTimeout" in said and "waited 3 s for rank 1" in said and 2.9 <= seconds < 10, said
    assert _leftovers() == before
