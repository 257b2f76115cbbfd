"""The model and training sections of a job spec, Ray's and tracking's, and the checks that span them."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from .sections import Section, suggest

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


class DcnSpec(Section):
    num_layers: int = Field(3, ge=1, le=16)
    low_rank_dim: int = Field(16, ge=1)


SEQUENTIAL = ("sasrec", "hstu")
RETRIEVERS = ("two_tower", "content")  # models with a user and an item vector: they search the catalogue
SEQUENTIAL_METRICS = ("val_ndcg@10", "val_hr@10", "val_ndcg@50", "val_hr@50", "val_mrr")


class SequenceSpec(Section):
    """The sequential models (sasrec, hstu): their encoder over each user's history."""

    max_len: int = Field(200, ge=2, le=8192, description="the last this many actions of a history are read")
    blocks: int = Field(2, ge=1, le=64)
    heads: int = Field(1, ge=1, le=64, description="embedding_dim must be divisible by it")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    actions: int = Field(0, ge=0, le=1_000_000, description="embed each history action's id (a rating, an action "
                                                            "type; in [0, actions)) into its item token; 0: off")


class SampledSoftmaxSpec(Section):
    """Next-item pretraining of the sequential models: each position's next item against sampled negatives."""

    negatives: int | Literal["all", "auto"] = Field(
        "auto", description="uniformly sampled negatives, shared by a step's positions; `all`: every item of the "
                            "catalogue (a full softmax); `auto`: all up to 2,000 items, else 128")
    in_batch_negatives: int = Field(0, ge=0, description="negatives drawn from the step's own next items (so, by "
                                                         "popularity), on top of the uniform ones")
    temperature: float = Field(0.05, gt=0.0)

    @field_validator("negatives")
    @classmethod
    def _at_least_one(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1, `all` for every item of the catalogue, or `auto`")
        return v


class ModelSpec(Section):
    arch: Literal["dlrm", "dcn_v2", "two_tower", "sasrec", "hstu", "content"] = "dcn_v2"
    embedding_dim: int = Field(16, ge=1, le=4096)
    dense_arch: list[int] = Field(default_factory=lambda: [64], description="bottom MLP; embedding_dim is appended")
    over_arch: list[int] = Field(default_factory=lambda: [128, 64], description="top MLP; the 1-unit output is appended")
    tower: list[int] = Field(default_factory=lambda: [64, 32], description="two_tower: each tower's MLP")
    dcn: DcnSpec = Field(default_factory=DcnSpec)
    sequence: SequenceSpec = Field(default_factory=SequenceSpec, description="sasrec / hstu: the encoder")
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
    replicate_below_mib: Optional[float] = Field(None, ge=0.0, description="auto tables smaller than this are "
                                                 "data_parallel (default: 1 on CPU, 0 on CUDA)")

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
    prefetch_batches: Optional[int] = Field(
        None, ge=0, description="batches built ahead of the step by a background thread (0: built in the step's own "
                                "thread); default 4, or 0 on a CPU worker with more than one intra-op thread")


class ResourcesSpec(Section):
    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)


class CrossValidationSpec(Section):
    """k-fold cross-validation over the pooled training and validation rows (raytrain.train.crossval)."""

    folds: int = Field(ge=2, le=50)
    seed: int = Field(0, description="the permutation that deals rows into folds")


class InitFromSpec(Section):
    """Start from another run's weights: tables (and, with ``all``, every other tensor) copied before training."""

    run: str = Field(description="a train run directory (or a directory above runs: its newest); its best checkpoint")
    tables: dict[str, str] = Field(default_factory=dict, description="this model's table -> the run's table, e.g. "
                                                                     "t_item_id: t_item (a pretrained sequential "
                                                                     "model's item embeddings)")
    all: bool = Field(False, description="also every tensor both models have under the same name and size (continue "
                                         "a run of the same model on new data)")
    free: list[str] = Field(default_factory=list, description="tables of ``tables`` that may be missing from the run "
                                                              "(they keep their fresh initialisation)")
    dims: Literal["match", "truncate"] = Field(
        "match", description="match: a table's width must equal the source's; truncate: the source's first columns")


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
    allreduce: Literal["auto", "gloo"] = Field("auto", description="auto: CPU workers that all run on one machine "
                                                                   "average gradients through shared memory; gloo")
    start_timeout_s: float = Field(600.0, gt=0, description="on a cluster: how long a run waits for the nodes its "
                                   "workers need (CPUs, GPUs) before it gives up (exit 3)")
    pipeline: Literal["auto", "sparse_dist", "none"] = Field(
        "auto", description="sparse_dist: TorchRec's TrainPipelineSparseDist (raytrain.train.steps); auto: it on CUDA")
    collective_timeout_s: float = Field(1800.0, gt=0, description="a rank's longest wait in a collective (gloo, "
                                        "shared memory) before it fails and Ray Train restarts the group")
    id_dropout: dict[str, float] = Field(default_factory=dict, description="feature -> share of training rows whose "
                                         "id is replaced by the unknown id 0 (e.g. {item_id: 0.1}: the model learns "
                                         "to score a never-seen item from its other features, cold start)")
    init_from: Optional[InitFromSpec] = Field(None, description="start from another run's weights (warm start, "
                                                                "fine-tuning); a resumed run continues from its own")
    sampled_softmax: SampledSoftmaxSpec = Field(default_factory=SampledSoftmaxSpec,
                                                description="sasrec / hstu: the pretraining objective")
    cross_validation: Optional[CrossValidationSpec] = Field(
        None, description="k-fold cross-validation: k runs, the metrics' mean and spread (kind train; in kind tune "
                          "each trial runs every fold and reports their mean)")

    def pipelined(self) -> bool:
        return self.pipeline == "sparse_dist" or (self.pipeline == "auto" and self.device == "cuda")

    def prefetch_depth(self) -> int:
        """``ingest.prefetch_batches``, or its default: 4, except on a CPU worker stepping with several intra-op
        threads, which builds its batches itself: there a background thread slowed the step (the demo model, one
        process, 2 threads: 20.5k examples/s with the thread, 27-31k without it)."""
        if self.ingest.prefetch_batches is not None:
            return self.ingest.prefetch_batches
        return 0 if self.device == "cpu" and (self.threads_per_worker or 1) > 1 else 4

    @model_validator(mode="after")
    def _batch(self):
        bad = [f"{k}: {v}" for k, v in self.id_dropout.items() if not 0.0 <= v < 1.0]
        if bad:
            raise ValueError(f"id_dropout shares must be in [0, 1): {', '.join(bad)}")
        if self.batch_size % self.workers:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by workers {self.workers}")
        return self


class RaySpec(Section):
    address: Optional[str] = Field(None, description="None: start an embedded local Ray")
    num_cpus: Optional[int] = Field(None, ge=1, description="logical CPUs of the embedded Ray")


class TrackingSpec(Section):
    """Experiment tracking (raytrain.tracking)."""

    mlflow: bool = Field(False, description="log runs, their parameters, metrics and artifacts to MLflow")
    tracking_uri: Optional[str] = Field(None, description="an MLflow tracking URI (default: sqlite:///<storage>/"
                                                          "mlflow.db, artifacts in <storage>/mlartifacts)")
    experiment: Optional[str] = Field(None, description="the MLflow experiment (default: the spec's name)")
    tensorboard: bool = Field(False, description="also write per-epoch metrics as TensorBoard event files to "
                                                 "<run>/tensorboard/")


def training_checks(spec: Any, steps: list[str]) -> list[str]:
    """Checks across the data, model and train sections, for every kind that reads data and models."""
    from ..data import declared_features
    from ..storage import is_uri

    problems: list[str] = []
    if spec.train.device == "cpu" and spec.train.optimizer.sparse == "adam":
        problems.append("train.optimizer.sparse: FBGEMM's CPU tables have no fused adam; use rowwise_adagrad, "
                        "adagrad or sgd on CPU (adam needs train.device: cuda)")
    if spec.data.label.ordinal and spec.model.arch in (*SEQUENTIAL, "content"):
        problems.append(f"data.label.ordinal: the cuts train a model scored by the rows' log-loss; {spec.model.arch} "
                        "does not read them (leave ordinal out)")
    if spec.model.arch in SEQUENTIAL:
        from .sequential_checks import sequential_checks

        return problems + sequential_checks(spec)
    if spec.data.source in ("open-bandit", "served-logs"):
        return [f"data.source: {spec.data.source} holds logged bandit feedback for kind bandit, not {spec.kind}"]
    if spec.model.arch == "content":
        from .content_checks import content_checks

        return problems + content_checks(spec, steps)
    cv = spec.train.cross_validation
    if cv is not None:
        if spec.kind not in ("train", "tune"):
            problems.append(f"train.cross_validation: for kinds train and tune, not {spec.kind}")
        if spec.data.source in ("synthetic", "criteo"):
            problems.append(f"train.cross_validation: data.source {spec.data.source} is not folded (use parquet or "
                            "movielens-100k)")
        if is_uri(spec.storage):
            problems.append("train.cross_validation: writes its folds beside the run; give a path as storage")
        if spec.train.checkpoint.every_steps:
            problems.append("train.cross_validation: mid-epoch checkpoints (train.checkpoint.every_steps) are for "
                            "single runs")
    sharding = spec.train.sharding
    if spec.train.device == "cpu":
        for where, st in [("default", sharding.default)] + [(f"tables.{k}", v) for k, v in sharding.tables.items()]:
            if st in CUDA_ONLY_SHARDING:
                problems.append(
                    f"train.sharding.{where}: {st!r} needs train.device: cuda (TorchRec shards row-wise only "
                    "on CUDA); on CPU use table_wise, column_wise, table_column_wise or data_parallel"
                )
    if spec.model.arch == "two_tower" and spec.model.dropout > 0:
        problems.append("model.dropout: applies to the top MLP of dlrm and dcn_v2; two_tower has none")
    if spec.model.arch == "two_tower" and spec.model.embedding_l2 > 0:
        problems.append("model.embedding_l2: applies to dlrm and dcn_v2 (their sparse arch); not to two_tower")
    features = declared_features(spec.data)
    if features is not None:
        for name in sharding.tables:
            if name not in features:
                problems.append(f"train.sharding.tables.{name}: no such sparse feature{suggest(name, features)}; "
                                f"features: {', '.join(features)}")
        cols = spec.data.columns
        if spec.model.arch in ("dlrm", "dcn_v2") and cols is not None and not cols.dense and spec.data.history is None:
            problems.append(f"model.arch: {spec.model.arch} needs at least one dense column (data.columns.dense, "
                            "or data.history)")
        if spec.model.arch == "two_tower" and cols is not None and not cols.item_features:
            problems.append("model.arch: two_tower needs data.columns.item_features")
    return problems

