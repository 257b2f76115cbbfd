"""The Triton kernels, run by Triton's interpreter on the CPU (no GPU on the test machines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_triton_kernels_match_references_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("triton_parity.py"))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert len(results) == 14
    for r in results:
        assert r["max_err"] < 1e-4, r
        assert r["same_empty"], r
        assert r["same_index"], r  # ties go to the lower item id, as documented
