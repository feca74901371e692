"""Small-sample statistics for comparing conditions across seeds.

A study trains a few seeds (typically 3-10) per condition and measures each
seed with several metrics. This module turns those small samples into honest
numbers and plain-English verdicts:

* :func:`summarize` - mean, sample SD and a seeded percentile-bootstrap CI.
* :func:`welch_t` - Welch's unequal-variance t-test (one- or two-sided).
* :func:`permutation_test` - exact (or Monte Carlo) two-sample permutation test
  of the difference of means.
* :func:`cohens_d` - standardised effect size with the pooled SD.
* :func:`holm` - Holm-Bonferroni step-down adjusted p-values.
* :func:`compare` / :func:`compare_many` - one-sided "a is better than b" tests,
  Holm-adjusted across a family, with a :func:`verdict` sentence each.
* :func:`effect` - two-sided effect with a bootstrap CI of the difference.

Every function is pure (no I/O, no printing) and returns plain Python
floats/ints/bools/lists/dicts, so results are JSON-serialisable. NaN never
appears in an output: an undefined quantity is ``None``. Invalid input (empty,
not 1-D, non-numeric, NaN/inf, too few values) raises :class:`StatsInputError`,
a ``ValueError`` that the CLI also reports as a one-line user error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain, combinations
from typing import Any

import numpy as np
from scipy import stats as _sps

from compresslab.errors import UserError

ALTERNATIVES = ("greater", "less", "two-sided")

#: Most numbers held at once when resampling (rows * row length); bounds memory.
_CHUNK_ELEMENTS = 2_000_000

#: Keys every :func:`compare_many` input dict must have.
COMPARISON_KEYS = ("a", "b", "higher_is_better", "metric", "label_a", "label_b")


class StatsInputError(UserError, ValueError):
    """Invalid input to a statistics function (empty, not 1-D, NaN, too few values)."""


# --------------------------------------------------------------------------- helpers


def _sample(values: Any, name: str, min_n: int = 1) -> np.ndarray:
    """``values`` as a finite 1-D float array with at least ``min_n`` entries."""
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise StatsInputError(f"{name} must be a 1-D sequence of numbers ({exc})") from None
    if x.ndim != 1:
        raise StatsInputError(f"{name} must be 1-D, got an array of shape {x.shape}")
    if x.size < min_n:
        raise StatsInputError(f"{name} needs at least {min_n} value(s), got {x.size}")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise StatsInputError(
            f"{name} contains {bad.size} non-finite value(s) (NaN or inf) at index "
            f"{bad[:5].tolist()}{'...' if bad.size > 5 else ''}"
        )
    return x


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise StatsInputError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def _check_confidence(confidence: float, n_boot: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise StatsInputError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_boot) < 1:
        raise StatsInputError(f"n_boot must be a positive integer, got {n_boot}")


def _var(x: np.ndarray) -> float:
    """Sample variance (ddof=1); exactly 0.0 for a constant sample.

    ``np.var`` of ``[0.1, 0.1, 0.1]`` is ~1e-34 because of rounding in the mean;
    that would turn "no spread" into a huge t or d, so constants are detected.
    """
    if x.size < 2 or np.ptp(x) == 0:
        return 0.0
    return float(np.var(x, ddof=1))


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` means of resamples (with replacement) of ``x``, vectorised in chunks."""
    n = x.size
    rows = max(1, _CHUNK_ELEMENTS // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        k = min(rows, n_boot - start)
        out[start : start + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return out


def _percentile_ci(
    boot: np.ndarray, centre: float, confidence: float
) -> tuple[float, float]:
    """Percentile interval of ``boot``, widened by rounding only so it contains ``centre``."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return float(min(low, centre)), float(max(high, centre))


# --------------------------------------------------------------------------- summaries


def summarize(
    values: Sequence[float], *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> dict:
    """Mean, sample SD and percentile-bootstrap CI of the mean of one sample.

    Returns ``{"n", "mean", "std", "ci_low", "ci_high", "values"}``. ``std`` uses
    ddof=1 and is ``None`` when n < 2. The CI resamples the values with
    replacement ``n_boot`` times (numpy Generator seeded with ``seed``, so it is
    deterministic) and takes the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of the resampled means. With n == 1 the
    CI is ``(value, value)``: one seed says nothing about spread, which ``std``
    being ``None`` makes visible.

    Raises ``ValueError`` for an empty, non-1-D or non-finite sample.
    """
    x = _sample(values, "values")
    _check_confidence(confidence, n_boot)
    n = int(x.size)
    mean = float(x.mean())
    if n == 1:
        low = high = mean
    else:
        rng = np.random.default_rng(seed)
        low, high = _percentile_ci(_boot_means(x, int(n_boot), rng), mean, confidence)
    return {
        "n": n,
        "mean": mean,
        "std": math.sqrt(_var(x)) if n >= 2 else None,
        "ci_low": low,
        "ci_high": high,
        "values": x.tolist(),
    }


# --------------------------------------------------------------------------- tests


def welch_t(a: Sequence[float], b: Sequence[float], alternative: str = "greater") -> dict:
    """Welch's unequal-variance t-test of mean(a) against mean(b).

    ``alternative``: ``"greater"`` tests mean(a) > mean(b), ``"less"`` tests
    mean(a) < mean(b), ``"two-sided"`` tests mean(a) != mean(b). The degrees of
    freedom are Welch-Satterthwaite. Returns ``{"t", "df", "p"}``.

    When both samples are constant the t statistic is undefined (0/0 or x/0):
    ``t`` and ``df`` are ``None`` and ``p`` is the limit as the spread goes to
    zero - ``1.0`` if the means are equal (no evidence of any difference),
    otherwise ``0.0`` if the means differ in the tested direction (or for
    two-sided) and ``1.0`` if they differ the other way.

    Raises ``ValueError`` unless each sample has at least 2 finite values.
    """
    _check_alternative(alternative)
    x, y = _sample(a, "a", 2), _sample(b, "b", 2)
    na, nb = x.size, y.size
    diff = float(x.mean() - y.mean())
    va, vb = _var(x) / na, _var(y) / nb
    se2 = va + vb
    if se2 == 0.0:
        # Both samples constant: compare the values themselves, not the rounded means.
        if x[0] == y[0]:
            p = 1.0
        elif alternative == "two-sided":
            p = 0.0
        else:
            p = 0.0 if (x[0] > y[0]) == (alternative == "greater") else 1.0
        return {"t": None, "df": None, "p": p}
    t = diff / math.sqrt(se2)
    df = se2**2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    if alternative == "greater":
        p = _sps.t.sf(t, df)
    elif alternative == "less":
        p = _sps.t.cdf(t, df)
    else:
        p = 2.0 * _sps.t.sf(abs(t), df)
    return {"t": float(t), "df": float(df), "p": float(min(1.0, p))}


def permutation_test(
    a: Sequence[float],
    b: Sequence[float],
    alternative: str = "greater",
    *,
    statistic: str = "mean_diff",
    max_exact: int = 200_000,
    n_resamples: int = 20_000,
    seed: int = 0,
) -> dict:
    """Two-sample permutation test of mean(a) - mean(b).

    Under the null hypothesis the group labels are exchangeable. If the number
    of distinct relabelings C(na + nb, na) is at most ``max_exact``, all of them
    are enumerated (the observed one included, so p >= 1/C; 5 vs 5 seeds gives
    C = 252). Otherwise ``n_resamples`` random relabelings are drawn (seeded)
    and p = (count + 1) / (n_resamples + 1), which includes the observed
    labelling and never returns 0.

    ``"greater"`` counts relabelings whose difference is >= the observed one,
    ``"less"`` those <=; ``"two-sided"`` is twice the smaller one-sided p, capped
    at 1 (the convention of ``scipy.stats.permutation_test``). Differences equal
    up to floating-point rounding count as ties.

    Returns ``{"p", "exact", "n_permutations", "min_p"}`` where ``min_p`` is the
    smallest p this design can produce (1/C exact, 1/(n_resamples+1) Monte
    Carlo; doubled for two-sided), used to tell when significance is out of reach.
    """
    _check_alternative(alternative)
    if statistic != "mean_diff":
        raise StatsInputError(f"statistic must be 'mean_diff', got {statistic!r}")
    x, y = _sample(a, "a"), _sample(b, "b")
    pooled = np.concatenate([x, y])
    na, nb, n = x.size, y.size, x.size + y.size
    total = pooled.sum()
    # Tolerance for ties: rounding of sums scales with the data magnitude.
    tol = 1e-10 * max(1.0, float(np.abs(pooled).max()))
    observed = float(x.mean() - y.mean())

    def mean_diffs(idx_a: np.ndarray) -> np.ndarray:
        sum_a = pooled[idx_a].sum(axis=1)
        return sum_a / na - (total - sum_a) / nb

    n_total = math.comb(n, na)
    exact = n_total <= max_exact
    if exact:
        flat = np.fromiter(
            chain.from_iterable(combinations(range(n), na)), dtype=np.intp, count=n_total * na
        )
        diffs = mean_diffs(flat.reshape(n_total, na))
        n_ge = int(np.count_nonzero(diffs >= observed - tol))
        n_le = int(np.count_nonzero(diffs <= observed + tol))
        p_greater, p_less = n_ge / n_total, n_le / n_total
        n_perm, min_p = n_total, 1.0 / n_total
    else:
        n_resamples = int(n_resamples)
        if n_resamples < 1:
            raise StatsInputError(f"n_resamples must be a positive integer, got {n_resamples}")
        rng = np.random.default_rng(seed)
        rows = max(1, _CHUNK_ELEMENTS // n)
        n_ge = n_le = 0
        for start in range(0, n_resamples, rows):
            k = min(rows, n_resamples - start)
            perms = rng.permuted(np.tile(np.arange(n), (k, 1)), axis=1)
            diffs = mean_diffs(perms[:, :na])
            n_ge += int(np.count_nonzero(diffs >= observed - tol))
            n_le += int(np.count_nonzero(diffs <= observed + tol))
        p_greater = (n_ge + 1) / (n_resamples + 1)
        p_less = (n_le + 1) / (n_resamples + 1)
        n_perm, min_p = n_resamples, 1.0 / (n_resamples + 1)
    if alternative == "greater":
        p = p_greater
    elif alternative == "less":
        p = p_less
    else:
        p = min(1.0, 2.0 * min(p_greater, p_less))
        min_p = min(1.0, 2.0 * min_p)
    return {"p": float(p), "exact": bool(exact), "n_permutations": int(n_perm), "min_p": min_p}


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Cohen's d: (mean(a) - mean(b)) / pooled SD.

    The pooled variance is the sum of each group's squared deviations divided
    by (na + nb - 2), i.e. the per-group ddof=1 variances weighted by n - 1.
    Returns ``None`` when the pooled SD is 0 (both samples constant): the effect
    is then either nil or infinitely many SDs, and no finite d is honest.

    Raises ``ValueError`` for empty/invalid samples or na + nb < 3.
    """
    x, y = _sample(a, "a"), _sample(b, "b")
    if x.size + y.size < 3:
        raise StatsInputError("cohens_d needs at least 3 values in total (na + nb >= 3)")
    pooled_var = ((x.size - 1) * _var(x) + (y.size - 1) * _var(y)) / (x.size + y.size - 2)
    if pooled_var == 0.0:
        return None
    return float((x.mean() - y.mean()) / math.sqrt(pooled_var))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    With the m non-``None`` p-values sorted ascending, the k-th (1-based) is
    adjusted to ``max over j <= k of (m - j + 1) * p_(j)``, capped at 1, so the
    adjusted values are monotone in the raw ones. ``None`` entries are skipped
    (they do not count towards m) and stay ``None``.

    Raises ``ValueError`` for a p-value outside [0, 1] or NaN (use ``None`` for
    a missing test).
    """
    present = []
    for i, p in enumerate(pvalues):
        if p is None:
            continue
        p = float(p)
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise StatsInputError(
                f"p-value at index {i} must be in [0, 1] (None for missing), got {p}"
            )
        present.append((p, i))
    out: list[float | None] = [None] * len(pvalues)
    m = len(present)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


# --------------------------------------------------------------------------- comparisons


def compare(
    a: Sequence[float], b: Sequence[float], *, higher_is_better: bool, alpha: float = 0.05
) -> dict:
    """One-sided test that condition ``a`` is better than condition ``b``.

    "Better" means a larger metric if ``higher_is_better`` else a smaller one
    (e.g. a distance). Runs a one-sided Welch t-test and a one-sided exact
    permutation test in that direction. Returns ``{"mean_a", "mean_b", "diff"
    (mean_a - mean_b), "welch", "permutation", "cohens_d" (signed so positive
    means a is better), "p" (the one-sided Welch p), "n_a", "n_b",
    "higher_is_better", "alternative", "alpha", "significant"}``.
    ``significant`` here is unadjusted: both p-values < ``alpha``. Use
    :func:`compare_many` for a Holm-adjusted family of comparisons.
    """
    x, y = _sample(a, "a", 2), _sample(b, "b", 2)
    alternative = "greater" if higher_is_better else "less"
    welch = welch_t(x, y, alternative)
    perm = permutation_test(x, y, alternative)
    d = cohens_d(x, y)
    if d is not None and not higher_is_better:
        d = -d
    return {
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "diff": float(x.mean() - y.mean()),
        "welch": welch,
        "permutation": perm,
        "cohens_d": d,
        "p": welch["p"],
        "n_a": int(x.size),
        "n_b": int(y.size),
        "higher_is_better": bool(higher_is_better),
        "alternative": alternative,
        "alpha": float(alpha),
        "significant": bool(welch["p"] < alpha and perm["p"] < alpha),
    }


def compare_many(comparisons: Sequence[dict], *, alpha: float = 0.05, require: str = "welch",
                 design_note: bool = True) -> list[dict]:
    """Run :func:`compare` on each dict and Holm-adjust across the whole list.

    Each input dict needs ``a, b, higher_is_better, metric, label_a, label_b``
    and may carry ``claim`` (verdict phrase, default "more similar to the
    teacher"), ``noun`` (default "students"), ``unit`` (default "seeds") and
    anything else, which is passed through. ``a`` and ``b`` come back as plain
    float lists. The family for Holm is the entire list: the Welch p-values
    give ``p_holm`` and the permutation p-values give ``p_perm_holm``.

    ``significant`` is decided by ``p_holm < alpha`` (Welch, Holm-adjusted), or with
    ``require="both"`` also by ``p_perm_holm < alpha``. The exact permutation test
    stays a check that assumes no normality: ``permutation_confirms`` records whether
    it agrees, and the verdict says when it does not. The default is Welch alone
    because with few seeds and a large family the exact test cannot reach ``alpha``
    at all after Holm (``len(list) * smallest min_p >= alpha``: 5 vs 5 seeds allow at
    most 12 comparisons); each verdict then says so, unless ``design_note`` is False
    (say it once elsewhere, e.g. with :func:`permutation_floor`).
    """
    if require not in ("welch", "both"):
        raise StatsInputError(f"require must be 'welch' or 'both', got {require!r}")
    results = []
    for k, item in enumerate(comparisons):
        missing = [key for key in COMPARISON_KEYS if key not in item]
        if missing:
            raise StatsInputError(f"comparison {k} is missing key(s) {missing}")
        res = {key: val for key, val in item.items() if key not in ("a", "b")}
        res["a"] = _sample(item["a"], f"comparison {k} 'a'", 2).tolist()
        res["b"] = _sample(item["b"], f"comparison {k} 'b'", 2).tolist()
        hib = bool(item["higher_is_better"])
        res.update(compare(res["a"], res["b"], higher_is_better=hib, alpha=alpha))
        results.append(res)
    if not results:
        return []
    p_holm = holm([r["p"] for r in results])
    p_perm_holm = holm([r["permutation"]["p"] for r in results])
    floor = permutation_floor(results) if design_note else None
    for r, ph, pph in zip(results, p_holm, p_perm_holm):
        r["p_holm"] = ph
        r["p_perm_holm"] = pph
        r["permutation_confirms"] = bool(pph < alpha)
        r["significant"] = bool(ph < alpha and (require == "welch" or pph < alpha))
        r["verdict"] = verdict(
            r["label_a"],
            r["label_b"],
            r["metric"],
            significant=r["significant"],
            p_holm=ph,
            p_perm=pph,
            d=r["cohens_d"],
            claim=r.get("claim", "more similar to the teacher"),
            noun=r.get("noun", "students"),
            unit=r.get("unit", "seeds"),
            n_a=r["n_a"],
            n_b=r["n_b"],
            perm_floor=floor,
            exact=r["permutation"]["exact"],
            n_tests=len(results),
            alpha=alpha,
        )
    return results


def permutation_floor(results: Sequence[dict]) -> float:
    """The smallest Holm-adjusted permutation p any of ``compare_many``'s results can reach:
    (number of comparisons) × (smallest achievable permutation p), capped at 1."""
    return min(1.0, len(results) * min(r["permutation"]["min_p"] for r in results))


def _fmt_p(p: float) -> str:
    """``p<0.001`` when tiny, else ``p=`` with 2 significant digits."""
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def _fmt_d(d: float | None) -> str:
    if d is None:
        return "d undefined (no spread)"
    return f"d={d:.1f}" if abs(d) >= 1 else f"d={d:.2f}"


def verdict(
    label_a: str,
    label_b: str,
    metric: str,
    *,
    significant: bool,
    p_holm: float,
    p_perm: float | None = None,
    d: float | None = None,
    claim: str = "more similar to the teacher",
    noun: str = "students",
    unit: str = "seeds",
    n_a: int | None = None,
    n_b: int | None = None,
    perm_floor: float | None = None,
    exact: bool = True,
    n_tests: int = 1,
    alpha: float = 0.05,
) -> str:
    """One plain-English sentence for a comparison.

    E.g. "teacher students are significantly more similar to the teacher than
    independent students on js_divergence (Holm-adjusted Welch p=0.003,
    permutation p=0.008, d=1.9)". The phrases "significantly <claim>" and
    "not significantly <claim>" are stable. When ``perm_floor`` (the smallest
    Holm-adjusted permutation p the design can reach) is >= ``alpha``, a clause
    such as "; with 3 vs 3 seeds the exact test cannot reach p<0.05" is added
    inside the parentheses.
    """
    subject = f"{label_a} {noun}".strip()
    other = f"{label_b} {noun}".strip()
    word = "significantly" if significant else "not significantly"
    numbers = [f"Holm-adjusted Welch {_fmt_p(p_holm)}"]
    if p_perm is not None:
        numbers.append(f"permutation {_fmt_p(p_perm)}")
    numbers.append(_fmt_d(d))
    details = ", ".join(numbers)
    if perm_floor is not None and perm_floor >= alpha:
        design = f"with {n_a} vs {n_b} {unit}" if n_a is not None and n_b is not None else "here"
        test = "the exact test" if exact else "the permutation test"
        after = f" after Holm over {n_tests} comparisons" if n_tests > 1 else ""
        details += f"; {design} {test} cannot reach p<{alpha:g}{after}"
    elif significant and p_perm is not None and p_perm >= alpha:
        details += "; the permutation test does not confirm it"
    return f"{subject} are {word} {claim} than {other} on {metric} ({details})"


# --------------------------------------------------------------------------- two-sided effect


def effect(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict:
    """Two-sided effect of condition ``a`` against ``b`` with no assumed direction.

    Returns ``{"mean_a", "mean_b", "diff" (mean_a - mean_b), "ci_low",
    "ci_high", "confidence", "t", "df", "p" (two-sided Welch), "cohens_d",
    "n_a", "n_b"}``. The CI is a percentile bootstrap of the difference of
    means, resampling each group independently (seeded, deterministic).
    Needs at least 2 values per group.
    """
    x, y = _sample(a, "a", 2), _sample(b, "b", 2)
    _check_confidence(confidence, n_boot)
    rng = np.random.default_rng(seed)
    boot = _boot_means(x, int(n_boot), rng) - _boot_means(y, int(n_boot), rng)
    diff = float(x.mean() - y.mean())
    low, high = _percentile_ci(boot, diff, confidence)
    welch = welch_t(x, y, "two-sided")
    return {
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "diff": diff,
        "ci_low": low,
        "ci_high": high,
        "confidence": float(confidence),
        "t": welch["t"],
        "df": welch["df"],
        "p": welch["p"],
        "cohens_d": cohens_d(x, y),
        "n_a": int(x.size),
        "n_b": int(y.size),
    }
