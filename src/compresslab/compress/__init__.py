"""Compression methods: each takes a model and returns a model (plus masks/metadata)."""
from __future__ import annotations

import torch
from torch import nn

from compresslab.compress import distill  # noqa: F401  (registers the kd, at and hint loss terms)
from compresslab.errors import UserError


def apply_transform(model: nn.Module, transform: dict) -> nn.Module:
    """Re-apply a recorded post-load transform (see ``model.json``'s ``transforms``)."""
    from compresslab.compress import quantize as q

    kind = transform.get("kind")
    if kind == "quantize-dynamic":
        return q.quantize_dynamic_int8(model, transform)
    if kind == "fake-quant":
        return q.apply_fake_quant_transform(model, transform)
    if kind == "embedding-quant":
        from compresslab.compress.embedding import apply_embedding_quant_transform

        return apply_embedding_quant_transform(model, transform)
    if kind == "quantize-static":
        shape = (getattr(model, "compresslab_config", None) or {}).get("input_shape")
        if not shape:
            raise UserError("static int8 needs the model's input shape, which its config does not record")
        return q.apply_static_int8(model, transform, torch.zeros(1, *shape))
    raise UserError(f"unknown checkpoint transform {transform!r}; this compresslab cannot rebuild it")
