"""Sharpness: Hutchinson estimates of the trace and the diagonal of the loss Hessian.

For H the Hessian of the mean cross-entropy ``L(θ) = (1/N) Σ_n CE(f(x_n; θ), y_n)`` with
respect to the trainable parameters, and v a Rademacher vector (entries ±1 with probability
1/2, so E[v vᵀ] = I), Hutchinson (1990) gives

    tr(H) = E[vᵀ H v],        diag(H) = E[v ⊙ H v]

(Bekas, Kokiopoulou & Saad, 2007, for the diagonal). ``H v`` is a Hessian-vector product by
double back-propagation (Pearlmutter, 1994): ``H v = ∇_θ (∇_θ L · v)``. H is linear in the
loss, so the products are accumulated batch by batch (each batch contributes its summed
cross-entropy over N) and memory stays that of one batch. Each sample's v is drawn from its
own seeded generator, so it is the same on every batch and can be rebuilt
(:func:`rademacher`). For a diagonal H every sample gives the exact answer, since
v ⊙ H v = diag(H) ⊙ v ⊙ v = diag(H); the variance of vᵀ H v is 2 Σ_{i≠j} H_ij².

With a ``mask`` (name -> bool keep tensor, as :mod:`compresslab.models.masks`) v is zero on
pruned entries: the estimate is then of the Hessian restricted to the kept coordinates
(its trace is Σ over kept i of H_ii), the curvature the pruned network can move in.
The model is evaluated in eval mode (BatchNorm uses its running statistics, no dropout).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compresslab.errors import UserError


def _trainable(model: nn.Module, mask: dict[str, torch.Tensor] | None) -> dict[str, nn.Parameter]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise UserError("the model has no trainable parameters to take a Hessian over")
    for name, m in (mask or {}).items():
        if name not in params:
            raise UserError(f"mask entry {name!r} is not a trainable parameter of the model")
        if tuple(m.shape) != tuple(params[name].shape):
            raise UserError(f"mask {name!r} has shape {tuple(m.shape)}, the parameter {tuple(params[name].shape)}")
    return params


def _seed_of(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + int(index)) % (2 ** 63 - 1)


def rademacher(model: nn.Module, *, seed: int, index: int,
               mask: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Sample ``index`` of the Rademacher vectors :func:`hessian_trace` uses with ``seed``:
    ±1 per trainable coordinate (drawn on the CPU, so the same on every device), 0 on pruned
    entries of ``mask``. On the parameters' device and dtype."""
    params = _trainable(model, mask)
    g = torch.Generator().manual_seed(_seed_of(seed, index))
    out = {}
    for name, p in params.items():
        v = torch.randint(0, 2, tuple(p.shape), generator=g).mul_(2).sub_(1).to(device=p.device, dtype=p.dtype)
        if mask is not None and name in mask:
            v = v * mask[name].to(device=p.device, dtype=p.dtype)
        out[name] = v
    return out


def _hutchinson(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, samples: int, batch_size: int, seed: int,
                mask: dict[str, torch.Tensor] | None, diagonal: bool,
                tick: Callable[[], None] | None = None) -> tuple[list[float], dict[str, torch.Tensor] | None, int]:
    """Per-sample vᵀHv and (with ``diagonal``) the mean of v ⊙ Hv over samples."""
    if int(samples) < 1:
        raise UserError(f"Hutchinson needs samples >= 1, got {samples}")
    if int(batch_size) < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    n = int(y.shape[0])
    if n == 0:
        raise UserError("cannot estimate a Hessian on no examples; pick a non-empty split")
    params = _trainable(model, mask)
    names, plist = list(params), list(params.values())
    dev = plist[0].device
    vs = [rademacher(model, seed=seed, index=s, mask=mask) for s in range(samples)]
    quad = [0.0] * samples
    diag = {k: torch.zeros_like(p) for k, p in params.items()} if diagonal else None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            xb, yb = x[start:start + batch_size].to(dev), y[start:start + batch_size].to(dev)
            loss = F.cross_entropy(model(xb), yb, reduction="sum") / n
            grads = torch.autograd.grad(loss, plist, create_graph=True, allow_unused=True)
            used = [(g, k) for g, k in zip(grads, names) if g is not None and g.requires_grad]
            for s, v in enumerate(vs if used else ()):  # none used: the loss is linear here, H = 0
                dot = sum((g * v[k]).sum() for g, k in used)
                hv = torch.autograd.grad(dot, plist, retain_graph=True, allow_unused=True)
                total = 0.0
                for k, h in zip(names, hv):
                    if h is None:
                        continue
                    vh = (v[k] * h).detach()
                    total = total + vh.sum()
                    if diag is not None:
                        diag[k] += vh
                quad[s] += float(total)
            del grads, loss
            if tick is not None:
                tick()
    finally:
        model.train(was_training)
    if diag is not None:
        diag = {k: t / samples for k, t in diag.items()}
    coords = sum(int(mask[k].sum()) if mask is not None and k in mask else p.numel() for k, p in params.items())
    return quad, diag, coords


def hessian_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, samples: int = 32, batch_size: int = 256,
                  seed: int = 0, mask: dict[str, torch.Tensor] | None = None,
                  tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Hutchinson's estimate of tr(H), H the Hessian of the mean cross-entropy over ``(x, y)``
    with respect to the trainable parameters (kept coordinates only with ``mask``).

    ``trace`` = (1/S) Σ_s v_sᵀ H v_s over ``samples`` S Rademacher vectors; ``stderr`` =
    sample standard deviation / √S (NaN for S = 1); ``per_sample`` the S values;
    ``params`` the number of coordinates v covers. ``tick`` is called after each batch.
    """
    per, _, coords = _hutchinson(model, x, y, samples=samples, batch_size=batch_size, seed=seed, mask=mask,
                                 diagonal=False, tick=tick)
    mean = sum(per) / len(per)
    if len(per) > 1:
        var = sum((q - mean) ** 2 for q in per) / (len(per) - 1)
        stderr = math.sqrt(var / len(per))
    else:
        stderr = float("nan")
    return {"trace": mean, "stderr": stderr, "samples": len(per), "per_sample": per, "params": coords}


def hessian_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, samples: int = 32,
                     batch_size: int = 256, seed: int = 0, mask: dict[str, torch.Tensor] | None = None,
                     tick: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """Hutchinson's estimate of diag(H), per trainable parameter: (1/S) Σ_s v_s ⊙ H v_s, with
    the same vectors as :func:`hessian_trace` for the same seed (so the sum of all entries
    equals its ``trace``). Zero on pruned entries of ``mask``. Detached tensors."""
    _, diag, _ = _hutchinson(model, x, y, samples=samples, batch_size=batch_size, seed=seed, mask=mask,
                             diagonal=True, tick=tick)
    return diag


def diagonal_summary(diag: dict[str, torch.Tensor],
                     mask: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
    """Per parameter: ``sum`` (its share of the trace), ``mean`` over its (kept) coordinates,
    ``max`` and ``n`` (kept coordinates)."""
    out = {}
    for name, d in diag.items():
        keep = mask[name].bool() if mask is not None and name in mask else torch.ones_like(d, dtype=torch.bool)
        vals = d[keep.to(d.device)].double()
        n = int(vals.numel())
        out[name] = {"sum": float(vals.sum()), "mean": float(vals.mean()) if n else float("nan"),
                     "max": float(vals.max()) if n else float("nan"), "n": n}
    return out
