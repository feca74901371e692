"""Does a student inherit its teacher's errors more than its correct predictions?

:func:`split_by_correctness` compares two models' logits separately on the
examples the *reference* (teacher) gets right and on those it gets wrong.
:func:`asymmetry` tests, across seeds, whether distillation raises agreement
with the teacher more on its errors than on its correct predictions, relative
to a control student trained without the teacher. Pure: no I/O, no printing.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import torch
from scipy import stats as _sps

from compresslab.errors import UserError
from compresslab.measure.function import _flatten, _pair, js_divergence
from compresslab.measure.stats import _fmt_p, holm, summarize

#: Above this many seeds the sign-flip test is Monte Carlo instead of exact (2^16 = 65536 flips).
MAX_EXACT_SEEDS = 16
#: Random sign assignments drawn for the Monte Carlo sign-flip test.
N_SIGN_FLIPS = 20_000


def _frac(hits: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean of the boolean ``hits`` over ``mask``; None when ``mask`` selects nothing."""
    return float(hits[mask].double().mean()) if bool(mask.any()) else None


def split_by_correctness(reference, other, labels) -> dict:
    """Compare ``other`` with ``reference`` separately where the reference is right and wrong.

    ``reference`` and ``other`` are logits (N, K) on the same examples, ``labels``
    integer classes (N,) in [0, K). With r = argmax(reference), o = argmax(other)
    and y the label, "right" examples have r == y and "wrong" ones r != y. Returns:

    * ``n_right``, ``n_wrong``, ``n_both_wrong`` (r != y and o != y): counts;
    * ``agree_right``: fraction of right examples with o == r (there o == y too);
    * ``agree_wrong``: fraction of wrong examples with o == r, i.e. where ``other``
      makes the *same wrong prediction* as the reference. This is the error
      inheritance rate, returned again under ``error_inheritance`` (same value);
    * ``other_wrong_given_wrong``: fraction of wrong examples with o != y (any label);
    * ``same_error_given_both_wrong``: fraction of the both-wrong examples with o == r.
      Hence agree_wrong = other_wrong_given_wrong * same_error_given_both_wrong;
    * ``js_right``, ``js_wrong``: mean JS divergence (nats, :func:`function.js_divergence`)
      between the two softmax outputs on each subset.

    Token-level logits ``(N, L, K)`` with labels ``(N, L)`` count each valid token (label
    not -100) as one example (:func:`compresslab.measure.function.compare_logits`).

    A fraction or mean over an empty subset is None. Bad shapes or labels raise :class:`UserError`.
    """
    (reference, other), labels = _flatten(reference, other, labels=labels)
    ref, oth = _pair(reference, other)
    n, k = ref.shape
    y = torch.as_tensor(labels.detach() if isinstance(labels, torch.Tensor) else labels).cpu()
    if y.shape != (n,):
        raise UserError(f"labels must have shape ({n},) to match logits {(n, k)}, got {tuple(y.shape)}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise UserError("labels must be integer class indices, got non-integer values")
    y = y.long()
    if bool(((y < 0) | (y >= k)).any()):
        raise UserError(f"labels must be class indices in [0, {k}), got values in [{int(y.min())}, {int(y.max())}]")
    r, o = ref.argmax(1), oth.argmax(1)
    right, agree, other_wrong = r == y, o == r, o != y
    wrong = ~right
    both_wrong = wrong & other_wrong
    agree_wrong = _frac(agree, wrong)
    return {
        "n_right": int(right.sum()),
        "n_wrong": int(wrong.sum()),
        "n_both_wrong": int(both_wrong.sum()),
        "agree_right": _frac(agree, right),
        "agree_wrong": agree_wrong,
        "error_inheritance": agree_wrong,
        "other_wrong_given_wrong": _frac(other_wrong, wrong),
        "same_error_given_both_wrong": _frac(agree, both_wrong),
        "js_right": js_divergence(ref[right], oth[right]) if bool(right.any()) else None,
        "js_wrong": js_divergence(ref[wrong], oth[wrong]) if bool(wrong.any()) else None,
    }


def _asymmetries(kd_right, kd_wrong, ctrl_right, ctrl_wrong) -> np.ndarray:
    """asymmetry_s = (kd_wrong_s - ctrl_wrong_s) - (kd_right_s - ctrl_right_s), elementwise."""
    return (np.asarray(kd_wrong) - np.asarray(ctrl_wrong)) - (np.asarray(kd_right) - np.asarray(ctrl_right))


def _decide(d: np.ndarray, alpha: float, seed: int = 0) -> dict:
    """One-sided tests of mean > 0 for each row of ``d`` (M, S), vectorised over rows.

    Returns arrays ``t`` (NaN where undefined), ``p_t``, ``p_perm``, ``significant``
    and scalars ``p_floor``, ``exact``. :func:`asymmetry` decides with this same function.
    """
    s = d.shape[1]
    mean = d.mean(1)
    tol = 1e-10 * np.maximum(1.0, np.abs(d).max(1))  # float rounding: ties, "all equal", "zero"
    constant = np.ptp(d, axis=1) <= tol
    sd = np.where(constant, 1.0, d.std(1, ddof=1))
    t = np.where(constant, np.nan, mean / (sd / np.sqrt(s)))
    p_t = np.where(constant, np.where(mean > tol, 0.0, 1.0), _sps.t.sf(np.nan_to_num(t), s - 1))
    exact = s <= MAX_EXACT_SEEDS
    if exact:
        signs = np.array(list(product((1.0, -1.0), repeat=s)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(N_SIGN_FLIPS, s))
    n_ge = np.count_nonzero(signs @ d.T >= d.sum(1) - tol, axis=0)
    p_perm = n_ge / len(signs) if exact else (n_ge + 1) / (N_SIGN_FLIPS + 1)
    p_floor = 1.0 / len(signs) if exact else 1.0 / (N_SIGN_FLIPS + 1)
    significant = (p_t < alpha) & ((p_perm < alpha) | (p_floor >= alpha))
    return {"t": t, "p_t": p_t, "p_perm": p_perm, "significant": significant, "p_floor": p_floor, "exact": exact}


def _seeds(values, name: str) -> np.ndarray:
    """``values`` as a finite float vector; None or non-finite entries raise naming the seed."""
    out = []
    for s, v in enumerate(values):
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = float("nan")
        if not np.isfinite(x):
            raise UserError(f"{name} has no finite value for seed {s} (got {v!r}); measure that seed or drop it from all four lists")
        out.append(x)
    return np.array(out)


def asymmetry(kd_right, kd_wrong, ctrl_right, ctrl_wrong, *, alpha: float = 0.05, seed: int = 0, n_boot: int = 10_000) -> dict:
    """Test whether a treated model inherits the reference's errors more than its correct predictions.

    Inputs are per-seed paired sequences of the same length S >= 2: agreement with
    the reference on reference-right and reference-wrong examples (``agree_right``,
    ``agree_wrong`` of :func:`split_by_correctness`) for the treated model of seed s
    (e.g. a KD student) and for its control (same init, different data order, no teacher).
    gain_right_s = kd_right_s - ctrl_right_s, gain_wrong_s = kd_wrong_s - ctrl_wrong_s,
    asymmetry_s = gain_wrong_s - gain_right_s. H1: mean asymmetry > 0.

    * ``p_t``: one-sided one-sample t-test of the asymmetries (= paired t). If they are
      all equal (spread <= 1e-10, float rounding) the t statistic is undefined (``t`` None)
      and ``p_t`` is its limit as the spread goes to 0: 0.0 if the common value is > 0,
      else 1.0 (as in ``stats.welch_t``); for S >= 5 the sign-flip test must still agree.
    * ``p_perm``: one-sided sign-flip test: the fraction of the 2^S sign assignments
      eps whose sum(eps * asymmetry) >= the observed sum (observed included). Exact
      for S <= 16; above, ``N_SIGN_FLIPS`` seeded random assignments with
      p = (count + 1) / (draws + 1) (``exact`` False).
    * ``p_floor``: the smallest attainable ``p_perm``: 1/2^S exact, 1/(draws + 1) Monte Carlo.

    Decision rule: ``significant`` = p_t < alpha and p_perm < alpha. When p_floor >= alpha
    (S <= 4 at alpha = 0.05) the sign-flip test can never reject, so significance rests
    on p_t alone and ``note`` says so (else ``note`` is None).

    Also returns ``n_seeds``, mean ``gain_right`` and ``gain_wrong``, ``asymmetry`` (mean)
    with a seeded percentile-bootstrap 95% CI ``ci_low``, ``ci_high``
    (:func:`stats.summarize`), per-seed ``values``, ``alpha`` and a one-line ``verdict``.
    """
    names = ("kd_right", "kd_wrong", "ctrl_right", "ctrl_wrong")
    cols = [_seeds(v, n) for v, n in zip((kd_right, kd_wrong, ctrl_right, ctrl_wrong), names)]
    lengths = {n: len(c) for n, c in zip(names, cols)}
    if len(set(lengths.values())) != 1 or cols[0].size < 2:
        raise UserError(f"asymmetry needs four paired per-seed sequences of the same length >= 2, got lengths {lengths}")
    d = _asymmetries(*cols)
    s = d.size
    dec = _decide(d[None, :], alpha, seed)
    summ = summarize(d, n_boot=n_boot, seed=seed)
    p_t, p_perm, sig = float(dec["p_t"][0]), float(dec["p_perm"][0]), bool(dec["significant"][0])
    note = None
    if dec["p_floor"] >= alpha:
        note = f"with {s} seeds the sign-flip test cannot reach p<{alpha:g} (floor {dec['p_floor']:.3g}); significance rests on the t-test"
    head = "errors are inherited more than correct predictions" if sig else "no evidence of asymmetric transfer of errors"
    kind = "sign-flip" if dec["exact"] else "Monte Carlo sign-flip"
    verdict = (f"{head}: asymmetry {summ['mean']:+.3g} [{summ['ci_low']:.3g}, {summ['ci_high']:.3g}], "
               f"{_fmt_p(p_t)} (t), {_fmt_p(p_perm)} ({kind}), {s} seeds" + (f"; {note}" if note else ""))
    t = float(dec["t"][0])
    return {
        "n_seeds": s,
        "gain_right": float((cols[0] - cols[2]).mean()),
        "gain_wrong": float((cols[1] - cols[3]).mean()),
        "asymmetry": summ["mean"],
        "ci_low": summ["ci_low"],
        "ci_high": summ["ci_high"],
        "values": summ["values"],
        "t": None if np.isnan(t) else t,
        "p_t": p_t,
        "p_perm": p_perm,
        "p_floor": float(dec["p_floor"]),
        "exact": bool(dec["exact"]),
        "alpha": float(alpha),
        "significant": sig,
        "note": note,
        "verdict": verdict,
    }


def asymmetry_family(pairs: dict[str, list[tuple[dict, dict]]], *, control: str, alpha: float = 0.05,
                     seed: int = 0, unit: str = "seeds") -> tuple[dict[str, dict], list[str]]:
    """:func:`asymmetry` for each name's ``(treated, control)`` pairs of
    :func:`split_by_correctness` results (one pair per seed), Holm-adjusted across names.

    Each result gains ``p_t_holm``; ``significant`` then also needs ``p_t_holm < alpha``;
    ``verdict_line`` is ``"<name> vs <control>: <verdict>"``. Names with fewer than two
    pairs that have both right and wrong examples are left out, each with a note.
    Returns ``(results, notes)``."""
    keys = ("agree_right", "agree_wrong")
    out, notes = {}, []
    for name, group in pairs.items():
        if len(group) < 2 or any(p[k] is None for pair in group for p in pair for k in keys):
            notes.append(f"asymmetry, {name}: not tested (fewer than 2 {unit} with both right and wrong examples)")
            continue
        cols = [[pair[i][k] for pair in group] for i in (0, 1) for k in keys]
        out[name] = asymmetry(*cols, alpha=alpha, seed=seed)
    for (name, a), p in zip(out.items(), holm([a["p_t"] for a in out.values()])):
        a["p_t_holm"] = p
        a["significant"] = bool(a["significant"] and p is not None and p < alpha)
        a["verdict_line"] = f"{name} vs {control}: {a['verdict']}" + (
            f" (Holm-adjusted p={p:.3g})" if len(out) > 1 else "")
    return out, notes
