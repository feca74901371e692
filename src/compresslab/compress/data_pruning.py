"""Data pruning: per-example scores of the training split and the subset they keep.

Scores (higher = harder; a pruned set keeps the ``keep_fraction`` hardest by default, as
Paul et al. 2021 and Ben-Baruch et al. 2024, "Distilling the Knowledge in Data Pruning", do):

- **EL2N** (Paul, Ganguli & Dziugaite 2021, "Deep Learning on a Data Diet"):
  ``||softmax(f(x)) - onehot(y)||_2`` of a network early in training, averaged over the
  networks of several seeds (:func:`el2n_scores` scores one network).
- **GraNd** (same paper): ``||∇_θ CE(f(x), y)||_2`` over all trainable parameters, per
  example, early in training, averaged over seeds (:func:`grand_scores`: one network).
- **Forgetting events** (Toneva et al. 2019, "An Empirical Study of Example Forgetting"):
  the number of transitions from correctly to incorrectly classified between consecutive
  presentations of an example during training; an example never classified correctly
  counts as forgotten infinitely often (:class:`ForgettingTracker`).
- **random**: uniform scores from a seed (:func:`random_scores`), the baseline.

:func:`select` turns scores into the indices of the kept subset.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compresslab.errors import UserError

METHODS = ("random", "el2n", "grand", "forgetting")


def check_fraction(keep_fraction: float) -> float:
    """``keep_fraction`` as a float in (0, 1], else a one-line :class:`UserError`."""
    try:
        f = float(keep_fraction)
    except (TypeError, ValueError):
        raise UserError(f"keep fraction {keep_fraction!r}: use a number in (0, 1], e.g. 0.3") from None
    if not 0.0 < f <= 1.0 or math.isnan(f):
        raise UserError(f"keep fraction {keep_fraction}: must be in (0, 1], e.g. 0.3")
    return f


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"unknown score method {method!r}; use one of {', '.join(METHODS)}")
    return method


@torch.no_grad()
def el2n_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
    """EL2N of each example: ``||softmax(f(x)) - onehot(y)||_2`` (Paul et al. 2021, eq. 2),
    with ``model`` in eval mode. Returns float64 ``(N,)``."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size]).float()
        p = F.softmax(logits, dim=1)
        onehot = F.one_hot(y[i:i + batch_size], p.shape[1]).to(p.dtype)
        out.append((p - onehot).norm(dim=1).cpu())
    model.train(was)
    return torch.cat(out).double().numpy()


def grand_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """GraNd of each example: ``||∇_θ CE(f(x), y)||_2`` over every trainable parameter θ
    (Paul et al. 2021, eq. 1), computed per example with ``torch.func.vmap(grad(...))`` and
    ``model`` in eval mode (BatchNorm uses its running statistics, so examples do not mix).
    Returns float64 ``(N,)``."""
    from torch.func import functional_call, grad, vmap

    was = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p, xi, yi):
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits.float(), yi.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    out = []
    for i in range(0, len(y), batch_size):
        g = per_example(params, x[i:i + batch_size], y[i:i + batch_size])
        sq = sum(v.flatten(1).pow(2).sum(1) for v in g.values())
        out.append(sq.sqrt().cpu())
    model.train(was)
    return torch.cat(out).double().numpy()


class ForgettingTracker:
    """Forgetting events per example (Toneva et al. 2019).

    Call :meth:`update` once per presentation of a batch with the examples' indices in the
    training split and whether each was classified correctly then. An event is a transition
    correct -> incorrect between two consecutive presentations of the same example.
    :meth:`scores` gives the counts, with ``inf`` for examples never classified correctly
    (the paper's convention: never learned = forgotten infinitely often)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.counts = np.zeros(self.n, dtype=np.int64)
        self.last = np.zeros(self.n, dtype=bool)  # correct at the previous presentation
        self.learned = np.zeros(self.n, dtype=bool)  # ever correct
        self.presented = np.zeros(self.n, dtype=np.int64)

    def update(self, indices, correct) -> None:
        idx = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64).reshape(-1)
        ok = np.asarray(torch.as_tensor(correct).cpu(), dtype=bool).reshape(-1)
        if idx.shape != ok.shape:
            raise ValueError(f"{idx.size} indices but {ok.size} correctness flags")
        seen = self.presented[idx] > 0
        self.counts[idx] += (seen & self.last[idx] & ~ok).astype(np.int64)
        self.last[idx] = ok
        self.learned[idx] |= ok
        self.presented[idx] += 1

    def term(self):
        """A loss term (for ``fit(..., terms={"forgetting": tracker.term()}, loss={"ce": 1,
        "forgetting": 0})``) that records each batch's correctness and adds nothing."""

        def record(ctx):
            self.update(ctx.idx, ctx.logits.argmax(1) == ctx.y)
            return ctx.logits.new_zeros(())

        return record

    def scores(self) -> np.ndarray:
        out = self.counts.astype(np.float64)
        out[~self.learned] = np.inf
        return out


def random_scores(n: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) scores from ``seed``: keeping the highest is a random subset."""
    return np.random.default_rng(seed).random(int(n))


def keep_count(n: int, keep_fraction: float) -> int:
    """How many of ``n`` examples a fraction keeps: ``round(f · n)``, at least 1."""
    return max(1, min(n, int(round(check_fraction(keep_fraction) * n))))


def select(scores, keep_fraction: float, *, keep: Literal["hardest", "easiest"] = "hardest", seed: int = 0,
           labels=None) -> np.ndarray:
    """Indices (ascending) of the ``round(keep_fraction · N)`` examples to keep.

    ``keep="hardest"`` keeps the highest scores (the default: Paul et al. 2021 and
    Ben-Baruch et al. 2024 prune the easy examples), ``"easiest"`` the lowest. Ties are
    broken by a random order drawn from ``seed``, so equal scores (forgetting counts of 0)
    do not keep the first indices. With ``labels``, every class keeps the same fraction
    (class-balanced: ``round(f · N_c)`` of each class ``c``)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if keep not in ("hardest", "easiest"):
        raise UserError(f"keep {keep!r}: use hardest or easiest")
    if labels is not None:
        lab = np.asarray(labels).reshape(-1)
        parts = [np.flatnonzero(lab == c) for c in np.unique(lab)]
        return np.sort(np.concatenate([p[select(s[p], keep_fraction, keep=keep, seed=seed + i)]
                                       for i, p in enumerate(parts)]))
    k = keep_count(len(s), keep_fraction)
    tie = np.random.default_rng(seed).permutation(len(s))
    primary = -s if keep == "hardest" else s
    order = np.lexsort((tie, primary))  # by primary ascending, ties by the random key
    return np.sort(order[:k])
