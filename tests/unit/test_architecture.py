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
             "raytrain.bandit", "raytrain.abtest", "raytrain.pipeline", "raytrain.cli", "raytrain.submit",
             "raytrain.kinds")
    bad = {str(f.relative_to(ROOT)): sorted(m for m in _imports(f, False) if m.startswith(upper))
           for f in _files("data", "models", "sharding")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_kind_modules_declare_and_import_their_runners_only_when_run():
    allowed = ("raytrain.spec.sections", "raytrain.spec.training", "raytrain.kinds")
    bad = {str(f.relative_to(ROOT)): sorted(m for m in _imports(f, True) if not m.startswith(allowed))
           for f in _files("kinds")}
    assert {k: v for k, v in bad.items() if v} == {}
    # and the spec's common sections stand on nothing of raytrain but each other
    for name in ("sections.py", "training.py"):
        assert _imports(PKG / "spec" / name, True) <= {"raytrain.spec.sections"}, name


def test_no_module_has_300_lines_or_more():
    sizes = {str(f.relative_to(ROOT)): len(f.read_text().splitlines())
             for f in list(PKG.rglob("*.py")) + list((ROOT / "kernels").rglob("*.py"))}
    assert {k: n for k, n in sizes.items() if n >= 300} == {}
