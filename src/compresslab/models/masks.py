"""Which parameters pruning covers, and keeping pruned entries at zero.

Both pruning (:mod:`compresslab.compress.prune`) and the weight measurements
(:mod:`compresslab.measure.weights`, :mod:`compresslab.measure.landscape`) use these,
so they live with the models, below both.
"""
from __future__ import annotations

import torch
from torch import nn

from compresslab.errors import UserError

#: Layers whose weights *and biases* global magnitude pruning covers by default (as in
#: Mason-Williams & Dahlqvist 2024): convolutions, linear maps and normalisation layers.
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
            nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def prunable_parameters(model: nn.Module, *, scope: str = "all") -> dict[str, nn.Parameter]:
    """Parameters to prune, by name.

    ``scope="all"``: weight and bias of every conv, linear and norm layer;
    ``scope="weights"``: conv and linear weights only.
    """
    if scope not in ("all", "weights"):
        raise UserError(f"unknown pruning scope {scope!r}; use 'all' or 'weights'")
    out: dict[str, nn.Parameter] = {}
    for mname, m in model.named_modules():
        if not isinstance(m, PRUNABLE):
            continue
        if scope == "weights" and not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        names = ("weight", "bias") if scope == "all" else ("weight",)
        for pname in names:
            p = getattr(m, pname, None)
            if isinstance(p, nn.Parameter):
                out[f"{mname}.{pname}" if mname else pname] = p
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned entries in place (call after every optimizer step)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask)
