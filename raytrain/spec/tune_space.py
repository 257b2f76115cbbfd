"""Search spaces written in YAML: ``train.optimizer.lr: loguniform(1e-4, 1e-1)``.

Each key is a dotted path into the job spec; each value one of
``uniform(a, b)``, ``loguniform(a, b)``, ``quniform(a, b, q)``, ``randint(a, b)`` (b excluded),
``choice([...])`` or ``grid([...])``. Entries are checked before anything runs: the path must
exist, the range must not be empty, and every value the distribution can produce (its ends, each
choice) must make a valid spec.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

_CALL = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$", re.S)
KINDS = {"uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2, "choice": 1, "grid": 1}


@dataclass
class Dist:
    kind: str
    args: list

    def extremes(self) -> list:
        """Values that bound what the distribution can produce (for validation and planning)."""
        if self.kind in ("choice", "grid"):
            return list(self.args[0])
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return [self.args[0], self.args[1]]

    def to_tune(self):
        from ray import tune

        a = self.args
        return {
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "quniform": lambda: tune.quniform(a[0], a[1], a[2]),
            "randint": lambda: tune.randint(a[0], a[1]),
            "choice": lambda: tune.choice(a[0]),
            "grid": lambda: tune.grid_search(a[0]),
        }[self.kind]()


def tune_of(spec) -> Any:
    """``spec.tune``, which a tune spec always has (validation makes sure)."""
    if spec.tune is None:
        from ..errors import SpecError

        raise SpecError("tune: a tune spec needs a 'tune' section (metric, search, scheduler, space)")
    return spec.tune


def parse_dist(text: Any) -> Dist:
    if not isinstance(text, str):
        raise ValueError(f"expected a distribution like 'loguniform(1e-4, 1e-1)', got {text!r}")
    m = _CALL.match(text)
    if not m or m.group(1) not in KINDS:
        raise ValueError(f"{text!r} is not a distribution; use one of: " + ", ".join(f"{k}(...)" for k in KINDS))
    kind = m.group(1)
    try:
        args = list(ast.literal_eval(f"[{m.group(2)}]"))
    except (ValueError, SyntaxError):
        raise ValueError(f"{text!r}: arguments must be literals (numbers, strings, lists)") from None
    if len(args) != KINDS[kind]:
        raise ValueError(f"{kind} takes {KINDS[kind]} argument(s), got {len(args)}")
    if kind in ("choice", "grid"):
        if not isinstance(args[0], list) or not args[0]:
            raise ValueError(f"{kind} needs a non-empty list, got {args[0]!r}")
    else:
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in args):
            raise ValueError(f"{kind} needs numbers, got {args}")
        if args[0] >= args[1]:
            raise ValueError(f"empty range: {args[0]} >= {args[1]}")
        if kind == "loguniform" and args[0] <= 0:
            raise ValueError(f"loguniform needs a positive lower bound, got {args[0]}")
        if kind == "randint" and not all(isinstance(x, int) for x in args):
            raise ValueError(f"randint needs integers, got {args}")
        if kind == "quniform" and args[2] <= 0:
            raise ValueError(f"quniform needs a positive step, got {args[2]}")
    return Dist(kind, args)


def apply_config(base: dict, config: dict[str, Any]) -> dict:
    """The base spec (as a dict) with one trial's sampled values; a trial is a train run (in a pipeline too)."""
    from .loader import derived, set_path

    doc = derived(base, "train")
    for key, value in config.items():
        set_path(doc, key, value, what="tune.space")
    return doc


def check_space(spec) -> list[str]:
    """Every problem in ``tune.space`` (and the search/space fit), each naming its entry."""
    from ..errors import SpecError
    from .loader import parse_spec

    problems: list[str] = []
    tune = tune_of(spec)
    if not tune.space:
        return ["tune.space: empty; name at least one spec path to search, e.g. train.optimizer.lr"]
    base = spec.model_dump(mode="json")
    for key, text in tune.space.items():
        where = f"tune.space.{key}"
        if key.split(".")[0] in ("tune", "kind", "name", "storage", "ray"):
            problems.append(f"{where}: cannot be searched (only data, model and train fields)")
            continue
        try:
            dist = parse_dist(text)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if tune.search.algorithm != "grid" and dist.kind == "grid":
            problems.append(f"{where}: grid(...) needs search.algorithm: grid (use choice(...) otherwise)")
        for value in dist.extremes():
            try:
                parse_spec(apply_config(base, {key: value}))
            except SpecError as e:
                problems.extend(f"{where}: value {value!r} gives an invalid spec: {p}" for p in e.problems)
                break
    if tune.scheduler.name == "pbt" and tune.search.algorithm not in ("random", "grid"):
        problems.append(f"tune.search.algorithm: pbt explores by itself; use random (or grid) with it, "
                        f"not {tune.search.algorithm}")
    for i, point in enumerate(tune.search.points_to_evaluate):
        unknown = sorted(set(point) - set(tune.space))
        if unknown:
            problems.append(f"tune.search.points_to_evaluate[{i}]: keys not in tune.space: {', '.join(unknown)}")
    return problems


def to_param_space(spec) -> dict:
    return {key: parse_dist(text).to_tune() for key, text in tune_of(spec).space.items()}
