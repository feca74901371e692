"""Unstructured magnitude pruning with masks that survive fine-tuning."""
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


def global_magnitude_masks(params: dict[str, torch.Tensor], amount: float) -> dict[str, torch.Tensor]:
    """Boolean keep-masks removing the ``round(amount * total)`` smallest |values| over all tensors."""
    if not 0.0 <= amount <= 1.0:
        raise UserError(f"pruning amount must be in [0, 1], got {amount}")
    flat = torch.cat([p.detach().abs().flatten() for p in params.values()])
    k = int(round(amount * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, k, largest=False).indices] = False
    masks, start = {}, 0
    for name, p in params.items():
        masks[name] = keep[start:start + p.numel()].view_as(p)
        start += p.numel()
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned entries in place (call after every optimizer step)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask)


def sparsity_report(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict:
    """Per-tensor and global sparsity over the masked tensors."""
    per = {n: 1.0 - m.float().mean().item() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    return {"global": pruned / total if total else 0.0, "per_tensor": per, "pruned": pruned, "total": total}


def prune_global(model: nn.Module, amount: float, *, scope: str = "all") -> dict[str, torch.Tensor]:
    """Global magnitude (L1) pruning in place; returns the masks."""
    masks = global_magnitude_masks(prunable_parameters(model, scope=scope), amount)
    apply_masks(model, masks)
    return masks
