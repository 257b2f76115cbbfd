"""Load a YAML job spec, apply ``a.b.c=value`` overrides, validate, report every problem at once."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SpecError
from ..storage import adopt, is_uri, redact
from .job import JobSpec
from .sections import suggest
from .training import training_checks


def _unwrap(tp: Any) -> list[Any]:
    """The concrete types inside Optional[...] / Union[...]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    return [tp]


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """Walk JobSpec's annotations along ``loc`` to the section a key was found in."""
    current: Any = JobSpec
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            nxt = [t for t in _unwrap(field.annotation) if t is not type(None)]
            current = nxt[0] if nxt else None
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _path(loc: tuple) -> str:
    # pydantic adds the validator kind to unions ('int', 'list[int]'); drop those labels
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in {"int", "str", "float"}))]
    return ".".join(parts) or "<root>"


def _format(err: Any) -> str:
    loc = tuple(err["loc"])
    path = _path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        hint = suggest(loc[-1], allowed) if allowed else ""
        return f"{path}: unknown key{hint}; allowed keys: {', '.join(allowed)}"
    if kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c.strip()]
        return (
            f"{path}: {err['input']!r} is not allowed{suggest(err['input'], choices)}; "
            f"allowed values: {', '.join(choices)}"
        )
    if kind == "missing":
        return f"{path}: required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    inp = err.get("input")
    shown = "" if isinstance(inp, dict) else f"{inp!r}: "
    return f"{path}: {shown}{msg}"


def set_path(doc: dict, dotted: str, value: Any, what: str = "override") -> None:
    """``doc[a][b][c] = value`` for ``dotted`` "a.b.c", creating missing sections; a value in the way is a
    SpecError naming ``what`` (an override, a tune space entry, a student override)."""
    keys = dotted.split(".")
    node = doc
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise SpecError(f"{what} {dotted}: {k!r} holds a value, not a section")
        node = child
    node[keys[-1]] = value


JOB_SECTIONS = ("tune", "ensemble", "distill", "pipeline", "bandit", "serve", "abtest")


def derived(doc: dict, kind: str, **fields: Any) -> dict:
    """A spec of another kind from ``doc`` (a spec as a dict): a copy without any kind's own section, with ``kind``
    and ``fields`` (those given as None left out). A tune trial, a pipeline step and a distillation's student are
    made this way."""
    import copy

    out = copy.deepcopy(doc)
    for key in JOB_SECTIONS:
        out.pop(key, None)
    out["kind"] = kind
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def _parse_value(raw: str) -> Any:
    """YAML scalars/lists/maps; anything YAML cannot parse (like '>= 4') stays a string."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """``train.optimizer.lr=0.02`` -> doc['train']['optimizer']['lr'] = 0.02 (values parsed as YAML)."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            problems.append(f"override {item!r}: expected KEY.PATH=VALUE")
            continue
        try:
            set_path(doc, key.strip(), _parse_value(raw))
        except SpecError as e:
            problems.extend(e.problems)
    if problems:
        raise SpecError(problems)
    return doc


def _semantic_checks(spec: Any) -> list[str]:
    """Checks that span sections (the schema checks each section on its own): which kinds' sections the spec may
    have, then each kind's own checks (its rule in ``spec.job``), then the data / model / train checks."""
    from .job import RULES
    from .pipeline import steps_of

    kind = RULES[spec.kind]
    steps = steps_of(spec)
    what = "step" if spec.kind == "pipeline" else "spec"
    problems = []
    if spec.kind == "pipeline" and kind.checks is not None:
        problems += kind.checks(spec, steps)
        steps = [s for s in steps if s in RULES and RULES[s].step]  # the rest is checked on what can run
    for name in steps:
        k = RULES[name]
        if k.section is not None and getattr(spec, k.section) is None and k.needs:
            article = "an" if name[0] in "aeiou" else "a"
            problems.append(f"{name}: {article} {name} {what} needs {article} '{name}' section ({k.needs})")
        elif k.checks is not None:
            problems += k.checks(spec, steps)
    for name, k in RULES.items():
        if k.section is None or getattr(spec, k.section) is None or name in steps or name == spec.kind:
            continue
        if spec.kind == "pipeline" and k.step:
            problems.append(f"{name}: the pipeline has no {name} step (steps: {', '.join(steps)})")
        else:
            problems.append(f"{name}: only for kind {name}" + (" or pipeline" if k.step else ""))
    if is_uri(spec.storage) and not kind.uri_storage:
        uri_kinds = [n for n, k in RULES.items() if k.uri_storage]
        problems.append(f"storage: a URI ({redact(spec.storage)}) is run storage for kinds {', '.join(uri_kinds[:-1])} "
                        f"and {uri_kinds[-1]} (checkpoints a multi-node cluster shares); kind {spec.kind} writes to a "
                        "local or mounted shared path. Models stored at a URI can still be read: give the URI as a "
                        "serve variant's, an ensemble's or a teacher's run or tune_run")
    if all(RULES[name].uses_models for name in steps):
        problems += training_checks(spec, steps)
    return problems


def parse_spec(doc: Any, source: str | None = None) -> JobSpec:
    if not isinstance(doc, dict):
        raise SpecError(f"the spec must be a mapping of sections, got {type(doc).__name__}", source)
    try:
        spec = JobSpec.model_validate(_adopt_credentials(doc))
    except ValidationError as e:
        raise SpecError(sorted(_format(err) for err in e.errors()), source) from None
    problems = _semantic_checks(spec)
    if problems:
        raise SpecError(problems, source)
    return spec


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a spec file. Raises SpecError listing every problem."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise SpecError(f"cannot read spec: {e.strerror}", str(path)) from None
    except UnicodeDecodeError as e:
        raise SpecError(f"not a text (UTF-8) file: byte 0x{e.object[e.start]:02x} at offset {e.start}", str(path)) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"not valid YAML: {e}", str(path)) from None
    except RecursionError:
        raise SpecError("not valid YAML: nested too deeply", str(path)) from None
    if doc is None:
        raise SpecError("the file is empty", str(path))
    if overrides:
        apply_overrides(doc, overrides)
    return parse_spec(doc, str(path))


def _adopt_credentials(node):
    """Every URI of the spec without its credentials, which stay in this process's environment only
    (raytrain.storage.adopt): the resolved spec, run files and job submissions never hold them."""
    if isinstance(node, dict):
        return {k: _adopt_credentials(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_adopt_credentials(v) for v in node]
    return adopt(node) if isinstance(node, str) else node


def resolved_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def student_spec(teacher_spec: JobSpec, spec: JobSpec) -> JobSpec:
    """The teacher's spec with the student overrides, as a distill spec (name, storage, ray from ``spec``)."""
    assert spec.distill is not None
    doc = derived(teacher_spec.model_dump(mode="json"), "distill", name=spec.name, storage=spec.storage,
                  ray=spec.ray.model_dump(mode="json"), distill=spec.distill.model_dump(mode="json"))
    for key, value in spec.distill.student.items():
        set_path(doc, key, value, what="distill.student")
    return parse_spec(doc, "distill.student applied to the teacher's spec")
