"""Evaluation over all ranks: predictions are gathered, then AUC and log loss are computed once."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import log_loss, roc_auc_score


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    probs = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    out = {"logloss": float(log_loss(labels, probs, labels=[0, 1])), "rows": int(len(labels))}
    out["auc"] = float(roc_auc_score(labels, probs)) if 0 < labels.sum() < len(labels) else float("nan")
    return out


@torch.no_grad()
def evaluate(module: torch.nn.Module, data, device: torch.device) -> dict[str, float]:
    """Run ``data`` (an EvalData) through ``module`` (a TrainModule, maybe sharded) on every rank."""
    was_training = module.training
    module.eval()
    probs, labels = [], []
    for batch, real in data.batches():
        _, logits = module(batch if device.type == "cpu" else batch.to(device))
        if real:
            probs.append(torch.sigmoid(logits[:real]).float().cpu())
            labels.append(batch.label[:real].cpu())
    module.train(was_training)
    local = (
        torch.cat(probs).numpy() if probs else np.zeros(0, np.float32),
        torch.cat(labels).numpy() if labels else np.zeros(0, np.float32),
    )
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    p = np.concatenate([g[0] for g in gathered])
    y = np.concatenate([g[1] for g in gathered])
    return binary_metrics(y, p)
