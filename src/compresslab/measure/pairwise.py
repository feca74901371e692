"""All-pairs function-similarity matrices for M models evaluated on the same examples.

:func:`pairwise_metrics` takes logits of shape (M, N, K) and returns, for every
metric of :func:`compresslab.measure.function.compare_logits`, an (M, M) float64
matrix whose entry [i, j] is that metric for models i and j. Entries agree with
the per-pair functions to about 1e-12 (only the order of floating-point sums
differs); the same exact-zero rules hold (JS and KL are exactly 0 where two
models' log-probabilities are identical).

The work is vectorised: label metrics come from matrix products of one-hot
labels, output cosine from per-example Gram matrices, and the divergences and
activation distance from broadcast (rows x columns x examples x classes) tensors
over the unordered pairs i < j, built one block of rows and examples at a time so
that the intermediates stay under a memory budget (256 MB by default).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from compresslab.errors import UserError

METRICS = (
    "agreement",
    "disagreement",
    "kappa",
    "js_divergence",
    "activation_distance",
    "output_cosine",
    "kl",
)
"""Keys of :func:`pairwise_metrics`; ``kl[i, j]`` is KL(p_i || p_j), the others are symmetric."""

MEMORY_BUDGET = 256 * 2**20
"""Bytes the broadcast pair intermediates may take at once (default)."""

_LN2 = math.log(2.0)
_PAIR_TEMPS = 6  # float64 (rows, cols, examples, K) tensors alive at once in _pair_block
_EXAMPLE_BLOCK = 2048  # examples per block: keeps the temporaries cache-sized when possible


def _stack(logits) -> torch.Tensor:
    """``logits`` as a finite float64 (M, N, K) CPU tensor with M, N, K >= 1."""
    if isinstance(logits, (list, tuple)):
        if not logits:
            raise UserError("logits is an empty list; pass one (N, K) array per model")
        parts = [torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else np.asarray(x)) for x in logits]
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) != 1:
            raise UserError(
                f"the models' logits have different shapes {sorted(shapes)}; "
                f"evaluate every model on the same examples and classes"
            )
        t = torch.stack([p.to(device="cpu", dtype=torch.float64) for p in parts])
    else:
        t = torch.as_tensor(logits.detach() if isinstance(logits, torch.Tensor) else np.asarray(logits))
        t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim != 3 or 0 in t.shape:
        raise UserError(f"logits must have shape (M, N, K) with M, N, K >= 1, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise UserError("logits contain NaN or infinite values; check the models' outputs")
    return t.contiguous()


def _check_metrics(metrics) -> tuple[str, ...]:
    if metrics is None:
        return METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise UserError(f"unknown pairwise metric(s) {bad}; choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(metrics))


def _pair_block(lp: torch.Tensor, p: torch.Tensor, rows: slice, cols: slice, want: set[str]) -> dict[str, torch.Tensor]:
    """Per-example divergences and distances for rows x cols on one block of examples.

    ``lp`` and ``p`` are (M, n, K) log-probabilities and probabilities. Returns
    (R, C, n) tensors: ``js`` (clamped to [0, ln 2] per example as in
    :func:`~compresslab.measure.function.js_divergence`), ``kl_rc`` = KL(p_r || p_c)
    and ``kl_cr`` (clamped at 0), ``dist`` = ||p_r - p_c||.

    With d = log p_r - log p_c and s = softplus(d) = log(1 + p_r / p_c), the JS
    term of one class is p_r (ln2 - log(1 + p_c/p_r)) / 2 + p_c (ln2 - s) / 2
    = ((p_r + p_c)(ln2 - s) + p_r d) / 2, set to exactly 0 where d == 0.
    """
    lr, lc = lp[rows, None], lp[None, cols]
    pr, pc = p[rows, None], p[None, cols]
    out = {}
    if want & {"js", "kl"}:
        d = lr - lc
        prd = pr * d
        if "kl" in want:
            out["kl_rc"] = prd.sum(-1).clamp_min_(0.0)
            out["kl_cr"] = (pc * d).sum(-1).neg_().clamp_min_(0.0)
        if "js" in want:
            s = torch.logaddexp(d, torch.zeros((), dtype=d.dtype))
            term = torch.add(pr, pc).mul_(s.neg_().add_(_LN2)).add_(prd)
            term.masked_fill_(d == 0, 0.0)
            out["js"] = term.sum(-1).mul_(0.5).clamp_(0.0, _LN2)
        del d, prd
    if "dist" in want:
        out["dist"] = torch.linalg.vector_norm(pr - pc, dim=-1)
    return out


def _budget_blocks(m: int, n: int, k: int, chunk: int | None, budget: int) -> tuple[int, int]:
    """(rows per block, examples per block) so the pair temporaries fit ``budget`` bytes."""
    per_example_pair = _PAIR_TEMPS * 8 * k  # bytes per (row, col, example)
    if chunk is None:
        rows = max(1, min(m, budget // max(1, per_example_pair * m * min(n, _EXAMPLE_BLOCK))))
    else:
        if int(chunk) < 1:
            raise UserError(f"chunk must be a positive number of rows, got {chunk}")
        rows = min(m, int(chunk))
    examples = max(1, min(n, _EXAMPLE_BLOCK, budget // max(1, per_example_pair * rows * m)))
    return rows, examples


def pairwise_metrics(logits, *, metrics=None, chunk: int | None = None,
                     memory_budget: int = MEMORY_BUDGET) -> dict[str, np.ndarray]:
    """Function-similarity metrics for all pairs of M models, as (M, M) float64 matrices.

    ``logits`` has shape (M, N, K): a torch tensor, a numpy array, or a list of M
    (N, K) arrays (model i's logits on the same N examples). ``metrics`` selects a
    subset of :data:`METRICS` (default: all): ``agreement``, ``disagreement``,
    ``kappa``, ``js_divergence`` (nats), ``activation_distance``,
    ``output_cosine`` and ``kl`` with ``kl[i, j]`` = KL(p_i || p_j). Entry [i, j]
    equals the corresponding :mod:`compresslab.measure.function` value for models
    i and j (``kl`` is ``kl_ab`` with a = i, b = j); the diagonal compares a model
    with itself. ``chunk`` is the number of rows (models) whose pairs are built
    at once; by default it and the example block size are chosen so the
    intermediates stay under ``memory_budget`` bytes. Non-finite logits or bad
    shapes raise :class:`UserError`.
    """
    want = _check_metrics(metrics)
    x = _stack(logits)
    m, n, k = x.shape
    lp = torch.log_softmax(x, 2)
    p = lp.exp()  # == torch.softmax(x, 2), as function.py computes it
    res: dict[str, torch.Tensor] = {}

    # label metrics: one-hot counts, agreement counts by a matrix product
    if want_labels := {"agreement", "disagreement", "kappa"} & set(want):
        labels = x.argmax(2)  # (M, N)
        hits = torch.zeros(m, m, dtype=torch.float64)
        for s in range(0, n, _EXAMPLE_BLOCK):
            onehot = torch.nn.functional.one_hot(labels[:, s:s + _EXAMPLE_BLOCK], k).to(torch.float64)
            flat = onehot.reshape(m, -1)
            hits += flat @ flat.T  # exact integer counts
        agree = hits / n
        res["agreement"], res["disagreement"] = agree, 1.0 - agree
        if "kappa" in want_labels:
            marg = torch.stack([torch.bincount(row, minlength=k) for row in labels]).to(torch.float64) / n
            p_e = marg @ marg.T
            undefined = p_e >= 1.0
            kappa = (agree - p_e) / torch.where(undefined, torch.ones_like(p_e), 1.0 - p_e)
            res["kappa"] = torch.where(undefined, (agree == 1.0).to(torch.float64), kappa)

    # output cosine: per-example Gram matrices of the softmax vectors
    if "output_cosine" in want:
        norms = torch.linalg.vector_norm(p, dim=2)  # (M, N)
        cos_sum = torch.zeros(m, m, dtype=torch.float64)
        for s in range(0, n, _EXAMPLE_BLOCK):
            pb = p[:, s:s + _EXAMPLE_BLOCK].transpose(0, 1)  # (n, M, K)
            nb = norms[:, s:s + _EXAMPLE_BLOCK].T  # (n, M)
            cos = torch.bmm(pb, pb.transpose(1, 2)).div_(nb[:, :, None] * nb[:, None, :])
            cos_sum += cos.clamp_(0.0, 1.0).sum(0)
        res["output_cosine"] = cos_sum / n

    # divergences and activation distance over pairs i < j; the diagonal is exactly 0
    pair_want = set()
    if "js_divergence" in want:
        pair_want.add("js")
    if "kl" in want:
        pair_want.add("kl")
    if "activation_distance" in want:
        pair_want.add("dist")
    if pair_want:
        keys = {"js": ["js"], "kl": ["kl_rc", "kl_cr"], "dist": ["dist"]}
        sums = {key: torch.zeros(m, m, dtype=torch.float64) for w in pair_want for key in keys[w]}
        rows_per, ex_per = _budget_blocks(m, n, k, chunk, memory_budget)
        for r0 in range(0, m - 1, rows_per):
            r1 = min(m - 1, r0 + rows_per)
            rows, cols = slice(r0, r1), slice(r0 + 1, m)
            acc = {key: torch.zeros(r1 - r0, m - r0 - 1, dtype=torch.float64) for key in sums}
            for s in range(0, n, ex_per):
                ex = slice(s, s + ex_per)
                block = _pair_block(lp[:, ex], p[:, ex], rows, cols, pair_want)
                for key, v in block.items():
                    acc[key] += v.sum(-1)
            upper = torch.arange(r0 + 1, m)[None, :] > torch.arange(r0, r1)[:, None]  # keep i < j
            for key, v in acc.items():
                sums[key][rows, cols] = torch.where(upper, v, sums[key][rows, cols])
        if "js" in pair_want:
            res["js_divergence"] = (sums["js"] + sums["js"].T) / n
        if "dist" in pair_want:
            res["activation_distance"] = (sums["dist"] + sums["dist"].T) / n
        if "kl" in pair_want:
            res["kl"] = (sums["kl_rc"] + sums["kl_cr"].T) / n

    return {key: res[key].numpy().astype(np.float64, copy=False) for key in want}


def pairwise_to_rows(matrices: dict[str, np.ndarray], names) -> list[dict]:
    """Unordered pairs i < j as JSON-ready dicts ``{"a": names[i], "b": names[j], metric: value}``.

    For ``kl`` both directions are given: ``kl_ab`` = KL(p_a || p_b) and
    ``kl_ba``, matching :func:`~compresslab.measure.function.compare_logits`.
    """
    names = [str(s) for s in names]
    mats = {key: np.asarray(v, dtype=np.float64) for key, v in matrices.items()}
    for key, v in mats.items():
        if v.shape != (len(names), len(names)):
            raise UserError(f"matrix {key!r} has shape {v.shape}, expected ({len(names)}, {len(names)}) for {len(names)} names")
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            row = {"a": names[i], "b": names[j]}
            for key, v in mats.items():
                if key == "kl":
                    row["kl_ab"], row["kl_ba"] = float(v[i, j]), float(v[j, i])
                else:
                    row[key] = float(v[i, j])
            rows.append(row)
    return rows
