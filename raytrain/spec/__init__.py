"""Job specs: YAML -> typed, validated objects.

``sections`` and ``training`` hold the sections every spec has, ``<kind>.py`` each kind's own section and checks,
``job`` the ``JobSpec`` that holds them all and each kind's rule; ``loader`` reads YAML into them. This package's
names are loaded on first use, so that importing a section does not import the loader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import JobSpec
    from .loader import apply_overrides, derived, load_spec, parse_spec, resolved_yaml, set_path

__all__ = ["JobSpec", "apply_overrides", "derived", "load_spec", "parse_spec", "resolved_yaml", "set_path"]


def __getattr__(name: str) -> Any:
    if name == "JobSpec":
        from .job import JobSpec

        return JobSpec
    if name in __all__:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
