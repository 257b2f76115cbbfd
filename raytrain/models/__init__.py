"""Recommender models built from TorchRec modules.

Every model takes ``(dense: Tensor[B, D], sparse: KeyedJaggedTensor)`` and returns logits ``[B]``.
One ``EmbeddingBagCollection`` holds every table (one table per sparse feature, named ``t_<feature>``),
so the sharding planner sees all tables of a model at once.
"""

from __future__ import annotations

from .build import MODEL_REGISTRY, RecModel, build_model, table_configs, table_name

__all__ = ["MODEL_REGISTRY", "RecModel", "build_model", "table_configs", "table_name"]
