"""Kind ``train`` with ``model.arch: content``: the content-based recommender (``models.content``) is fitted on the
driver, in seconds, with no Ray Train workers: each user's profile from the training split, the logit's scale and
bias on the validation split (two numbers; the test split is only scored).

The run directory is a training run's: spec.yaml, schema.json, metrics/ (epoch 1 and test), metrics.parquet,
result.json, and one checkpoint (``ray/epoch_0001``) in the same format as a sharded run's, so ensembles, serving and
``raytrain`` commands load it like any model.
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import console
from ..data import prepare
from ..data.batches import Columns, binarise
from ..log import get_logger
from ..runs import new_run_location
from ..spec import resolved_yaml
from ..spec.job import JobSpec
from ..storage import Mirror, redact
from .checkpoint import save_single
from .distributed import TrainModule
from .runner import collect_metrics

log = get_logger(__name__)


def _split(paths: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in paths])


@torch.no_grad()
def logits(module: TrainModule, schema, table: pa.Table, where: str, batch_size: int = 65536) -> np.ndarray:
    cols = Columns.from_arrow(schema, table, where)
    out = [module(cols.batch(torch.arange(lo, min(lo + batch_size, len(cols)))))[1].double().numpy()
           for lo in range(0, len(cols), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def run_content(spec: JobSpec, address: str | None = None) -> dict:
    """Fit, evaluate and save a content model; ``address`` is unused (nothing runs on Ray)."""
    from ..models import build_model
    from ..models.content import ContentModel, fit_logistic, profiles
    from .metrics import binary_metrics

    run_dir, location = new_run_location(spec)
    mirror = Mirror(run_dir, location)
    console.attach(run_dir / "logs")
    mirror.put("spec.yaml", resolved_yaml(spec))
    log.info(f"run directory: {redact(location)}")
    t0 = time.perf_counter()
    prepared = mirror.share(prepare(spec.data, work_dir=str(run_dir)))
    schema = prepared.schema
    mirror.put("schema.json", schema.to_json())
    module = TrainModule(build_model(spec.model, schema))
    module.eval()
    net: ContentModel = module.model.net  # type: ignore[assignment]
    tables = {s: _split(prepared.paths[s]) for s in ("train", "validation", "test")}
    labels = {s: binarise(t.column(schema.label).to_numpy(), schema.positive_if) for s, t in tables.items()}

    train = tables["train"]
    text = [schema.dense[i] for i in net.text.tolist()]
    vectors = np.stack([train.column(c).to_numpy() for c in text], 1)
    users = train.column(net.user_features[0]).to_numpy().astype(np.int64)
    net.profiles.copy_(torch.from_numpy(profiles(users, vectors, labels["train"] > 0.5, net.profiles.shape[0])))
    log.info(f"profiles of {len(np.unique(users)):,} users from {len(users):,} training rows, {len(text)} text "
             "features")

    scale, bias = fit_logistic(logits(module, schema, tables["validation"], "validation split"), labels["validation"])
    with torch.no_grad():
        net.scale.fill_(scale)
        net.bias.fill_(bias)
    m = {s: binary_metrics(labels[s], 1 / (1 + np.exp(-logits(module, schema, tables[s], f"{s} split"))))
         for s in ("validation", "test")}
    metrics = {"epoch": 1, "val_auc": m["validation"]["auc"], "val_logloss": m["validation"]["logloss"],
               "scale": scale, "bias": bias, "epoch_end_time": time.time()}
    (run_dir / "metrics").mkdir(exist_ok=True)
    (run_dir / "metrics" / "epoch_0001.json").write_text(json.dumps(metrics, indent=2))
    test = {"test_auc": m["test"]["auc"], "test_logloss": m["test"]["logloss"], "test_rows": m["test"]["rows"]}
    (run_dir / "metrics" / "test.json").write_text(json.dumps({**metrics, **test, "test_epoch": 1}, indent=2))
    checkpoint = run_dir / "ray" / "epoch_0001"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it saves without a process group: intended
        save_single({"model": module.state_dict()}, checkpoint, 0, metrics)

    summary = collect_metrics(run_dir)
    if prepared.paths:
        from .export import LoadedModel
        from .retrieval import retrieval_metrics

        summary.update(retrieval_metrics(LoadedModel(spec, schema, module, checkpoint, 0), prepared.paths))
    summary.update(wall_seconds=time.perf_counter() - t0, checkpoint=str(checkpoint), run_dir=str(run_dir))
    if location != str(run_dir):
        summary.update(run_dir=location, local_mirror=str(run_dir), checkpoint=f"{location}/ray/epoch_0001")
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    mirror.publish(skip_dirs=("data/",))
    log.info(f"done in {summary['wall_seconds']:.0f}s: val_auc {metrics['val_auc']:.4f}, test_auc "
             f"{test['test_auc']:.4f} test_logloss {test['test_logloss']:.4f} (scale {scale:.3f}, bias {bias:.3f})")
    return summary

