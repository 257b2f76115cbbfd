"""Starting a run from another run's weights (``train.init_from``): a pretrained sequential model's item embeddings
in a CTR model's item table, or every tensor of an earlier run of the same model (continuing on new data).

The source is read from its best checkpoint (by its validation metric) with DCP, which reshards: the source may have
run at any world size and sharding. Each rank copies into this model only the slices it owns.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CheckpointError
from ..log import get_logger
from ..storage import redact
from .checkpoint import load_state, tensor_sizes

log = get_logger(__name__)


def source_checkpoint(run: str) -> str:
    """The best checkpoint of the run at (or newest below) ``run``, by its own validation metric (a URI run is
    downloaded into the local cache first)."""
    from ..runs import newest_local_run
    from ..spec import load_spec
    from .export import best_checkpoint_location

    local = newest_local_run(run, "result.json")
    arch = load_spec(local / "spec.yaml").model.arch
    best = best_checkpoint_location(local, "val_ndcg@10" if arch in ("sasrec", "hstu") else "val_auc")
    if best is None:
        raise CheckpointError(f"train.init_from.run: {redact(str(local))} has no complete checkpoint")
    return best


def _key_of(keys: list[str], table: str, where: str) -> str | None:
    found = [k for k in keys if k.endswith(f".{table}.weight") and k.startswith("model.")]
    if len(found) > 1:
        raise CheckpointError(f"{where}: table {table!r} is ambiguous ({', '.join(found)})")
    return found[0] if found else None


def plan_copy(cfg: Any, source: dict[str, tuple[int, ...]], target: dict[str, tuple[int, ...]]
              ) -> dict[str, tuple[str, tuple[int, ...]]]:
    """this model's key -> (the source's key, the source's size); every mismatch an error naming the table."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    src_keys, dst_keys = list(source), [f"model.{k}" for k in target]
    for mine, theirs in cfg.tables.items():
        dst = _key_of(dst_keys, mine, "train.init_from.tables")
        if dst is None:
            raise CheckpointError(f"train.init_from.tables.{mine}: this model has no table {mine!r}")
        src = _key_of(src_keys, theirs, "train.init_from.run")
        if src is None:
            if mine in cfg.free:
                continue
            have = sorted(k.split(".")[-2] for k in src_keys if k.startswith("model.") and k.endswith(".weight"))
            raise CheckpointError(f"train.init_from.tables.{mine}: the run has no table {theirs!r} (it has "
                                  f"{', '.join(have)}); list it under train.init_from.free to start it fresh")
        rows, dim = target[dst.removeprefix("model.")]
        s_rows, s_dim = source[src]
        if s_rows != rows:
            raise CheckpointError(f"train.init_from.tables.{mine}: {rows} rows here, {s_rows} in the run's {theirs} "
                                  "(the id spaces must be the same)")
        if s_dim != dim and not (cfg.dims == "truncate" and s_dim > dim):
            raise CheckpointError(f"train.init_from.tables.{mine}: width {dim} here, {s_dim} in the run's {theirs}; "
                                  "match model.embedding_dim or set train.init_from.dims: truncate (if wider)")
        out[dst.removeprefix("model.")] = (src, source[src])
    if cfg.all:
        for key, size in target.items():
            if key not in out and source.get(f"model.{key}") == size:
                out[key] = (f"model.{key}", size)
    return out


def warm_start(dmp: torch.nn.Module, cfg: Any, rank: int) -> list[str]:
    """Copy the source's tensors into ``dmp`` (each rank its own slices); returns this model's keys it set."""
    from .distributed import load_full_state

    location = source_checkpoint(cfg.run)
    own = dmp.state_dict()
    target = {k: tuple(v.size()) for k, v in own.items() if hasattr(v, "size")}
    copies = plan_copy(cfg, tensor_sizes(location), target)
    state = {"model": {src.removeprefix("model."): torch.empty(size) for src, size in copies.values()}}
    load_state(state, location)
    full = {}
    for dst, (src, _) in copies.items():
        value = state["model"][src.removeprefix("model.")]
        full[dst] = value[:, :target[dst][1]] if value.dim() == 2 and value.shape[1] != target[dst][1] else value
    load_full_state(dmp, full)
    if rank == 0:
        log.info(f"warm start from {redact(location)}: {len(full)} tensor(s) "
                 f"({', '.join(sorted(cfg.tables)) or 'none named'}{'; all of the same name and size' if cfg.all else ''})")
    return sorted(full)


def preflight(cfg: Any, schema: Any, embedding_dim: int) -> str:
    """On the driver, before any worker starts: the source checkpoint, and every named table checked against the
    tables this model will have (``t_<feature>``, cardinality x embedding_dim). Returns the checkpoint."""
    location = source_checkpoint(cfg.run)
    tables: dict[str, tuple[int, ...]] = {f"embedding_bags.t_{f.name}.weight": (int(f.cardinality), embedding_dim)
                                          for f in schema.sparse}
    plan_copy(cfg.model_copy(update={"all": False}), tensor_sizes(location), tables)
    return location
