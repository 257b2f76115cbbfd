"""Run storage: a local (or mounted, shared) path, or a ``pyarrow.fs`` URI such as ``s3://bucket/prefix``.

A multi-node cluster needs storage every node can reach: a shared filesystem mounted at the same path
on every node, or an object store URI. With a URI:

- Ray Train keeps its state and the checkpoints there: every rank writes its DCP shards to a local
  temporary directory and reports it; Ray uploads the files of all ranks into one checkpoint directory;
- rank 0 writes the run's small files (metrics, plan, resumes) straight to the URI;
- the driver keeps a local mirror of the run directory (``~/.cache/raytrain/runs/...``) for its reports
  and uploads what it writes (spec, schema, result, metrics table) back;
- readers (serve, ensemble, distill, ``load_model``) download a URI run into a local cache first.

URIs are anything ``pyarrow.fs.FileSystem.from_uri`` takes, query options included, e.g.
``s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http`` for an S3-compatible store.

Credentials: ``raytrain.credentials``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .credentials import CREDENTIALS_ENV, adopt, has_credentials, is_uri, open_uri, redact, with_credentials

__all__ = ["CREDENTIALS_ENV", "Mirror", "Store", "adopt", "cache_dir", "filesystem", "has_credentials", "is_uri", "join",
           "materialize", "mirror_of", "open_uri", "redact", "with_credentials"]



def join(location: str, *parts: str) -> str:
    """``location``/parts, keeping a URI's query string at the end."""
    base, sep, query = str(location).partition("?")
    out = "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p]])
    return f"{out}{sep}{query}"


def filesystem(location: str):
    """(pyarrow filesystem, path inside it) for a URI or a local path. For a URI whose credentials were adopted, a
    filesystem that resolves them in each process that uses it and pickles without them."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(str(location).removeprefix("file://")).expanduser().resolve())
    location = adopt(location)
    full = with_credentials(location)
    fs, path = open_uri(full)
    if full == location:
        return fs, path
    from .credentials_fs import ResolvingHandler

    return pafs.PyFileSystem(ResolvingHandler(location, fs)), path




class Store:
    """Files of one run directory, wherever it lives (the same calls for a path and a URI)."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.remote = is_uri(self.location)
        self.fs, self.root = filesystem(self.location)

    def path(self, rel: str = "") -> str:
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def location_of(self, fs_path: str) -> str:
        """The location (URI, or local path) of ``fs_path``, a path inside this store's filesystem below its root
        (what Ray reports for a checkpoint or a trial on the store)."""
        root = self.root.rstrip("/") + "/"
        if not fs_path.startswith(root):
            raise ValueError(f"{fs_path}: not inside {redact(self.location)}")
        return join(self.location, fs_path[len(root):])

    def read_parquet(self, rel: str):
        import pandas as pd

        return pd.read_parquet(self.path(rel), filesystem=self.fs)

    def _parent(self, rel: str) -> None:
        parent = self.path(rel).rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)

    def write_text(self, rel: str, text: str) -> None:
        self._parent(rel)
        if not self.remote:  # atomic on a filesystem: readers never see half a file
            tmp = Path(self.path(rel) + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.path(rel))
            return
        with self.fs.open_output_stream(self.path(rel)) as f:  # object stores publish whole objects
            f.write(text.encode())

    def append_text(self, rel: str, text: str) -> None:
        """Append (rewrite on an object store: these files are a few lines)."""
        if not self.remote:
            self._parent(rel)
            with open(self.path(rel), "a") as f:
                f.write(text)
            return
        self.write_text(rel, (self.read_text(rel) if self.exists(rel) else "") + text)

    def read_text(self, rel: str) -> str:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read().decode()

    def exists(self, rel: str = "") -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def files(self, rel: str = "") -> list[str]:
        """Every file below ``rel``, as paths relative to the run directory."""
        import pyarrow.fs as pafs

        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=True))
        root = self.root.rstrip("/") + "/"
        return sorted(i.path.removeprefix(root) for i in infos if i.type == pafs.FileType.File)

    def dirs(self, rel: str = "") -> list[str]:
        """The names of the directories right below ``rel``, sorted."""
        import pyarrow.fs as pafs

        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def download(self, local: str | Path, skip=lambda rel: False) -> Path:
        """Copy the run's files (except those ``skip`` names) into ``local``; returns it."""
        import pyarrow.fs as pafs

        local = Path(local)
        lfs = pafs.LocalFileSystem()
        for rel in self.files():
            if skip(rel):
                continue
            target = local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(self.path(rel), str(target), source_filesystem=self.fs, destination_filesystem=lfs)
        return local

    def upload_file(self, local: str | Path, rel: str) -> None:
        import pyarrow.fs as pafs

        self._parent(rel)
        pafs.copy_files(str(local), self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def upload(self, local: str | Path, skip=lambda rel: False) -> None:
        """Copy the files below ``local`` into the run directory (except those ``skip`` names)."""
        local = Path(local)
        for f in sorted(local.rglob("*")):
            rel = f.relative_to(local).as_posix()
            if f.is_file() and not skip(rel):
                self.upload_file(f, rel)


class Mirror:
    """A run directory as the driver sees it: a local directory, and for a URI run the store it mirrors.
    What the driver writes goes to both (``put``) or is uploaded at the end (``publish``)."""

    def __init__(self, local: str | Path, location: str | Path):
        self.local, self.location = Path(local), str(location)
        self.store = Store(self.location) if is_uri(self.location) else None

    def put(self, rel: str, text: str) -> None:
        (self.local / rel).write_text(text)
        if self.store is not None:
            self.store.write_text(rel, text)

    def share(self, prepared):
        """``prepared`` with the files raytrain made on this node (in the local run directory, or in its data cache,
        e.g. MovieLens splits) also uploaded to the URI run directory and recorded in ``prepared.shared``, so
        training workers on any node read them; the user's own files (``data.path``) stay as they are. Unchanged
        for a path run."""
        import dataclasses

        if self.store is None:
            return prepared
        root, cache = self.local.resolve(), cache_dir("").resolve()
        shared: dict[str, list[str]] = {}
        for split, files in prepared.paths.items():
            shared[split] = []
            for f in files:
                path = Path(f).resolve()
                if path.is_relative_to(root):
                    rel = path.relative_to(root).as_posix()
                elif path.is_relative_to(cache):
                    rel = f"data/{split}/{path.name}"
                else:  # readable where the user put them (a shared mount)
                    shared[split].append(f)
                    continue
                self.store.upload_file(path, rel)
                shared[split].append(join(self.location, rel))
        return dataclasses.replace(prepared, shared=shared)

    def publish(self, skip_dirs: tuple[str, ...]) -> None:
        """Upload the driver's files (not those under ``skip_dirs``) to the URI run directory."""
        if self.store is not None:
            self.store.upload(self.local, skip=lambda rel: rel.startswith(skip_dirs) or rel.endswith(".tmp"))


def cache_dir(kind: str) -> Path:
    base = Path(os.environ.get("RAYTRAIN_CACHE", Path.home() / ".cache" / "raytrain"))
    return base / kind


def mirror_of(location: str) -> Path:
    """The local directory that mirrors a URI run directory (stable for one URI)."""
    digest = hashlib.sha256(location.encode()).hexdigest()[:12]
    name = "-".join(location.split("?")[0].rstrip("/").split("/")[-2:])
    return cache_dir("runs") / f"{name}-{digest}"


def materialize(location: str | Path) -> Path:
    """A local directory with a run's files: the path itself, or a fresh download of a URI."""
    if not is_uri(str(location)):
        return Path(str(location).removeprefix("file://")).expanduser()
    location = str(location)
    store = Store(location)
    if not store.exists():
        raise FileNotFoundError(f"{redact(location)}: nothing there")
    local = mirror_of(location)
    from .log import get_logger

    get_logger(__name__).info(f"downloading {redact(location)} -> {local}")
    import shutil

    shutil.rmtree(local, ignore_errors=True)  # a file gone from the store (a removed shard) must not linger here
    return store.download(local)
