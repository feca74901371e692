"""``bragg:synthetic``: Bragg peaks in 11x11 detector patches, and the classical fit.

The task of BraggNN (Liu et al. 2022) and of the neural-architecture-codesign papers (Weitz,
Demler, McDermott, Tran, Duarte): regress the centre of a diffraction peak in a small patch.
Peaks are 2-D pseudo-Voigt profiles, ``η·L + (1−η)·G``, a Lorentzian and a Gaussian of the
same full widths at half maximum (one along x, one along y), drawn with

- a sub-pixel centre within ±1 px of the patch's middle pixel (column 5, row 5),
- widths (FWHM) of 1.5 to 4 px per axis, mixing η in [0, 1],
- an amplitude of 50 to 2,000 counts (log-uniform) on a flat background of 0 to 20 counts,
- with probability 0.3 a second peak centred 5 to 7 px from the middle (partly outside the
  patch: a neighbouring peak cut by the crop), 20 to 100 % as bright,
- Poisson noise on the counts plus Gaussian read noise (σ = 2 counts).

Inputs are ``(1, 11, 11)``, min-max normalised per patch to [0, 1] as BraggNN's inference
code asks; ``load_dataset`` does not standardise them further (``meta["normalised"]``).
**Targets are in pixels**: ``(x, y)`` of the main peak's centre measured from the centre of
the middle pixel, x along columns, y along rows (so the centre's column is ``5 + x``).
``meta["task"] = "regression"``; the "classes" are the 2 output coordinates, and the metric
is the mean Euclidean centre error in pixels.

The data are generated from a fixed seed (the same for every ``seed``, which only picks the
validation split): 16,000 training and 4,000 test patches.

:func:`pseudo_voigt_baseline` is the traditional method: a least-squares pseudo-Voigt fit per
patch (``scipy.optimize.least_squares``), its mean centre error and time per patch.
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np

from compresslab.data.loaders import Raw
from compresslab.errors import UserError

PATCH = 11
#: Index of the middle pixel: targets are offsets from its centre.
MIDDLE = PATCH // 2
N_TRAIN, N_TEST = 16_000, 4_000
#: The generator's seed: ``bragg:synthetic`` is the same data for every split seed.
SEED = 20_240_611
CLUTTER = 0.3
READ_NOISE = 2.0
#: Parameters of one peak, in the order :func:`pseudo_voigt` takes them.
PARAMS = ("cx", "cy", "fwhm_x", "fwhm_y", "eta", "amp", "bg")

_LN2 = math.log(2.0)


def pseudo_voigt(cx, cy, fwhm_x, fwhm_y, eta, amp, bg, size: int = PATCH) -> np.ndarray:
    """The noise-free patch(es): ``bg + amp·(η·L + (1−η)·G)`` sampled at pixel centres.

    ``r² = ((col − cx)/fwhm_x)² + ((row − cy)/fwhm_y)²``, ``G = exp(−4 ln2 r²)``,
    ``L = 1 / (1 + 4 r²)``: both are 1/2 at half the FWHM from the centre along each axis.
    Scalars give one ``(size, size)`` patch; arrays of shape ``(N,)`` give ``(N, size, size)``.
    """
    grid = np.arange(size, dtype=np.float64)
    p = [np.asarray(v, dtype=np.float64)[..., None, None] for v in (cx, cy, fwhm_x, fwhm_y, eta, amp, bg)]
    cx, cy, fx, fy, eta, amp, bg = p
    r2 = ((grid[None, :] - cx) / fx) ** 2 + ((grid[:, None] - cy) / fy) ** 2
    shape = eta / (1.0 + 4.0 * r2) + (1.0 - eta) * np.exp(-4.0 * _LN2 * r2)
    return bg + amp * shape


def draw_peaks(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Parameters of ``n`` main peaks (keys :data:`PARAMS`), centres in pixel coordinates."""
    return {
        "cx": MIDDLE + rng.uniform(-1.0, 1.0, n),
        "cy": MIDDLE + rng.uniform(-1.0, 1.0, n),
        "fwhm_x": rng.uniform(1.5, 4.0, n),
        "fwhm_y": rng.uniform(1.5, 4.0, n),
        "eta": rng.uniform(0.0, 1.0, n),
        "amp": np.exp(rng.uniform(math.log(50.0), math.log(2000.0), n)),
        "bg": rng.uniform(0.0, 20.0, n),
    }


def generate(n: int, seed: int, *, noise: bool = True, clutter: float = CLUTTER) -> tuple[np.ndarray, ...]:
    """``(x, y, params)``: ``n`` patches ``(n, 1, 11, 11)`` float32 min-max normalised,
    targets ``(n, 2)`` float32 in pixels from the middle pixel's centre, and the main peaks'
    parameters. ``noise=False`` and ``clutter=0`` give the exact profiles (for fitting tests)."""
    rng = np.random.default_rng(seed)
    p = draw_peaks(n, rng)
    counts = pseudo_voigt(*(p[k] for k in PARAMS))
    # a neighbour: centred 5 to 7 px from the middle at a random angle, so partly cut off
    extra = rng.random(n) < clutter
    angle, dist = rng.uniform(0, 2 * math.pi, n), rng.uniform(5.0, 7.0, n)
    q = draw_peaks(n, rng)
    q.update(cx=MIDDLE + dist * np.cos(angle), cy=MIDDLE + dist * np.sin(angle), bg=np.zeros(n),
             amp=p["amp"] * rng.uniform(0.2, 1.0, n))
    counts += extra[:, None, None] * pseudo_voigt(*(q[k] for k in PARAMS))
    if noise:
        counts = rng.poisson(counts).astype(np.float64) + rng.normal(0.0, READ_NOISE, counts.shape)
    lo, hi = counts.min(axis=(1, 2), keepdims=True), counts.max(axis=(1, 2), keepdims=True)
    x = ((counts - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)[:, None]
    y = np.stack([p["cx"] - MIDDLE, p["cy"] - MIDDLE], axis=1).astype(np.float32)
    return x, y, p


@functools.lru_cache(maxsize=1)
def synthetic_arrays() -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)`` of ``bragg:synthetic``, generated once (read-only)."""
    x, y, _ = generate(N_TRAIN + N_TEST, SEED)
    arrays = (x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load_bragg(path: str | None, seed: int) -> Raw:
    """``bragg:synthetic`` as a loader (``seed`` does not change the data)."""
    if path != "synthetic":
        raise UserError(f"bragg:{path}: unknown Bragg-peak source {path!r}; use bragg:synthetic")
    x_train, y_train, x_test, y_test = (np.array(a) for a in synthetic_arrays())  # owned: the cache stays intact
    return Raw(x_train, y_train, x_test, y_test, num_classes=2,
               notes=["bragg:synthetic: pseudo-Voigt peaks in 11x11 patches generated offline (fixed seed), "
                      "min-max normalised; targets (x, y) in pixels from the middle pixel's centre"],
               meta={"task": "regression", "normalised": "per-example"})


# ------------------------------------------------------------------ classical baseline


def fit_patch(patch: np.ndarray) -> np.ndarray:
    """Least-squares pseudo-Voigt fit of one ``(11, 11)`` patch: the fitted :data:`PARAMS`.

    Starts from the intensity-weighted centroid above the median, widths 2.5 px, η = 0.5,
    and the patch's range; the centre is bounded to the patch, widths to [0.5, 11] px."""
    from scipy.optimize import least_squares

    patch = np.asarray(patch, dtype=np.float64)
    grid = np.arange(patch.shape[0], dtype=np.float64)
    lo, hi = float(patch.min()), float(patch.max())
    w = np.clip(patch - np.median(patch), 0.0, None)
    total = w.sum()
    cx0 = float((w.sum(0) * grid).sum() / total) if total > 0 else float(MIDDLE)
    cy0 = float((w.sum(1) * grid).sum() / total) if total > 0 else float(MIDDLE)
    last = patch.shape[0] - 1.0
    start = np.array([cx0, cy0, 2.5, 2.5, 0.5, max(hi - lo, 1e-6), lo])
    bounds = ([0.0, 0.0, 0.5, 0.5, 0.0, 0.0, -np.inf], [last, last, 11.0, 11.0, 1.0, np.inf, np.inf])
    start = np.clip(start, bounds[0], bounds[1])

    def residual(v):
        return (pseudo_voigt(*v, size=patch.shape[0]) - patch).ravel()

    return least_squares(residual, start, bounds=bounds, x_scale="jac").x


def fit_centres(x) -> np.ndarray:
    """``(N, 2)`` centres in target units (pixels from the middle pixel's centre) fitted to
    patches ``(N, 1, 11, 11)`` or ``(N, 11, 11)``."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), PATCH, PATCH)
    return np.array([fit_patch(p)[:2] - MIDDLE for p in x]).reshape(-1, 2)


def pseudo_voigt_baseline(data, split: str = "test", limit: int | None = None) -> dict:
    """The classical method on a ``bragg:synthetic`` :class:`~compresslab.data.Dataset`: a
    pseudo-Voigt least-squares fit per patch of ``split`` (its first ``limit`` patches).

    Returns ``centre_error_px`` (mean Euclidean distance of fitted to true centres),
    ``median_error_px``, ``seconds_per_patch`` (wall time of the fits over the patch count,
    one process) and ``n``. The fit is invariant to the per-patch normalisation."""
    if data.meta.get("task") != "regression" or tuple(data.input_shape) != (1, PATCH, PATCH):
        raise UserError(f"the pseudo-Voigt baseline needs bragg:synthetic patches, got {data.name!r}")
    x, y = data.split(split)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(y) == 0:
        raise UserError(f"the {split} split of {data.name!r} is empty")
    t0 = time.perf_counter()
    centres = fit_centres(x.cpu().numpy())
    seconds = time.perf_counter() - t0
    err = np.linalg.norm(centres - y.cpu().numpy(), axis=1)
    return {"centre_error_px": float(err.mean()), "median_error_px": float(np.median(err)),
            "seconds_per_patch": seconds / len(y), "n": len(y)}
