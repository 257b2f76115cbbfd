"""Checks the environment against the lock (scripts/install.sh's constraints): `pip check` passes (every installed
distribution's requirements are met) and every locked distribution is installed at its locked version.

    .venv/bin/python scripts/check_install.py cpu|cuda      # part of `make test`
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    variant = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    lock = ROOT / "requirements" / f"{variant}.txt"
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems = [line for line in check.stdout.splitlines() if line.strip() and "No broken requirements" not in line]
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in md.distributions()}
    for line in lock.read_text().splitlines():
        if line.startswith("#") or "==" not in line:
            continue
        name, version = line.split("==", 1)
        got = installed.get(name)
        if got is None or got.split("+")[0] != version:
            problems.append(f"{name}: locked {version}, installed {got or 'nothing'}")
    for p in problems:
        print(f"[check-install] {p}", file=sys.stderr)
    if problems:
        print(f"[check-install] {len(problems)} problem(s): rebuild the environment (rm -rf .venv && make install)",
              file=sys.stderr)
        return 1
    pins = sum(1 for line in lock.read_text().splitlines() if "==" in line)
    print(f"[check-install] ok: pip check passes and {lock.relative_to(ROOT)}'s {pins} pins are installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
