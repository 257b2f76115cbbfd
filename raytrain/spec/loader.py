"""Load a YAML job spec, apply ``a.b.c=value`` overrides, validate, report every problem at once."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SpecError
from ..storage import adopt, is_uri, redact
from .schema import CUDA_ONLY_SHARDING, ESTIMATORS, IMPLEMENTED_KINDS, STEPS, BanditSpec, JobSpec


def _suggest(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


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
        hint = _suggest(loc[-1], allowed) if allowed else ""
        return f"{path}: unknown key{hint}; allowed keys: {', '.join(allowed)}"
    if kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c.strip()]
        return (
            f"{path}: {err['input']!r} is not allowed{_suggest(err['input'], choices)}; "
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


def _semantic_checks(spec: JobSpec) -> list[str]:
    """Checks that span sections (the schema checks each section on its own)."""
    from ..data import declared_features

    problems = []
    if spec.kind not in IMPLEMENTED_KINDS:
        problems.append(
            f"kind: {spec.kind!r} is not available in this version; available: {', '.join(IMPLEMENTED_KINDS)}"
        )
    steps = (spec.pipeline.steps if spec.pipeline is not None else ["tune", "ensemble", "distill"]) \
        if spec.kind == "pipeline" else [spec.kind]
    if spec.pipeline is not None and spec.kind != "pipeline":
        problems.append("pipeline: only for kind pipeline")
    if spec.kind == "pipeline":
        if len(set(steps)) != len(steps) or steps != sorted(steps, key=STEPS.index):
            problems.append(f"pipeline.steps: {steps}: each step once, in the order {', '.join(STEPS)}")
        for name in ("tune", "ensemble", "distill", "serve"):
            if getattr(spec, name) is not None and name not in steps:
                problems.append(f"{name}: the pipeline has no {name} step (steps: {', '.join(steps)})")
    what = "step" if spec.kind == "pipeline" else "spec"
    if "tune" in steps:
        if spec.tune is None:
            problems.append(f"tune: a tune {what} needs a 'tune' section (metric, search, scheduler, space)")
        else:
            from ..tune.space import check_space

            problems += check_space(spec)
    elif spec.tune is not None and spec.kind == "train":
        problems.append("tune: only for kind tune or pipeline")
    if spec.train.checkpoint.every_steps is not None and any(s in steps for s in ("tune", "distill")):
        # a mid-epoch report would count as a training iteration for Tune's schedulers
        problems.append("train.checkpoint.every_steps: mid-epoch checkpoints are for kind train only")
    if "ensemble" in steps:
        if spec.ensemble is None:
            problems.append(f"ensemble: an ensemble {what} needs an 'ensemble' section (tune_run and top_k, or runs)")
        elif spec.kind == "pipeline" and "tune" in steps:
            if spec.ensemble.tune_run is not None or spec.ensemble.runs:
                problems.append("ensemble: in a pipeline with a tune step the members are its top trials; "
                                "remove tune_run / runs")
        else:
            problems += spec.ensemble.source_problems()
    if "distill" in steps:
        if spec.distill is None:
            problems.append(f"distill: a distill {what} needs a 'distill' section (teacher, student, alpha, temperature)")
        else:
            given = spec.distill.teacher.given()
            fed = spec.kind == "pipeline" and any(s in steps for s in ("train", "tune", "ensemble"))
            if fed and given:
                problems.append(f"distill.teacher: the pipeline's earlier step is the teacher; remove {', '.join(given)}")
            elif not fed and len(given) != 1:
                problems.append("distill.teacher: give exactly one of 'ensemble', 'run' or 'tune_run' "
                                f"(got {', '.join(given) or 'none'})")
    if "serve" in steps:
        if spec.serve is None:
            problems.append(f"serve: a serve {what} needs a 'serve' section (variants, traffic, replicas, batching)")
        else:
            for name, v in spec.serve.variants.items():
                if v.step is not None and spec.kind != "pipeline":
                    problems.append(f"serve.variants.{name}.step: only in a pipeline; give a run path instead")
                elif v.step is not None and v.step not in steps[:steps.index("serve")]:
                    problems.append(f"serve.variants.{name}.step: {v.step!r} is not an earlier step of this pipeline "
                                    f"({', '.join(steps)})")
    elif spec.serve is not None:
        problems.append("serve: only for kind serve or pipeline")
    if is_uri(spec.storage) and spec.kind not in ("train", "tune", "distill"):
        problems.append(f"storage: a URI ({redact(spec.storage)}) is run storage for kinds train, tune and distill "
                        f"(checkpoints a multi-node cluster shares); kind {spec.kind} writes to a local or mounted "
                        "shared path. "
                        "Models stored at a URI can still be read: give the URI as a serve variant's, an ensemble's "
                        "or a teacher's run or tune_run")
    if spec.kind == "bandit":
        bandit = spec.bandit or BanditSpec()
        if spec.data.source not in ("open-bandit", "served-logs"):
            problems.append(f"data.source: kind bandit evaluates logged bandit feedback; use open-bandit or "
                            f"served-logs, not {spec.data.source!r}")
        elif spec.data.source == "served-logs":
            if not spec.data.path:
                problems.append("data.path: served-logs needs the serve run directory (its logs/ folder)")
            if bandit.policy.name not in ("epsilon_greedy", "softmax"):
                problems.append(f"bandit.policy.name: served logs hold a ranker's scores per decision; evaluate "
                                f"epsilon_greedy or softmax over them, not {bandit.policy.name!r}")
            return problems
        if bandit.policy.learns and bandit.learn_fraction == 0.0:
            problems.append(f"bandit.learn_fraction: policy {bandit.policy.name!r} learns from logged rounds; "
                            "give it a share in (0, 1) (evaluating on the rounds it learnt from is biased)")
        if not bandit.estimators:
            problems.append("bandit.estimators: empty; choose from " + ", ".join(ESTIMATORS))
        return problems
    if spec.kind == "abtest":
        if spec.abtest is None:
            problems.append("abtest: kind abtest needs an 'abtest' section (serve_run, ...)")
        return problems
    if spec.abtest is not None:
        problems.append("abtest: only for kind abtest")
    if spec.bandit is not None:
        problems.append("bandit: only for kind bandit or pipeline")
    if spec.distill is not None and spec.kind not in ("distill", "pipeline"):
        problems.append("distill: only for kind distill or pipeline")
    if spec.ensemble is not None and spec.kind not in ("ensemble", "pipeline"):
        problems.append("ensemble: only for kind ensemble or pipeline")
    if spec.data.source in ("open-bandit", "served-logs"):
        problems.append(f"data.source: {spec.data.source} holds logged bandit feedback for kind bandit, not {spec.kind}")
        return problems
    if spec.train.cross_validation is not None:
        if spec.kind not in ("train", "tune"):
            problems.append(f"train.cross_validation: for kinds train and tune, not {spec.kind}")
        if spec.data.source in ("synthetic", "criteo"):
            problems.append(f"train.cross_validation: data.source {spec.data.source} is not folded (use parquet or "
                            "movielens-100k)")
        if spec.data.source == "movielens-100k" and spec.data.history_features:
            problems.append("train.cross_validation: the MovieLens history features are computed from the original "
                            "training split, so validation folds would see them; set data.history_features: false")
        if is_uri(spec.storage):
            problems.append("train.cross_validation: writes its folds beside the run; give a path as storage")
        if spec.train.checkpoint.every_steps:
            problems.append("train.cross_validation: mid-epoch checkpoints (train.checkpoint.every_steps) are for "
                            "single runs")
    sharding = spec.train.sharding
    if spec.train.device == "cpu":
        for where, st in [("default", sharding.default)] + [(f"tables.{k}", v) for k, v in sharding.tables.items()]:
            if st in CUDA_ONLY_SHARDING:
                problems.append(
                    f"train.sharding.{where}: {st!r} needs train.device: cuda (TorchRec shards row-wise only "
                    "on CUDA); on CPU use table_wise, column_wise, table_column_wise or data_parallel"
                )
    if spec.model.arch == "two_tower" and spec.model.dropout > 0:
        problems.append("model.dropout: applies to the top MLP of dlrm and dcn_v2; two_tower has none")
    if spec.model.arch == "two_tower" and spec.model.embedding_l2 > 0:
        problems.append("model.embedding_l2: applies to dlrm and dcn_v2 (their sparse arch); not to two_tower")
    features = declared_features(spec.data)
    if features is not None:
        for name in sharding.tables:
            if name not in features:
                problems.append(
                    f"train.sharding.tables.{name}: no such sparse feature{_suggest(name, features)}; "
                    f"features: {', '.join(features)}"
                )
        cols = spec.data.columns
        if spec.model.arch in ("dlrm", "dcn_v2") and cols is not None and not cols.dense:
            problems.append(f"model.arch: {spec.model.arch} needs at least one dense column (data.columns.dense)")
        if spec.model.arch == "two_tower" and cols is not None and not cols.item_features:
            problems.append("model.arch: two_tower needs data.columns.item_features")
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
