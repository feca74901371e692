"""Tests for compresslab.measure.stats against scipy and hand-computed references."""

import json
import math
from itertools import combinations

import numpy as np
import pytest
from scipy import stats as sps

from compresslab.measure import stats

ALTS = ["greater", "less", "two-sided"]


def _brute_force_perm_p(a, b, alternative):
    """Exact permutation p by an explicit loop over every relabeling."""
    pooled = list(a) + list(b)
    n, na = len(pooled), len(a)
    observed = np.mean(a) - np.mean(b)
    ge = le = total = 0
    for idx in combinations(range(n), na):
        ga = [pooled[i] for i in idx]
        gb = [pooled[i] for i in range(n) if i not in idx]
        d = np.mean(ga) - np.mean(gb)
        ge += d >= observed - 1e-12
        le += d <= observed + 1e-12
        total += 1
    p = {"greater": ge / total, "less": le / total}
    p["two-sided"] = min(1.0, 2 * min(p["greater"], p["less"]))
    return p[alternative]


def _item(a, b, **extra):
    """A compare_many input dict; keyword arguments override or add keys."""
    base = {"a": a, "b": b, "higher_is_better": True, "metric": "js",
            "label_a": "teacher", "label_b": "independent"}
    return {**base, **extra}


# --------------------------------------------------------------------------- Welch


@pytest.mark.parametrize("alternative", ALTS)
@pytest.mark.parametrize("case", range(4))
def test_welch_matches_scipy(alternative, case):
    rng = np.random.default_rng(case)
    na, nb = [(5, 5), (3, 8), (10, 4), (6, 7)][case]
    a = rng.normal(0.3, 1.0, na)
    b = rng.normal(0.0, [0.2, 3.0, 0.5, 1.0][case], nb)
    ours = stats.welch_t(a, b, alternative)
    ref = sps.ttest_ind(a, b, equal_var=False, alternative=alternative)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert ours["df"] == pytest.approx(ref.df, rel=1e-10)
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_welch_zero_variance_cases():
    same = stats.welch_t([0.1, 0.1, 0.1], [0.1, 0.1], "two-sided")
    assert same == {"t": None, "df": None, "p": 1.0}
    assert stats.welch_t([2.0, 2.0], [1.0, 1.0], "greater")["p"] == 0.0
    assert stats.welch_t([2.0, 2.0], [1.0, 1.0], "less")["p"] == 1.0
    assert stats.welch_t([2.0, 2.0], [1.0, 1.0], "two-sided")["p"] == 0.0
    # One constant group: df is that of the other group, still finite.
    one = stats.welch_t([0.1, 0.1, 0.1], [0.0, 0.1, 0.2, 0.3])
    assert one["df"] == pytest.approx(3.0)


def test_welch_needs_two_values_and_valid_alternative():
    with pytest.raises(ValueError, match="at least 2"):
        stats.welch_t([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="alternative"):
        stats.welch_t([1.0, 2.0], [1.0, 2.0], "bigger")


# --------------------------------------------------------------------------- permutation


@pytest.mark.parametrize("alternative", ALTS)
def test_exact_permutation_matches_brute_force_and_scipy(alternative):
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.5, 1, 5), rng.normal(0, 1, 6)
    ours = stats.permutation_test(a, b, alternative)
    assert ours["exact"] is True
    assert ours["n_permutations"] == math.comb(11, 5)
    assert ours["p"] == pytest.approx(_brute_force_perm_p(a, b, alternative), abs=1e-12)
    ref = sps.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent",
        vectorized=True,
        n_resamples=np.inf,
        alternative=alternative,
    )
    assert ours["p"] == pytest.approx(ref.pvalue, abs=1e-12)


def test_exact_permutation_handles_ties_and_unequal_sizes():
    a, b = [1.0, 2.0, 2.0, 3.0], [2.0, 2.0, 1.0]
    for alt in ALTS:
        assert stats.permutation_test(a, b, alt)["p"] == pytest.approx(
            _brute_force_perm_p(a, b, alt), abs=1e-12
        )


def test_perfect_separation_5_vs_5_is_one_over_252():
    a, b = [5.0, 6, 7, 8, 9], [0.0, 1, 2, 3, 4]
    res = stats.permutation_test(a, b, "greater")
    assert res["exact"] and res["n_permutations"] == 252
    assert res["p"] == pytest.approx(1 / 252)
    assert res["min_p"] == pytest.approx(1 / 252)
    assert stats.permutation_test(a, b, "two-sided")["p"] == pytest.approx(2 / 252)
    assert stats.permutation_test(a, b, "less")["p"] == 1.0


def test_monte_carlo_permutation_close_to_exact():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.4, 1, 8), rng.normal(0, 1, 8)
    exact = stats.permutation_test(a, b, "greater")
    mc = stats.permutation_test(a, b, "greater", max_exact=0, n_resamples=20_000, seed=1)
    assert exact["exact"] and not mc["exact"]
    assert mc["n_permutations"] == 20_000
    assert 0.02 < exact["p"] < 0.5  # a p where Monte Carlo error is visible
    assert abs(mc["p"] - exact["p"]) < 0.02
    assert mc == stats.permutation_test(a, b, "greater", max_exact=0, n_resamples=20_000, seed=1)
    # (count + 1) / (n + 1): never zero even for a perfect separation.
    sep = stats.permutation_test(np.arange(10) + 100.0, np.arange(10), max_exact=0, n_resamples=999)
    assert sep["p"] == pytest.approx(1 / 1000)


def test_permutation_rejects_unknown_statistic():
    with pytest.raises(ValueError, match="statistic"):
        stats.permutation_test([1.0, 2.0], [3.0, 4.0], statistic="median")


# --------------------------------------------------------------------------- Holm, Cohen's d


def test_holm_hand_computed():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []
    assert stats.holm([None, None]) == [None, None]


def test_holm_none_passthrough():
    out = stats.holm([0.01, None, 0.04, 0.03, None, 0.005])
    assert out[1] is None and out[4] is None
    assert [out[i] for i in (0, 2, 3, 5)] == pytest.approx([0.03, 0.06, 0.06, 0.02])


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_holm_rejects_invalid_p(bad):
    with pytest.raises(ValueError, match="index 1"):
        stats.holm([0.1, bad])


def test_cohens_d_hand_computed():
    # means 4 and 2; variances 4 and 1; pooled var (2*4 + 2*1) / 4 = 2.5
    assert stats.cohens_d([2, 4, 6], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2.5))
    # unequal sizes: SS 5 and 2, pooled var 7/4, means 2.5 and 1
    assert stats.cohens_d([1, 2, 3, 4], [0, 2]) == pytest.approx(1.5 / math.sqrt(1.75))
    assert stats.cohens_d([1, 2, 3], [2, 4, 6]) == pytest.approx(-2 / math.sqrt(2.5))
    assert stats.cohens_d([0.1, 0.1, 0.1], [0.7, 0.7]) is None


# --------------------------------------------------------------------------- summarize


def test_summarize_basic_and_deterministic():
    vals = [0.91, 0.88, 0.93, 0.90, 0.87]
    s = stats.summarize(vals, seed=4)
    assert s["n"] == 5 and s["values"] == vals
    assert s["mean"] == pytest.approx(np.mean(vals))
    assert s["std"] == pytest.approx(np.std(vals, ddof=1))
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert min(vals) <= s["ci_low"] < s["ci_high"] <= max(vals)
    assert stats.summarize(vals, seed=4) == s
    assert stats.summarize(vals, seed=5) != s
    narrow = stats.summarize(vals, seed=4, confidence=0.5)
    assert s["ci_low"] <= narrow["ci_low"] <= narrow["ci_high"] <= s["ci_high"]
    json.dumps(s)


def test_summarize_small_n():
    one = stats.summarize(np.array([0.3]))
    assert one["std"] is None and one["ci_low"] == one["ci_high"] == 0.3
    const = stats.summarize((0.1, 0.1, 0.1))
    assert const["std"] == 0.0 and const["ci_low"] == const["ci_high"] == const["mean"]


def test_bootstrap_ci_coverage():
    rng = np.random.default_rng(0)
    covered = 0
    for i in range(200):
        s = stats.summarize(rng.normal(2.0, 1.0, 30), n_boot=2000, seed=i)
        covered += s["ci_low"] <= 2.0 <= s["ci_high"]
    assert 0.88 <= covered / 200 <= 0.99


# --------------------------------------------------------------------------- compare


def test_known_effect_is_significant():
    rng = np.random.default_rng(11)
    a, b = rng.normal(1, 0.1, 5), rng.normal(0, 0.1, 5)
    c = stats.compare(a, b, higher_is_better=True)
    assert c["significant"] and c["p"] < 1e-4 and c["diff"] > 0 and c["cohens_d"] > 3
    assert c["permutation"]["p"] == pytest.approx(1 / 252)
    [r] = stats.compare_many(
        [_item(a, b)]
    )
    assert r["significant"] is True
    assert "significantly more similar to the teacher" in r["verdict"]
    assert "not significantly" not in r["verdict"]
    assert r["verdict"].startswith("teacher students are significantly more")
    assert "Welch p<0.001" in r["verdict"] and "permutation p=0.004" in r["verdict"]


def test_no_effect_is_not_significant():
    rng = np.random.default_rng(13)
    a, b = rng.normal(0, 1, 5), rng.normal(0, 1, 5)
    [r] = stats.compare_many(
        [_item(a, b)]
    )
    assert r["p"] > 0.05 and r["significant"] is False
    assert "not significantly more similar to the teacher" in r["verdict"]
    assert "cannot reach" not in r["verdict"]  # 5 vs 5 can reach p<0.05


def test_type_one_error_control():
    rng = np.random.default_rng(2024)
    hits = sum(
        stats.welch_t(rng.normal(0, 1, 5), rng.normal(0, 1, 5))["p"] < 0.05 for _ in range(200)
    )
    assert 0.01 <= hits / 200 <= 0.10


def test_lower_is_better_flips_direction():
    near = [0.10, 0.12, 0.11, 0.09, 0.10]  # e.g. js_divergence: smaller is better
    far = [0.30, 0.28, 0.33, 0.31, 0.29]
    lower = stats.compare(near, far, higher_is_better=False)
    assert lower["alternative"] == "less" and lower["significant"]
    assert lower["diff"] < 0 and lower["cohens_d"] > 0
    higher = stats.compare(near, far, higher_is_better=True)
    assert not higher["significant"] and higher["p"] > 0.99 and higher["cohens_d"] < 0


def test_compare_many_applies_holm_across_list():
    rng = np.random.default_rng(5)
    items = [
        _item(rng.normal(shift, 1, 5), rng.normal(0, 1, 5),
              metric=f"m{i}", claim="more accurate", extra=i)
        for i, shift in enumerate([2.5, 1.0, 0.0, 0.5])
    ]
    out = stats.compare_many(items)
    raw = [r["p"] for r in out]
    assert [r["p_holm"] for r in out] == pytest.approx(stats.holm(raw))
    assert [r["p_perm_holm"] for r in out] == pytest.approx(
        stats.holm([r["permutation"]["p"] for r in out])
    )
    assert all(r["p_holm"] >= r["p"] for r in out)
    assert any(r["p_holm"] > r["p"] for r in out)
    for r in out:
        assert r["significant"] == (r["p_holm"] < 0.05)
        assert r["permutation_confirms"] == (r["p_perm_holm"] < 0.05)
        assert "more accurate than independent students" in r["verdict"]
    both = stats.compare_many(items, require="both")
    for r in both:
        assert r["significant"] == (r["p_holm"] < 0.05 and r["p_perm_holm"] < 0.05)
    assert [r["extra"] for r in out] == [0, 1, 2, 3] and out[2]["metric"] == "m2"
    json.dumps(out)  # plain Python types only
    with pytest.raises(ValueError, match="missing"):
        stats.compare_many([{"a": [1, 2], "b": [3, 4], "metric": "m"}])


def test_verdict_flags_unreachable_design():
    # 3 vs 3: perfect separation, Welch tiny, but the exact test's floor is 1/20 = 0.05.
    [r] = stats.compare_many(
        [_item([1.0, 1.1, 1.2], [0.0, 0.1, 0.05], metric="agreement")]
    )
    assert r["p_holm"] < 0.01 and r["p_perm_holm"] == pytest.approx(0.05)
    assert r["significant"] is True and r["permutation_confirms"] is False
    assert "with 3 vs 3 seeds the exact test cannot reach p<0.05" in r["verdict"]
    [strict] = stats.compare_many([_item([1.0, 1.1, 1.2], [0.0, 0.1, 0.05], metric="agreement")], require="both")
    assert strict["significant"] is False and "not significantly" in strict["verdict"]
    # 5 vs 5 alone is reachable, but 20 Holm-adjusted comparisons push the floor to 20/252.
    sep = _item([5.0, 6, 7, 8, 9], [0.0, 1, 2, 3, 4], label_a="x", label_b="y")
    many = stats.compare_many([sep] * 20)
    assert "cannot reach p<0.05 after Holm over 20 comparisons" in many[0]["verdict"]


def test_verdict_formatting():
    v = stats.verdict("kd", "ind", "cka", significant=False, p_holm=0.4123, p_perm=0.0004,
                      d=0.3, claim="closer")
    assert v == ("kd students are not significantly closer than ind students on cka "
                 "(Holm-adjusted Welch p=0.41, permutation p<0.001, d=0.30)")
    assert "d=1.9" in stats.verdict("a", "b", "m", significant=True, p_holm=0.01, d=1.94)
    assert "d undefined" in stats.verdict("a", "b", "m", significant=False, p_holm=1.0, d=None)


# --------------------------------------------------------------------------- effect


def test_effect_two_sided():
    rng = np.random.default_rng(9)
    a, b = rng.normal(0.8, 0.05, 5), rng.normal(0.82, 0.08, 6)
    e = stats.effect(a, b, seed=1)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert e["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert e["diff"] == pytest.approx(a.mean() - b.mean())
    assert e["ci_low"] <= e["diff"] <= e["ci_high"]
    assert e["cohens_d"] == pytest.approx(stats.cohens_d(a, b))
    assert stats.effect(a, b, seed=1) == e
    big = stats.effect(a + 1.0, b, seed=1)
    assert big["ci_low"] > 0 and big["p"] < 0.001
    json.dumps(e)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "at least 1"),
        ([[1.0, 2.0], [3.0, 4.0]], "1-D"),
        (3.0, "1-D"),
        ([1.0, float("nan"), 2.0], "non-finite"),
        ([1.0, float("inf")], "non-finite"),
        (["a", "b"], "numbers"),
    ],
)
def test_bad_input_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        stats.summarize(bad)
    with pytest.raises(ValueError):
        stats.compare(bad, [1.0, 2.0, 3.0], higher_is_better=True)
    with pytest.raises(ValueError):
        stats.permutation_test([1.0, 2.0], bad)


def test_verdict_says_when_the_permutation_test_does_not_confirm():
    v = stats.verdict("kd", "ind", "js", significant=True, p_holm=0.01, p_perm=0.2, d=1.0)
    assert v.endswith("; the permutation test does not confirm it)")
    assert "does not confirm" not in stats.verdict("kd", "ind", "js", significant=True, p_holm=0.01, p_perm=0.01)
