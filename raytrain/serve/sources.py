"""Where a served variant's models come from: run directories on storage, never the training process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..ensemble.members import best_checkpoint, member_name, read_ensemble, top_trials
from ..errors import CheckpointError
from ..runs import newest_local_run
from ..spec.serve import ServeSpec, VariantSpec
from ..spec.training import RETRIEVERS
from .refs import MemberRef, ResolvedVariant
from .shards import shard_count


def newest(path: str | Path, marker: str) -> Path:
    """``path`` itself if it holds ``marker``, else the newest run directory below it that does (raytrain.runs);
    a URI is downloaded into the local cache first."""
    return newest_local_run(path, marker)


def is_sequential(run_dir: str | Path) -> bool:
    """A sequential model's run (sasrec, hstu): it keeps its histories beside its checkpoints."""
    return (Path(run_dir) / "sequences.npz").exists()


def _ref(run_dir: str | Path, name: str) -> MemberRef:
    run_dir = Path(run_dir)
    metric = "val_ndcg@10" if is_sequential(run_dir) else "val_auc"
    return MemberRef(name, str(run_dir), str(best_checkpoint(run_dir, metric)))


def resolve(name: str, v: VariantSpec) -> ResolvedVariant:
    """A variant's models on storage, each to be served with the variant's table storage (``quantize``)."""
    import json

    out = _resolve(name, v)
    retrieval = json.dumps(v.retrieval.model_dump(mode="json"), sort_keys=True)
    members = []
    for m in out.members:
        sequential = is_sequential(m.run_dir)
        shards = 0 if sequential else shard_count(table_bytes(Path(m.run_dir)), v.shards, v.shard_above)
        vectors = not sequential and _arch(Path(m.run_dir)) in RETRIEVERS  # a user and an item vector
        members.append(replace(m, quantize=v.quantize, quantize_tables=tuple(sorted(v.quantize_tables.items())),
                               retrieval=retrieval if (vectors or sequential) and not shards else "", shards=shards))
    out.members = members
    return out


def table_bytes(run: Path) -> int:
    """The fp32 bytes of a (non-sequential) run's embedding tables, from its schema and model spec."""
    import json

    from ..data.schema import FeatureSchema
    from ..spec import load_spec

    schema = FeatureSchema.from_dict(json.loads((run / "schema.json").read_text()))
    return sum(f.cardinality for f in schema.sparse) * load_spec(run / "spec.yaml").model.embedding_dim * 4


def _resolve(name: str, v: VariantSpec) -> ResolvedVariant:
    if v.ensemble is not None:
        run, doc = read_ensemble(v.ensemble, v.combine, f"serve.variants.{name}")
        members = [MemberRef(m["name"], m["run_dir"], m["checkpoint"]) for m in doc["members"]]
        return ResolvedVariant(name, members, doc["combiners"][v.combine], f"ensemble {run} ({v.combine})")
    if v.tune_run is not None:
        runs = top_trials(v.tune_run, v.top_k)
        members = [_ref(r, member_name(r)) for r in runs]
        combiner = None if len(members) == 1 else {"kind": "mean", "weights": None, "coef": None, "intercept": None}
        return ResolvedVariant(name, members, combiner, f"top {v.top_k} of tune run {v.tune_run}")
    if v.distill is not None:
        run = newest(v.distill, "distill.json")
        return ResolvedVariant(name, [_ref(run, name)], None, f"distilled student {run}")
    if v.run is not None:
        run = newest(v.run, "spec.yaml")
        return ResolvedVariant(name, [_ref(run, name)], None, f"run {run}")
    raise CheckpointError(f"serve.variants.{name}: no source (a pipeline resolves 'step' before serving)")


def servable_problems(cfg: ServeSpec, variants: list[ResolvedVariant] | None = None,
                      resolve_missing: bool = True) -> list[str]:
    """What stops these variants' models from being served as ``cfg`` asks, one line each naming the field: checked
    on the client before anything is deployed (``raytrain validate`` and ``serve``), so replicas never fail in a loop.
    ``variants``: already resolved; else resolved here, and with ``resolve_missing`` false a variant whose models are
    not on storage yet is skipped (``validate`` before the runs exist)."""
    import json

    from ..data.item_text import TEXT_PREFIX
    from ..data.schema import FeatureSchema
    from .features import _key

    if variants is None:
        variants = []
        for name, given in cfg.variants.items():
            if given.step is not None or (not resolve_missing and any(
                    "://" in str(getattr(given, k) or "") for k in ("ensemble", "tune_run", "run", "distill"))):
                continue
            try:
                variants.append(resolve(name, given))
            except (CheckpointError, FileNotFoundError, OSError) as e:
                if resolve_missing:
                    return [f"serve.variants.{name}: {e}"]
    problems: list[str] = []
    kinds: dict[str, str] = {}
    for rv in variants:
        at = f"serve.variants.{rv.name}"
        spec_v = cfg.variants[rv.name]
        for m in rv.members:
            run = Path(m.run_dir)
            if is_sequential(run):
                kinds[rv.name] = "sequential"
                if m.quantize_tables:
                    problems.append(f"{at}.quantize_tables: a sequential model ({m.name}) has one table, its items; "
                                    "use quantize")
                if spec_v.shards is not None or spec_v.shard_above is not None:
                    problems.append(f"{at}.shards: sequential models ({m.name}) are served whole in this version")
                continue
            schema = FeatureSchema.from_dict(json.loads((run / "schema.json").read_text()))
            arch = _arch(run)
            kinds[rv.name] = arch
            if arch == "content" and (spec_v.quantize != "none" or spec_v.quantize_tables or spec_v.shards is not None
                                      or spec_v.shard_above is not None):
                problems.append(f"{at}: model {m.name} is a content model (profiles and item texts, no embedding "
                                "tables): quantize, quantize_tables and shards do not apply")
            features = [f.name for f in schema.sparse]
            unknown = sorted(set(spec_v.quantize_tables) - set(features))
            if unknown:
                problems.append(f"{at}.quantize_tables: no table for feature(s) {', '.join(map(repr, unknown))} in "
                                f"model {m.name}; its features: {', '.join(features)}")
            ranks = _key(schema, "user", cfg.sticky_key) is not None and _key(schema, "item", "item_id") is not None
            if not ranks and cfg.recommend:
                problems.append(f"serve.recommend: model {m.name} of variant {rv.name} has no single-valued user id "
                                "and item id feature, so /recommend cannot rank items for it (recommend: false "
                                "serves /predict only)")
            if not ranks and spec_v.explore is not None:
                problems.append(f"{at}.explore: model {m.name} has no user id and item id feature to explore over")
            if cfg.new_items is not None and not any(d.startswith(TEXT_PREFIX) for d in schema.dense):
                problems.append(f"serve.new_items: model {m.name} of variant {rv.name} was trained without item text "
                                "(data.text), so it cannot score an item from its text")
    for rv in variants:
        source = cfg.variants[rv.name].retrieve_from
        if source is not None and source in kinds and kinds[source] not in RETRIEVERS:
            problems.append(f"serve.variants.{rv.name}.retrieve_from: variant {source} serves a "
                            f"{kinds[source]} model; candidates are retrieved by a two_tower or content model")
    if cfg.new_items is not None:
        from .registry import read_new_items

        try:
            read_new_items(cfg.new_items)
        except (OSError, ValueError) as e:
            problems.append(str(e) if isinstance(e, ValueError) else f"serve.new_items: cannot read it ({e})")
    return problems


def _arch(run: Path) -> str:
    from ..spec import load_spec

    return load_spec(run / "spec.yaml").model.arch
