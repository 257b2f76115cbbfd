"""The spec section of kind ``pipeline``: train -> tune -> ensemble -> distill -> serve in one spec."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from .sections import Section

if TYPE_CHECKING:
    from .job import JobSpec


def steps_in_order() -> list[str]:
    """The kinds that can be pipeline steps (they declare a ``step``), in the order of ``job.RULES``: the only order a
    pipeline runs them in."""
    from .job import RULES

    return [name for name, rule in RULES.items() if rule.step]


def _default_steps() -> list[str]:
    return ["tune", "ensemble", "distill"]


class PipelineSpec(Section):
    """Steps run in this order, each reading the previous step's artifacts from the pipeline's run directory."""

    steps: list[str] = Field(default_factory=_default_steps, min_length=1,
                             description="kinds run as steps, in the registry's order (train, tune, ensemble, distill, serve)")


def steps_of(spec: JobSpec) -> list[str]:
    """The kinds a spec runs: a pipeline's steps, or its own kind."""
    if spec.kind != "pipeline":
        return [spec.kind]
    return list(spec.pipeline.steps) if spec.pipeline is not None else _default_steps()


def checks(spec: JobSpec, steps: list[str]) -> list[str]:
    order = steps_in_order()
    unknown = [s for s in steps if s not in order]
    if unknown:
        return [f"pipeline.steps: {', '.join(map(repr, unknown))} cannot be a step; steps: {', '.join(order)}"]
    if len(set(steps)) != len(steps) or steps != sorted(steps, key=order.index):
        return [f"pipeline.steps: {steps}: each step once, in the order {', '.join(order)}"]
    return []


