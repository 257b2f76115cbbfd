"""The layering docs/architecture.md describes, checked on the code's imports, and its size rule."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "raytrain"


def _imports(path: Path, module_level_only: bool) -> set[str]:
    """The raytrain modules ``path`` imports (relative imports resolved), at module level or anywhere."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__.py too)
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = package[:len(package) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
                names = [f"{target}.{a.name}" for a in n.names] if not n.module else [target]
                out.update(names)
            elif n.module and n.module.startswith("raytrain"):
                out.add(n.module)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names if a.name.startswith("raytrain"))
    return out


def _files(*packages: str) -> list[Path]:
    return [f for p in packages for f in sorted((PKG / p).rglob("*.py"))]


def test_data_models_and_sharding_never_import_a_kind_or_the_training_loop():
    upper = ("raytrain.train", "raytrain.tune", "raytrain.serve", "raytrain.ensemble", "raytrain.distill",
             "raytrain.bandit", "raytrain.abtest", "raytrain.cli", "raytrain.submit",
             "raytrain.kinds")
    bad = {str(f.relative_to(ROOT)): sorted(m for m in _imports(f, False) if m.startswith(upper))
           for f in _files("data", "models", "sharding")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_spec_types_stand_at_the_bottom_and_the_registry_on_top():
    """spec/ (every kind's section, JobSpec, the rules, the loader) imports nothing above it, anywhere; no runner
    imports the registry (kinds/), which imports the runners only inside a kind's run / step; only the CLI and a
    submitted job's entry look kinds up."""
    below_spec = ("raytrain.spec", "raytrain.errors", "raytrain.storage", "raytrain.credentials", "raytrain.data",
                  "raytrain.log")
    bad = {str(f.relative_to(ROOT)): sorted(m for m in _imports(f, False) if not m.startswith(below_spec))
           for f in _files("spec")}
    assert {k: v for k, v in bad.items() if v} == {}
    users = {str(f.relative_to(ROOT)) for f in PKG.rglob("*.py")
             if any(m.startswith("raytrain.kinds") for m in _imports(f, False)) and "kinds" not in f.parts}
    assert users == {"raytrain/cli/main.py"}, users
    bad = {str(f.relative_to(ROOT)): sorted(m for m in _imports(f, True) if not m.startswith(("raytrain.spec",
                                                                                             "raytrain.kinds")))
           for f in _files("kinds")}
    assert {k: v for k, v in bad.items() if v} == {}
    # and the spec's common sections stand on nothing of raytrain but each other
    common = {"raytrain.spec.sections", "raytrain.spec.base", "raytrain.spec.text", "raytrain.spec.label"}
    for name in ("sections.py", "training.py", "base.py", "text.py", "label.py"):
        assert _imports(PKG / "spec" / name, True) <= common, name


def test_no_module_has_300_lines_or_more():
    sizes = {str(f.relative_to(ROOT)): len(f.read_text().splitlines())
             for f in list(PKG.rglob("*.py")) + list((ROOT / "kernels").rglob("*.py"))}
    assert {k: n for k, n in sizes.items() if n >= 300} == {}


def _circles(lazy: bool) -> list[list[str]]:
    """Groups of raytrain modules (raytrain.kernels included) that import each other in a loop (Tarjan)."""
    files = {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f for f in PKG.rglob("*.py")}
    files.update({f"raytrain.kernels.{f.stem}".removesuffix(".__init__"): f for f in (ROOT / "kernels").rglob("*.py")})

    def known(m: str) -> str:
        while m and m not in files:
            m = m.rsplit(".", 1)[0] if "." in m else ""
        return m

    graph = {}
    for name, f in files.items():
        mods = _imports(f, not lazy)
        if f.parent.name == "kernels":  # kernels/ ships as raytrain.kernels
            mods = {m.replace("kernels.", "raytrain.kernels.", 1) if m.startswith("kernels.") else m for m in mods}
        graph[name] = {known(m) for m in mods} - {"", name}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_across_packages():
    """No module-level import circle anywhere; a lazy import (inside a function) may close one only inside a
    package (spec's sections and the checks that read them), never across packages (a runner and the registry)."""
    assert _circles(lazy=False) == []
    across = [g for g in _circles(lazy=True) if len({m.split(".")[1] for m in g}) > 1]
    assert across == [], across
