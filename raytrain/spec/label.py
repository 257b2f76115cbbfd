"""The label section of a job spec's data: which column is the label, how to binarise it, its ordinal cuts."""

from __future__ import annotations

import operator
import re
from typing import Optional

from pydantic import Field, field_validator, model_validator

from .base import Section

_LABEL_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(\.\d+)?)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}


class LabelSpec(Section):
    """Which column is the label, and (optionally) how to binarise it: ``positive_if: ">= 4"``."""

    column: str = "label"
    positive_if: Optional[str] = None
    ordinal: list[float] = Field(default_factory=list, max_length=16, description=(
        "other cuts of the raw label, trained beside positive_if's as one ordinal (cumulative-logit) model: each "
        "cut c adds the log-loss of [label <op> c] against the model's logit plus a learned offset. The model's "
        "logit stays positive_if's, so metrics, ensembles and serving read it unchanged"))
    ordinal_weight: float = Field(0.5, gt=0.0, le=1.0, description="positive_if's share of the training loss "
                                                                   "with ordinal cuts (the cuts share the rest)")

    @field_validator("positive_if")
    @classmethod
    def _rule(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not _LABEL_RULE.match(v):
            raise ValueError(f"not a rule like '>= 4' (operators: {', '.join(_OPS)})")
        return v

    @model_validator(mode="after")
    def _ordinal(self) -> "LabelSpec":
        if not self.ordinal:
            return self
        m = _LABEL_RULE.match(self.positive_if or "")
        if m is None or m.group(1) not in (">=", ">"):
            raise ValueError("ordinal cuts need positive_if with >= or > (e.g. '>= 4'): the cuts are its other "
                             "thresholds on the same raw label")
        cuts = [float(m.group(2)), *self.ordinal]
        if len(set(cuts)) != len(cuts):
            raise ValueError(f"ordinal: cuts {self.ordinal} repeat a value or positive_if's own ({m.group(2)})")
        return self

    def extra_rules(self) -> tuple[str, ...]:
        """The ordinal cuts as label rules with positive_if's operator, lowest cut first (e.g. '>= 2')."""
        if not self.ordinal:
            return ()
        m = _LABEL_RULE.match(self.positive_if or "")
        assert m is not None
        return tuple(f"{m.group(1)} {c:g}" for c in sorted(self.ordinal))

    def binarise(self, values):
        """Apply ``positive_if`` to an array of raw labels (returns float 0/1)."""
        if self.positive_if is None:
            return values
        m = _LABEL_RULE.match(self.positive_if)
        assert m is not None
        return _OPS[m.group(1)](values, float(m.group(2))).astype("float32")
