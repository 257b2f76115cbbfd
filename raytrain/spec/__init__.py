"""Job specs: YAML -> typed, validated objects.

``sections`` and ``training`` hold the sections every spec has; each kind's own section is in its module in
``raytrain.kinds``, whose registry also defines ``JobSpec``. This package's names are loaded on first use, so that
the kinds can import the common sections without importing the loader (which imports the kinds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..kinds import JobSpec
    from .loader import apply_overrides, derived, load_spec, parse_spec, resolved_yaml, set_path

__all__ = ["JobSpec", "apply_overrides", "derived", "load_spec", "parse_spec", "resolved_yaml", "set_path"]


def __getattr__(name: str) -> Any:
    if name == "JobSpec":
        from ..kinds import JobSpec

        return JobSpec
    if name in __all__:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
