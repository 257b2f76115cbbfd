"""A/B analysis of served variants (``kind: abtest``): ``analysis`` (the statistics and the run), ``simulate``
(traffic with a known lift, for tests and the coverage benchmark)."""

from .analysis import analyze, format_report, per_user, run_abtest, srm_test

__all__ = ["analyze", "format_report", "per_user", "run_abtest", "srm_test"]
