"""Generative sequential recommenders over users' action histories: SASRec and HSTU.

Both read a batch of histories as a ``KeyedJaggedTensor`` (key ``history``; the ids of the items to score ride in the
same lookup under ``target`` and ``negative``) whose item embeddings live in one TorchRec ``EmbeddingCollection``
table, so the sharding planner can shard a huge item table like any other. Histories are padded only to the longest
history in the batch (FBGEMM's jagged-to-padded op), never to the longest user of the data set. The encoder's output
at each position, L2-normalised, is the user's representation after that action: the next item is the one whose
(normalised) embedding scores highest with it.

- SASRec (Kang & McAuley, 2018): causal softmax self-attention blocks with a pointwise feed-forward network,
  pre-layer-norm, learned absolute positions.
- HSTU (Zhai et al., ICML 2024, "Actions Speak Louder than Words"): each block projects the layer-normed input once
  into U, V, Q, K (SiLU), attends with pointwise SiLU(QK^T + relative bias) / n instead of a softmax (the bias:
  learned per relative position and per log2-bucket of the time between the two actions), gates the layer-normed
  attention output with U, projects back and adds the residual. Design after meta-recsys/generative-recommenders.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

KEYS = ["history", "target", "negative"]
TIME_BUCKETS = 64


def _padded(values: torch.Tensor, offsets: torch.Tensor, n: int) -> torch.Tensor:
    return torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [n], 0.0)


def _jagged(padded: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return torch.ops.fbgemm.dense_to_jagged(padded, [offsets])[0]


class SASRecBlock(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None],
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.out(a.transpose(1, 2).reshape(b, n, d)), self.dropout, self.training)
        return x + F.dropout(self.ffn(self.norm2(x)), self.dropout, self.training)


class HSTUBlock(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float, max_len: int):
        super().__init__()
        self.heads, self.dropout, self.max_len = heads, dropout, max_len
        self.uvqk = nn.Linear(d, 4 * d)
        self.out = nn.Linear(d, d)
        self.pos_bias = nn.Parameter(torch.empty(2 * max_len - 1).normal_(0, 0.02))
        self.time_bias = nn.Parameter(torch.empty(TIME_BUCKETS + 1).normal_(0, 0.02))

    def relative_bias(self, timestamps: torch.Tensor) -> torch.Tensor:
        """[B, N, N]: a bias per relative position i - j and per log2 bucket of the time from action j to i."""
        n = timestamps.shape[1]
        idx = torch.arange(n, device=timestamps.device)
        pos = self.pos_bias[(idx[:, None] - idx[None, :]).clamp(-(self.max_len - 1), self.max_len - 1) + self.max_len - 1]
        gap = (timestamps[:, :, None] - timestamps[:, None, :]).clamp(min=1).float()
        buckets = torch.log2(gap).long().clamp(0, TIME_BUCKETS)
        return pos[None] + self.time_bias[buckets]

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h, dh = self.heads, d // self.heads
        u, v, q, k = F.silu(self.uvqk(F.layer_norm(x, (d,)))).split(d, dim=-1)
        q, k, v = (t.view(b, n, h, dh).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) + self.relative_bias(timestamps)[:, None]
        attn = F.silu(scores) / self.max_len * allowed[:, None]  # pointwise, scaled by the longest history
        a = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return x + self.out(F.dropout(u * F.layer_norm(a, (d,)), self.dropout, self.training))


class SequentialModel(nn.Module):
    """``arch``: sasrec or hstu; ``cfg``: the spec's ``model.sequence`` section (or anything with its fields)."""

    def __init__(self, arch: str, num_items: int, d: int, cfg: Any, device: torch.device | str = "cpu"):
        super().__init__()
        if d % cfg.heads:
            raise ValueError(f"embedding_dim {d} is not divisible by heads {cfg.heads}")
        self.arch, self.d, self.max_len, self.num_items = arch, d, cfg.max_len, num_items
        self.dropout = cfg.dropout
        self.item_table = EmbeddingCollection(
            tables=[EmbeddingConfig(name="t_item", embedding_dim=d, num_embeddings=num_items, feature_names=KEYS)],
            device=torch.device(device))
        self.positions = nn.Embedding(cfg.max_len, d)
        if arch == "sasrec":
            self.blocks = nn.ModuleList(SASRecBlock(d, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        elif arch == "hstu":
            self.blocks = nn.ModuleList(HSTUBlock(d, cfg.heads, cfg.dropout, cfg.max_len) for _ in range(cfg.blocks))
        else:
            raise ValueError(f"unknown sequential arch {arch!r}; sasrec or hstu")
        self.final_norm = nn.LayerNorm(d)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.num_actions = int(getattr(cfg, "actions", 0) or 0)
        self.action_table = nn.Embedding(self.num_actions, d) if self.num_actions else None  # added to item tokens
        if self.action_table is not None:
            nn.init.normal_(self.action_table.weight, std=0.02)

    def forward(self, kjt: KeyedJaggedTensor, timestamps: torch.Tensor, actions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the normalised user representation after each history action, jagged [T, d]; the normalised embeddings
        of the ``target`` and ``negative`` ids). ``timestamps`` and ``actions`` (ids in [0, actions), read when the
        model embeds actions; missing: 0): [T], aligned with the history's values."""
        looked = self.item_table(kjt)
        hist = looked["history"]
        offsets, lengths = hist.offsets(), hist.lengths()
        n = int(lengths.max())
        tokens = hist.values() * math.sqrt(self.d)
        if self.action_table is not None:  # the action taken on each item joins its token
            ids = actions if actions is not None else torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)
            tokens = tokens + self.action_table(ids.clamp(0, self.num_actions - 1))
        x = _padded(tokens, offsets, n) + self.positions.weight[:n]
        x = F.dropout(x, self.dropout, self.training)
        # seconds since the batch's first action, as float32 (exact to a few seconds over years: enough for log2 buckets)
        rel = (timestamps - timestamps.min()).float()[:, None] if len(timestamps) else timestamps.float()[:, None]
        ts = torch.ops.fbgemm.jagged_to_padded_dense(rel, [offsets], [n], 0.0)[..., 0]
        valid = torch.arange(n, device=x.device)[None, :] < lengths[:, None]
        allowed = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device))[None] & valid[:, None, :]
        for block in self.blocks:
            x = block(x, allowed, ts)
        user = F.normalize(_jagged(self.final_norm(x), offsets), dim=-1)
        items = {k: F.normalize(looked[k].values(), dim=-1) for k in ("target", "negative")}
        return user, items

    def item_embeddings(self, rows_per_lookup: int = 1 << 16) -> torch.Tensor:
        """Every item's normalised embedding [num_items, d] (row 0 is padding), for ranking the whole catalogue. A
        table quantized for serving (``serve.quantize``: TorchRec's QuantEmbeddingCollection, no ``weight``) is read
        back through its own lookup, ``rows_per_lookup`` rows at a time, so the catalogue is scored with the rows the
        history lookups see."""
        table = self.item_table.embeddings["t_item"]
        weight = getattr(table, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_floating_point():
            return F.normalize(weight.detach(), dim=-1)
        out = []
        with torch.no_grad():
            for start in range(0, self.num_items, rows_per_lookup):
                ids = torch.arange(start, min(start + rows_per_lookup, self.num_items))
                kjt = KeyedJaggedTensor.from_lengths_sync(KEYS, ids, torch.tensor([len(ids), 0, 0]))
                out.append(self.item_table(kjt)["history"].values().float())
        return F.normalize(torch.cat(out), dim=-1)


def candidate_logits(user: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, positive_ids: torch.Tensor,
                     negative_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """[P, 1 + K]: each position's score of its next item (column 0) and of the shared sampled negatives, over
    ``temperature``; a negative that happens to be the position's positive is -inf."""
    pos = (user * positive).sum(-1, keepdim=True)
    neg = (user @ negative.T).masked_fill(negative_ids[None, :] == positive_ids[:, None], float("-inf"))
    return torch.cat([pos, neg], dim=1) / temperature


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over each position's candidates (the ``candidate_logits``
    of both models on the same candidates), averaged over positions; masked candidates (-inf in both) count for 0."""
    t = F.log_softmax(teacher / temperature, dim=1)
    s = F.log_softmax(student / temperature, dim=1)
    p = t.exp()
    kl = torch.where(p > 0, p * (t - s), torch.zeros_like(p)).sum(1)
    return kl.mean() * temperature**2
