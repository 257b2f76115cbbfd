"""The job spec as typed objects (pydantic). Unknown keys are errors everywhere.

Each section documents its fields; `docs/spec.md` is the user-facing reference. Sections for later
kinds (tune, distill, serve, bandit) attach to ``JobSpec`` the same way ``train`` does.
"""

from __future__ import annotations

import operator
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHARDING_TYPES = (
    "auto",
    "data_parallel",
    "table_wise",
    "column_wise",
    "table_column_wise",
    "row_wise",
    "table_row_wise",
)
CUDA_ONLY_SHARDING = ("row_wise", "table_row_wise")
KINDS = ("train", "tune", "ensemble", "distill", "serve", "bandit", "pipeline", "abtest")
IMPLEMENTED_KINDS = ("train", "tune", "bandit", "ensemble", "distill", "serve", "pipeline", "abtest")
POLICIES = ("bernoulli_ts", "epsilon_greedy", "softmax", "linucb", "linear_ts")
ESTIMATORS = ("ips", "snips", "dm", "dr", "switch_dr", "dr_os")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_LABEL_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(\.\d+)?)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}


class LabelSpec(Section):
    """Which column is the label, and (optionally) how to binarise it: ``positive_if: ">= 4"``."""

    column: str = "label"
    positive_if: Optional[str] = None

    @field_validator("positive_if")
    @classmethod
    def _rule(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not _LABEL_RULE.match(v):
            raise ValueError(f"not a rule like '>= 4' (operators: {', '.join(_OPS)})")
        return v

    def binarise(self, values):
        """Apply ``positive_if`` to an array of raw labels (returns float 0/1)."""
        if self.positive_if is None:
            return values
        m = _LABEL_RULE.match(self.positive_if)
        assert m is not None
        return _OPS[m.group(1)](values, float(m.group(2))).astype("float32")


class SplitSpec(Section):
    """How one data set becomes train / validation / test: ``random`` (seeded) or by ``time``."""

    method: Literal["random", "time"] = "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v):
        if any(f <= 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be three positive numbers summing to 1, got {list(v)}")
        return v


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
    user_features: list[str] = Field(default_factory=list, description="features of the user tower (two_tower)")
    item_features: list[str] = Field(default_factory=list, description="features of the item tower (two_tower)")
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
    history_features: bool = Field(
        True, description="movielens-100k: add per-user / per-item rating history from the training split"
    )

    @model_validator(mode="after")
    def _source_fields(self):
        problems = []
        if self.source == "parquet":
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
        else:
            if self.columns is not None:
                problems.append(f"'columns' is only for source parquet, not {self.source}")
            if self.paths is not None:
                problems.append(f"'paths' is only for source parquet or criteo, not {self.source}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DcnSpec(Section):
    num_layers: int = Field(3, ge=1, le=16)
    low_rank_dim: int = Field(16, ge=1)


class ModelSpec(Section):
    arch: Literal["dlrm", "dcn_v2", "two_tower"] = "dcn_v2"
    embedding_dim: int = Field(16, ge=1, le=4096)
    dense_arch: list[int] = Field(default_factory=lambda: [64], description="bottom MLP; embedding_dim is appended")
    over_arch: list[int] = Field(default_factory=lambda: [128, 64], description="top MLP; the 1-unit output is appended")
    tower: list[int] = Field(default_factory=lambda: [64, 32], description="two_tower: each tower's MLP")
    dcn: DcnSpec = Field(default_factory=DcnSpec)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dlrm / dcn_v2: dropout on the output of each hidden layer "
                                                             "of the top MLP (over_arch), in training only")
    embedding_l2: float = Field(0.0, ge=0.0, description="dlrm / dcn_v2: L2 penalty on the embeddings a batch looks "
                                                         "up, added to the training loss")

    @field_validator("dense_arch", "over_arch", "tower")
    @classmethod
    def _positive(cls, v):
        if any(n < 1 for n in v):
            raise ValueError("layer sizes must be positive")
        return v


class ShardingSpec(Section):
    default: Literal[SHARDING_TYPES] = "auto"  # type: ignore[valid-type]
    tables: dict[str, Literal[SHARDING_TYPES]] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="feature name -> sharding type"
    )
    pooling_factors: dict[str, float] = Field(
        default_factory=dict, description="feature name -> expected ids per sample (TorchRec's pooling factor): a "
                                          "hint to the planner's cost model; default 1")

    @field_validator("pooling_factors")
    @classmethod
    def _pooling(cls, v):
        if any(x <= 0 for x in v.values()):
            raise ValueError("pooling factors must be positive")
        return v


class OptimizerSpec(Section):
    sparse: Literal["rowwise_adagrad", "adagrad", "sgd", "adam"] = "rowwise_adagrad"
    dense: Literal["adam", "adagrad", "sgd"] = "adam"
    lr: float = Field(0.01, gt=0.0)
    sparse_lr: Optional[float] = Field(None, gt=0.0, description="defaults to lr")
    weight_decay: float = Field(0.0, ge=0.0, description="dense parameters only")
    eps: float = Field(1e-8, gt=0.0)


class CheckpointSpec(Section):
    every_epochs: int = Field(1, ge=1)
    every_steps: Optional[int] = Field(None, ge=1, description="also save every this many steps inside an epoch, "
                                                                "with the data position (kind train)")
    keep: int = Field(2, ge=1)


class IngestSpec(Section):
    """How workers stream their rows (raytrain.data.stream)."""

    shuffle_buffer_rows: int = Field(262_144, ge=1, description="rows shuffled together: memory per worker is "
                                                                 "about this many rows (or one row group if larger)")
    prefetch_batches: int = Field(4, ge=0, description="batches built ahead of the step by a background thread")


class ResourcesSpec(Section):
    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)


class CrossValidationSpec(Section):
    """k-fold cross-validation over the pooled training and validation rows (raytrain.train.crossval)."""

    folds: int = Field(ge=2, le=50)
    seed: int = Field(0, description="the permutation that deals rows into folds")


class TrainSpec(Section):
    workers: int = Field(2, ge=1, le=4096)
    device: Literal["cpu", "cuda"] = "cpu"
    resources_per_worker: ResourcesSpec = Field(default_factory=ResourcesSpec)
    sharding: ShardingSpec = Field(default_factory=ShardingSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: int = Field(1024, ge=1, description="global batch size, split evenly over workers")
    eval_batch_size: int = Field(4096, ge=1)
    epochs: int = Field(5, ge=1)
    lr_decay: float = Field(1.0, gt=0.0, le=1.0, description="every learning rate (dense and sparse) is "
                                                          "multiplied by this after each epoch")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    ingest: IngestSpec = Field(default_factory=IngestSpec)
    audit_examples: bool = Field(False, description="write the ids of every training example consumed, per step, "
                                                    "to <run>/audit/ (to check exactly-once resumes)")
    max_failures: int = Field(0, ge=-1, description="-1: retry forever")
    seed: int = 0
    threads_per_worker: Optional[int] = Field(None, ge=1, description="torch intra-op threads per worker")
    cross_validation: Optional[CrossValidationSpec] = Field(
        None, description="k-fold cross-validation: k runs, the metrics' mean and spread (kind train; in kind tune "
                          "each trial runs every fold and reports their mean)")

    @model_validator(mode="after")
    def _batch(self):
        if self.batch_size % self.workers:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by workers {self.workers}")
        return self


class SearchSpec(Section):
    """How trial configurations are chosen."""

    algorithm: Literal["random", "grid", "optuna_tpe", "optuna_gp"] = "random"
    seed: Optional[int] = 0
    startup_trials: Optional[int] = Field(
        None, ge=1, description="optuna_*: random trials before the model takes over (default: a third of "
                                "num_samples, at least 2; Optuna's own default of 10 would make short runs random)")
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="warm start: configs (space keys -> values) tried first"
    )


class SchedulerSpec(Section):
    """When trials stop early. Times are in epochs."""

    name: Literal["fifo", "asha", "hyperband", "median_stopping", "pbt"] = "fifo"
    grace_period: int = Field(1, ge=1, description="asha / median_stopping: epochs before a trial may stop")
    reduction_factor: float = Field(3.0, gt=1.0, description="asha / hyperband")
    max_t: Optional[int] = Field(None, ge=1, description="asha / hyperband: default train.epochs")
    min_samples_required: int = Field(3, ge=1, description="median_stopping")
    perturbation_interval: int = Field(1, ge=1, description="pbt: epochs between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="pbt: bottom fraction that copies the top")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="pbt: chance to resample, else perturb")


class TrialResourcesSpec(Section):
    cpu: float = Field(0.25, gt=0.0, description="the trial's driver (its training workers come on top)")


class TuneSpec(Section):
    metric: str = "val_auc"
    mode: Literal["max", "min"] = "max"
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: int = Field(8, ge=1, description="trials (for grid: repetitions of the whole grid)")
    max_concurrent_trials: int = Field(2, ge=1)
    time_budget_s: Optional[float] = Field(None, gt=0)
    resources_per_trial: TrialResourcesSpec = Field(default_factory=TrialResourcesSpec)
    space: dict[str, Any] = Field(default_factory=dict, description="dotted spec path -> distribution")


class PolicySpec(Section):
    """The evaluation policy; parameters of other policies are ignored."""

    name: Literal[POLICIES] = "bernoulli_ts"  # type: ignore[valid-type]
    prior: Literal["uniform", "zozotown"] = Field("zozotown", description="bernoulli_ts: Beta prior per item")
    learn: bool = Field(False, description="bernoulli_ts: update the prior with the learning rounds")
    n_sim: int = Field(100_000, ge=1, description="bernoulli_ts, linear_ts: simulated draws for the marginals")
    seed: int = 12345
    epsilon: float = Field(0.1, ge=0.0, le=1.0, description="epsilon_greedy: share of uniformly random slates")
    temperature: float = Field(0.01, gt=0.0, description="softmax: scores (click probabilities) / temperature")
    alpha: float = Field(1.0, ge=0.0, description="linucb: width of the confidence bonus")
    v: float = Field(0.1, gt=0.0, description="linear_ts: posterior scale")
    reg: float = Field(1.0, gt=0.0, description="linucb, linear_ts: ridge regulariser")

    @property
    def learns(self) -> bool:
        return self.name != "bernoulli_ts" or self.learn


class RewardModelSpec(Section):
    folds: int = Field(3, ge=1, description="cross-fitting folds (1: fit and predict on the same rounds)")
    seed: int = 12345


class BootstrapSpec(Section):
    samples: int = Field(1000, ge=0, description="bootstrap resamples for the intervals (0: none)")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="1 - confidence level")
    seed: int = 12345


class BanditSpec(Section):
    policy: PolicySpec = Field(default_factory=PolicySpec)
    learn_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                  description="first share of rounds (by time) the policy learns from; "
                                              "the estimators use the rest")
    estimators: list[Literal[ESTIMATORS]] = Field(default_factory=lambda: list(ESTIMATORS))  # type: ignore[valid-type]
    reward_model: RewardModelSpec = Field(default_factory=RewardModelSpec)
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)
    switch_tau: float = Field(100.0, gt=0.0, description="switch_dr: importance weights above tau use DM alone")
    dr_os_lambda: float = Field(100.0, ge=0.0, description="dr_os: shrinkage of the importance weights")
    on_policy_reference: Optional[Literal["random", "bts"]] = Field(
        "bts", description="logs whose mean reward is the ground truth the estimates are compared with")


Combine = Literal["mean", "weighted", "stacked"]
COMBINES: tuple[Combine, ...] = ("mean", "weighted", "stacked")


class EnsembleSpec(Section):
    """Members: the top_k trials of a finished tune run, or listed train run directories."""

    tune_run: Optional[str] = Field(None, description="a tune run directory, or <storage>/<name> for its newest")
    top_k: int = Field(3, ge=1, description="with tune_run: how many of its best trials")
    runs: list[str] = Field(default_factory=list, description="train run directories (instead of tune_run)")
    combine: list[Combine] = Field(
        default_factory=lambda: list(COMBINES), min_length=1,
        description="combiners to fit (on validation) and report")

    def source_problems(self) -> list[str]:
        """For kind ensemble (in a pipeline, the tune step gives the members)."""
        if (self.tune_run is None) == (not self.runs):
            return ["ensemble: give exactly one of 'tune_run' (with top_k) or 'runs'"]
        if self.runs and len(self.runs) < 2:
            return ["ensemble.runs: needs at least 2 run directories"]
        return []


class TeacherSpec(Section):
    """The teacher: exactly one of an ensemble run, a train run, or a tune run (its best trial)."""

    ensemble: Optional[str] = Field(None, description="an ensemble run directory, or <storage>/<name> for its newest")
    combine: Combine = Field("stacked", description="with ensemble: which of its fitted combiners")
    run: Optional[str] = Field(None, description="a train run directory")
    tune_run: Optional[str] = Field(None, description="a tune run directory: its best trial")

    def given(self) -> list[str]:
        return [k for k in ("ensemble", "run", "tune_run") if getattr(self, k) is not None]


class DistillSpec(Section):
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    student: dict[str, Any] = Field(
        default_factory=dict, description="dotted spec path -> value, applied to the teacher's spec")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the label loss (1: plain training)")
    temperature: float = Field(2.0, gt=0.0)
    teacher_scores: Literal["precomputed"] = Field(
        "precomputed", description="teacher logits computed once into the training split's parquet")


class ExploreSpec(Section):
    """A variant that explores on /recommend: a slate drawn by a policy over the ranker's scores, every
    decision logged with its propensities (docs/serving.md)."""

    policy: Literal["epsilon_greedy", "softmax"] = "epsilon_greedy"
    epsilon: float = Field(0.1, ge=0.0, le=1.0, description="epsilon_greedy: share of uniformly random slates")
    temperature: float = Field(0.05, gt=0.0, description="softmax: click probabilities / temperature; k <= 3")
    pool: int = Field(50, ge=1, description="explore among the ranker's best `pool` candidates")
    seed: Optional[int] = Field(None, description="the sampler's seed (none: fresh randomness)")


class VariantSpec(Section):
    """One served model: exactly one source. Paths may be a run directory or a directory above it (the newest
    matching run under it is used). In a pipeline, ``step`` names an earlier step's output instead."""

    ensemble: Optional[str] = Field(None, description="an ensemble run (ensemble.json): its members and combiner")
    combine: Combine = Field("stacked", description="with ensemble: which fitted combiner; with tune_run: mean only")
    tune_run: Optional[str] = Field(None, description="a tune run: its top_k trials, averaged")
    top_k: int = Field(1, ge=1, description="with tune_run")
    run: Optional[str] = Field(None, description="a train run directory (a distilled student's run is one too)")
    distill: Optional[str] = Field(None, description="a distill run (distill.json): its student")
    step: Optional[Literal["train", "tune", "ensemble", "distill"]] = Field(
        None, description="pipeline only: the output of this earlier step")
    explore: Optional[ExploreSpec] = Field(None, description="explore on /recommend and log every decision")

    def given(self) -> list[str]:
        return [k for k in ("ensemble", "tune_run", "run", "distill", "step") if getattr(self, k) is not None]


class AutoscalingSpec(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0.0, description="per replica; more adds replicas")

    @model_validator(mode="after")
    def _range(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


class ServeSpec(Section):
    """A Ray Serve application: one deployment per member model, an ingress that validates, routes and combines."""

    variants: dict[str, VariantSpec] = Field(min_length=1, description="name -> model source")
    traffic: dict[str, float] = Field(
        default_factory=dict, description="variant -> share of users (sums to 1); empty: all on the only variant")
    sticky_key: str = Field("user_id", description="the request field that pins a user to a variant")
    replicas: int = Field(1, ge=1, description="replicas per member deployment (without autoscaling)")
    autoscaling: Optional[AutoscalingSpec] = Field(None, description="replica range per member deployment")
    num_cpus: float = Field(0.25, gt=0.0, description="per member replica (fractional: 2-core machines)")
    num_gpus: float = Field(0.0, ge=0.0, description="per member replica")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per member replica")
    max_ongoing_requests: int = Field(
        128, ge=1, description="per replica; Serve's router backs off (sleeps) when every replica is at its limit")
    ingress_replicas: int = Field(1, ge=1)
    ingress_num_cpus: float = Field(0.25, gt=0.0)
    max_batch_size: int = Field(
        16, ge=1, description="concurrent requests the ingress merges into one call per member (1: no batching)"
    )
    batch_wait_timeout_s: float = Field(
        0.02, ge=0.0, description="how long a batch waits to fill (a request alone in the ingress does not wait)"
    )
    max_request_rows: int = Field(1024, ge=1, description="rows per /predict request (more: HTTP 413)")
    max_recommend_k: int = Field(100, ge=1)
    log_flush_s: float = Field(1.0, gt=0.0, description="exploring variants: seconds between decision-log files")
    feedback_window_s: float = Field(
        86400.0, gt=0.0, description="how long a request takes feedback (its id and items are remembered that "
                                     "long, also across restarts)")
    max_open_decisions: int = Field(
        1_000_000, ge=1, description="at most this many requests take feedback at once (the oldest are "
                                     "forgotten first): the request log's memory bound")
    force_variant: Literal["off", "body", "header"] = Field(
        "off", description="whether a request may choose its variant, bypassing the traffic split: 'off'; 'body' (its "
                           "'variant' field: trusted clients only); 'header' (the force_header HTTP header, which a "
                           "gateway can strip from outside requests). Forced requests are marked forced")
    force_header: str = Field("X-Raytrain-Variant", pattern=r"^[A-Za-z0-9-]+$",
                              description="with force_variant: header")
    oov: Literal["unknown", "reject"] = Field(
        "unknown", description="ids never seen or out of range: 'unknown' maps them to the reserved id 0 (and the "
                               "feature store's unknown row) and counts them in the reply; 'reject' answers 422")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", pattern=r"^/")

    def explore_of(self, variant: str) -> dict | None:
        """A variant's exploration settings as JSON (None: it ranks plainly)."""
        e = self.variants[variant].explore
        return e.model_dump(mode="json") if e is not None else None

    @property
    def shares(self) -> dict[str, float]:
        return dict(self.traffic) or {next(iter(self.variants)): 1.0}

    @model_validator(mode="after")
    def _traffic(self):
        names = set(self.variants)
        for name, v in self.variants.items():
            if len(v.given()) != 1:
                raise ValueError(f"variants.{name}: give exactly one of ensemble, tune_run, run, distill or step "
                                 f"(got {', '.join(v.given()) or 'none'})")
            if v.tune_run is not None and v.combine != "mean" and v.top_k > 1:
                raise ValueError(f"variants.{name}: top_k trials of a tune run are averaged (combine: mean); "
                                 "for weighted or stacked, run kind ensemble and serve its run")
        if not self.traffic:
            if len(names) > 1:
                raise ValueError(f"traffic: {len(names)} variants need a split, e.g. "
                                 + ", ".join(f"{n}: {1 / len(names):.2f}" for n in sorted(names)))
            return self
        if set(self.traffic) != names:
            raise ValueError(f"traffic: keys {sorted(self.traffic)} must be the variants {sorted(names)}")
        if any(w < 0 for w in self.traffic.values()) or abs(sum(self.traffic.values()) - 1.0) > 1e-6:
            raise ValueError(f"traffic: shares must be >= 0 and sum to 1, got {sum(self.traffic.values()):g}")
        return self


class TrackingSpec(Section):
    """Experiment tracking (raytrain.tracking)."""

    mlflow: bool = Field(False, description="log runs, their parameters, metrics and artifacts to MLflow")
    tracking_uri: Optional[str] = Field(None, description="an MLflow tracking URI (default: sqlite:///<storage>/"
                                                          "mlflow.db, artifacts in <storage>/mlartifacts)")
    experiment: Optional[str] = Field(None, description="the MLflow experiment (default: the spec's name)")
    tensorboard: bool = Field(False, description="also write per-epoch metrics as TensorBoard event files to "
                                                 "<run>/tensorboard/")


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


Step = Literal["train", "tune", "ensemble", "distill", "serve"]
STEPS: tuple[Step, ...] = ("train", "tune", "ensemble", "distill", "serve")


def _default_steps() -> list[Step]:
    return ["tune", "ensemble", "distill"]


class PipelineSpec(Section):
    """Steps run in this order, each reading the previous step's artifacts from the pipeline's run directory."""

    steps: list[Step] = Field(default_factory=_default_steps, min_length=1)


class RaySpec(Section):
    address: Optional[str] = Field(None, description="None: start an embedded local Ray")
    num_cpus: Optional[int] = Field(None, ge=1, description="logical CPUs of the embedded Ray")


class JobSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal[KINDS] = "train"  # type: ignore[valid-type]
    storage: str = "./runs"
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    tune: Optional[TuneSpec] = None
    bandit: Optional[BanditSpec] = None
    ensemble: Optional[EnsembleSpec] = None
    distill: Optional[DistillSpec] = None
    pipeline: Optional[PipelineSpec] = None
    serve: Optional[ServeSpec] = None
    abtest: Optional[AbTestSpec] = None
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
