"""The sections every job spec has (pydantic): data, and the base class that forbids unknown keys.

The sections of the model and training are in ``spec.training``; each job kind's own section is declared in its
module in ``raytrain.kinds``. `docs/spec.md` is the user-facing reference.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from .base import Section
from .label import LabelSpec
from .text import TEXT_COLUMNS, TextSpec


class SplitSpec(Section):
    """How one data set becomes train / validation / test: ``random`` (seeded) or by ``time``."""

    method: Literal["random", "time", "given"] = "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    path: Optional[str] = Field(None, description="given (movielens-100k): a parquet file naming each interaction's "
                                                  "split: user_id, item_id (the source's raw ids) and split (train, "
                                                  "validation or test), e.g. another library's split to compare on")
    cold_items: float = Field(0.0, ge=0.0, lt=1.0, description="movielens-100k: this share of the items (seeded) "
                                                               "held out of training and validation entirely: their "
                                                               "rows go to the test split, their id unknown (0)")

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v):
        if any(f <= 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be three positive numbers summing to 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _given(self):
        if (self.method == "given") != (self.path is not None):
            raise ValueError("method given takes a path (the file naming each row's split); the others take none")
        if self.method == "given" and self.cold_items > 0:
            raise ValueError("cold_items: not with method given (the file decides every row's split)")
        return self


class SyntheticSpec(Section):
    """Criteo-like data generated from a seed, never materialised as a whole."""

    num_sparse: int = Field(8, ge=1, le=1024)
    cardinality: Union[int, list[int]] = Field(100_000, description="ids per sparse feature (one or one each)")
    num_dense: int = Field(13, ge=0, le=1024)
    zipf_alpha: float = Field(1.05, gt=0.0, description="power-law exponent of id frequencies")
    rows: dict[str, int] = Field(default_factory=lambda: {"train": 200_000, "validation": 20_000, "test": 20_000})
    seed: int = 0

    @field_validator("cardinality")
    @classmethod
    def _card(cls, v):
        vals = v if isinstance(v, list) else [v]
        if any(c < 1 or c > 2**40 for c in vals):
            raise ValueError("every cardinality must be in [1, 2^40]")
        return v

    @field_validator("rows")
    @classmethod
    def _rows(cls, v):
        bad = set(v) - {"train", "validation", "test"}
        if bad:
            raise ValueError(f"unknown split {sorted(bad)}; allowed: train, validation, test")
        if any(n < 1 for n in v.values()):
            raise ValueError("row counts must be positive")
        return {"train": 200_000, "validation": 20_000, "test": 20_000} | v

    def cardinalities(self) -> list[int]:
        if isinstance(self.cardinality, list):
            return list(self.cardinality)
        return [self.cardinality] * self.num_sparse

    @model_validator(mode="after")
    def _card_len(self):
        if isinstance(self.cardinality, list) and len(self.cardinality) != self.num_sparse:
            raise ValueError(
                f"cardinality lists {len(self.cardinality)} values but num_sparse is {self.num_sparse}"
            )
        return self


class ColumnsSpec(Section):
    """The declared schema of a parquet data set."""

    sparse: dict[str, int] = Field(default_factory=dict, description="id column -> cardinality")
    multi_valued: dict[str, int] = Field(default_factory=dict, description="list-of-ids column -> cardinality")
    dense: list[str] = Field(default_factory=list)
    user_features: list[str] = Field(default_factory=list, description="columns describing the user: the user "
                                                                         "tower (two_tower); serving fills them in")
    item_features: list[str] = Field(default_factory=list, description="columns describing the item: the item "
                                                                         "tower (two_tower); serving fills them in")
    timestamp: Optional[str] = None


class PathsSpec(Section):
    train: str
    validation: str
    test: str


class OpenBanditSpec(Section):
    """Which Open Bandit Dataset sample: the behaviour policy that logged it and the campaign."""

    behavior_policy: Literal["random", "bts"] = "random"
    campaign: Literal["all", "men", "women"] = "all"


# Criteo Kaggle's cardinalities (distinct values of each categorical feature, as DLRM counts them)
_KAGGLE = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992, 5461306, 10,
           5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)


class CriteoSpec(Section):
    """The Criteo click-log TSV format (raytrain.data.criteo): table sizes the hex values are hashed into."""

    num_embeddings: Union[int, list[int]] = Field(
        default_factory=lambda: list(_KAGGLE), description="rows of each categorical feature's table (one or 26); "
                                                           "default: Criteo Kaggle's cardinalities")
    max_num_embeddings: Optional[int] = Field(None, ge=1, description="cap on every table's rows (DLRM's "
                                                                      "max-ind-range)")
    bad_lines: Literal["error", "skip"] = Field("error", description="a bad line stops with its file and line, or "
                                                                    "is counted and skipped")

    @field_validator("num_embeddings")
    @classmethod
    def _sizes(cls, v):
        vals = v if isinstance(v, list) else [v]
        if isinstance(v, list) and len(v) != 26:
            raise ValueError(f"needs one value or 26 (one per categorical feature), got {len(v)}")
        if any(n < 1 for n in vals):
            raise ValueError("table sizes must be positive")
        return v

    def table_sizes(self) -> list[int]:
        sizes = list(self.num_embeddings) if isinstance(self.num_embeddings, list) else [self.num_embeddings] * 26
        return [min(n, self.max_num_embeddings or n) for n in sizes]


class SequenceColumnsSpec(Section):
    """Parquet histories for the sequential models: one row per action."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    action: Optional[str] = Field(None, description="a rating or action type column, if any")
    num_items: Optional[int] = Field(None, ge=2, description="keep item ids as they are, in [1, num_items) (the id "
                                                             "space of a model that will share the item table); "
                                                             "default: remapped to 1..n")


class HistorySpec(Section):
    """History features (raytrain.data.history): per-user / per-item rating statistics and item lists, taken from
    a held-out share of the training rows that is not trained on (no label leak)."""

    user: str = Field("user_id", description="the user id column (a declared sparse column)")
    item: str = Field("item_id", description="the item id column (a declared sparse column)")
    rating: Optional[str] = Field(None, description="the column averaged (a rating); default the label after "
                                                    "positive_if")
    fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of the training rows held out (not trained on) "
                                                            "for the label-derived features (mean rating, liked "
                                                            "items); 0: label-free features only")
    max_items: Optional[int] = Field(None, ge=1, description="keep each user's latest this many rated / liked items")
    user_vectors: Optional[str] = Field(None, description="a parquet file of user vectors (raytrain data user-vectors "
                                                          "from a sasrec / hstu run): dense user features")


class DataSpec(Section):
    source: Literal["movielens-100k", "synthetic", "parquet", "criteo", "open-bandit", "served-logs"] = "movielens-100k"
    path: Optional[str] = Field(None, description="movielens-100k: a local copy; parquet: one data set to split; "
                                                  "served-logs: a serve run directory")
    paths: Optional[PathsSpec] = Field(None, description="parquet, criteo: explicit train/validation/test paths "
                                                         "(criteo: e.g. day files)")
    criteo: CriteoSpec = Field(default_factory=CriteoSpec)
    columns: Optional[ColumnsSpec] = None
    label: LabelSpec = Field(default_factory=LabelSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    open_bandit: OpenBanditSpec = Field(default_factory=OpenBanditSpec)
    sequences: Optional[SequenceColumnsSpec] = Field(None, description="parquet: the history columns of the "
                                                                        "sequential models (sasrec, hstu)")
    history: Optional[HistorySpec] = Field(None, description="history features; movielens-100k has them unless "
                                                             "'history: null'")
    text: Optional[TextSpec] = Field(None, description="item text through a pretrained language model: dense item "
                                                       "features, and cold start for new items in serving")

    @model_validator(mode="before")
    @classmethod
    def _movielens_history(cls, data):
        if isinstance(data, dict) and data.get("source", "movielens-100k") == "movielens-100k" and "history" not in data:
            data = {**data, "history": {"rating": "rating"}}
        return data

    @model_validator(mode="after")
    def _source_fields(self):
        problems = []
        if self.source == "parquet" and self.sequences is not None:
            if self.path is None:
                problems.append("parquet histories ('sequences') need 'path' (split by position, leave-one-out)")
            if self.columns is not None:
                problems.append("give 'sequences' (histories) or 'columns' (rows to score), not both")
        elif self.source == "parquet":
            if self.history is not None and self.columns is not None:
                declared = set(self.columns.sparse)
                problems += [f"history.{k} {c!r} is not a declared sparse column" for k, c in
                             (("user", self.history.user), ("item", self.history.item)) if c not in declared]
            if (self.path is None) == (self.paths is None):
                problems.append("parquet needs exactly one of 'path' (one data set to split) or 'paths'")
            if self.columns is None:
                problems.append("parquet needs 'columns' (sparse, multi_valued, dense)")
            elif not (self.columns.sparse or self.columns.multi_valued):
                problems.append("parquet 'columns' declares no sparse column")
        elif self.source == "criteo":
            if (self.path is None) == (self.paths is None):
                problems.append("criteo needs exactly one of 'path' (day files to split) or 'paths'")
            if self.columns is not None:
                problems.append("'columns' is only for source parquet; criteo's columns are fixed")
            if self.label.column != "label" or self.label.positive_if is not None:
                problems.append("criteo's label is its first field, 0 or 1: leave 'label' out")
            if self.path is not None and self.split.method == "time":
                problems.append("criteo lines carry no timestamp: split.method random, or 'paths' by day")
        if self.text is not None:
            have = TEXT_COLUMNS.get(self.source)
            if have is None:
                problems.append(f"text: item text is read from movielens-100k in this version, not {self.source}")
            else:
                problems += [f"text.item: {c!r} is not a text column of {self.source} (it has {', '.join(have)})"
                             f"{suggest(c, list(have))}" for c in self.text.item if c not in have]
        if self.split.cold_items > 0 and self.source != "movielens-100k":
            problems.append(f"split.cold_items: for movielens-100k in this version, not {self.source}")
        if self.label.ordinal and self.source not in ("movielens-100k", "parquet"):
            problems.append(f"label.ordinal: for movielens-100k or parquet (a graded label), not {self.source}")
        if self.split.method == "given" and self.source != "movielens-100k":
            problems.append(f"split.method: given is for movielens-100k in this version, not {self.source}")
        if self.history is not None and self.source not in ("movielens-100k", "parquet"):
            problems.append(f"'history' is for source movielens-100k or parquet, not {self.source}")
        if self.source not in ("parquet", "criteo"):
            if self.sequences is not None:
                problems.append(f"'sequences' is only for source parquet, not {self.source}")
            if self.columns is not None:
                problems.append(f"'columns' is only for source parquet, not {self.source}")
            if self.paths is not None:
                problems.append(f"'paths' is only for source parquet or criteo, not {self.source}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def suggest(word: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or ''."""
    import difflib

    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
