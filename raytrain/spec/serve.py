"""The spec section of kind ``serve``: variants on Ray Serve with a traffic split, batching and exploration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field, model_validator

from .sections import Section

if TYPE_CHECKING:
    from .job import JobSpec
from .ensemble import Combine


class ExploreSpec(Section):
    """A variant that explores on /recommend: a slate drawn by a policy over the ranker's scores, every
    decision logged with its propensities (docs/serving.md)."""

    policy: Literal["epsilon_greedy", "softmax"] = "epsilon_greedy"
    epsilon: float = Field(0.1, ge=0.0, le=1.0, description="epsilon_greedy: share of uniformly random slates")
    temperature: float = Field(0.05, gt=0.0, description="softmax: click probabilities / temperature; k <= 3")
    pool: int = Field(50, ge=1, description="explore among the ranker's best `pool` candidates")
    seed: Optional[int] = Field(None, description="the sampler's seed (none: fresh randomness)")


TableDtype = Literal["none", "fp16", "int8", "int4"]


class RetrievalSpec(Section):
    """How /recommend finds its candidates among the catalogue: exact top-K below ``exact_below`` items, an ANN
    index (faiss) above; the exact path is the recall reference (docs/serving.md, "Retrieval")."""

    index: Literal["auto", "exact", "ivf", "hnsw"] = Field(
        "auto", description="auto: exact below exact_below items, ivf above; or force one")
    exact_below: int = Field(200_000, ge=1, description="auto: catalogues smaller than this are ranked exactly")
    nlist: Optional[int] = Field(None, ge=1, description="ivf: clusters (none: about 4 sqrt(items), at most 65536 and "
                                                          "at least 39 items a cluster)")
    nprobe: int = Field(16, ge=1, description="ivf: clusters searched per query")
    hnsw_m: int = Field(32, ge=4, description="hnsw: links per node")
    ef_search: int = Field(256, ge=1, description="hnsw: candidate list length while searching (at least twice the "
                                                   "items a query asks for)")


class VariantSpec(Section):
    """One served model: exactly one source. Paths may be a run directory or a directory above it (the newest
    matching run under it is used). In a pipeline, ``step`` names an earlier step's output instead."""

    ensemble: Optional[str] = Field(None, description="an ensemble run (ensemble.json): its members and combiner")
    combine: Combine = Field("stacked", description="with ensemble: which fitted combiner; with tune_run: mean only")
    tune_run: Optional[str] = Field(None, description="a tune run: its top_k trials, averaged")
    top_k: int = Field(1, ge=1, description="with tune_run")
    run: Optional[str] = Field(None, description="a train run directory (a distilled student's run is one too)")
    distill: Optional[str] = Field(None, description="a distill run (distill.json): its student")
    step: Optional[str] = Field(
        None, description="pipeline only: the output of this earlier step")
    explore: Optional[ExploreSpec] = Field(None, description="explore on /recommend and log every decision")
    quantize: TableDtype = Field(
        "none", description="the members' embedding tables at serving time: fp16, int8 or int4 rows (TorchRec "
                            "inference quantization on FBGEMM), or none (fp32 as trained)")
    quantize_tables: dict[str, TableDtype] = Field(
        default_factory=dict, description="per-feature overrides of quantize, e.g. {item_id: fp16}")
    retrieval: RetrievalSpec = Field(
        default_factory=RetrievalSpec, description="two-tower, content and sequential models: how /recommend searches the "
                                                   "catalogue")
    retrieve_from: Optional[str] = Field(
        None, description="two-stage /recommend: another variant (a two-tower or content model) retrieves candidates, this one "
                          "ranks them")
    retrieve_k: int = Field(200, ge=1, description="with retrieve_from: candidates retrieved per request")
    shards: Optional[int] = Field(
        None, ge=2, description="serve each member's tables from this many embedding-shard deployments (each loads "
                                "only its rows from the checkpoint) and a dense part")
    shard_above: Optional[int] = Field(
        None, ge=1, description="shard the members whose fp32 tables exceed this many bytes, one shard per "
                                "shard_above bytes")

    @model_validator(mode="after")
    def _sharding(self):
        if self.shards is not None and self.shard_above is not None:
            raise ValueError("give shards or shard_above, not both")
        return self

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
    request_log: bool = Field(True, description="log every /predict and /recommend request (variant, user, items: "
                                                "what kind abtest and /feedback need); an exploring variant logs "
                                                "regardless")
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
    recommend: Optional[bool] = Field(
        None, description="serve /recommend: none (where every variant's model has a user id and an item id feature), "
                          "true (required: a model without them is refused before deploying) or false")
    oov: Literal["unknown", "reject"] = Field(
        "unknown", description="ids never seen or out of range: 'unknown' maps them to the reserved id 0 (and the "
                               "feature store's unknown row) and counts them in the reply; 'reject' answers 422")
    new_items: Optional[str] = Field(
        None, description="a file (path or URI) registering new items by id and text, parquet or JSON lines of "
                          "{item_id, item_text}: /predict scores a registered id from its text and /recommend ranks them "
                          "with the catalogue; re-read when it changes. Models trained with data.text only")
    new_items_check_s: float = Field(5.0, gt=0.0, description="with new_items: how often the file is looked at")
    request_path: Literal["proxy", "haproxy"] = Field(
        "proxy", description="how HTTP reaches the ingress: Ray Serve's proxy, or HAProxy with the ingress answering "
                             "directly (Serve's throughput-optimised mode; about twice the requests/s here, but Serve binds "
                             "replica ports on every interface). Set for the local Ray raytrain starts; a cluster "
                             "takes it from the environment its Ray was started with")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", pattern=r"^/")

    def explore_of(self, variant: str) -> dict | None:
        """A variant's exploration settings as JSON (None: it ranks plainly)."""
        e = self.variants[variant].explore
        return e.model_dump(mode="json") if e is not None else None

    @property
    def recommend_on(self) -> bool:
        return self.recommend is not False

    @property
    def shares(self) -> dict[str, float]:
        return dict(self.traffic) or {next(iter(self.variants)): 1.0}

    @model_validator(mode="after")
    def _traffic(self):
        names = set(self.variants)
        for name, v in self.variants.items():
            if v.retrieve_from is not None and (v.retrieve_from not in names or v.retrieve_from == name):
                raise ValueError(f"variants.{name}.retrieve_from: {v.retrieve_from!r} is not another variant "
                                 f"({', '.join(sorted(names - {name})) or 'there is none'})")
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


def checks(spec: JobSpec, steps: list[str]) -> list[str]:
    assert spec.serve is not None
    problems = []

    for name, v in spec.serve.variants.items():
        if v.step is not None and spec.kind != "pipeline":
            problems.append(f"serve.variants.{name}.step: only in a pipeline; give a run path instead")
        elif v.step is not None and v.step not in steps[:steps.index("serve")]:
            problems.append(f"serve.variants.{name}.step: {v.step!r} is not an earlier step of this pipeline "
                            f"({', '.join(steps)})")
    return problems


