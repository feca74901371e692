"""Unstructured pruning with boolean keep-masks that survive fine-tuning.

Criteria: global magnitude (``global-l1``), layer-wise uniform magnitude (``layer-l1``)
and the random control (``random``). A mask is ``True`` where the entry is kept; call
:func:`apply_masks` after every optimizer step to keep pruned entries at zero.
"""
from __future__ import annotations

import torch
from torch import nn

from compresslab.errors import UserError
from compresslab.measure.weights import prunability
from compresslab.models.masks import PRUNABLE, apply_masks, prunable_parameters  # noqa: F401 (re-exported)


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount <= 1.0:
        raise UserError(f"pruning amount must be in [0, 1], got {amount}")


def _split(flat_keep: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut one flat keep-vector into per-tensor masks shaped like ``params`` (on their devices)."""
    masks, start = {}, 0
    for name, p in params.items():
        masks[name] = flat_keep[start:start + p.numel()].view_as(p).to(p.device)
        start += p.numel()
    return masks


def global_magnitude_masks(params: dict[str, torch.Tensor], amount: float,
                           masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Boolean keep-masks removing the ``round(amount * total)`` smallest |values| over all tensors.

    With ``masks`` (current keep-masks, e.g. in iterative pruning) only the entries still
    kept compete: ``round(amount * kept)`` of them are removed and every entry already
    pruned stays pruned.
    """
    _check_amount(amount)
    if not params:
        return {}
    flat = torch.cat([p.detach().abs().flatten() for p in params.values()])
    if masks is None:
        keep = torch.ones_like(flat, dtype=torch.bool)
    else:
        if masks.keys() != params.keys():
            raise UserError("masks and parameters name different tensors; build both with the same scope")
        keep = torch.cat([masks[n].flatten() for n in params]).clone()
        flat = flat.masked_fill(~keep, float("inf"))  # pruned entries are never among the smallest
    k = int(round(amount * int(keep.sum())))
    if k > 0:
        keep[torch.topk(flat, k, largest=False).indices] = False
    return _split(keep, params)


def layer_magnitude_masks(params: dict[str, torch.Tensor], amount: float) -> dict[str, torch.Tensor]:
    """Layer-wise uniform magnitude pruning: each tensor loses its ``round(amount * n)`` smallest |values|."""
    _check_amount(amount)
    masks = {}
    for name, p in params.items():
        flat = p.detach().abs().flatten()
        keep = torch.ones_like(flat, dtype=torch.bool)
        k = int(round(amount * flat.numel()))
        if k > 0:
            keep[torch.topk(flat, k, largest=False).indices] = False
        masks[name] = keep.view_as(p)
    return masks


def random_masks(params: dict[str, torch.Tensor], amount: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """The random control: ``round(amount * total)`` entries over all tensors, chosen uniformly
    (a seeded ``torch.Generator``, so the same seed gives the same masks)."""
    _check_amount(amount)
    total = sum(p.numel() for p in params.values())
    k = int(round(amount * total))
    keep = torch.ones(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:k]] = False
    return _split(keep, params)


def sparsity_report(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict:
    """Sparsity of the masks: ``global`` (pruned / total over all masked tensors),
    ``per_tensor`` (name -> fraction pruned), and the counts ``pruned`` and ``total``."""
    per = {n: 1.0 - m.float().mean().item() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    return {"global": pruned / total if total else 0.0, "per_tensor": per, "pruned": pruned, "total": total}


METHODS = ("global-l1", "layer-l1", "random")


def prune(model: nn.Module, amount: float, *, method: str = "global-l1", scope: str = "all",
          seed: int = 0) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place with ``method`` (one of :data:`METHODS`); returns the keep-masks.

    ``global-l1`` and ``random`` remove ``round(amount * N)`` of the ``N`` entries in
    scope; ``layer-l1`` removes ``round(amount * n)`` from each tensor. ``seed`` is used by
    ``random`` only.
    """
    if method not in METHODS:
        raise UserError(f"unknown pruning method {method!r}; use one of {', '.join(METHODS)}")
    params = prunable_parameters(model, scope=scope)
    if method == "global-l1":
        masks = global_magnitude_masks(params, amount)
    elif method == "layer-l1":
        masks = layer_magnitude_masks(params, amount)
    else:
        masks = random_masks(params, amount, seed)
    apply_masks(model, masks)
    return masks


def resolve_amount(amount: float | str, model: nn.Module, scope: str = "all") -> tuple[float, dict | None]:
    """``(fraction, rule)``: ``amount`` as given when it is a number (rule None), or
    ``"p_star"`` / ``"safe"`` read off ``model``'s weights (data-free,
    :func:`compresslab.measure.weights.prunability`), the rule then being its ``p_star``,
    ``safe_amount`` and ``kurtosis_of_kurtoses``. The ``prune`` step and
    :func:`compresslab.live.prune` both resolve amounts here."""
    if not isinstance(amount, str):
        return float(amount), None
    if amount not in ("p_star", "safe"):
        raise UserError(f"pruning amount {amount!r}: give a fraction, 'p_star' or 'safe'")
    report = prunability(model, scope=scope)
    key = {"p_star": "p_star", "safe": "safe_amount"}[amount]
    return report[key], {k: report[k] for k in ("p_star", "safe_amount", "kurtosis_of_kurtoses")}


def prune_global(model: nn.Module, amount: float, *, scope: str = "all") -> dict[str, torch.Tensor]:
    """Global magnitude (L1) pruning in place; returns the masks."""
    return prune(model, amount, method="global-l1", scope=scope)


@torch.no_grad()
def make_permanent(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict:
    """Fold the masks into the weights: every pruned entry becomes exactly ``+0.0`` (also
    where it was ``nan``/``inf``, which ``apply_masks``' multiplication would keep), so
    the masks can be dropped and later recovered with :func:`masks_from_zeros`.
    Returns :func:`sparsity_report` of the masks."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].masked_fill_(~mask, 0.0)
    return sparsity_report(model, masks)


def masks_from_zeros(model: nn.Module, scope: str = "all") -> dict[str, torch.Tensor]:
    """Keep-masks recovered from exact zeros (``True`` where the entry is non-zero), e.g. to
    fine-tune a reloaded pruned checkpoint without regrowing its pruned entries.

    An entry that is zero by chance (not pruned) also counts as pruned.
    """
    return {n: p.detach() != 0 for n, p in prunable_parameters(model, scope=scope).items()}
