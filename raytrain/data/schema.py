"""The feature schema: which columns are sparse ids, which are dense floats, which is the label.

Every data source produces one. Models take their tables from it, the sharding planner its table
sizes, the batch builder its KeyedJaggedTensor keys. It is plain data, so it travels to Ray workers
as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

Group = Literal["user", "item", "context"]


@dataclass(frozen=True)
class SparseFeature:
    """An id column. Ids must lie in ``[0, cardinality)``; ``multi_valued`` columns hold lists of ids."""

    name: str
    cardinality: int
    multi_valued: bool = False
    group: Group = "context"


@dataclass(frozen=True)
class FeatureSchema:
    sparse: tuple[SparseFeature, ...]
    dense: tuple[str, ...] = ()
    label: str = "label"
    timestamp: str | None = None
    positive_if: str | None = None  # label rule applied when batches are built (parquet sources)
    # which dense columns describe the user or the item (the rest are context: a request must send them); sparse
    # features carry their group themselves. Serving's feature store fills user and item features in from these.
    dense_groups: dict[str, Group] = field(default_factory=dict)
    # a user feature listing the items each user has interacted with (a /recommend can exclude them), if any
    seen_items: str | None = None
    # ordinal training (data.label.ordinal): the column of the raw graded label and the other cuts' rules on it
    grade: str | None = None
    extra_labels: tuple[str, ...] = ()
    # free-form facts about the source (row counts, how the label was made), shown in run dirs
    info: dict = field(default_factory=dict, compare=False)

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    def feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise KeyError(name)

    def group_of(self, name: str) -> Group:
        """The group of a sparse or dense feature: user, item or context."""
        if name in self.dense:
            return self.dense_groups.get(name, "context")
        return self.feature(name).group

    def columns(self) -> list[str]:
        cols = [f.name for f in self.sparse] + list(self.dense) + [self.label]
        return cols + ([self.grade] if self.grade is not None and self.grade != self.label else [])

    def to_dict(self) -> dict:
        return {
            "sparse": [asdict(f) for f in self.sparse],
            "dense": list(self.dense),
            "label": self.label,
            "timestamp": self.timestamp,
            "positive_if": self.positive_if,
            "dense_groups": dict(self.dense_groups),
            "seen_items": self.seen_items,
            "grade": self.grade,
            "extra_labels": list(self.extra_labels),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSchema":
        return cls(
            sparse=tuple(SparseFeature(**f) for f in d["sparse"]),
            dense=tuple(d.get("dense", ())),
            label=d.get("label", "label"),
            timestamp=d.get("timestamp"),
            positive_if=d.get("positive_if"),
            dense_groups=dict(d.get("dense_groups", {})),
            seen_items=d.get("seen_items"),
            grade=d.get("grade"),
            extra_labels=tuple(d.get("extra_labels", ())),
            info=dict(d.get("info", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def table_name(feature: str) -> str:
    """The embedding table of a sparse feature (one table per feature) in every model and checkpoint."""
    return f"t_{feature}"
