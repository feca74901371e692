"""Compression methods: each takes a model and returns a model (plus masks/metadata)."""
from __future__ import annotations

from torch import nn

from compresslab.errors import UserError


def apply_transform(model: nn.Module, transform: dict) -> nn.Module:
    """Re-apply a recorded post-load transform (see ``model.json``'s ``transforms``)."""
    from compresslab.compress.quantize import quantize_dynamic_int8

    if transform.get("kind") == "quantize-dynamic":
        return quantize_dynamic_int8(model)
    raise UserError(f"unknown checkpoint transform {transform!r}; this compresslab cannot rebuild it")
