from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP, Perceptron
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ..data.item_text import TEXT_PREFIX
from ..data.schema import FeatureSchema, table_name


def table_configs(schema: FeatureSchema, embedding_dim: int) -> list[EmbeddingBagConfig]:
    """One table per sparse feature; multi-valued features are mean-pooled (genres of a movie)."""
    return [
        EmbeddingBagConfig(
            name=table_name(f.name),
            embedding_dim=embedding_dim,
            num_embeddings=f.cardinality,
            feature_names=[f.name],
            pooling=PoolingType.MEAN if f.multi_valued else PoolingType.SUM,
        )
        for f in schema.sparse
    ]


class RecModel(nn.Module):
    """Wraps an architecture so every model has the same call: ``logits = model(dense, sparse)``.

    ``embedding_l2``: a DLRM / DCN-v2 keeps the embeddings its last training forward looked up (the
    sparse arch's [B, F, D] output) and ``penalty()`` returns ``embedding_l2 * mean over rows of their
    squared norm``, which the training loss adds. It is a loss term, not an optimizer weight decay:
    FBGEMM's CPU kernels ignore ``weight_decay``, and a loss term trains the same on every device
    and sharding type. Frequent ids are pulled towards 0 in proportion to how often they are seen.
    """

    def __init__(self, net: nn.Module, arch: str, embedding_l2: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.embedding_l2 = embedding_l2
        self._looked_up: torch.Tensor | None = None
        if embedding_l2 > 0:
            sparse_arch = net.get_submodule("sparse_arch")
            sparse_arch.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._looked_up = output if self.training else None

    def penalty(self) -> torch.Tensor | None:
        """The embedding L2 term of the last training forward (None without one)."""
        if self._looked_up is None:
            return None
        looked_up, self._looked_up = self._looked_up, None
        return self.embedding_l2 * looked_up.pow(2).sum(dim=(1, 2)).mean()

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.net(dense, sparse).reshape(-1)


class TwoTower(nn.Module):
    """Retrieval model: a user tower and an item tower, scored by a dot product.

    Features of group ``user`` (and ``context``) feed the user tower, those of group ``item`` the
    item tower. Dense features are not used, except an item's text features (``data.text``: ``text_*``): a content
    branch (its own MLP) adds them to the item tower's output, so an item with text and no interactions (its id the
    unknown row) still gets a vector of its own. The item's dense features come from the catalogue, not a request.
    """

    def __init__(
        self,
        ebc: EmbeddingBagCollection,
        user_features: list[str],
        item_features: list[str],
        embedding_dim: int,
        tower_sizes: list[int],
        device: torch.device | None,
        content: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.embedding_bag_collection = ebc
        self.user_features = list(user_features)
        self.item_features = list(item_features)
        self.user_tower = MLP(len(user_features) * embedding_dim, tower_sizes, device=device)
        self.item_tower = MLP(len(item_features) * embedding_dim, tower_sizes, device=device)
        self.content = list(content or [])  # the item text features' columns of ``dense``
        if self.content:
            self.content_tower = MLP(len(self.content), tower_sizes, device=device)

    def tower_output(self, pooled: dict[str, torch.Tensor], names: list[str], tower: nn.Module) -> torch.Tensor:
        return tower(torch.cat([pooled[n] for n in names], dim=1))

    def towers(self, sparse: KeyedJaggedTensor, dense: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.embedding_bag_collection(sparse).to_dict()
        item = self.tower_output(pooled, self.item_features, self.item_tower)
        if self.content:
            if dense is None:
                raise ValueError("this two-tower model has a content branch: its item vectors need the dense features")
            item = item + self.content_tower(dense[:, self.content])
        return self.tower_output(pooled, self.user_features, self.user_tower), item

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        user, item = self.towers(sparse, dense)
        return (user * item).sum(dim=1)


def _dlrm(spec: Any, schema: FeatureSchema, ebc: EmbeddingBagCollection, device) -> nn.Module:
    """DLRM, or with ``spec.arch`` dcn_v2 its DCN-v2 variant (a low-rank cross network for the interaction). With
    item text features (``text_*``) they enter the interaction as one more embedding (``TextSlot``)."""
    text = text_columns(schema)
    common = dict(embedding_bag_collection=ebc, dense_in_features=len(schema.dense) - len(text),
                  dense_arch_layer_sizes=[*spec.dense_arch, spec.embedding_dim],
                  over_arch_layer_sizes=[*spec.over_arch, 1], dense_device=device)
    if spec.arch == "dcn_v2":
        net = DLRM_DCN(**common, dcn_num_layers=spec.dcn.num_layers, dcn_low_rank_dim=spec.dcn.low_rank_dim)
    else:
        net = DLRM(**common)
    return TextSlot(net, spec, len(schema.dense), text, device) if text else net


def text_columns(schema: FeatureSchema) -> list[int]:
    """The columns of ``dense`` that hold an item's text features (``data.text``)."""
    return [i for i, d in enumerate(schema.dense) if d.startswith(TEXT_PREFIX) and schema.group_of(d) == "item"]


class TextSlot(nn.Module):
    """A DLRM / DCN-v2 whose item text features are an embedding of their own: a linear map of the ``text_*``
    columns to the embedding width joins the tables' embeddings in the interaction (the cross network of DCN-v2,
    the dot products of DLRM), instead of being mixed with the other dense features in the small dense arm. The
    other dense features go through the dense arm as before."""

    text: torch.Tensor  # buffers: the text columns of ``dense``, and the other columns
    other: torch.Tensor

    def __init__(self, net: Any, spec: Any, num_dense: int, text: list[int], device) -> None:
        from torchrec.models.dlrm import InteractionArch, InteractionDCNArch, OverArch, choose
        from torchrec.modules.crossnet import LowRankCrossNet

        super().__init__()
        d = spec.embedding_dim
        self.sparse_arch: nn.Module = net.sparse_arch
        self.dense_arch: nn.Module = net.dense_arch
        f = len(net.sparse_arch.sparse_feature_names) + 1  # the tables' features and the text
        if spec.arch == "dcn_v2":
            self.inter_arch: nn.Module = InteractionDCNArch(f, LowRankCrossNet((f + 1) * d, spec.dcn.num_layers,
                                                                               spec.dcn.low_rank_dim))
            over_in = (f + 1) * d
        else:
            self.inter_arch = InteractionArch(f)
            over_in = d + choose(f, 2) + f
        self.over_arch = OverArch(over_in, [*spec.over_arch, 1], device=device)
        self.text_arch = nn.Linear(len(text), d, device=device)
        self.register_buffer("text", torch.tensor(text, dtype=torch.long), persistent=False)
        self.register_buffer("other", torch.tensor([i for i in range(num_dense) if i not in text], dtype=torch.long),
                             persistent=False)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        tables = self.sparse_arch(sparse)  # [B, F, D]
        text = self.text_arch(dense.index_select(1, self.text)).unsqueeze(1)
        mixed = self.inter_arch(dense_features=self.dense_arch(dense.index_select(1, self.other)),
                                sparse_features=torch.cat([tables, text], dim=1))
        return self.over_arch(mixed)


def _two_tower(spec: Any, schema: FeatureSchema, ebc: EmbeddingBagCollection, device) -> nn.Module:
    item = [f.name for f in schema.sparse if f.group == "item"]
    user = [f.name for f in schema.sparse if f.group != "item"]
    return TwoTower(ebc, user, item, spec.embedding_dim, list(spec.tower), device, text_columns(schema))


class _DropoutHook:
    """A forward hook: dropout on a layer's output while training (no parameters, so checkpoints of models with
    and without dropout have the same keys)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(output, self.p, module.training)


def add_dropout(net: nn.Module, p: float) -> int:
    """Dropout ``p`` after each hidden layer of a DLRM / DCN top MLP; returns how many layers got it."""
    over = getattr(net, "over_arch", None)
    if p <= 0 or over is None:
        return 0
    # OverArch.model = Sequential(MLP(hidden layers), Linear(-> 1)): the MLP's layers are Perceptrons
    hidden = [m for m in over.model[0].modules() if isinstance(m, Perceptron)]
    for layer in hidden:
        layer.register_forward_hook(_DropoutHook(p))
    return len(hidden)


MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "dlrm": _dlrm,
    "dcn_v2": _dlrm,
    "two_tower": _two_tower,
}


def build_model(
    spec: Any, schema: FeatureSchema, device: str | torch.device = "cpu", ebc_device: str | torch.device | None = None
) -> RecModel:
    """Build ``spec.arch`` for ``schema``. ``ebc_device='meta'`` leaves the tables unallocated,
    which is how the sharding planner and DistributedModelParallel want them for big tables."""
    device = torch.device(device)
    if spec.arch == "content":  # no tables: profiles and item texts (``models.content``)
        from .content import ContentModel

        return RecModel(ContentModel(schema, text_columns(schema), device), spec.arch)
    ebc = EmbeddingBagCollection(
        tables=table_configs(schema, spec.embedding_dim),
        device=torch.device(ebc_device) if ebc_device is not None else device,
    )
    net = MODEL_REGISTRY[spec.arch](spec, schema, ebc, device)
    add_dropout(net, getattr(spec, "dropout", 0.0))
    return RecModel(net, spec.arch, getattr(spec, "embedding_l2", 0.0))


def embedding_collection(model: nn.Module) -> EmbeddingBagCollection:
    for m in model.modules():
        if isinstance(m, EmbeddingBagCollection):
            return m
    raise ValueError("model has no EmbeddingBagCollection")
