"""Linear CKA (centred kernel alignment) between two sets of activations.

Linear CKA (Kornblith et al. 2019) compares two representations X (n x dx) and
Y (n x dy) of the same n examples; it is invariant to orthogonal transforms and
isotropic scaling of either one. Two estimators:

* **biased**: with column-centred X, Y,
  ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, in [0, 1]. It is
  inflated when d is not small relative to n (independent features score > 0).
* **unbiased**: HSIC replaced by the debiased estimator of Song et al. (2012),
  as used by Nguyen, Raghu & Kornblith (2021). With K = X X^T, L = Y Y^T and
  K~, L~ the same with zero diagonal::

      HSIC_u(K, L) = [tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2))
                      - 2/(n-2) 1'K~L~1] / (n(n-3))
      CKA_u = HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L))

  Near 0 for independent features; may be slightly negative; needs n >= 4.

:class:`LinearCKA` accumulates over batches in one of two modes:

* ``"feature"``: only feature-space sums (X^T Y, X^T X, Y^T Y, column sums and
  a few per-example moments), O(dx^2 + dy^2) memory, independent of n. The
  unbiased terms come from, with r_i = ||x_i||^2, s_i = ||y_i||^2, S_x = sum x_i::

      tr(K~ L~) = ||X^T Y||_F^2 - sum r_i s_i
      1'K~1     = ||S_x||^2 - sum r_i
      1'K~L~1   = S_x^T (X^T Y) S_y - (sum r_i y_i).S_y - (sum s_i x_i).S_x + sum r_i s_i

  Every batch is first shifted by the first batch's column means; both
  estimators are invariant to such a shift and it limits cancellation.
* ``"gram"``: keeps the flattened activations (float32, or float64 if given
  float64), O(n (dx + dy)) memory, and forms the n x n Gram matrices of the
  column-centred activations at :meth:`LinearCKA.result` time.

``mode="auto"`` picks on the first update: ``"feature"`` when
``max(dx, dy) <= n_hint`` (the total number of examples), else ``"gram"``;
without ``n_hint``, ``"feature"`` when ``max(dx, dy)^2 <= 4e6`` (X^T X fits
in 32 MB of float64), else ``"gram"``. Both modes give the same numbers up to
float64 rounding.

An estimator is ``None`` instead of NaN when it is undefined: a side is
constant (every column's spread below 1e-10 of the largest magnitude seen),
its self-HSIC is not positive, or there are too few examples (n < 2 biased,
n < 4 unbiased).

To compare one model (a teacher) with many, :func:`cache_features` runs it once and
keeps its activations as memory-mapped arrays in a :class:`~compresslab.scratch.Scratch`;
:func:`cka_against_cached` then gives each other model's :func:`cka_between` numbers.

Token-level inputs: given ``mask`` ``(N, L)`` (nonzero at the valid tokens, e.g.
``labels != -100`` or an attention mask), every feature point must give per-token
features ``(b, L, ...)``, and each valid token is one row (its features flattened): the
representations compared are ``(M, d)`` with M the number of valid tokens
(:func:`compresslab.data.core.valid_tokens`).
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from torch import nn

from compresslab.data.core import valid_tokens
from compresslab.errors import UserError
from compresslab.models.features import capture_features, feature_points

MODES = ("auto", "feature", "gram")
_MAX_FEATURE_ELEMENTS = 4_000_000  # max(dx, dy)^2 limit for auto mode without n_hint
_CONSTANT_RTOL = 1e-10  # spread below this fraction of max |value| counts as constant
_GRAM_CHUNK = 1 << 22  # elements per float64 column chunk when forming Gram matrices


def _flat(t, what: str) -> torch.Tensor:
    """``t`` (b, ...) as a detached (b, d) CPU tensor, b >= 1, d >= 1."""
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t)
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"{what} must be a tensor of shape (batch, ...), got {type(t).__name__}") from None
    if t.ndim == 0 or t.shape[0] == 0 or t[:1].numel() == 0:
        raise UserError(f"{what} must have shape (batch, ...) with batch >= 1 and features >= 1, got {tuple(t.shape)}")
    if t.is_complex():
        raise UserError(f"{what} must be real-valued, got {t.dtype}")
    return t.detach().to("cpu").reshape(t.shape[0], -1)


def _token_mask(mask, n: int, x: torch.Tensor) -> torch.Tensor | None:
    """``mask`` as a bool (n, L) CPU tensor matching the inputs ``x`` (n, L, ...), or None."""
    if mask is None:
        return None
    m = torch.as_tensor(mask.detach() if isinstance(mask, torch.Tensor) else mask).cpu().bool()
    if m.ndim != 2 or m.shape[0] != n or tuple(x.shape[:2]) != tuple(m.shape):
        raise UserError(f"mask must have shape (N, L) = {tuple(x.shape[:2])} like the token inputs, got {tuple(m.shape)}")
    if not bool(m.any()):
        raise UserError("mask selects no token; CKA needs valid tokens")
    return m


def _rows(feature, keep: torch.Tensor | None, what: str) -> torch.Tensor:
    """A batch's feature (b, ...) as rows: itself, or with ``keep`` (b, L) its valid tokens (m, ...)."""
    if keep is None:
        return feature
    if not isinstance(feature, torch.Tensor) or feature.ndim < 3 or tuple(feature.shape[:2]) != tuple(keep.shape):
        shape = tuple(feature.shape) if isinstance(feature, torch.Tensor) else type(feature).__name__
        raise UserError(f"feature {what!r} is not per token: got {shape} for a batch of token shape "
                        f"{tuple(keep.shape)}; with a token mask, choose feature points shaped (B, L, D)")
    return valid_tokens(feature, mask=keep.to(feature.device))[0]


def _hsic_u(n: int, t: float, d: float, a: float, b: float, ta: float, tb: float,
            m: float, u: float, v: float) -> float:
    """Song et al. debiased HSIC from scalar statistics of K and L (uncentred or centred).

    ``t = tr(KL)``, ``d = sum K_ii L_ii``, ``a = 1'K1``, ``b = 1'L1``, ``ta = tr K``,
    ``tb = tr L``, ``m = 1'KL1``, ``u = sum_i K_ii (L1)_i``, ``v = sum_i L_ii (K1)_i``.
    """
    tr_kl = t - d  # tr(K~ L~)
    sum_k, sum_l = a - ta, b - tb  # 1'K~1, 1'L~1
    kl_1 = m - u - v + d  # 1'K~L~1
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * kl_1 / (n - 2)) / (n * (n - 3))


def _ratio(num: float, self_x: float, self_y: float, lo: float) -> float | None:
    """``num / sqrt(self_x self_y)`` clamped to [lo, 1]; None if a self term is not positive."""
    if not (self_x > 0.0 and self_y > 0.0):
        return None
    value = num / math.sqrt(self_x * self_y)
    return min(max(value, lo), 1.0)


def _centred_gram(batches: list[torch.Tensor]) -> torch.Tensor:
    """float64 Gram matrix of the column-centred row-concatenation of ``batches``.

    Built over column chunks so only an (n x chunk) float64 copy exists at once.
    """
    n = sum(b.shape[0] for b in batches)
    dim = batches[0].shape[1]
    gram = torch.zeros(n, n, dtype=torch.float64)
    step = max(1, _GRAM_CHUNK // n)
    for j in range(0, dim, step):
        cols = torch.cat([b[:, j : j + step] for b in batches]).to(torch.float64)
        cols -= cols.mean(0)
        gram += cols @ cols.T
    return gram


class LinearCKA:
    """Streaming linear CKA between paired activations, biased and unbiased.

    >>> acc = LinearCKA(mode="auto", n_hint=len(x))
    >>> for xb, yb in batches:
    ...     acc.update(xb, yb)
    >>> acc.result()  # {"biased": 0.93, "unbiased": 0.91, "n": 1000}

    ``mode`` is ``"feature"`` (memory O(dx^2 + dy^2)), ``"gram"`` (memory
    O(n (dx + dy)) plus n x n at result time) or ``"auto"`` (decided on the
    first update; see the module docstring). After the first update,
    :attr:`mode` is the resolved mode and :attr:`dims` is ``[dx, dy]``.
    """

    def __init__(self, mode: str = "auto", n_hint: int | None = None):
        if mode not in MODES:
            raise UserError(f"unknown CKA mode {mode!r}; choose one of: {', '.join(MODES)}")
        if n_hint is not None and n_hint < 1:
            raise UserError(f"n_hint must be a positive number of examples, got {n_hint}")
        self.mode = mode
        self.n_hint = n_hint
        self.n = 0
        self.dims: list[int] | None = None
        self._max_abs = [0.0, 0.0]  # largest |value| seen in x and in y (for the constant test)

    def _choose_mode(self, dx: int, dy: int) -> str:
        if self.mode != "auto":
            return self.mode
        if self.n_hint is not None:
            return "feature" if max(dx, dy) <= self.n_hint else "gram"
        return "feature" if max(dx, dy) ** 2 <= _MAX_FEATURE_ELEMENTS else "gram"

    def _start(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Resolve the mode and allocate the accumulators on the first update."""
        dx, dy = x.shape[1], y.shape[1]
        self.dims = [dx, dy]
        self.mode = self._choose_mode(dx, dy)
        if self.mode == "gram":
            self._xs: list[torch.Tensor] = []
            self._ys: list[torch.Tensor] = []
            return
        f64 = {"dtype": torch.float64}
        self._ref_x = x.to(torch.float64).mean(0)
        self._ref_y = y.to(torch.float64).mean(0)
        self._xty = torch.zeros(dx, dy, **f64)
        self._xtx = torch.zeros(dx, dx, **f64)
        self._yty = torch.zeros(dy, dy, **f64)
        self._sx, self._sy = torch.zeros(dx, **f64), torch.zeros(dy, **f64)
        self._rx, self._sx_s = torch.zeros(dx, **f64), torch.zeros(dx, **f64)  # sum r_i x_i, sum s_i x_i
        self._ry, self._sy_s = torch.zeros(dy, **f64), torch.zeros(dy, **f64)  # sum r_i y_i, sum s_i y_i
        self._sums = {"r": 0.0, "s": 0.0, "rs": 0.0, "rr": 0.0, "ss": 0.0}

    def update(self, x_batch, y_batch) -> None:
        """Add a batch of paired activations, each (b, ...) with the same b; flattened to (b, d)."""
        x, y = _flat(x_batch, "x_batch"), _flat(y_batch, "y_batch")
        if x.shape[0] != y.shape[0]:
            raise UserError(
                f"x_batch and y_batch must hold the same examples, got batch sizes {x.shape[0]} and {y.shape[0]}"
            )
        if self.dims is None:
            self._start(x, y)
        elif [x.shape[1], y.shape[1]] != self.dims:
            raise UserError(
                f"feature sizes changed between batches: expected {self.dims}, got {[x.shape[1], y.shape[1]]}"
            )
        self.n += x.shape[0]
        self._max_abs[0] = max(self._max_abs[0], float(x.abs().max()))
        self._max_abs[1] = max(self._max_abs[1], float(y.abs().max()))
        if self.mode == "gram":
            # Keep float64 inputs exact; store everything else as float32.
            self._xs.append(x.clone() if x.dtype == torch.float64 else x.to(torch.float32, copy=True))
            self._ys.append(y.clone() if y.dtype == torch.float64 else y.to(torch.float32, copy=True))
            return
        x = x.to(torch.float64) - self._ref_x
        y = y.to(torch.float64) - self._ref_y
        r, s = (x * x).sum(1), (y * y).sum(1)
        self._xty += x.T @ y
        self._xtx += x.T @ x
        self._yty += y.T @ y
        self._sx += x.sum(0)
        self._sy += y.sum(0)
        self._rx += r @ x
        self._sx_s += s @ x
        self._ry += r @ y
        self._sy_s += s @ y
        for key, value in (("r", r.sum()), ("s", s.sum()), ("rs", r @ s), ("rr", r @ r), ("ss", s @ s)):
            self._sums[key] += float(value)

    def _stats(self):
        """Biased HSIC terms (xy, xx, yy), unbiased HSIC terms (xy, xx, yy), centred traces (x, y)."""
        n = self.n
        if self.mode == "gram":
            k, l = _centred_gram(self._xs), _centred_gram(self._ys)
            dk, dl, k1, l1 = k.diagonal(), l.diagonal(), k.sum(1), l.sum(1)

            def pair(p, q, dp, dq, p1, q1):
                t = float((p * q).sum())
                args = (t, float(dp @ dq), float(p1.sum()), float(q1.sum()), float(dp.sum()), float(dq.sum()),
                        float(p1 @ q1), float(dp @ q1), float(dq @ p1))
                return t, (_hsic_u(n, *args) if n >= 4 else None)

            (bxy, uxy), (bxx, uxx), (byy, uyy) = (
                pair(k, l, dk, dl, k1, l1), pair(k, k, dk, dk, k1, k1), pair(l, l, dl, dl, l1, l1))
            return (bxy, bxx, byy), (uxy, uxx, uyy), (float(dk.sum()), float(dl.sum()))

        c = self._sums
        sx, sy = self._sx, self._sy
        cxy = self._xty - torch.outer(sx, sy) / n
        cxx = self._xtx - torch.outer(sx, sx) / n
        cyy = self._yty - torch.outer(sy, sy) / n
        biased = tuple(float((m * m).sum()) for m in (cxy, cxx, cyy))
        unbiased = (None, None, None)
        if n >= 4:
            nx, ny = float(sx @ sx), float(sy @ sy)
            unbiased = (
                _hsic_u(n, float((self._xty**2).sum()), c["rs"], nx, ny, c["r"], c["s"],
                        float(sx @ self._xty @ sy), float(self._ry @ sy), float(self._sx_s @ sx)),
                _hsic_u(n, float((self._xtx**2).sum()), c["rr"], nx, nx, c["r"], c["r"],
                        float(sx @ self._xtx @ sx), float(self._rx @ sx), float(self._rx @ sx)),
                _hsic_u(n, float((self._yty**2).sum()), c["ss"], ny, ny, c["s"], c["s"],
                        float(sy @ self._yty @ sy), float(self._sy_s @ sy), float(self._sy_s @ sy)),
            )
        return biased, unbiased, (float(cxx.trace()), float(cyy.trace()))

    def result(self) -> dict:
        """``{"biased": float | None, "unbiased": float | None, "n": int}``.

        Biased is clamped to [0, 1], unbiased to [-1, 1] (rounding only). None
        when undefined: a side constant, a self-HSIC not positive, n < 2
        (biased) or n < 4 (unbiased).
        """
        if self.n == 0:
            raise UserError("LinearCKA has no examples yet; call update() with at least one batch first")
        (bxy, bxx, byy), (uxy, uxx, uyy), (tx, ty) = self._stats()
        # Centred trace = sum of squared deviations; below rounding level means a constant side.
        constant = any(
            tr <= self.n * dim * (_CONSTANT_RTOL * mx) ** 2
            for tr, dim, mx in zip((tx, ty), self.dims, self._max_abs)
        )
        biased = unbiased = None
        if not constant and self.n >= 2:
            biased = _ratio(max(bxy, 0.0), bxx, byy, 0.0)
        if not constant and self.n >= 4:
            unbiased = _ratio(uxy, uxx, uyy, -1.0)
        return {"biased": biased, "unbiased": unbiased, "n": self.n}


def linear_cka(x, y, *, unbiased: bool = False) -> float | None:
    """Linear CKA between full activation matrices ``x`` (n, ...) and ``y`` (n, ...).

    Biased by default, the debiased estimator with ``unbiased=True``; None
    when undefined (see :meth:`LinearCKA.result`). The mode is chosen with
    ``n_hint=n``.
    """
    x = _flat(x, "x")
    acc = LinearCKA(mode="auto", n_hint=x.shape[0])
    acc.update(x, y)
    return acc.result()["unbiased" if unbiased else "biased"]


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _resolve_pairs(model_a, model_b, points, pairs) -> list[tuple[str, str]]:
    if points is not None and pairs is not None:
        raise UserError("give either points or pairs to cka_between, not both")
    if pairs is not None:
        out = [tuple(p) for p in pairs]
        if not out or any(len(p) != 2 for p in out):
            raise UserError("pairs must be a non-empty list of (name_in_a, name_in_b)")
        return list(dict.fromkeys(out))
    if points is not None:
        if not points:
            raise UserError("points must name at least one feature point")
        return [(p, p) for p in dict.fromkeys(points)]
    pa, pb = feature_points(model_a), feature_points(model_b)
    common = [name for name in pa if name in pb]
    if not common:
        raise UserError(
            f"the two models share no feature point; model_a has: {', '.join(pa) or 'none'}; "
            f"model_b has: {', '.join(pb) or 'none'}; pass pairs=[(name_in_a, name_in_b), ...]"
        )
    return [(p, p) for p in common]


def cka_between(
    model_a: nn.Module,
    model_b: nn.Module,
    x,
    *,
    points: list[str] | None = None,
    pairs: list[tuple[str, str]] | None = None,
    batch_size: int = 500,
    unbiased: bool = True,
    mask=None,
) -> dict[str, dict]:
    """Linear CKA between the activations of two models on the same inputs ``x``.

    ``pairs`` lists ``(name_in_a, name_in_b)``; ``points`` is shorthand for
    same-named pairs; by default the feature points present in both models,
    in model_a's order (UserError if there are none). Both models run in eval
    mode under ``torch.no_grad()`` over ``x`` in batches; each batch's
    activations go into one :class:`LinearCKA` per pair (mode ``"auto"``,
    ``n_hint=len(x)``) and are dropped. Every module's training flag is
    restored afterwards.

    Returns ``{key: {"biased", "unbiased", "n", "dims": [dx, dy], "mode", "cka"}}``
    where key is ``name_a``, or ``"name_a~name_b"`` when the names differ, and
    ``"cka"`` repeats the estimator selected by ``unbiased``.

    ``mask`` ``(N, L)``: token inputs; each valid token is one row (module docstring),
    and ``"n"`` counts valid tokens.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    x = torch.as_tensor(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise UserError(f"x must hold at least one example, got shape {tuple(x.shape)}")
    pair_list = _resolve_pairs(model_a, model_b, points, pairs)
    keys = {p: p[0] if p[0] == p[1] else f"{p[0]}~{p[1]}" for p in pair_list}
    names_a = list(dict.fromkeys(a for a, _ in pair_list))
    names_b = list(dict.fromkeys(b for _, b in pair_list))
    n = x.shape[0]
    keep = _token_mask(mask, n, x)
    rows = n if keep is None else int(keep.sum())
    accs = {p: LinearCKA(mode="auto", n_hint=rows) for p in pair_list}
    same = model_b is model_a
    flags = {m: m.training for model in (model_a, model_b) for m in model.modules()}
    dev_a, dev_b = _device(model_a), _device(model_b)
    try:
        model_a.eval()
        model_b.eval()
        with torch.no_grad(), ExitStack() as stack:
            feats_a = stack.enter_context(capture_features(model_a, names_a))
            feats_b = stack.enter_context(capture_features(model_b, names_b))
            for start in range(0, n, batch_size):
                xb = x[start : start + batch_size]
                model_a(xb.to(dev_a))
                if not same:
                    model_b(xb.to(dev_b))
                for (na, nb), acc in accs.items():
                    for which, feats, name in (("model_a", feats_a, na), ("model_b", feats_b, nb)):
                        if name not in feats:
                            raise UserError(f"feature {name!r} of {which} produced no output in the forward pass")
                    kb = None if keep is None else keep[start : start + batch_size]
                    if kb is None or bool(kb.any()):  # a batch of ignored tokens adds no row
                        acc.update(_rows(feats_a[na], kb, na), _rows(feats_b[nb], kb, nb))
                feats_a.clear()
                feats_b.clear()
    finally:
        for module, flag in flags.items():
            module.training = flag
    out = {}
    for pair, acc in accs.items():
        res = acc.result()
        res.update(dims=list(acc.dims), mode=acc.mode, cka=res["unbiased" if unbiased else "biased"])
        out[keys[pair]] = res
    return out


# -- one model's activations cached once, compared with many models --------------------------


@contextmanager
def _eval_mode(model: nn.Module):
    """``model`` in eval mode under ``torch.no_grad()``; every module's training flag restored after."""
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def _inputs(x, batch_size: int) -> torch.Tensor:
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    x = torch.as_tensor(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise UserError(f"x must hold at least one example, got shape {tuple(x.shape)}")
    return x


def cache_features(model: nn.Module, x, points: list[str] | None, scratch, *, batch_size: int = 500,
                   prefix: str = "features", mask=None) -> dict[str, np.memmap]:
    """Run ``model`` over ``x`` once and keep its activations at ``points`` in ``scratch``.

    ``scratch`` is an open :class:`compresslab.scratch.Scratch`; ``points``
    defaults to all the model's feature points. Returns ``{point: read-only memmap}``
    of shape (n, d), the flattened per-example activations as float32, in the order
    of ``points``; arrays are named ``<prefix>-<i>`` in the scratch. The model runs
    as in :func:`cka_between` (eval mode, no grad, batches of ``batch_size``) and
    each batch is written to the memmap and dropped, so the activations are never
    all in the process's memory. With ``mask`` ``(n, L)`` (token inputs) the arrays hold
    one row per valid token, in order: (M, d).
    """
    x = _inputs(x, batch_size)
    names = list(dict.fromkeys(points)) if points is not None else list(feature_points(model))
    if not names:
        raise UserError("points must name at least one feature point")
    n, dev = x.shape[0], _device(model)
    keep = _token_mask(mask, n, x)
    offsets = _row_offsets(keep, n)
    arrays: dict[str, np.memmap] = {}
    with _eval_mode(model), capture_features(model, names) as feats:
        for start in range(0, n, batch_size):
            model(x[start : start + batch_size].to(dev))
            kb = None if keep is None else keep[start : start + batch_size]
            lo = int(offsets[start])
            for i, name in enumerate(names):
                if name not in feats:
                    raise UserError(f"feature {name!r} produced no output in the forward pass")
                if kb is not None and not bool(kb.any()):
                    continue  # a batch of ignored tokens adds no row
                f = _flat(_rows(feats[name], kb, name), name).to(torch.float32).numpy()
                if name not in arrays:
                    arrays[name] = scratch.array(f"{prefix}-{i}", (int(offsets[-1]), f.shape[1]), np.float32)
                elif f.shape[1] != arrays[name].shape[1]:
                    raise UserError(f"feature {name!r} changed size between batches: "
                                    f"{arrays[name].shape[1]} then {f.shape[1]}")
                arrays[name][lo : lo + f.shape[0]] = f
            feats.clear()
    for array in arrays.values():
        array.flush()
    return {name: scratch.open(f"{prefix}-{i}") for i, name in enumerate(names)}


def _row_offsets(keep: torch.Tensor | None, n: int) -> torch.Tensor:
    """Row of each example's first valid token in a cache (n + 1 entries; examples: 0..n)."""
    if keep is None:
        return torch.arange(n + 1)
    return torch.cat([torch.zeros(1, dtype=torch.long), keep.sum(1).cumsum(0)])


def cka_against_cached(cached: dict[str, np.ndarray], model: nn.Module, x, points: list[str] | None = None, *,
                       batch_size: int = 500, unbiased: bool = True, mask=None) -> dict[str, dict]:
    """Linear CKA between cached activations and ``model``'s on the same inputs ``x``.

    ``cached`` comes from :func:`cache_features` (``{point: (n, d) array}``, the
    cached model's side). ``points`` are compared with the same-named points of
    ``model``; by default the cached points ``model`` also has, in cached order
    (UserError if none). The result is that of ``cka_between(cached_model, model,
    x, points=points)`` with the same ``batch_size``: the same keys and fields, the
    same numbers up to float rounding (the cached side is float32). ``mask``: the token
    mask the cache was made with (:func:`cache_features`).
    """
    x = _inputs(x, batch_size)
    n = x.shape[0]
    keep = _token_mask(mask, n, x)
    offsets = _row_offsets(keep, n)
    rows = int(offsets[-1])
    if points is None:
        own = feature_points(model)
        names = [p for p in cached if p in own]
        if not names:
            raise UserError(f"the model shares no feature point with the cached ones; cached: "
                            f"{', '.join(cached) or 'none'}; model has: {', '.join(own) or 'none'}")
    else:
        names = list(dict.fromkeys(points))
        missing = [p for p in names if p not in cached]
        if not names or missing:
            raise UserError(f"points not cached: {', '.join(missing) or 'none given'}; "
                            f"cached: {', '.join(cached) or 'none'}")
    for p in names:
        if cached[p].shape[0] != rows:
            raise UserError(f"cached feature {p!r} has {cached[p].shape[0]} rows but x has {rows} "
                            f"{'examples' if keep is None else 'valid tokens'}")
    accs = {p: LinearCKA(mode="auto", n_hint=rows) for p in names}
    dev = _device(model)
    with _eval_mode(model), capture_features(model, names) as feats:
        for start in range(0, n, batch_size):
            model(x[start : start + batch_size].to(dev))
            kb = None if keep is None else keep[start : start + batch_size]
            lo, hi = int(offsets[start]), int(offsets[min(start + batch_size, n)])
            for p, acc in accs.items():
                if p not in feats:
                    raise UserError(f"feature {p!r} of the model produced no output in the forward pass")
                if hi > lo or keep is None:
                    acc.update(torch.from_numpy(np.array(cached[p][lo:hi])), _rows(feats[p], kb, p))
            feats.clear()
    out = {}
    for p, acc in accs.items():
        res = acc.result()
        res.update(dims=list(acc.dims), mode=acc.mode, cka=res["unbiased" if unbiased else "biased"])
        out[p] = res
    return out
