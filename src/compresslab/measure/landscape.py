"""Linear mode connectivity: the error barrier on the straight line between two networks.

Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis" (ICML 2020):
two networks are linearly mode connected when the error along
``(1 - α) θ_A + α θ_B`` never rises much above the endpoints. Interpolated BatchNorm
running statistics are not those of the interpolated network, so they are recomputed on
training inputs at every α (as in e.g. Jordan et al., REPAIR, 2023).
"""
from __future__ import annotations

import copy
import math
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


def filter_normalised_direction(model: nn.Module, *, seed: int, mask: dict[str, torch.Tensor] | None = None,
                                ignore: str | None = "biasbn") -> dict[str, torch.Tensor]:
    """A random direction in parameter space, filter-normalised as in Li, Xu, Taylor, Studer &
    Goldstein, "Visualizing the Loss Landscape of Neural Nets" (NeurIPS 2018).

    Per trainable parameter θ a Gaussian d ~ N(0, I) (CPU generator seeded by ``seed``);
    for a weight of two or more dimensions each filter i (the output row ``d[i]``: an output
    channel of a conv, a row of a linear map) is rescaled to the norm of the same filter of θ,

        d_i ← d_i · ‖θ_i‖ / (‖d_i‖ + 1e-10),

    so moving along d changes every filter by the same fraction of its own size, whatever its
    scale (which matters for networks with BatchNorm, where a filter's scale does not change
    the function). One-dimensional parameters (biases, norm affine) get 0 with
    ``ignore="biasbn"`` (the paper's default) or θ itself with ``ignore=None``. With ``mask``
    (name -> bool keep) d is zero on pruned entries before the rescaling and the target norm
    is that of the kept part of θ_i. Returns detached tensors by parameter name.
    """
    if ignore not in ("biasbn", None, "none"):
        raise UserError(f"ignore must be 'biasbn' or None, got {ignore!r}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name in mask or {}:
        if name not in params:
            raise UserError(f"mask entry {name!r} is not a trainable parameter of the model")
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, p in params.items():
        theta = p.detach()
        d = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
        if p.dim() <= 1:
            d = torch.zeros_like(theta) if ignore == "biasbn" else theta.clone()
        if mask is not None and name in mask:
            keep = mask[name].to(device=p.device, dtype=p.dtype)
            d, theta = d * keep, theta * keep
        if p.dim() > 1:
            d_norm = d.flatten(1).norm(dim=1)
            t_norm = theta.flatten(1).norm(dim=1)
            d = d * (t_norm / (d_norm + 1e-10)).view(-1, *([1] * (p.dim() - 1)))
        out[name] = d
    return out


def _grid(span: float, points: int) -> list[float]:
    return torch.linspace(-span, span, points, dtype=torch.float64).tolist()


def loss_landscape(model: nn.Module, data: Dataset, directions: list[dict[str, torch.Tensor]], *,
                   span: float = 1.0, points: int = 21, split: str = "train", max_examples: int | None = 2048,
                   bn_data: torch.Tensor | None = None, tick=None) -> dict[str, Any]:
    """Loss and error around θ along one or two directions (Li et al., NeurIPS 2018).

    With c = ``linspace(-span, span, points)``: 1-D, f(a) at θ + a·d1 for a in c; 2-D,
    f(a, b) at θ + a·d1 + b·d2, stored as ``loss[i][j]`` for (a, b) = (c[i], c[j]). Loss is
    the mean cross-entropy and error 1 - accuracy on the first ``max_examples`` of ``split``
    (all with None). If the model has BatchNorm its statistics are recomputed at every point
    (:func:`recompute_bn`) on ``bn_data`` (default: the first ``max_examples`` training
    inputs), as :func:`error_barrier` does. ``centre`` holds loss and error at θ itself (a
    grid point when ``points`` is odd). Directions map parameter names to tensors of their
    shape (missing names: no move). The model is not changed; ``tick`` is called per point.
    """
    if len(directions) not in (1, 2):
        raise UserError(f"loss_landscape takes 1 or 2 directions, got {len(directions)}")
    if not span > 0:
        raise UserError(f"span must be > 0, got {span}")
    if int(points) < 3:
        raise UserError(f"points must be >= 3, got {points}")
    if max_examples is not None and int(max_examples) < 1:
        raise UserError(f"max_examples must be >= 1 (or None for the whole split), got {max_examples}")
    x, y = data.split(split)
    if y.shape[0] == 0:
        raise UserError(f"dataset {data.name!r}: the {split} split is empty; pick another split")
    if max_examples is not None:
        x, y = x[:max_examples], y[:max_examples]
    probe = copy.deepcopy(model)
    params = dict(probe.named_parameters())
    for d in directions:
        for name, t in d.items():
            if name not in params:
                raise UserError(f"direction entry {name!r} is not a parameter of the model")
            if tuple(t.shape) != tuple(params[name].shape):
                raise UserError(f"direction {name!r} has shape {tuple(t.shape)}, the parameter "
                                f"{tuple(params[name].shape)}")
    base = {n: p.detach().clone() for n, p in params.items()}
    has_bn = bool(_batch_norms(probe))
    bn_x = bn_data if bn_data is not None else (
        data.x_train if max_examples is None else data.x_train[:max_examples])
    if has_bn and base:  # recompute_bn feeds the batches as they are: put them where the model is
        bn_x = bn_x.to(next(iter(base.values())).device)

    @torch.no_grad()
    def at(coeffs: tuple[float, ...]) -> tuple[float, float]:
        for name, p in params.items():
            p.copy_(base[name])
            for c, d in zip(coeffs, directions):
                if name in d and c != 0.0:
                    p.add_(d[name].to(device=p.device, dtype=p.dtype), alpha=c)
        if has_bn:
            recompute_bn(probe, bn_x)
        logits = evaluate_logits(probe, x)
        yy = y.to(logits.device)
        if tick is not None:
            tick()
        return float(F.cross_entropy(logits, yy)), 1.0 - float((logits.argmax(1) == yy).double().mean())

    coords = _grid(float(span), int(points))
    if len(directions) == 1:
        vals = [at((a,)) for a in coords]
        loss, error = [v[0] for v in vals], [v[1] for v in vals]
    else:
        vals = [[at((a, b)) for b in coords] for a in coords]
        loss = [[v[0] for v in row] for row in vals]
        error = [[v[1] for v in row] for row in vals]
    mid = int(points) // 2
    if int(points) % 2:
        centre = vals[mid] if len(directions) == 1 else vals[mid][mid]
    else:
        centre = at((0.0,) * len(directions))
    return {"coords": coords, "loss": loss, "error": error, "span": float(span), "points": int(points),
            "split": split, "dims": len(directions), "n": int(y.shape[0]),
            "centre": {"loss": centre[0], "error": centre[1]}}


def _interp(coords: list[float], values, a: float) -> float:
    """Piecewise-linear value at ``a`` of a 1-D grid."""
    i = max(0, min(len(coords) - 2, int((a - coords[0]) / (coords[1] - coords[0]))))
    t = (a - coords[i]) / (coords[i + 1] - coords[i])
    return (1 - t) * values[i] + t * values[i + 1]


def landscape_summary(result: dict[str, Any], *, radius: float | None = None, angles: int = 32) -> dict[str, float]:
    """Numbers from a :func:`loss_landscape` result: ``centre_loss``; ``max_rise`` (the largest
    loss on the grid minus the centre's); ``sharpness`` = the mean loss increase over the
    points at distance ``radius`` (default span/2) from θ: a = ±r in 1-D, ``angles`` points
    on the circle in 2-D, read off the grid by (bi)linear interpolation; and ``radius``."""
    coords, loss = result["coords"], result["loss"]
    r = result["span"] / 2 if radius is None else float(radius)
    if not 0 < r <= result["span"]:
        raise UserError(f"radius must be in (0, span], got {r}")
    centre = result["centre"]["loss"]
    if result["dims"] == 1:
        ring = [_interp(coords, loss, -r), _interp(coords, loss, r)]
        top = max(loss)
    else:
        ring = []
        for k in range(angles):
            a, b = r * math.cos(2 * math.pi * k / angles), r * math.sin(2 * math.pi * k / angles)
            ring.append(_interp(coords, [_interp(coords, row, b) for row in loss], a))
        top = max(max(row) for row in loss)
    return {"centre_loss": centre, "max_rise": top - centre, "sharpness": sum(ring) / len(ring) - centre,
            "radius": r}
