"""The application's deployment graph: a member deployment per distinct model (``members``; a ``ShardedMember``
and its table shards for a model too large for one replica, ``shards``), then the ingress (``app``), or for
sequential models the ``SequenceRanker`` graph (``sequential``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .app import Ingress
from .decisions import bind_ingress
from .members import MemberModel
from .refs import MemberRef, ResolvedVariant


def build_app(spec, variants: list[ResolvedVariant], log_dir: str | None = None):
    """The bound application: a MemberModel deployment per distinct checkpoint, then the ingress (sequential models:
    ``serve.sequential``)."""
    from .sources import is_sequential

    kinds = {is_sequential(m.run_dir) for v in variants for m in v.members}
    if kinds == {True}:
        from .sequential import build_sequential_app

        return build_sequential_app(spec, variants, log_dir)
    if len(kinds) > 1:
        raise ValueError("serve: sequential models and row-scoring models in one application: serve them apart")
    cfg = spec.serve
    scaling: dict = ({"autoscaling_config": cfg.autoscaling.model_dump()} if cfg.autoscaling is not None
                     else {"num_replicas": cfg.replicas})
    handles: dict[str, object] = {}
    for v in variants:
        for i, m in enumerate(v.members):
            if m.key in handles:
                continue
            # named by its place (variant, position), not by its model: pointing a variant at a newer model is an
            # in-place rolling update of the same deployment (raytrain serve --update)
            options = dict(ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
                           max_ongoing_requests=max(cfg.max_ongoing_requests, 2 * cfg.max_batch_size), **scaling)
            name = f"member-{v.name}-{i}"[:60]
            if m.shards:
                handles[m.key] = _sharded(m, name, options, cfg.torch_threads)
                continue
            dep = MemberModel.options(name=name, **options)  # type: ignore[attr-defined]
            handles[m.key] = dep.bind(m, cfg.torch_threads)
    data, schema = _data_of(variants)
    config = {"name": spec.name, "serve": cfg.model_dump(mode="json"), "data": data, "schema": schema}
    payload = [{"name": v.name, "members": [asdict(m) for m in v.members], "combiner": v.combiner,
                "source": v.source} for v in variants]
    exploring = any(v.explore is not None for v in cfg.variants.values())
    if log_dir is None and exploring:
        raise ValueError("serve: an exploring variant needs a run directory for its decision logs")
    return bind_ingress(Ingress, cfg, log_dir if cfg.request_log or exploring else None, config, payload, handles)


def _sharded(m: MemberRef, name: str, options: dict, threads: int):
    """A member whose tables are split over ``m.shards`` embedding-shard deployments, and its dense part."""
    from ..data.schema import FeatureSchema
    from ..spec import load_spec
    from .quantize import table_dtypes
    from .shards import EmbeddingShard, ShardedMember, plan_shards

    run = Path(m.run_dir)
    schema = FeatureSchema.from_dict(json.loads((run / "schema.json").read_text()))
    dim = load_spec(run / "spec.yaml").model.embedding_dim
    plan = plan_shards([(f.name, f.cardinality, dim) for f in schema.sparse], m.shards)
    dtypes = table_dtypes([f.name for f in schema.sparse], m.quantize, dict(m.quantize_tables), f"member {m.name}")
    shards = [EmbeddingShard.options(name=f"{name}-shard-{s}"[:60], **options).bind(  # type: ignore[attr-defined]
        m, pieces, dtypes, threads) for s, pieces in enumerate(plan)]
    return ShardedMember.options(name=name, **options).bind(m, shards, threads)  # type: ignore[attr-defined]


def _data_of(variants: list[ResolvedVariant]) -> tuple[dict, dict]:
    """The data spec every member was trained on and its feature schema (one for the whole application)."""
    from ..errors import CheckpointError
    from ..spec import load_spec

    docs = {}
    for v in variants:
        for m in v.members:
            docs[m.name] = load_spec(f"{m.run_dir}/spec.yaml").data.model_dump(mode="json")
    first = next(iter(docs.values()))
    for name, d in docs.items():
        if json.dumps(_served(d), sort_keys=True) != json.dumps(_served(first), sort_keys=True):
            raise CheckpointError(f"serve: member {name} was trained on other data than the rest "
                                  "(one application serves one feature schema)")
    m = variants[0].members[0]
    return first, json.loads((Path(m.run_dir) / "schema.json").read_text())


def _served(data: dict) -> dict:
    """A data spec less what only training reads (the label's ordinal cuts): members that differ there alone are
    served by one application (a pipeline's student leaves the cuts out, its teachers trained on them)."""
    label = {k: v for k, v in data.get("label", {}).items() if k not in ("ordinal", "ordinal_weight")}
    return {**data, "label": label}
