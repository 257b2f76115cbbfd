"""The private Ray APIs raytrain uses are listed in one place (raytrain.ray_internals) and present in this Ray; when
one is gone, its user falls back to Ray's public behaviour."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_ray_internal_raytrain_uses_is_present_in_this_ray():
    from raytrain.ray_internals import missing

    assert missing() == [], "a Ray upgrade removed or changed what raytrain uses:\n" + "\n".join(missing())


def test_the_list_names_every_private_ray_module_the_code_imports():
    from raytrain.ray_internals import INTERNALS

    listed = {it.module for it in INTERNALS}
    used = set()
    for f in (ROOT / "raytrain").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ray"):
                if any(p.startswith("_") for p in node.module.split(".")):
                    used.add(node.module)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("ray._"):
                used.add(node.value)
    assert used and used <= listed, sorted(used - listed)


def test_without_the_hooks_a_local_run_gets_the_stock_trainer(monkeypatch):
    from ray.train.torch import TorchTrainer

    from raytrain.train import lean

    monkeypatch.setenv("RAYTRAIN_LOCAL_RAY", "1")
    assert lean.trainer_class() is lean.LocalTorchTrainer and issubclass(lean.LocalTorchTrainer, TorchTrainer)
    monkeypatch.setattr(lean, "_HOOKS", False)  # what an upgraded Ray without them gives
    assert lean.trainer_class() is TorchTrainer
