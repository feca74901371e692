"""Linear mode connectivity: the error barrier on the straight line between two networks.

Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis" (ICML 2020):
two networks are linearly mode connected when the error along
``(1 - α) θ_A + α θ_B`` never rises much above the endpoints. Interpolated BatchNorm
running statistics are not those of the interpolated network, so they are recomputed on
training inputs at every α (as in e.g. Jordan et al., REPAIR, 2023).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compresslab.data.core import Dataset
from compresslab.errors import UserError
from compresslab.figures import save_png
from compresslab.models.masks import apply_masks
from compresslab.train.fit import evaluate_logits, fit
from compresslab.train.recipe import Recipe


def interpolate_state(sd_a: dict[str, torch.Tensor], sd_b: dict[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * A + alpha * B`` for floating-point entries (``torch.lerp``: exactly A at
    0 and exactly B at 1); other entries (e.g. ``num_batches_tracked``) are copied from A."""
    if sd_a.keys() != sd_b.keys():
        diff = sorted(set(sd_a) ^ set(sd_b))
        raise UserError(f"cannot interpolate: the state dicts differ in {diff[:5]}; use the same architecture")
    out = {}
    for k, a in sd_a.items():
        b = sd_b[k]
        if a.shape != b.shape:
            raise UserError(f"cannot interpolate {k!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        if a.is_floating_point():
            out[k] = torch.lerp(a.detach(), b.detach().to(a.dtype), float(alpha))
        else:
            out[k] = a.detach().clone()
    return out


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Reset the running statistics of every BatchNorm and recompute them on ``x``.

    Forward passes in train mode with ``momentum=None`` (cumulative average over the
    batches, as ``torch.optim.swa_utils.update_bn``): the running mean is the mean of the
    batch means and the running var the mean of the (unbiased) batch variances, which are
    the exact statistics of the layer input when one batch holds all of ``x``. The model
    is left in eval mode (and returned). No-op apart from ``eval()`` without BatchNorm.
    """
    bns = _batch_norms(model)
    if bns:
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        try:
            for start in range(0, x.shape[0], batch_size):
                model(x[start:start + batch_size])
        finally:
            for bn, m in zip(bns, momenta):
                bn.momentum = m
    return model.eval()


def _barrier(values: list[float]) -> float:
    return max(values) - 0.5 * (values[0] + values[-1])


def error_barrier(model_a: nn.Module, model_b: nn.Module, data: Dataset, *, points: int = 11,
                  split: str = "test", bn_data: torch.Tensor | None = None) -> dict[str, Any]:
    """Error and loss along the line from ``model_a`` (α = 0) to ``model_b`` (α = 1).

    At each α in ``linspace(0, 1, points)`` a copy of ``model_a`` gets the interpolated
    state; if it has BatchNorm its statistics are recomputed (:func:`recompute_bn`) on
    ``bn_data`` (default ``data.x_train``). Loss is the mean cross-entropy and error
    ``1 - accuracy`` on ``split``. ``barrier`` = max_α error(α) − (error(0) + error(1)) / 2;
    ``loss_barrier`` the same for the loss. Neither input model is changed.
    """
    if points < 2:
        raise UserError(f"error_barrier needs points >= 2, got {points}")
    x, y = data.split(split)
    if y.shape[0] == 0:
        raise UserError(f"dataset {data.name!r}: the {split} split is empty; pick another split")
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    probe = copy.deepcopy(model_a)
    has_bn = bool(_batch_norms(probe))
    bn_x = data.x_train if bn_data is None else bn_data
    alphas = torch.linspace(0, 1, points, dtype=torch.float64).tolist()
    errors, losses = [], []
    for alpha in alphas:
        probe.load_state_dict(interpolate_state(sd_a, sd_b, alpha))
        if has_bn:
            recompute_bn(probe, bn_x)
        logits = evaluate_logits(probe, x)
        losses.append(float(F.cross_entropy(logits, y)))
        errors.append(1.0 - float((logits.argmax(1) == y).double().mean()))
    return {"alpha": alphas, "error": errors, "loss": losses, "split": split,
            "barrier": _barrier(errors), "loss_barrier": _barrier(losses)}


def plot_barrier(result: dict[str, Any], path) -> Path:
    """Write a PNG of error and loss against α (two panels) for an :func:`error_barrier`
    result. Written atomically (temp file in the same directory, then ``os.replace``);
    parent directories are created. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (key, label, barrier) in enumerate((("error", "error", result["barrier"]),
                                               ("loss", "cross-entropy", result["loss_barrier"]))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(result["alpha"], result[key], marker="o", ms=3, color=f"C{i}")
        ax.set_title(f"{label}: barrier {barrier:.4g}", fontsize=9)
        ax.set_xlabel("α (0 = A, 1 = B)")
        ax.set_ylabel(f"{label} ({result.get('split', 'test')})")
        ax.grid(alpha=0.3)
    fig.tight_layout()

    return save_png(fig, path)


def lmc_pair(model_init: nn.Module, data: Dataset, recipe: Recipe, *, seeds: tuple[int, int] = (1, 2),
             mask: dict[str, torch.Tensor] | None = None, points: int = 11,
             split: str = "test") -> dict[str, Any]:
    """Train two copies of ``model_init`` (left unchanged) with data-order seeds ``seeds``
    and return their :func:`error_barrier` (plus ``seeds``).

    ``mask`` (keep-masks, e.g. a lottery ticket) is applied before training and after
    every step. For the rewinding experiment pass θ_k as ``model_init``.
    """
    if len(seeds) != 2:
        raise UserError(f"lmc_pair needs two seeds, got {list(seeds)}")
    trained = []
    for s in seeds:
        m = copy.deepcopy(model_init)
        after_step = None
        if mask is not None:
            apply_masks(m, mask)
            after_step = lambda net: apply_masks(net, mask)  # noqa: E731
        fit(m, data, recipe, seed=s, after_step=after_step)
        trained.append(m)
    result = error_barrier(trained[0], trained[1], data, points=points, split=split)
    result["seeds"] = list(seeds)
    return result
