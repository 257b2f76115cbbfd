"""Data sources: built-in MovieLens-100K and synthetic, or parquet with a declared schema."""

from __future__ import annotations

from dataclasses import dataclass, field

from .schema import FeatureSchema, SparseFeature

__all__ = ["FeatureSchema", "SparseFeature", "PreparedData", "prepare", "declared_features"]


@dataclass
class PreparedData:
    """What the training workers need to find their data: a schema plus files or a generator spec."""

    schema: FeatureSchema
    paths: dict[str, list[str]] = field(default_factory=dict)  # split -> parquet files
    synthetic: dict | None = None  # SyntheticSpec as a dict
    # split -> the same files where every node can read them (a URI run's copy); the workers' datasets read these
    shared: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": self.schema.to_dict(), "paths": self.paths, "synthetic": self.synthetic,
                "shared": self.shared}

    @classmethod
    def from_dict(cls, d: dict) -> "PreparedData":
        return cls(FeatureSchema.from_dict(d["schema"]), d.get("paths") or {}, d.get("synthetic"), d.get("shared") or {})


def declared_features(data_spec) -> list[str] | None:
    """Sparse feature names known from the spec alone (no data read)."""
    from .history import columns

    history = columns(data_spec.history.fraction)[1] if data_spec.history is not None else []
    if data_spec.source == "movielens-100k":
        from .movielens import FEATURES

        return [n for n, _, _ in FEATURES] + history
    if data_spec.source == "synthetic":
        return [f"s{i}" for i in range(data_spec.synthetic.num_sparse)]
    if data_spec.source == "criteo":
        from .criteo import CAT_COLUMNS

        return list(CAT_COLUMNS)
    if data_spec.columns is not None:
        return list(data_spec.columns.sparse) + list(data_spec.columns.multi_valued) + history
    return None


def schema_of(data_spec) -> FeatureSchema:
    """The schema without preparing data (for planning). MovieLens needs its files for cardinalities."""
    if data_spec.source == "synthetic":
        from .synthetic import schema_for as synthetic_schema

        return synthetic_schema(data_spec.synthetic)
    if data_spec.source == "parquet":
        from .parquet import schema_for as parquet_schema

        return parquet_schema(data_spec)
    if data_spec.source == "criteo":
        from .criteo import schema_for as criteo_schema

        return criteo_schema(data_spec)
    return prepare(data_spec).schema


def prepare(data_spec, work_dir: str | None = None) -> PreparedData:
    """Fetch / split / validate on the driver, before any worker starts (fanned out over Ray tasks when Ray is
    up). Splits and validations are cached by data spec and input files; ``work_dir`` is kept for callers and
    no longer written to."""
    if data_spec.source == "movielens-100k":
        from .movielens import prepare as prepare_ml

        schema, paths = prepare_ml(data_spec)
        return PreparedData(schema, paths)
    if data_spec.source == "synthetic":
        from .synthetic import schema_for as synthetic_schema

        return PreparedData(synthetic_schema(data_spec.synthetic), synthetic=data_spec.synthetic.model_dump(mode="json"))
    if data_spec.source == "criteo":
        from .criteo import prepare as prepare_criteo

        schema, paths = prepare_criteo(data_spec)
        return PreparedData(schema, paths)
    from .parquet import expand, schema_for

    schema = schema_for(data_spec, history=False)
    if data_spec.paths is not None:
        paths = {s: expand(getattr(data_spec.paths, s)) for s in ("train", "validation", "test")}
        _validated(data_spec, schema, paths)
    else:
        paths = _split_cached(data_spec, schema, expand(data_spec.path))
    if data_spec.history is not None:
        return PreparedData(schema_for(data_spec), _history_cached(data_spec, schema, paths))
    return PreparedData(schema, paths)


def _history_cached(data_spec, schema: FeatureSchema, paths: dict[str, list[str]]) -> dict[str, list[str]]:
    """The split's files with the history features added (``raytrain.data.history``), once per spec and files."""
    from .history_files import with_history
    from .parallel import cache_key, cached_dir

    files = [f for s in ("train", "validation", "test") for f in paths[s]]
    if data_spec.history.user_vectors:  # a new vectors file (same path) makes a new key
        files.append(data_spec.history.user_vectors)
    key = cache_key("history", data_spec.model_dump(mode="json"), files)
    out, _ = cached_dir("history", key, lambda tmp: with_history(paths, schema, data_spec, tmp))
    return {s: sorted(str(p) for p in (out / s).glob("part-*.parquet")) for s in ("train", "validation", "test")}


def _validated(data_spec, schema: FeatureSchema, paths: dict[str, list[str]]) -> None:
    """Validate every file once per (spec, file sizes and times): a later prepare of the same data skips it."""
    from .parallel import cache_key, cached_dir
    from .parquet import validate_files

    files = sorted({f for fs in paths.values() for f in fs})

    def build(tmp) -> None:
        validate_files(files, schema)

    cached_dir("validated", cache_key("validated", data_spec.model_dump(mode="json"), files), build)


def _split_cached(data_spec, schema: FeatureSchema, files: list[str], validate: bool = True) -> dict[str, list[str]]:
    """The split of ``files`` (validated first unless raytrain wrote them), made once per data spec and input
    files and then reused."""
    from .parallel import cache_key, cached_dir, log
    from .parquet import validate_files
    from .split import split_parquet

    key = cache_key("split", data_spec.model_dump(mode="json"), files)

    def build(tmp) -> None:
        if validate:
            validate_files(files, schema)
        split_parquet(files, schema, data_spec.split, tmp)

    out, hit = cached_dir("prepared", key, build)
    if hit:
        log.info(f"data: reusing the split prepared earlier ({out})")
    return {s: sorted(str(p) for p in (out / s).glob("part-*.parquet")) for s in ("train", "validation", "test")}
