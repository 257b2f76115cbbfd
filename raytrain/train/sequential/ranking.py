"""Pretraining a sequential model by next-item prediction, and the leave-one-out evaluation over the whole catalogue.

Objective: at every position of every training history, the next item against sampled negatives (uniform over the
catalogue, shared by the batch) with a sampled softmax at a temperature, or against every other item of the catalogue
(``negatives="all"``: a full softmax); no labels needed.

Evaluation (docs/sequential.md): for each user, the representation after the history before the held-out item ranks
every item of the catalogue except the padding id and the items already in that history (``raytrain.kernels.
topk_scores`` with the history as the exclusion list); HR@K and NDCG@K from the top-K list, MRR from the held-out
item's full rank. No sampled negatives in evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ...data.sequences import Sequences, Split
from ...models.sequential import KEYS, SequentialModel, candidate_logits

KS = (10, 50)


@dataclass
class SeqBatch:
    kjt: KeyedJaggedTensor
    timestamps: torch.Tensor  # [T] aligned with the history values
    targets: torch.Tensor  # [T] the next item at each history position (training), else empty
    negatives: torch.Tensor  # [K] sampled negative ids (training), else empty
    actions: torch.Tensor | None = None  # [T] the action (rating, type) of each history position, where the data has one

    def inputs(self) -> tuple:
        """What the model reads: ``model(*batch.inputs())``."""
        return self.kjt, self.timestamps, self.actions


def _batch(histories: list[np.ndarray], times: list[np.ndarray], targets: list[np.ndarray], negatives: np.ndarray,
           actions: list[np.ndarray] | None = None) -> SeqBatch:
    b = len(histories)
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    neg_lengths = np.zeros(b, dtype=np.int64)
    neg_lengths[0] = len(negatives)
    tgt = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    values = np.concatenate([*histories, tgt, negatives]).astype(np.int64)
    all_lengths = np.concatenate([lengths, lengths if targets else np.zeros(b, np.int64), neg_lengths])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=KEYS, values=torch.from_numpy(values),
                                              lengths=torch.from_numpy(all_lengths))
    return SeqBatch(kjt, torch.from_numpy(np.concatenate(times)), torch.from_numpy(tgt),
                    torch.from_numpy(negatives.astype(np.int64)),
                    None if actions is None else torch.from_numpy(np.concatenate(actions).astype(np.int64)))


def next_item_loss(model, batch: SeqBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sampled-softmax loss, the candidate logits it came from) of one training batch."""
    user, looked = model(*batch.inputs())
    logits = candidate_logits(user, looked["target"], looked["negative"], batch.targets, batch.negatives, temperature)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long)), logits


def in_batches(users: np.ndarray, per_batch: int) -> list[np.ndarray]:
    """``users`` in consecutive batches of at most ``per_batch`` (one batch when there are none)."""
    return np.array_split(users, max(1, -(-len(users) // per_batch)))


def _last(seqs: Sequences, u: int, max_len: int) -> slice:
    """The positions of user ``u``'s last ``max_len`` actions."""
    return slice(max(seqs.offsets[u], seqs.offsets[u + 1] - max_len), seqs.offsets[u + 1])


# ``negatives: auto``: a full softmax up to this many items, 128 sampled negatives above. benchmarks/full_softmax.py:
# HSTU's training step at the shipped job's shape costs 1.9x the sampled one at 1,000 items, 2.9x at 2,000, 4.7x at
# 4,000, 17x at 16,000 on 2 CPU cores (the [positions, items] score matrix); a whole run costs less than the step:
# jobs/pretrain_hstu_ml100k.yaml (1,682 items) took 4.2 minutes against 3.5 with 128 negatives
FULL_SOFTMAX_MAX_ITEMS = 2000
AUTO_SAMPLED = 128


def resolve_negatives(negatives: int | str, num_items: int) -> int | str:
    """``auto`` as what it means for a catalogue of ``num_items`` ids (the padding id included); others as given."""
    if negatives != "auto":
        return negatives
    return "all" if num_items - 1 <= FULL_SOFTMAX_MAX_ITEMS else AUTO_SAMPLED


def trainable_users(train: Sequences) -> np.ndarray:
    return np.flatnonzero(train.lengths() >= 2)


def train_batches(train: Sequences, users_per_batch: int, max_len: int, negatives: int | str, rng: np.random.Generator,
                  in_batch: int = 0, chunks: list[np.ndarray] | None = None) -> Iterator[SeqBatch]:
    """Shuffled users (or the given ``chunks`` of users); each history's last ``max_len`` transitions (item -> next
    item); ``negatives`` uniform ids (``"all"``: every item id, no sampling) and ``in_batch`` ids drawn from the
    batch's own next items; ``"auto"``: ``resolve_negatives``."""
    negatives = resolve_negatives(negatives, train.num_items)
    if chunks is None:
        chunks = in_batches(rng.permutation(trainable_users(train)), users_per_batch)
    for chunk in chunks:
        hs, ts, tg, acts = [], [], [], []
        for u in chunk:
            a, z = train.offsets[u], train.offsets[u + 1]
            start = max(a, z - 1 - max_len)
            hs.append(train.items[start:z - 1])
            ts.append(train.timestamps[start:z - 1])
            tg.append(train.items[start + 1:z])
            if train.actions is not None:
                acts.append(train.actions[start:z - 1])
        neg = np.arange(1, train.num_items) if negatives == "all" else rng.integers(1, train.num_items, size=int(negatives))
        if in_batch and negatives != "all":
            neg = np.concatenate([neg, rng.choice(np.concatenate(tg), size=in_batch)])
        yield _batch(hs, ts, tg, neg, acts if train.actions is not None else None)


def eval_batches(history: Sequences, users_per_batch: int, max_len: int, chunks: list[np.ndarray] | None = None
                 ) -> Iterator[tuple[np.ndarray, SeqBatch]]:
    """(the users, their last ``max_len`` actions), in order or in the given ``chunks`` of users."""
    for chunk in chunks if chunks is not None else in_batches(np.arange(history.users), users_per_batch):
        spans = [_last(history, u, max_len) for u in chunk]
        acts = None if history.actions is None else [history.actions[s] for s in spans]
        yield chunk, _batch([history.items[s] for s in spans], [history.timestamps[s] for s in spans], [],
                            np.zeros(0, np.int64), acts)


@torch.no_grad()
def user_vectors(model: SequentialModel, history: Sequences, users_per_batch: int = 256) -> torch.Tensor:
    """[U, d]: each user's representation after the last action of ``history``."""
    model.eval()
    out = []
    for _, batch in eval_batches(history, users_per_batch, model.max_len):
        user, _ = model(*batch.inputs())
        last = batch.kjt["history"].offsets()[1:] - 1
        out.append(user[last])
    return torch.cat(out)


def rank_metrics(queries: torch.Tensor, items: torch.Tensor, targets: np.ndarray, seen: Sequences,
                 ks: tuple[int, ...] = KS, block: int = 512) -> dict[str, float]:
    """HR@K, NDCG@K (from the top-K of ``topk_scores``) and MRR (from the full rank) of each user's held-out
    ``targets`` among every item but padding and the items in the user's ``seen`` history."""
    sums = rank_sums(queries, items, targets, seen, ks, block)
    n = sums.pop("users")
    return {k: v / max(n, 1.0) for k, v in sums.items()}


def rank_sums(queries: torch.Tensor, items: torch.Tensor, targets: np.ndarray, seen: Sequences,
              ks: tuple[int, ...] = KS, block: int = 512) -> dict[str, float]:
    """``rank_metrics``' sums over the users and their count (``users``): what ranks add up across workers."""
    if len(targets) == 0:
        return {**{f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg")}, "mrr": 0.0, "users": 0.0}
    from ...kernels import topk_scores

    mask = torch.ones(items.shape[0], dtype=torch.bool)
    mask[0] = False
    exclude = (torch.from_numpy(seen.offsets), torch.from_numpy(seen.items))
    _, top = topk_scores(queries, items, max(ks), item_mask=mask, exclude=exclude)
    tgt = torch.from_numpy(targets)
    hit_at = (top == tgt[:, None]).float()
    position = torch.arange(1, top.shape[1] + 1, dtype=torch.float32)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = float(hit_at[:, :k].sum())
        out[f"ndcg@{k}"] = float((hit_at[:, :k] / torch.log2(position[:k] + 1)).sum())
    ranks = []
    for lo in range(0, len(tgt), block):
        hi = min(lo + block, len(tgt))
        scores = queries[lo:hi] @ items.T
        scores[:, ~mask] = float("-inf")
        rows = np.repeat(np.arange(hi - lo), np.diff(seen.offsets[lo:hi + 1]))
        scores[torch.from_numpy(rows), torch.from_numpy(seen.items[seen.offsets[lo]:seen.offsets[hi]])] = float("-inf")
        own = scores.gather(1, tgt[lo:hi, None])  # -inf where the target was seen: never recommended, no rank
        rank = ((scores > own).sum(1) + 1).float()
        ranks.append(torch.where(torch.isinf(own[:, 0]), torch.full_like(rank, float("inf")), rank))
    out["mrr"] = float((1.0 / torch.cat(ranks)).sum()) if ranks else 0.0
    out["users"] = float(len(tgt))
    return out


def most_popular(split: Split, which: str = "test") -> dict[str, float]:
    """The baseline: every user gets the items most often in the training histories (the same protocol)."""
    counts = np.bincount(split.train.items, minlength=split.train.num_items).astype(np.float32)
    history = split.test_history if which == "test" else split.validation_history
    target = split.test_target if which == "test" else split.validation_target
    queries = torch.ones(history.users, 1)
    return rank_metrics(queries, torch.from_numpy(counts)[:, None], target, history)


def evaluate(model: SequentialModel, split: Split, which: str) -> dict[str, float]:
    history = split.test_history if which == "test" else split.validation_history
    target = split.test_target if which == "test" else split.validation_target
    return rank_metrics(user_vectors(model, history), model.item_embeddings(), target, history)


def pretrain(model: SequentialModel, split: Split, epochs: int, users_per_batch: int = 128, lr: float = 1e-3,
             negatives: int | str = 128, temperature: float = 0.05, seed: int = 0, eval_every: int = 1,
             log=None, in_batch: int = 0) -> dict:
    """Train by next-item prediction; evaluate on validation every ``eval_every`` epochs; the test metrics of the
    best epoch by validation NDCG@10 (its weights restored). Returns the history and the test metrics."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best: tuple[float, int, dict] = (-1.0, 0, {})
    history, examples, seconds = [], 0, 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        t0, losses = time.perf_counter(), []
        for batch in train_batches(split.train, users_per_batch, model.max_len, negatives, rng, in_batch):
            loss, _ = next_item_loss(model, batch, temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            examples += len(batch.targets)
        seconds += time.perf_counter() - t0
        row = {"epoch": epoch, "loss": float(np.mean(losses))}
        if epoch % eval_every == 0 or epoch == epochs:
            row.update({f"val_{k}": v for k, v in evaluate(model, split, "validation").items()})
            if row["val_ndcg@10"] > best[0]:
                best = (row["val_ndcg@10"], epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append(row)
        if log is not None:
            log(row)
    model.load_state_dict(best[2])
    test = evaluate(model, split, "test")
    return {"history": history, "best_epoch": best[1], "test": test, "examples_per_s": examples / max(seconds, 1e-9),
            "parameters": sum(p.numel() for p in model.parameters())}
