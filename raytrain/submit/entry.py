"""The entrypoint of a submitted job: run the spec carried in RAYTRAIN_SPEC on the cluster it runs in."""

from __future__ import annotations

import os
import sys

import yaml

from ..spec.loader import parse_spec
from .jobs import SPEC_ENV


def main() -> int:
    text = os.environ.get(SPEC_ENV)
    if not text:
        print(f"error: {SPEC_ENV} is not set: this entrypoint runs specs sent by `raytrain submit`", file=sys.stderr)
        return 2
    from ..cli.main import run_reporting_errors, run_spec

    def run() -> int:
        run_spec(parse_spec(yaml.safe_load(text), f"${SPEC_ENV}"), address=None)  # RAY_ADDRESS: the cluster
        return 0

    return run_reporting_errors(run)


if __name__ == "__main__":
    sys.exit(main())
