"""Tests for compresslab.measure.inheritance against hand-counted examples and brute force."""

import math
from itertools import product

import numpy as np
import pytest
import torch
from scipy import stats as sps

from compresslab.errors import UserError
from compresslab.measure import function
from compresslab.measure.inheritance import (
    N_SIGN_FLIPS,
    _asymmetries,
    _decide,
    asymmetry,
    split_by_correctness,
)

LN2 = math.log(2.0)


def _peaked(labels, k=3, scale=50.0):
    """Logits whose softmax is one-hot on ``labels`` up to exp(-50)."""
    out = np.zeros((len(labels), k))
    out[np.arange(len(labels)), labels] = scale
    return out


# --------------------------------------------------------------------------- split_by_correctness

#        example:  0  1  2  3  4  5
Y = np.array([0, 1, 2, 0, 1, 2])
REF = np.array([0, 1, 2, 1, 2, 0])  # right on 0-2, wrong on 3-5
OTH = np.array([0, 1, 0, 1, 0, 2])  # 3: same wrong label; 4: wrong, other label; 5: right


def test_hand_counted_example():
    out = split_by_correctness(_peaked(REF), _peaked(OTH), Y)
    assert (out["n_right"], out["n_wrong"], out["n_both_wrong"]) == (3, 3, 2)
    assert out["agree_right"] == pytest.approx(2 / 3)  # 0, 1 agree; 2 does not
    assert out["agree_wrong"] == pytest.approx(1 / 3)  # only 3 repeats the wrong label
    assert out["error_inheritance"] == out["agree_wrong"]
    assert out["other_wrong_given_wrong"] == pytest.approx(2 / 3)  # 3, 4 wrong; 5 right
    assert out["same_error_given_both_wrong"] == pytest.approx(1 / 2)  # 3 same, 4 different
    # near one-hot outputs: JS is 0 where the argmaxes agree and ln 2 where they differ
    assert out["js_right"] == pytest.approx(LN2 / 3, rel=1e-9)
    assert out["js_wrong"] == pytest.approx(2 * LN2 / 3, rel=1e-9)
    assert out["agree_wrong"] == pytest.approx(out["other_wrong_given_wrong"] * out["same_error_given_both_wrong"])


def test_both_wrong_with_different_labels():
    y = np.array([0, 0, 1])
    out = split_by_correctness(_peaked([1, 2, 0]), _peaked([2, 1, 2]), y)
    assert (out["n_right"], out["n_wrong"], out["n_both_wrong"]) == (0, 3, 3)
    assert out["agree_right"] is None and out["js_right"] is None
    assert out["agree_wrong"] == 0.0 and out["error_inheritance"] == 0.0
    assert out["other_wrong_given_wrong"] == 1.0
    assert out["same_error_given_both_wrong"] == 0.0
    assert out["js_wrong"] == pytest.approx(LN2, rel=1e-9)


def test_reference_never_wrong():
    y = np.array([2, 0, 1, 1])
    ref = torch.tensor(_peaked(y))
    out = split_by_correctness(ref, ref.clone(), torch.tensor(y))
    assert (out["n_right"], out["n_wrong"], out["n_both_wrong"]) == (4, 0, 0)
    assert out["agree_right"] == 1.0 and out["js_right"] == 0.0
    for key in ("agree_wrong", "error_inheritance", "other_wrong_given_wrong", "same_error_given_both_wrong", "js_wrong"):
        assert out[key] is None


def test_no_both_wrong_gives_none():
    out = split_by_correctness(_peaked([1, 0]), _peaked([0, 0]), np.array([0, 0]))
    assert out["other_wrong_given_wrong"] == 0.0 and out["same_error_given_both_wrong"] is None


def _js(p_logits, q_logits):
    p = np.exp(p_logits - p_logits.max()) / np.exp(p_logits - p_logits.max()).sum()
    q = np.exp(q_logits - q_logits.max()) / np.exp(q_logits - q_logits.max()).sum()
    m = (p + q) / 2
    return 0.5 * sum(pi * math.log(pi / mi) for pi, mi in zip(p, m)) + 0.5 * sum(qi * math.log(qi / mi) for qi, mi in zip(q, m))


def _brute(ref, oth, y):
    """Every quantity by an explicit loop over examples."""
    right, wrong, both = [], [], []
    for i in range(len(y)):
        r, o = int(np.argmax(ref[i])), int(np.argmax(oth[i]))
        (right if r == y[i] else wrong).append(i)
        if r != y[i] and o != y[i]:
            both.append(i)
    same = lambda idx: sum(np.argmax(ref[i]) == np.argmax(oth[i]) for i in idx) / len(idx) if idx else None
    js = lambda idx: sum(_js(ref[i], oth[i]) for i in idx) / len(idx) if idx else None
    return {
        "n_right": len(right), "n_wrong": len(wrong), "n_both_wrong": len(both),
        "agree_right": same(right), "agree_wrong": same(wrong), "error_inheritance": same(wrong),
        "other_wrong_given_wrong": sum(np.argmax(oth[i]) != y[i] for i in wrong) / len(wrong) if wrong else None,
        "same_error_given_both_wrong": same(both), "js_right": js(right), "js_wrong": js(wrong),
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_matches_brute_force_loop(seed):
    rng = np.random.default_rng(seed)
    n, k = 150, 4
    ref = rng.normal(size=(n, k)) * 2
    oth = ref + rng.normal(size=(n, k)) * 1.5  # correlated, so the wrong examples share some labels
    y = rng.integers(0, k, size=n)
    got, want = split_by_correctness(ref, torch.tensor(oth), y), _brute(ref, oth, y)
    assert got.keys() == want.keys() and 0 < got["n_both_wrong"] < got["n_wrong"] < n
    for key, val in want.items():
        assert got[key] == pytest.approx(val, rel=1e-9, abs=1e-12), key
    wrong = ref.argmax(1) != y
    assert got["js_wrong"] == function.js_divergence(ref[wrong], oth[wrong])


@pytest.mark.parametrize(
    "ref, oth, y, msg",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), [0, 0, 0], "shapes differ"),
        (np.zeros(3), np.zeros(3), [0, 0, 0], "shape"),
        (np.zeros((3, 2)), np.zeros((3, 2)), [0, 0], "labels must have shape"),
        (np.zeros((3, 2)), np.zeros((3, 2)), [0, 2, 0], r"\[0, 2\)"),
        (np.zeros((3, 2)), np.zeros((3, 2)), [0.5, 1.0, 0.0], "integer"),
    ],
)
def test_bad_input_raises_user_error(ref, oth, y, msg):
    with pytest.raises(UserError, match=msg):
        split_by_correctness(ref, oth, np.asarray(y))


# --------------------------------------------------------------------------- asymmetry


def test_hand_computed_three_seeds():
    out = asymmetry([0.90, 0.92, 0.94], [0.40, 0.30, 0.50], [0.88, 0.92, 0.93], [0.30, 0.25, 0.35], n_boot=500)
    # gains right 0.02, 0.00, 0.01; gains wrong 0.10, 0.05, 0.15; asymmetries 0.08, 0.05, 0.14
    assert out["gain_right"] == pytest.approx(0.01) and out["gain_wrong"] == pytest.approx(0.10)
    assert out["asymmetry"] == pytest.approx(0.09) and out["values"] == pytest.approx([0.08, 0.05, 0.14])
    # sd^2 = (0.01^2 + 0.04^2 + 0.05^2) / 2 = 0.0021, t = 0.09 / sqrt(0.0021 / 3)
    assert out["t"] == pytest.approx(0.09 / math.sqrt(0.0021 / 3))
    assert out["p_t"] == pytest.approx(sps.t.sf(out["t"], 2))
    assert out["p_perm"] == out["p_floor"] == 1 / 8  # all positive: only the identity reaches the sum
    assert out["exact"] and out["note"] and "t-test" in out["note"]
    assert out["p_t"] < 0.05 and out["significant"]  # floor 1/8 >= alpha, so the t-test decides
    assert out["verdict"].startswith("errors are inherited more than correct predictions: asymmetry +0.09")
    assert out["ci_low"] <= 0.09 <= out["ci_high"]


def test_hand_counted_sign_flips():
    # asymmetries 3, -1, 2, 1 (sum 5): sign vectors reaching >= 5 are (+,-,+,+), (+,+,+,+), (+,+,+,-)
    out = asymmetry([0, 0, 0, 0], [3, -1, 2, 1], [0, 0, 0, 0], [0, 0, 0, 0], n_boot=100)
    assert out["p_perm"] == 3 / 16 and out["p_floor"] == 1 / 16


def _brute_sign_flip(d):
    obs = sum(d)
    flips = [sum(e * x for e, x in zip(eps, d)) for eps in product((1, -1), repeat=len(d))]
    return sum(f >= obs - 1e-12 for f in flips) / len(flips)


@pytest.mark.parametrize("seed", range(6))
def test_p_values_match_scipy_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    s = int(rng.integers(2, 10))
    cols = [rng.uniform(0, 1, s) for _ in range(4)]
    if seed == 5:
        cols[1][:2] = cols[3][:2] + cols[0][:2] - cols[2][:2]  # zero asymmetries (tied flips)
    out = asymmetry(*cols, n_boot=200)
    d = (cols[1] - cols[3]) - (cols[0] - cols[2])
    assert out["p_t"] == pytest.approx(sps.ttest_1samp(d, 0.0, alternative="greater").pvalue, rel=1e-9)
    assert out["p_perm"] == pytest.approx(_brute_sign_flip(d))
    assert out["p_floor"] == 2.0**-s and out["exact"]
    assert out["significant"] == (out["p_t"] < 0.05 and (out["p_perm"] < 0.05 or out["p_floor"] >= 0.05))


def test_monte_carlo_above_sixteen_seeds():
    rng = np.random.default_rng(7)
    cols = [rng.uniform(0, 1, 18) for _ in range(4)]
    cols[1] += 0.1
    out = asymmetry(*cols, n_boot=200, seed=3)
    d = (cols[1] - cols[3]) - (cols[0] - cols[2])
    signs = np.array(list(product((1.0, -1.0), repeat=18)))
    exact_p = float(np.mean(signs @ d >= d.sum() - 1e-12))
    assert not out["exact"] and out["p_floor"] == 1 / (N_SIGN_FLIPS + 1)
    assert out["p_perm"] == pytest.approx(exact_p, abs=0.01)
    assert "Monte Carlo" in out["verdict"] and out == asymmetry(*cols, n_boot=200, seed=3)


@pytest.mark.parametrize("value, p_t", [(0.05, 0.0), (0.0, 1.0), (-0.05, 1.0)])
def test_constant_asymmetry(value, p_t):
    out = asymmetry([0.9] * 6, [0.3 + value] * 6, [0.8] * 6, [0.2] * 6, n_boot=100)  # float-rounded constants
    assert out["t"] is None and out["p_t"] == p_t
    assert out["significant"] == (value > 0)  # all-positive: p_perm = 1/64 < 0.05
    assert out["verdict"].startswith("errors are inherited" if value > 0 else "no evidence of asymmetric transfer")


def test_bad_asymmetry_input():
    with pytest.raises(UserError, match="kd_wrong.*seed 2"):
        asymmetry([0.9, 0.9, 0.9], [0.3, 0.3, None], [0.9] * 3, [0.3] * 3)
    with pytest.raises(UserError, match="ctrl_right.*seed 0"):
        asymmetry([0.9, 0.9], [0.3, 0.3], [float("nan"), 0.9], [0.3, 0.3])
    with pytest.raises(UserError, match="same length"):
        asymmetry([0.9, 0.9, 0.9], [0.3, 0.3], [0.9] * 3, [0.3] * 3)
    with pytest.raises(UserError, match=">= 2"):
        asymmetry([0.9], [0.3], [0.9], [0.3])


# --------------------------------------------------------------------------- error rates of the decision


def _simulate(rng, m, s, effect=0.0, noise="normal"):
    """``m`` experiments of ``s`` seeds: KD raises agreement by a random gain on both subsets;
    the gains on right and wrong examples are i.i.d. (null) except for ``effect`` SDs more on wrong."""
    draw = (lambda: rng.normal(0.03, 0.02, (m, s))) if noise == "normal" else (lambda: rng.laplace(0.03, 0.02, (m, s)))
    ctrl_right, ctrl_wrong = rng.uniform(0.85, 0.95, (m, s)), rng.uniform(0.2, 0.4, (m, s))
    kd_right = ctrl_right + draw()
    kd_wrong = ctrl_wrong + draw() + effect * 0.02 * math.sqrt(2)
    return kd_right, kd_wrong, ctrl_right, ctrl_wrong


@pytest.mark.parametrize("noise", ["normal", "laplace"])
@pytest.mark.parametrize("s", [3, 4, 5, 6, 7, 8])
def test_type_one_error_at_most_alpha(s, noise):
    rng, m, alpha = np.random.default_rng(100 * s + len(noise)), 2000, 0.05
    rate = _decide(_asymmetries(*_simulate(rng, m, s, noise=noise)), alpha)["significant"].mean()
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / m)


@pytest.mark.parametrize("s", [5, 6, 7, 8])
def test_power_under_a_true_effect(s):
    rng, m = np.random.default_rng(s), 2000
    rate = _decide(_asymmetries(*_simulate(rng, m, s, effect=1.5)), 0.05)["significant"].mean()
    assert rate > 0.5


def test_vectorised_decision_is_what_asymmetry_decides():
    rng = np.random.default_rng(11)
    for s in (3, 5, 8):
        sims = _simulate(rng, 20, s, effect=0.8)
        dec = _decide(_asymmetries(*sims), 0.05)
        for i in range(20):
            out = asymmetry(*(c[i] for c in sims), n_boot=50)
            assert out["significant"] == bool(dec["significant"][i])
            assert (out["p_t"], out["p_perm"]) == (float(dec["p_t"][i]), float(dec["p_perm"][i]))
