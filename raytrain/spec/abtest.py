"""The spec section of kind ``abtest``: an A/B analysis of a serve run's variants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field

from .sections import Section

if TYPE_CHECKING:
    pass


class CupedSpec(Section):
    pre_period_end: float = Field(description="unix time: requests before it are the pre-period, whose clicks per "
                                              "user are the covariate; the experiment is what comes after")


class AbTestSpec(Section):
    """An A/B analysis of a serve run's variants from its request and feedback logs (raytrain.abtest)."""

    serve_run: str = Field(description="a serve run directory, or a directory above serve runs (its newest)")
    endpoint: Literal["recommend", "predict"] = Field(
        "recommend", description="whose impressions count: items /recommend showed, or rows /predict scored")
    control: Optional[str] = Field(None, description="the variant the others are compared with (default: the "
                                                     "largest share)")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="1 - the confidence level of the intervals")
    srm_alpha: float = Field(0.001, gt=0.0, lt=1.0, description="a sample-ratio p-value below it flags the split")
    include_forced: bool = Field(False, description="count requests that chose their variant (left out by default)")
    cuped: Optional[CupedSpec] = None


