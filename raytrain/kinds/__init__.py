"""The registry of job kinds: how each runs (``base.Kind``: its runner, its outputs, its pipeline step). It stands
above the runners it registers, beside the CLI: nothing below imports it. What a kind's spec may hold, and its
checks, are its rule in ``spec.job``, which the loader reads without importing a runner.
"""

from __future__ import annotations

from ..spec.job import RULES, JobSpec
from . import abtest, bandit, distill, ensemble, pipeline, serve, train, tune
from .base import Kind, StepContext

KINDS: dict[str, Kind] = {k.name: k for k in (train.KIND, tune.KIND, ensemble.KIND, distill.KIND, serve.KIND,
                                              bandit.KIND, pipeline.KIND, abtest.KIND)}
assert list(KINDS) == list(RULES), "every kind has a rule in spec.job, in the same order"
assert [n for n, k in KINDS.items() if k.step is not None] == [n for n, r in RULES.items() if r.step]


def kind_of(spec: JobSpec) -> Kind:
    return KINDS[spec.kind]


__all__ = ["KINDS", "Kind", "StepContext", "kind_of"]
