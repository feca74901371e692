"""Which function a model computes: compare two models' logits on the same examples.

Every function takes logits of shape (N, K) as torch tensors or numpy arrays,
computes in float64 torch, vectorised over examples, and returns Python floats
(except :func:`softmax_probs`, which returns the probabilities). Divergences
are in nats.

Token-level tasks (NER) give logits ``(N, L, K)``: one prediction per token. Every
function here then takes ``labels`` ``(N, L)`` and/or ``mask`` ``(N, L)`` (an attention
mask, nonzero for real tokens) and scores only the valid positions: a label other than
``-100`` (:data:`compresslab.data.core.IGNORE_INDEX`) and, when given, a nonzero mask.
The valid tokens are flattened to ``(M, K)`` (:func:`compresslab.data.core.valid_tokens`)
and everything is computed on them as if they were M examples; without labels or mask
every position counts.

Regression models (outputs are coordinates, e.g. a Bragg peak's centre in pixels) are
compared by :func:`compare_outputs` instead: output MSE and mean Euclidean distances;
:func:`compare` picks by the dataset's task.
"""

from __future__ import annotations

import math

import torch

from compresslab.data.core import valid_tokens
from compresslab.errors import UserError

_LN2 = math.log(2.0)


def _logits(x, what: str = "logits") -> torch.Tensor:
    """``x`` as a float64 (N, K) tensor with N >= 1, K >= 1."""
    t = torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else x)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise UserError(f"{what} must have shape (N, K) with N, K >= 1, got {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.float64)


def _tensor(x) -> torch.Tensor | None:
    return None if x is None else torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else x).cpu()


def _flatten(*outputs, labels=None, mask=None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """``outputs`` (all the same shape) restricted to their valid token positions: token-level
    ``(N, L, K)`` logits become ``(M, K)`` (see the module docstring), with the valid labels
    ``(M,)``; example-level ``(N, K)`` logits and ``(N,)`` labels come back as they are."""
    ts = [_tensor(o) for o in outputs]
    if len({tuple(t.shape) for t in ts}) > 1:
        raise UserError(
            f"logits shapes differ: a is {tuple(ts[0].shape)}, b is {tuple(ts[1].shape)}; "
            f"compare the two models on the same examples and classes"
        )
    y, m = _tensor(labels), _tensor(mask)
    if ts[0].ndim != 3:
        return ts, y
    n_l = tuple(ts[0].shape[:2])
    for what, t in (("labels", y), ("mask", m)):
        if t is not None and tuple(t.shape) != n_l:
            raise UserError(f"{what} must have shape {n_l} to match token logits {tuple(ts[0].shape)}, "
                            f"got {tuple(t.shape)}")
    flat = [valid_tokens(t, y, m) for t in ts]
    if flat[0][0].shape[0] == 0:
        raise UserError("no valid tokens to score: every position has label -100 or attention mask 0")
    return [f for f, _ in flat], flat[0][1]


def _pair(a, b, labels=None, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    (a, b), _ = _flatten(a, b, labels=labels, mask=mask)
    a, b = _logits(a, "logits a"), _logits(b, "logits b")
    if a.shape != b.shape:
        raise UserError(
            f"logits shapes differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}; "
            f"compare the two models on the same examples and classes"
        )
    return a, b


def softmax_probs(logits) -> torch.Tensor:
    """Softmax probabilities, a float64 tensor of shape (N, K)."""
    return torch.softmax(_logits(logits), dim=1)


def agreement(a, b, *, labels=None, mask=None) -> float:
    """Fraction of examples on which the two models' argmax labels agree."""
    a, b = _pair(a, b, labels, mask)
    return float((a.argmax(1) == b.argmax(1)).double().mean())


def disagreement(a, b, *, labels=None, mask=None) -> float:
    """Fraction of examples on which the argmax labels differ (1 - agreement)."""
    return 1.0 - agreement(a, b, labels=labels, mask=mask)


def cohen_kappa(a, b, *, labels=None, mask=None) -> float:
    """Cohen's kappa between the two models' predicted labels.

    kappa = (p_o - p_e) / (1 - p_e), with p_o the agreement and p_e the chance
    agreement from the two models' label marginals over the K classes. When
    p_e == 1 (both models always predict the same single class) kappa is
    undefined; we return 1.0 if p_o == 1 (always true in that case) else 0.0.
    """
    a, b = _pair(a, b, labels, mask)
    n, k = a.shape
    la, lb = a.argmax(1), b.argmax(1)
    p_o = float((la == lb).double().mean())
    pa = torch.bincount(la, minlength=k).double() / n
    pb = torch.bincount(lb, minlength=k).double() / n
    p_e = float((pa * pb).sum())
    if p_e >= 1.0:
        return 1.0 if p_o == 1.0 else 0.0
    return (p_o - p_e) / (1.0 - p_e)


def _plogp_diff(p: torch.Tensor, lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """Elementwise p * (lp - lq), with 0 where p == 0 or lp == lq (no NaN)."""
    term = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
    return torch.where(lp == lq, torch.zeros_like(p), term)


def js_divergence(a, b, *, labels=None, mask=None) -> float:
    """Mean Jensen-Shannon divergence between the softmax distributions, in nats.

    JS(p, q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, in [0, ln 2].
    Computed from log-softmax (log m = logaddexp(log p, log q) - ln 2);
    identical inputs give exactly 0.
    """
    a, b = _pair(a, b, labels, mask)
    lp, lq = torch.log_softmax(a, 1), torch.log_softmax(b, 1)
    lm = torch.logaddexp(lp, lq) - _LN2
    terms = 0.5 * (_plogp_diff(lp.exp(), lp, lm) + _plogp_diff(lq.exp(), lq, lm))
    js = torch.where(lp == lq, torch.zeros_like(terms), terms).sum(1)  # exact 0 where p == q
    return float(js.clamp(0.0, _LN2).mean())


def kl_divergence(a, b, *, labels=None, mask=None) -> float:
    """Mean KL(p_a || p_b) over examples, in nats, from log-softmax."""
    a, b = _pair(a, b, labels, mask)
    lp, lq = torch.log_softmax(a, 1), torch.log_softmax(b, 1)
    return float(_plogp_diff(lp.exp(), lp, lq).sum(1).clamp_min(0.0).mean())


def activation_distance(a, b, *, labels=None, mask=None) -> float:
    """Mean over examples of the L2 norm of the softmax difference p_a - p_b."""
    a, b = _pair(a, b, labels, mask)
    return float(torch.linalg.vector_norm(torch.softmax(a, 1) - torch.softmax(b, 1), dim=1).mean())


def output_cosine(a, b, *, labels=None, mask=None) -> float:
    """Mean cosine similarity of the two softmax vectors (in [0, 1])."""
    a, b = _pair(a, b, labels, mask)
    pa, pb = torch.softmax(a, 1), torch.softmax(b, 1)
    norms = torch.linalg.vector_norm(pa, dim=1) * torch.linalg.vector_norm(pb, dim=1)
    cos = (pa * pb).sum(1) / norms
    return float(cos.clamp(0.0, 1.0).mean())


def accuracy(logits, labels, *, mask=None) -> float:
    """Fraction of examples (token-level: of valid tokens) whose argmax equals the integer label."""
    (x,), y = _flatten(logits, labels=labels, mask=mask)
    x = _logits(x)
    if y.shape != (x.shape[0],):
        raise UserError(
            f"labels must have shape ({x.shape[0]},) to match logits {tuple(x.shape)}, "
            f"got {tuple(y.shape)}"
        )
    return float((x.argmax(1) == y.to(device="cpu", dtype=torch.long)).double().mean())


def compare_logits(a, b, labels=None, *, mask=None) -> dict[str, float]:
    """All function-similarity numbers for two models, with stable keys.

    ``agreement``, ``disagreement``, ``kappa``, ``js_divergence``,
    ``activation_distance``, ``output_cosine``, ``kl_ab`` (KL(p_a || p_b)),
    ``kl_ba``, and with ``labels`` also ``accuracy_a`` and ``accuracy_b``.
    Different shapes raise :class:`UserError`. Token-level logits ``(N, L, K)`` are scored
    on their valid tokens only (labels not ``-100``, ``mask`` nonzero; module docstring).
    """
    (a, b), labels = _flatten(a, b, labels=labels, mask=mask)
    a, b = _pair(a, b)
    agree = agreement(a, b)
    out = {
        "agreement": agree,
        "disagreement": 1.0 - agree,
        "kappa": cohen_kappa(a, b),
        "js_divergence": js_divergence(a, b),
        "activation_distance": activation_distance(a, b),
        "output_cosine": output_cosine(a, b),
        "kl_ab": kl_divergence(a, b),
        "kl_ba": kl_divergence(b, a),
    }
    if labels is not None:
        out["accuracy_a"] = accuracy(a, labels)
        out["accuracy_b"] = accuracy(b, labels)
    return out


def mean_distance(a, b) -> float:
    """Mean over examples of the Euclidean distance between rows of ``a`` and ``b`` (N, K):
    for centre regression, the mean centre error in the targets' unit (pixels)."""
    a, b = _pair(a, b)
    return float(torch.linalg.vector_norm(a - b, dim=1).mean())


def compare_outputs(a, b, targets=None) -> dict[str, float]:
    """Function similarity of two regression models, with stable keys: ``mse`` (mean over
    examples and outputs of the squared difference of their outputs) and
    ``centre_distance_px`` (mean Euclidean distance between their predictions), and with
    ``targets`` also ``centre_error_px_a`` and ``centre_error_px_b`` (each model's mean
    Euclidean error). Distances are in the targets' unit (pixels for ``bragg:synthetic``)."""
    a, b = _pair(a, b)
    out = {"mse": float((a - b).pow(2).mean()), "centre_distance_px": mean_distance(a, b)}
    if targets is not None:
        out["centre_error_px_a"] = mean_distance(a, targets)
        out["centre_error_px_b"] = mean_distance(b, targets)
    return out


def compare(a, b, labels=None, *, task: str = "classification", mask=None) -> dict[str, float]:
    """:func:`compare_logits`, or :func:`compare_outputs` when ``task`` is ``"regression"``
    (``labels`` are then the float targets); ``mask``: see :func:`compare_logits`."""
    return compare_outputs(a, b, labels) if task == "regression" else compare_logits(a, b, labels, mask=mask)
