"""Every field a job spec accepts is read by the code that runs the job: a field that validates and is then
ignored is a defect (a user sets it and nothing changes). One test per family (each section of the spec).

What counts as read, outside raytrain/spec/ (which declares and validates the fields): an attribute of that name, a
keyword argument or a string key of that name, a spec method that reads it and is itself called outside spec/
(``train.prefetch_depth()`` reads ``ingest.prefetch_batches``), or the whole section passed on with
``model_dump()`` (``serve.autoscaling`` goes to Ray Serve as is). Static, so it cannot see every path a value takes,
but a field nothing reads fails it, naming the field.
"""

from __future__ import annotations

import ast
import typing
from functools import cache
from pathlib import Path

import pytest
from pydantic import BaseModel

from raytrain.spec.job import JobSpec

PKG = Path(__file__).resolve().parents[2] / "raytrain"


def _sections(model: type[BaseModel], path: str, seen: set) -> list[tuple[str, str]]:
    """(dotted path, field name) of every field under ``model``, nested sections included."""
    out = []
    for name, field in model.model_fields.items():
        out.append((f"{path}{name}", name))
        stack = [field.annotation]
        while stack:
            a = stack.pop()
            if isinstance(a, type) and issubclass(a, BaseModel):
                if a not in seen:
                    seen.add(a)
                    out += _sections(a, f"{path}{name}.", seen)
            else:
                stack.extend(typing.get_args(a))
    return out


@cache
def _reads() -> tuple[set[str], set[str]]:
    """(names read outside spec/, sections passed on whole with model_dump())."""
    outside, dumped = set(), set()
    spec_defs: dict[str, set[str]] = {}  # a spec function or property -> the attributes it reads
    for file in PKG.rglob("*.py"):
        tree = ast.parse(file.read_text())
        if file.parent.name == "spec":
            for fn in ast.walk(tree):
                if isinstance(fn, ast.FunctionDef):
                    spec_defs.setdefault(fn.name, set()).update(
                        n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute))
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute):
                outside.add(n.attr)
                if n.attr == "model_dump" and isinstance(n.value, ast.Attribute):
                    dumped.add(n.value.attr)
            elif isinstance(n, ast.keyword) and n.arg:
                outside.add(n.arg)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                outside.add(n.value)
    for name, attrs in spec_defs.items():
        if name in outside and not name.startswith("_"):
            outside |= attrs
    return outside, dumped


FIELDS = _sections(JobSpec, "", set())
FAMILIES = sorted({p.split(".")[0] for p, _ in FIELDS if "." in p})


@pytest.mark.parametrize("family", FAMILIES)
def test_every_field_of_the_family_is_read_by_the_code_that_runs_it(family):
    outside, dumped = _reads()
    fields = [(p, n) for p, n in FIELDS if p.startswith(f"{family}.")]
    assert fields
    unread = [p for p, n in fields if n not in outside and p.rsplit(".", 2)[-2] not in dumped]
    assert unread == [], f"accepted by the spec and read by nothing outside raytrain/spec/: {unread}"


def test_the_check_finds_a_field_nothing_reads():
    class Probe(BaseModel):
        colour_of_the_sky_setting: int = 0

    assert "colour_of_the_sky_setting" not in _reads()[0]
    assert _sections(Probe, "x.", set()) == [("x.colour_of_the_sky_setting", "colour_of_the_sky_setting")]
