"""Run directories: where a job's runs live and how a reader finds one (a path or a pyarrow.fs URI alike).

A run directory is ``<storage>/<name>/<timestamp>/`` (``raytrain.train.runner.new_run_dir`` / ``new_run_location``);
each kind leaves a marker file when it finishes: ``spec.yaml`` (every run), ``result.json`` (train, tune),
``leaderboard.parquet`` (tune), ``ensemble.json``, ``distill.json``, ``serve.json``, ``report.json`` (bandit,
abtest). Wherever a spec names a run (a serve variant, a teacher, an ensemble's tune run, an abtest's serve run),
it may name the run itself or any directory above it: ``newest_run`` picks the most recently finished run below.
New runs are laid out here too (``new_run_dir``, ``new_run_location`` for a URI, ``open_run``); a run's best
checkpoint is ``train.export.best_checkpoint_location``, a tune run's top trials ``ensemble.members``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .log import get_logger
from .storage import Store, is_uri, join, mirror_of, redact

log = get_logger(__name__)


def newest_run(location: str | Path, marker: str) -> str:
    """``location`` itself if it holds ``marker``, else the run directory below it (at any depth) whose ``marker``
    was written last. Raises CheckpointError naming the place when there is none."""
    import pyarrow.fs as pafs

    location = str(location)
    store = Store(location)
    if store.exists(marker):
        return location
    found = []
    if store.exists():
        infos = store.fs.get_file_info(pafs.FileSelector(store.root, recursive=True))
        root = store.root.rstrip("/") + "/"
        found = [(i.mtime_ns or 0, i.path[len(root):].rsplit("/", 1)[0]) for i in infos
                 if i.type == pafs.FileType.File and i.base_name == marker and i.path.startswith(root)
                 and "/" in i.path[len(root):]]
    if not found:
        raise CheckpointError(f"{redact(location)}: no {marker} in it or below it")
    return join(location, max(found)[1])


def newest_local_run(location: str | Path, marker: str) -> Path:
    """``newest_run`` as a local directory (a URI run is downloaded into the local cache first)."""
    from .storage import materialize

    return materialize(newest_run(location if isinstance(location, str) and "://" in location
                                  else str(Path(location).expanduser()), marker))


def new_run_dir(spec: Any) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(spec.storage).expanduser().resolve() / spec.name
    run_dir = base / stamp
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def open_run(spec: Any, note: str = "") -> Path:
    """A new local run directory with the resolved spec in it, the console's log file attached there, announced."""
    from . import console
    from .spec import resolved_yaml

    run_dir = new_run_dir(spec)
    console.attach(run_dir / "logs")
    (run_dir / "spec.yaml").write_text(resolved_yaml(spec))
    log.info(f"run directory: {run_dir}{note}")
    return run_dir


def new_run_location(spec: Any) -> tuple[Path, str]:
    """(local directory, where the run lives): the same path, or a fresh ``<storage>/<name>/<stamp>`` URI whose
    local mirror is the directory (``raytrain.storage``)."""
    if not is_uri(spec.storage):
        run_dir = new_run_dir(spec)
        return run_dir, str(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    location, n = join(spec.storage, spec.name, stamp), 1
    while Store(location).exists():
        n += 1
        location = join(spec.storage, spec.name, f"{stamp}-{n}")
    local = mirror_of(location)
    if local.exists():
        shutil.rmtree(local)
    local.mkdir(parents=True)
    return local, location
