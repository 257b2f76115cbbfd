"""Run directories: where a job's runs live and how a reader finds one (a path or a pyarrow.fs URI alike).

A run directory is ``<storage>/<name>/<timestamp>/`` (``raytrain.train.runner.new_run_dir`` / ``new_run_location``);
each kind leaves a marker file when it finishes: ``spec.yaml`` (every run), ``result.json`` (train, tune),
``leaderboard.parquet`` (tune), ``ensemble.json``, ``distill.json``, ``serve.json``, ``report.json`` (bandit,
abtest). Wherever a spec names a run (a serve variant, a teacher, an ensemble's tune run, an abtest's serve run),
it may name the run itself or any directory above it: ``newest_run`` picks the most recently finished run below.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError
from .storage import Store, join, redact


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
