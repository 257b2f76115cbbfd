"""Job specs: YAML -> typed, validated objects."""

from .loader import apply_overrides, load_spec, parse_spec, resolved_yaml
from .schema import JobSpec

__all__ = ["JobSpec", "apply_overrides", "load_spec", "parse_spec", "resolved_yaml"]
