"""Job specs: YAML -> typed, validated objects."""

from .loader import apply_overrides, derived, load_spec, parse_spec, resolved_yaml, set_path
from .schema import JobSpec

__all__ = ["JobSpec", "apply_overrides", "derived", "load_spec", "parse_spec", "resolved_yaml", "set_path"]
