"""Cold start: an item the model has never seen, scored from its text.

A model trained with ``data.text`` has dense item features ``text_0..`` (the item text's sentence vector, projected;
``raytrain.data.item_text``). A request row may carry ``item_text``: the feature store then encodes it with the same
encoder (loaded on first use in the replica, its weights checked like at training) and projects it with the
projection saved beside the prepared data, so a new item gets the features its text gives instead of the unknown
row's zeros. Rows scored this way are counted in the reply (``cold_start``) and marked in the request log.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.item_text import TEXT_PREFIX, load_projection

if TYPE_CHECKING:
    from ..text.encoder import TextEncoder

MAX_TEXT = 4096  # characters of one item_text


class ItemText:
    def __init__(self, projection: dict[str, np.ndarray], encoder: str, dense: list[str]) -> None:
        self.projection, self.encoder_name = projection, encoder
        self.columns = [j for j, name in enumerate(dense) if name.startswith(TEXT_PREFIX)]
        self._encoder: TextEncoder | None = None

    @classmethod
    def of(cls, data_spec, dense: list[str]) -> ItemText | None:
        """The cold-start encoder of a model's data, or None when the model was trained without text."""
        if getattr(data_spec, "text", None) is None:
            return None
        from ..data import prepare

        prepared_dir = Path(prepare(data_spec).paths["train"][0]).parent
        projection = load_projection(prepared_dir)
        return None if projection is None else cls(projection, data_spec.text.encoder, dense)

    def features(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dims]: the dense text features of these texts."""
        from ..text.encode import project
        from ..text.encoder import TextEncoder

        encoder = self._encoder
        if encoder is None:
            encoder = self._encoder = TextEncoder(self.encoder_name)
        return project(self.projection, encoder.encode(texts))
