"""Kind ``bandit``: off-policy evaluation of a bandit policy on logged feedback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .base import Kind

if TYPE_CHECKING:
    from ..spec.job import JobSpec


def run(spec: JobSpec, address: Optional[str]) -> dict:
    from ..bandit.runner import run_bandit

    return run_bandit(spec)


KIND = Kind(
    name="bandit", run=run,
    outputs=("spec.yaml", "estimates.parquet", "report.json", "estimates.png"),
)
