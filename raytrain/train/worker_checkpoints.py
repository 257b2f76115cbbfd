"""A worker's checkpoints in Ray Train: save and report, restore (falling back to the newest complete checkpoint),
where to resume, and the test metrics of the best checkpoint by validation AUC."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ray.train
from ray.train import CheckpointUploadMode

from ..errors import CheckpointError
from ..log import get_logger
from ..spec.job import JobSpec
from ..storage import Store, is_uri, redact
from . import checkpoint as ckpt
from .export import complete_markers
from .loaders import EvalData, TrainData
from .metrics import evaluate

log = get_logger(__name__)


def save_and_report(spec: JobSpec, store: Store, sharded, name: str, epoch: int, metrics: dict, step: int | None = None,
          before_report=None, data_order: dict | None = None) -> None:
    """A sharded checkpoint registered with Ray Train once every rank reported it. ``before_report()``: more metrics,
    computed after the checkpoint's files are written and sent in the same report."""
    if store.remote:
        # every rank saves its shards locally and Ray uploads them: the files of all ranks are merged
        # into one checkpoint directory on the URI, registered once every rank has reported
        with tempfile.TemporaryDirectory(prefix="raytrain-ckpt-") as d:
            ckpt.save(sharded, d, epoch, metrics, step=step, data_order=data_order)
            if before_report is not None:
                metrics = {**metrics, **before_report()}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)
    else:
        # written straight into the run's storage (no copy); Ray registers it once every rank reported
        storage = ray.train.get_context().get_storage()
        directory = Path(storage.experiment_fs_path) / name
        ckpt.save(sharded, directory, epoch, metrics, step=step, data_order=data_order)
        if before_report is not None:
            metrics = {**metrics, **before_report()}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint(str(directory)),
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


def best_checkpoint(store: Store, current: dict) -> tuple[float, int, str | None]:
    """(val_auc, epoch, location) of the best epoch-end checkpoint of this run by validation AUC: those on storage
    and ``current`` (the last epoch's metrics, its checkpoint maybe not uploaded yet; location None)."""
    experiment = ray.train.get_context().get_storage().experiment_fs_path.rstrip("/")
    root = store.root.rstrip("/")
    rel = experiment[len(root) + 1:] if experiment.startswith(root + "/") else "ray"
    best: tuple[float, int, str | None] = (float(current["val_auc"]), int(current["epoch"]), None)
    for location, info in complete_markers(store.location, rel):
        auc, epoch = info.get("metrics", {}).get("val_auc"), int(info["epoch"]) + 1
        if auc is not None and epoch != best[1] and (auc, epoch) > best[:2]:
            best = (float(auc), epoch, location)
    return best


def test_at_best(spec, prepared, sharded, device, rank: int, world: int, store: Store, metrics: dict) -> dict:
    """Test metrics of the checkpoint this run's model is used from (ensembles, distillation, serving load the
    best by validation AUC), not of the last epoch: the best checkpoint is loaded first when it is an earlier one.
    Called at the end, after the last checkpoint is written, so the weights it replaces are saved."""
    _, epoch, location = best_checkpoint(store, metrics)
    if location is not None:
        if rank == 0:
            log.info(f"test: evaluating epoch {epoch}'s checkpoint, the best by validation AUC")
        if is_uri(location):
            with tempfile.TemporaryDirectory(prefix="raytrain-best-") as d:
                ckpt.load(sharded, Store(location).download(d))
        else:
            ckpt.load(sharded, location)
    return {**test_metrics(spec, prepared, sharded, device, rank, world, store, metrics, epoch), "test_epoch": epoch}


def test_metrics(spec, prepared, sharded, device, rank: int, world: int, store: Store, metrics: dict,
                  epoch: int) -> dict:
    """Test AUC / log loss over all ranks of the model as it is (``epoch``'s weights); rank 0 writes them with
    ``metrics`` to metrics/test.json."""

    test = EvalData(prepared, "test", spec.train.eval_batch_size, rank, world,
                    prefetch=min(2, spec.train.prefetch_depth()), buffer_rows=spec.train.ingest.shuffle_buffer_rows)
    t = evaluate(sharded.module, test, device)
    out = {"test_auc": t["auc"], "test_logloss": t["logloss"], "test_rows": t["rows"]}
    if rank == 0:
        log.info(f"test (epoch {epoch}): auc {t['auc']:.4f} logloss {t['logloss']:.4f} over {t['rows']:,} rows")
        store.write_text("metrics/test.json", json.dumps({**metrics, **out, "test_epoch": epoch}, indent=2))
    return out


def restore(sharded, restored, store: Store) -> tuple[dict, str]:
    """Load the checkpoint Ray hands back; when it is incomplete (a rank's shard never arrived), the newest complete
    checkpoint beside it instead. Every rank reads the same storage, so every rank makes the same choice.
    Returns (its marker, where it was loaded from)."""
    with restored.as_directory() as d:
        try:
            return ckpt.load(sharded, d), str(restored.path)
        except CheckpointError as e:
            problem = e
    where = restored.path
    if store.remote and not is_uri(str(where)):
        where = store.location_of(str(where))
    found = ckpt.latest_complete(where)
    if found is None:
        raise CheckpointError(f"{problem}; no complete checkpoint beside it to resume from") from None
    location, _ = found
    log.info(f"{problem}: resuming from {redact(location)}, the newest complete checkpoint, instead")
    if not is_uri(location):
        return ckpt.load(sharded, location), location
    with tempfile.TemporaryDirectory(prefix="raytrain-restore-") as d:
        return ckpt.load(sharded, Store(location).download(d)), redact(location)


def resume_point(info: dict, train: TrainData, world: int) -> tuple[int, int]:
    """(epoch, step) to continue from a checkpoint's marker. A mid-epoch position holds only for the data order it
    was taken in. With another world size the interrupted epoch starts over, said in the log (the workers are
    another set of readers). Any other change (batch size, seed, shuffle buffer, the train files or their contents)
    would skip or repeat examples unnoticed: refused, naming what changed."""
    step = info.get("step")
    if step is None:
        return info["epoch"] + 1, 0
    if info.get("world_size") != world:
        log.info(f"checkpoint taken mid-epoch with {info.get('world_size')} workers, now {world}: "
             f"epoch {info['epoch'] + 1} starts over")
        return info["epoch"], 0
    recorded = info.get("data_order")
    if recorded is None:
        log.warning("this mid-epoch checkpoint does not record its data order (an older raytrain): its position is "
                    "taken as it is, unchecked")
    else:
        changed = [f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in train.order.items() if recorded.get(k) != v]
        if changed:
            raise CheckpointError(
                f"mid-epoch checkpoint (epoch {info['epoch'] + 1}, step {step}) was taken in another data order: "
                f"{'; '.join(changed)}. Resuming from its position would skip or repeat examples. Restore what "
                "changed, or resume from an epoch-end checkpoint (move the mid_epoch_* checkpoints away)")
    return info["epoch"], min(int(step), train.steps)
