"""Evaluation over all ranks without gathering predictions: AUC and log loss from merged partial results.

Each rank keeps, for its own rows, the sum of the log loss and two histograms of the predicted
probability (positives, negatives) over fine buckets; the ranks all-reduce those (a few MB, whatever
the split's size) and every rank computes the same metrics.

Buckets: a float32 probability, clipped to [1e-7, 1 - 1e-7] as for the log loss, is bucketed by its
bit pattern shifted right by ``SHIFT`` bits. For positive floats the bit pattern is monotone in the
value, so buckets are ordered, and each bucket spans a relative width of 2^-(23 - SHIFT) (1.2e-4 at
SHIFT 10). AUC counts (positive, negative) pairs in the right order; pairs in one bucket count 1/2,
as sklearn counts exact ties, so the AUC is exact whenever no bucket holds two different
predictions of opposite labels, and otherwise off by at most half the share of pairs that share a
bucket (reported as ``auc_tie_bound``; on real predictions the error is far below it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

EPS = 1e-7
SHIFT = 10
_LO = int(np.array([EPS], np.float32).view(np.int32)[0]) >> SHIFT
_HI = int(np.array([1 - EPS], np.float32).view(np.int32)[0]) >> SHIFT
BUCKETS = _HI - _LO + 1


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Exact metrics of predictions held in one process (the driver's ensembles and reports)."""
    probs = np.clip(probs.astype(np.float64), EPS, 1 - EPS)
    from sklearn.metrics import log_loss, roc_auc_score  # the driver's check; workers merge histograms instead

    out = {"logloss": float(log_loss(labels, probs, labels=[0, 1])), "rows": int(len(labels))}
    out["auc"] = float(roc_auc_score(labels, probs)) if 0 < labels.sum() < len(labels) else float("nan")
    return out


class BinaryAccumulator:
    """Partial results of one rank: histograms of predictions by label, log-loss sum, row count."""

    def __init__(self) -> None:
        self.pos = np.zeros(BUCKETS, np.int64)
        self.neg = np.zeros(BUCKETS, np.int64)
        self.loss = 0.0
        self.rows = 0

    def add(self, labels: np.ndarray, probs: np.ndarray) -> None:
        p = np.clip(probs.astype(np.float32), np.float32(EPS), np.float32(1 - EPS))
        y = labels > 0.5
        b = (p.view(np.int32) >> SHIFT) - _LO
        self.pos += np.bincount(b[y], minlength=BUCKETS)
        self.neg += np.bincount(b[~y], minlength=BUCKETS)
        p64 = p.astype(np.float64)
        self.loss += float(-(np.log(p64[y]).sum() + np.log1p(-p64[~y]).sum()))
        self.rows += len(p)

    def merge_across_ranks(self) -> None:
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return
        hist = torch.from_numpy(np.concatenate([self.pos, self.neg]))
        dist.all_reduce(hist)
        scalars = torch.tensor([self.loss, float(self.rows)], dtype=torch.float64)
        dist.all_reduce(scalars)
        h = hist.numpy()
        self.pos, self.neg = h[:BUCKETS].copy(), h[BUCKETS:].copy()
        self.loss, self.rows = float(scalars[0]), int(round(float(scalars[1])))

    def result(self) -> dict[str, float]:
        P, N = int(self.pos.sum()), int(self.neg.sum())
        out = {"logloss": self.loss / self.rows if self.rows else float("nan"), "rows": self.rows}
        if P == 0 or N == 0:
            return out | {"auc": float("nan"), "auc_tie_bound": 0.0}
        neg_below = np.cumsum(self.neg) - self.neg
        pairs = float(P) * float(N)
        ordered = float((self.pos.astype(np.float64) * (neg_below + 0.5 * self.neg)).sum())
        same = float((self.pos.astype(np.float64) * self.neg).sum())
        return out | {"auc": ordered / pairs, "auc_tie_bound": 0.5 * same / pairs}


@torch.no_grad()
def evaluate(module: torch.nn.Module, data, device: torch.device) -> dict[str, float]:
    """Run ``data`` (an EvalData) through ``module`` (a TrainModule, maybe sharded) on every rank."""
    was_training = module.training
    module.eval()
    acc = BinaryAccumulator()
    for batch, real in data.batches():
        _, logits = module(batch if device.type == "cpu" else batch.to(device))
        if real:
            acc.add(batch.label[:real].cpu().numpy(), torch.sigmoid(logits[:real]).float().cpu().numpy())
    module.train(was_training)
    acc.merge_across_ranks()
    if acc.rows != data.total_rows:
        raise RuntimeError(f"{data.split}: evaluated {acc.rows} rows, the split has {data.total_rows}")
    return acc.result()
