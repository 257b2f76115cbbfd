"""Driver-side data work fanned out: Ray tasks when Ray is up, else threads; and the prepared-data cache.

Validation, splitting and conversion run one task per file (or per run of row groups), so the
driver reads only metadata itself. A prepared split is cached under ``<cache>/prepared/<key>``,
keyed by the data spec and every input file's size and modification time: the second ``prepare``
of the same data (an ensemble member, a serve replica, a distillation, a rerun) reads the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from ..log import get_logger
from ..storage import cache_dir

log = get_logger(__name__)


def fan_out(fn: Callable[..., Any], calls: Sequence[tuple], what: str) -> list[Any]:
    """``[fn(*args) for args in calls]``, run in parallel: as Ray tasks on the cluster when Ray is initialised
    (0.5 CPU each), otherwise on a thread pool. The first error is raised as itself (same text as a serial run)."""
    if not calls:
        return []
    t0 = time.perf_counter()
    import ray

    if ray.is_initialized() and len(calls) > 1:
        task = ray.remote(num_cpus=0.5, max_retries=0)(fn)
        shared: dict[int, Any] = {}

        def once(arg: Any) -> Any:  # an object passed to many tasks goes to the object store once
            if isinstance(arg, (str, int, float, bool, type(None))):
                return arg
            if id(arg) not in shared:
                shared[id(arg)] = ray.put(arg)
            return shared[id(arg)]

        refs = [task.remote(*map(once, args)) for args in calls]
        try:
            out = ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            for r in refs:
                ray.cancel(r)
            cause = e.cause if getattr(e, "cause", None) is not None else e
            raise cause from None
    else:
        with ThreadPoolExecutor(max_workers=min(len(calls), os.cpu_count() or 1)) as pool:
            out = list(pool.map(lambda args: fn(*args), calls))
    if len(calls) > 1:
        log.info(f"{what}: {len(calls)} tasks in {time.perf_counter() - t0:.1f}s")
    return out


def file_stamp(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of each input file: a change to any of them changes the cache key."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return out


def cache_key(kind: str, spec: dict, files: Sequence[str]) -> str:
    blob = json.dumps({"kind": kind, "spec": spec, "files": file_stamp(files), "v": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """``<cache>/<kind>/<key>``, built by ``build(tmp)`` into a temporary folder renamed into place when complete
    (a half-built cache is never read); returns (folder, whether it was already there)."""
    out = cache_dir(kind) / key
    if (out / "_COMPLETE").exists():
        return out, True
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{key}-"))
    try:
        build(tmp)
        (tmp / "_COMPLETE").write_text("")
        if out.exists():  # an incomplete earlier attempt
            shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, False
