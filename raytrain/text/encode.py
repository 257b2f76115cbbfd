"""Encoding a catalogue's text as batch inference on Ray, cached.

``encode_catalogue`` turns (id, text) pairs into sentence vectors with Ray Data: ``map_batches`` over a pool of
encoder actors (each loads the encoder once), the way Ray users run offline inference; Ray Data draws its progress
bar. Without a running Ray (a unit test, a script) the same encoder runs in this process. The vectors are cached as
parquet under raytrain's cache, keyed by the encoder's identity (its weights) and every (id, text) pair, so a second
run, a tune trial or a serve replica reads them instead of encoding again.

``fit_projection`` / ``project``: the vectors as a few dense features: a PCA fitted on the catalogue (texts only, no
labels), each component scaled to unit variance. The projection is kept with the prepared data so a new item's text
(cold start) lands in the same space.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError


class _EncodeBatch:
    """A Ray Data actor: loads the encoder once, encodes each batch of rows."""

    def __init__(self, encoder: str, batch_size: int) -> None:
        import torch

        from .encoder import TextEncoder

        torch.set_num_threads(1)
        self.encoder, self.batch_size = TextEncoder(encoder), batch_size

    def __call__(self, batch: dict) -> dict:
        return {"id": batch["id"], "vector": self.encoder.encode([str(t) for t in batch["text"]], self.batch_size)}


def cache_path(identity: str, ids: np.ndarray, texts: list[str]) -> Path:
    from ..data.fetch import cache_root

    h = hashlib.sha256(identity.encode())
    for i, t in zip(ids.tolist(), texts):
        h.update(f"{i}\t{t}\n".encode())
    return cache_root() / "text" / f"vectors-{h.hexdigest()[:20]}.parquet"


def encode_catalogue(ids: np.ndarray, texts: list[str], encoder: str = "minilm", batch_size: int = 64,
                     workers: int = 1, cpus_per_worker: float = 1.0,
                     what: str = "item texts") -> tuple[np.ndarray, str]:
    """([len(ids), dim] float32 vectors, row i for ``ids[i]`` (unique), the encoder's identity); read from the cache
    when encoded before."""
    from .encoder import resolve

    ids = np.asarray(ids, dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{what}: ids must be unique")
    _, identity = resolve(encoder)
    path = cache_path(identity, ids, texts)
    if path.exists():
        table = pq.read_table(path)
        got = table.column("id").to_numpy()
        if np.array_equal(got, ids):
            print(f"[raytrain] {len(ids):,} {what}: vectors read from the cache {path}", flush=True)
            return np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32), identity
    t0 = time.perf_counter()
    vectors = _on_ray(ids, texts, encoder, batch_size, workers, cpus_per_worker, what) if _ray_running() else \
        _in_process(ids, texts, encoder, batch_size, what)
    rate = len(ids) / max(time.perf_counter() - t0, 1e-9)
    print(f"[raytrain] {len(ids):,} {what} encoded with {identity} ({rate:,.0f} texts/s)", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.time_ns()}")
    pq.write_table(pa.table({"id": ids, "vector": pa.array(list(vectors), type=pa.list_(pa.float32()))}), tmp)
    tmp.rename(path)  # whole or absent: a reader never sees half a file
    return vectors, identity


def _ray_running() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _in_process(ids: np.ndarray, texts: list[str], encoder: str, batch_size: int, what: str) -> np.ndarray:
    from .encoder import TextEncoder

    enc = TextEncoder(encoder)
    parts, step = [], max(batch_size * 16, 1)
    for lo in range(0, len(texts), step):
        parts.append(enc.encode(texts[lo:lo + step], batch_size))
        print(f"[raytrain] encoding {what}: {min(lo + step, len(texts)):,}/{len(texts):,}", flush=True)
    return np.concatenate(parts) if parts else np.zeros((0, enc.dim), np.float32)


def _on_ray(ids: np.ndarray, texts: list[str], encoder: str, batch_size: int, workers: int, cpus: float,
            what: str) -> np.ndarray:
    import pandas as pd
    import ray.data

    print(f"[raytrain] encoding {len(ids):,} {what} on {workers} Ray Data encoder actor(s)", flush=True)
    ds = ray.data.from_pandas(pd.DataFrame({"id": ids, "text": texts}))
    out = ds.map_batches(_EncodeBatch, fn_constructor_args=(encoder, batch_size), batch_size=batch_size * 8,
                         concurrency=workers, num_cpus=cpus, batch_format="numpy").to_pandas()
    order = pd.Series(np.arange(len(out)), index=out["id"].to_numpy())
    return np.stack(out["vector"].to_numpy()[order.loc[ids].to_numpy()]).astype(np.float32)


def fit_projection(vectors: np.ndarray, dims: int) -> dict[str, np.ndarray]:
    """PCA of the catalogue's vectors to ``dims`` components, each scaled to unit variance over the catalogue."""
    dims = min(dims, vectors.shape[1], max(len(vectors) - 1, 1))
    mean = vectors.astype(np.float64).mean(axis=0)
    _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
    components = vt[:dims]
    scale = ((vectors - mean) @ components.T).std(axis=0)
    return {"mean": mean.astype(np.float32), "components": components.astype(np.float32),
            "scale": np.where(scale > 0, scale, 1.0).astype(np.float32)}


def project(projection: dict[str, np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """[N, dims] float32 dense features of sentence vectors."""
    return (((vectors - projection["mean"]) @ projection["components"].T) / projection["scale"]).astype(np.float32)
