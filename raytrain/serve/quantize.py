"""Embedding tables at serving time: fp32 as trained, or fp16 / int8 / int4 rows through TorchRec's inference
quantization (``quantize_inference_model``: each EmbeddingBagCollection becomes a QuantEmbeddingBagCollection on
FBGEMM's IntNBit table-batched kernels, which have CPU implementations).

int8 and int4 are row-wise: each row keeps its own scale and bias (4 bytes, two fp16), so a row of dimension D takes
D + 4 bytes at int8 and D / 2 + 4 at int4 against 4 D at fp32. FBGEMM pads rows to 16 bytes by default on GPUs; on a
CPU nothing needs the padding, and at D = 16 it would make int8 rows 32 bytes instead of 20, so rows here are not
padded (``row_alignment`` 1, FBGEMM's own CPU default).

What a table holds is measured from the kernel's storage (``weights_host``), not the state dict, which overstates
int4 (docs/serving.md, "Quantized tables").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DTYPES: dict[str, torch.dtype] = {"none": torch.float32, "fp16": torch.float16, "int8": torch.int8,
                                  "int4": torch.quint4x2}


def table_dtypes(features: list[str], default: str, overrides: dict[str, str], where: str) -> dict[str, str]:
    """feature -> dtype name for every table, the overrides checked against the features the model has."""
    unknown = sorted(set(overrides) - set(features))
    if unknown:
        raise ValueError(f"{where}.quantize_tables: no table for feature(s) {', '.join(map(repr, unknown))}; the "
                         f"model's features: {', '.join(features)}")
    return {f: overrides.get(f, default) for f in features}


def quantize_tables(module: nn.Module, dtypes: dict[str, str]) -> nn.Module:
    """``module`` (in place) with every EmbeddingBagCollection / EmbeddingCollection swapped for its quantized
    counterpart; ``dtypes``: table name -> one of ``DTYPES`` (none keeps a table fp32 inside the quantized module).
    Nothing to do when every table stays fp32."""
    if all(d == "none" for d in dtypes.values()):
        return module
    from torchrec.inference.modules import quantize_inference_model
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
    from torchrec.quant.embedding_modules import quant_prep_customize_row_alignment

    quant_prep_customize_row_alignment(module, [EmbeddingBagCollection, EmbeddingCollection], 1)
    module = quantize_inference_model(module, per_table_weight_dtype={t: DTYPES[d] for t, d in dtypes.items()},
                                      output_dtype=torch.float32)
    m: Any
    for m in module.modules():
        # the quantized rows as the conversion made them, kept beside the copy the FBGEMM kernel serves from; read
        # only while the quantized module is built, so dropping it halves what quantized tables hold in memory
        if getattr(m, "_table_name_to_quantized_weights", None) is not None:
            m._table_name_to_quantized_weights = None
    return module


_NAMES = {"FP32": "fp32", "FP16": "fp16", "INT8": "int8", "INT4": "int4", "INT2": "int2"}


def table_storage(module: nn.Module) -> dict[str, dict[str, Any]]:
    """table -> {dtype, rows, dim, bytes}: what each embedding table of ``module`` holds, from the FBGEMM kernels'
    storage for quantized tables and the weights for fp32 ones."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    out: dict[str, dict[str, Any]] = {}
    for m in module.modules():
        if isinstance(m, IntNBitTableBatchedEmbeddingBagsCodegen):
            total = m.weights_host.numel() * m.weights_host.element_size()
            starts = [int(x) for x in m.weights_offsets.tolist()]
            ends = sorted(set(starts) | {total})
            for (name, rows, dim, sparse_type, _), start in zip(m.embedding_specs, starts):
                end = next(e for e in ends if e > start) if rows else start
                out[name] = {"dtype": _NAMES.get(sparse_type.name, sparse_type.name.lower()), "rows": int(rows),
                             "dim": int(dim), "bytes": int(end - start)}
        elif isinstance(m, (EmbeddingBagCollection, EmbeddingCollection)):
            bags = m.embedding_bags if isinstance(m, EmbeddingBagCollection) else m.embeddings
            for key, table in bags.items():
                w = table.weight
                out[key] = {"dtype": "fp32" if w.dtype == torch.float32 else str(w.dtype).removeprefix("torch."),
                            "rows": int(w.shape[0]), "dim": int(w.shape[1]), "bytes": int(w.numel() * w.element_size())}
    return out
