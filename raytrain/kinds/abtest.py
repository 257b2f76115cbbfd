"""Kind ``abtest``: an A/B analysis of a serve run's variants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .base import Kind

if TYPE_CHECKING:
    from ..spec.job import JobSpec


def run(spec: JobSpec, address: Optional[str]) -> dict:
    from ..abtest import run_abtest

    return run_abtest(spec)


KIND = Kind(
    name="abtest", run=run,
    outputs=("report.json", "report.txt", "ctr.png"),
)
