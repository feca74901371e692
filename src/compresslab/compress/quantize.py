"""Quantisation. This slice has real int8 dynamic PTQ through ``torch.ao`` (int8 kernels
on CPU for ``nn.Linear``); fake-quant, static PTQ and QAT arrive with the quantisation issue.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

DYNAMIC_INT8 = {"kind": "quantize-dynamic", "dtype": "qint8", "modules": ["Linear"]}


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers run int8 dynamic-quantised kernels.

    Weights are quantised per tensor (symmetric, min-max); activations are quantised
    on the fly per batch. Other layers stay fp32.
    """
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def quantized_layer_bits(model: nn.Module, transforms: list[dict]) -> dict[str, tuple[int, int]]:
    """Per-layer ``(weight_bits, act_bits)`` that ``transforms`` give a float ``model``."""
    bits: dict[str, tuple[int, int]] = {}
    for t in transforms:
        if t["kind"] == "quantize-dynamic":
            for name, m in model.named_modules():
                if isinstance(m, nn.Linear):
                    bits[name] = (8, 8)
    return bits
