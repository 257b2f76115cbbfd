"""Spec sharding constraints + a cluster topology -> a TorchRec sharding plan."""

from .planner import (
    PlanRow,
    build_constraints,
    describe_plan,
    format_plan,
    make_plan,
    make_topology,
    sharders,
)

__all__ = [
    "PlanRow",
    "build_constraints",
    "describe_plan",
    "format_plan",
    "make_plan",
    "make_topology",
    "sharders",
]
