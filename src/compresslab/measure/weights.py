"""How far a network can be magnitude-pruned, read from its weights alone.

Follows Mason-Williams & Dahlqvist, "What makes a good prune? Maximal unstructured
pruning for maximal cosine similarity" (ICLR 2024):

* ``cosine_curve``: cos(p), the cosine similarity between the flattened parameters θ
  and θ with the fraction ``p`` of smallest magnitudes zeroed. Because the pruned vector
  is θ restricted to the kept entries, cos(p) = ‖θ_kept‖ / ‖θ‖, so the whole curve comes
  from one sort of θ² and a cumulative sum (no pruned copies).
* ``p_star``: the point of the curve closest to the utopia point (cos, p) = (1, 1).
* ``kurtosis_of_kurtoses``: K², the Pearson kurtosis of the per-tensor kurtoses.
* ``safe_amount``: p* shrunk by log K², the pruning amount the paper suggests.

Everything is a pure function without I/O, except ``plot_prunability``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compresslab.errors import UserError
from compresslab.figures import save_png
from compresslab.models.masks import prunable_parameters

#: Keys of the dict ``prunability`` returns (stable; add new keys at the end).
PRUNABILITY_KEYS = (
    "p_star",
    "cos_at_p_star",
    "kurtosis_of_kurtoses",
    "safe_amount",
    "curve",
    "per_tensor_kurtosis",
    "num_params",
    "scope",
)


def flat_params(model: nn.Module, scope: str = "all") -> torch.Tensor:
    """The prunable parameters (``prunable_parameters(model, scope=scope)``, in order)
    flattened and concatenated into one float64 vector θ."""
    params = prunable_parameters(model, scope=scope)
    if not params:
        raise UserError(f"the model has no prunable parameters in scope {scope!r}")
    return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in params.values()])


def param_cosine(a: nn.Module, b: nn.Module, scope: str = "all") -> float:
    """Cosine similarity of the flattened prunable parameters of two models of the same
    architecture. If either vector is all zeros the cosine is undefined; 0.0 is returned
    (matching cos(1) = 0 of ``cosine_curve``)."""
    shapes_a = [tuple(p.shape) for p in prunable_parameters(a, scope=scope).values()]
    shapes_b = [tuple(p.shape) for p in prunable_parameters(b, scope=scope).values()]
    if shapes_a != shapes_b:
        raise UserError(
            f"the two models have different prunable parameter shapes ({len(shapes_a)} vs "
            f"{len(shapes_b)} tensors); compare models of the same architecture"
        )
    x, y = flat_params(a, scope), flat_params(b, scope)
    nx, ny = torch.linalg.vector_norm(x), torch.linalg.vector_norm(y)
    if nx == 0 or ny == 0:
        return 0.0
    return float(torch.dot(x, y) / (nx * ny))


def cosine_curve(model_or_vector, points: int = 101, scope: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """The cosine-similarity pruning curve ``(p, cos)`` of a model (or of a parameter vector).

    ``p = linspace(0, 1, points)``; ``cos[i]`` is the cosine similarity between θ and θ
    with its ``round(p[i] * N)`` smallest magnitudes zeroed (exactly what ``prune_global``
    removes), i.e. sqrt(sum of the kept θ²) / ‖θ‖. One descending sort of θ² and a
    cumulative sum give every point: keeping the ``N - k`` largest leaves ``csum[N - k]``.
    cos(0) = 1 and cos(1) = 0. ``scope`` is ignored for a vector (tensor or array).
    """
    if isinstance(model_or_vector, nn.Module):
        theta = flat_params(model_or_vector, scope)
    else:
        theta = torch.as_tensor(np.asarray(model_or_vector), dtype=torch.float64).reshape(-1)
    if points < 2:
        raise UserError(f"the cosine curve needs at least 2 points, got {points}")
    n = theta.numel()
    sq = torch.sort(theta * theta, descending=True).values
    csum = torch.cat([sq.new_zeros(1), torch.cumsum(sq, 0)]).numpy()  # csum[j] = sum of the j largest
    total = csum[-1]
    if not (total > 0 and math.isfinite(total)):
        raise UserError("the parameter vector is empty, all zeros or not finite; its cosine curve is undefined")
    p = np.linspace(0.0, 1.0, points)
    pruned = np.rint(p * n).astype(np.int64)  # np.rint rounds half to even, like round() in prune_global
    cos = np.sqrt(csum[n - pruned] / total)  # exactly 1 at p = 0 and 0 at p = 1
    return p, cos


def p_star(p, cos) -> tuple[float, float]:
    """``(p*, cos(p*))``: the curve point whose (cos, p) is closest (Euclidean) to the utopia
    point (1, 1), i.e. the most pruning for the least loss of cosine similarity. Among
    exactly tied distances the smallest p wins."""
    p, cos = np.asarray(p, dtype=np.float64), np.asarray(cos, dtype=np.float64)
    if p.shape != cos.shape or p.ndim != 1 or p.size == 0:
        raise UserError(f"p and cos must be 1-D arrays of equal non-zero length, got {p.shape} and {cos.shape}")
    dist = np.hypot(1.0 - cos, 1.0 - p)
    ties = np.flatnonzero(dist == dist.min())
    i = ties[np.argmin(p[ties])]
    return float(p[i]), float(cos[i])


def pearson_kurtosis(t) -> float:
    """Pearson (non-excess) kurtosis E[(x - μ)⁴] / σ⁴ with the population σ, over all
    elements (same as ``scipy.stats.kurtosis(x, fisher=False, bias=True)``; 3 for a
    Gaussian). Undefined for a single element or a constant tensor (σ = 0): returns nan."""
    x = torch.as_tensor(t).detach().reshape(-1).to(torch.float64)
    if x.numel() < 2:
        return math.nan
    d = x - x.mean()
    m2 = torch.mean(d * d)
    if m2 == 0:
        return math.nan
    return float(torch.mean(d ** 4) / (m2 * m2))


def per_tensor_kurtosis(model: nn.Module, scope: str = "all") -> dict[str, float]:
    """Pearson kurtosis of every prunable tensor (weights and biases), by parameter name.
    Constant or one-element tensors (e.g. a freshly initialised BatchNorm) get nan."""
    return {name: pearson_kurtosis(p) for name, p in prunable_parameters(model, scope=scope).items()}


def kurtosis_of_kurtoses(values) -> float:
    """K²: the Pearson kurtosis of a list of per-tensor kurtoses (a dict's values are used).
    Non-finite entries (the nan of constant tensors) are skipped. Raises UserError with
    fewer than 2 finite values, or when they are all equal (K² undefined)."""
    if isinstance(values, dict):
        values = list(values.values())
    k = np.asarray(list(values), dtype=np.float64)
    k = k[np.isfinite(k)]
    if k.size < 2:
        raise UserError(f"the kurtosis of kurtoses needs at least 2 finite per-tensor kurtoses, got {k.size}")
    k2 = pearson_kurtosis(torch.from_numpy(k))
    if math.isnan(k2):
        raise UserError("all per-tensor kurtoses are equal; the kurtosis of kurtoses is undefined")
    return k2


def safe_amount(p_star: float, k2: float) -> float:
    """The suggested pruning amount: p* / ln(K²) if K² >= e, else p* / log2(K²), clamped to [0, p*].

    Why the clamp: for 1 < K² < 2, log2(K²) < 1 and the raw rule would prune *more* than p*
    (p* is already the best trade-off, so never go beyond it); for K² <= 1, log2(K²) <= 0 and
    the rule is undefined or negative, so p* is returned. (Pearson kurtosis is >= 1, and K² = 1
    happens e.g. with exactly two tensors.) Note the rule jumps at K² = e: just below e it
    gives p*/log2(e) ≈ 0.69 p*, at e it gives p*/ln(e) = p*.
    """
    if not math.isfinite(k2):
        raise UserError(f"the kurtosis of kurtoses must be finite, got {k2}")
    if k2 <= 1.0:
        return float(p_star)
    raw = p_star / math.log(k2) if k2 >= math.e else p_star / math.log2(k2)
    return float(min(max(raw, 0.0), p_star))


def prunability(model: nn.Module, scope: str = "all", points: int = 101) -> dict:
    """Everything above for one model, as a dict with the keys ``PRUNABILITY_KEYS``:
    ``p_star``, ``cos_at_p_star``, ``kurtosis_of_kurtoses``, ``safe_amount``, ``curve``
    (list of [p, cos]), ``per_tensor_kurtosis`` (name -> float, None for constant tensors,
    so the dict is strict JSON),
    ``num_params`` (the size of θ) and ``scope``."""
    theta = flat_params(model, scope)
    p, cos = cosine_curve(theta, points)
    ps, cs = p_star(p, cos)
    kurt = per_tensor_kurtosis(model, scope)
    k2 = kurtosis_of_kurtoses(kurt)
    return {
        "p_star": ps,
        "cos_at_p_star": cs,
        "kurtosis_of_kurtoses": k2,
        "safe_amount": safe_amount(ps, k2),
        "curve": [[float(a), float(b)] for a, b in zip(p, cos)],
        "per_tensor_kurtosis": {k: (v if math.isfinite(v) else None) for k, v in kurt.items()},
        "num_params": int(theta.numel()),
        "scope": scope,
    }


def plot_prunability(report: dict, path) -> Path:
    """Write a PNG of the cos(p) curve of a ``prunability`` report, with p* and the safe
    amount as vertical lines and the utopia point (1, 1). Written atomically (temp file in
    the same directory, then ``os.replace``); parent directories are created. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = np.asarray(report["curve"], dtype=np.float64)
    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(curve[:, 0], curve[:, 1], color="C0", label="cos(p)")
    ax.axvline(report["p_star"], color="C1", ls="--", label=f"p* = {report['p_star']:.2f}")
    ax.axvline(report["safe_amount"], color="C2", ls=":",
               label=f"safe = {report['safe_amount']:.2f} (K² = {report['kurtosis_of_kurtoses']:.3g})")
    ax.plot([report["p_star"], 1.0], [report["cos_at_p_star"], 1.0], color="0.6", lw=0.8)
    ax.plot([1.0], [1.0], marker="*", ms=12, color="C3", ls="none", label="utopia (1, 1)")
    ax.set_xlabel("fraction pruned p")
    ax.set_ylabel("cosine similarity to unpruned")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()

    return save_png(fig, path)
