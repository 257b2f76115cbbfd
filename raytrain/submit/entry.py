"""The entrypoint of a submitted job: run the spec carried in RAYTRAIN_SPEC on the cluster it runs in."""

from __future__ import annotations

import os
import sys

import yaml

from ..errors import RaytrainError, SpecError
from ..spec.loader import parse_spec
from .jobs import SPEC_ENV


def main() -> int:
    text = os.environ.get(SPEC_ENV)
    if not text:
        print(f"error: {SPEC_ENV} is not set: this entrypoint runs specs sent by `raytrain submit`", file=sys.stderr)
        return 2
    try:
        spec = parse_spec(yaml.safe_load(text), f"${SPEC_ENV}")
        from ..cli.main import run_spec

        run_spec(spec, address=None)  # inside a job, RAY_ADDRESS points at the cluster
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except RaytrainError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
