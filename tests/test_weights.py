"""Tests for compresslab.measure.weights: cosine pruning curve, p*, kurtosis, safe amount."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from compresslab.compress.prune import prunable_parameters, prune_global
from compresslab.errors import UserError
from compresslab.measure import (
    PRUNABILITY_KEYS,
    cosine_curve,
    flat_params,
    kurtosis_of_kurtoses,
    p_star,
    param_cosine,
    pearson_kurtosis,
    per_tensor_kurtosis,
    plot_prunability,
    prunability,
    safe_amount,
)
from compresslab.models import create_model


def small_model(seed: int = 0) -> nn.Module:
    """cnn1d with random BatchNorm affine parameters and biases, so all magnitudes are distinct."""
    torch.manual_seed(seed)
    m = create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=8, depth=2, hidden=16)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.1)
            elif isinstance(mod, nn.Linear):
                mod.bias.normal_(0.0, 0.1)
    return m


# ----------------------------------------------------------------------------- curve


@pytest.mark.parametrize("scope", ["all", "weights"])
def test_curve_equals_pruning_each_copy(scope):
    model = small_model()
    theta = flat_params(model, scope)
    assert len(torch.unique(theta.abs())) == theta.numel()  # no ties
    p, cos = cosine_curve(model, points=21, scope=scope)
    assert np.array_equal(p, np.linspace(0, 1, 21))
    for pi, ci in zip(p, cos):
        pruned = copy.deepcopy(model)
        prune_global(pruned, float(pi), scope=scope)
        assert param_cosine(model, pruned, scope) == pytest.approx(ci, abs=1e-9)
    assert cos[0] == 1.0 and cos[-1] == 0.0


def test_curve_rounds_like_prune_global_on_half_counts():
    """N = 9 and p = 0.5 removes round(4.5) = 4 (half to even), as prune_global does."""
    torch.manual_seed(1)
    model = nn.Linear(2, 3)
    p, cos = cosine_curve(model, points=5)
    for pi, ci in zip(p, cos):
        pruned = copy.deepcopy(model)
        prune_global(pruned, float(pi))
        assert param_cosine(model, pruned) == pytest.approx(ci, abs=1e-12)


def test_curve_of_vector_and_errors():
    p, cos = cosine_curve(torch.tensor([1.0, -1.0, 1.0, 1.0]), points=5)
    np.testing.assert_allclose(cos, np.sqrt([4, 3, 2, 1, 0]) / 2)
    with pytest.raises(UserError):
        cosine_curve(torch.zeros(5))
    with pytest.raises(UserError):
        cosine_curve(np.ones(3), points=1)


def test_flat_params_order_and_dtype():
    model = small_model()
    params = prunable_parameters(model)
    theta = flat_params(model)
    assert theta.dtype == torch.float64
    assert torch.equal(theta, torch.cat([v.detach().double().flatten() for v in params.values()]))


def test_param_cosine():
    a, b = small_model(0), small_model(1)
    assert param_cosine(a, a) == pytest.approx(1.0)
    ta, tb = flat_params(a), flat_params(b)
    assert param_cosine(a, b) == pytest.approx(float(ta @ tb / (ta.norm() * tb.norm())))
    other = create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=4, depth=2, hidden=16)
    with pytest.raises(UserError):
        param_cosine(a, other)


# ----------------------------------------------------------------------------- p*


def test_p_star_hand_made_curve():
    # θ = four equal magnitudes: cos(p) = sqrt(1 - p) at p = 0, 1/4, ..., 1.
    p, cos = cosine_curve(np.ones(4), points=5)
    ps, cs = p_star(p, cos)
    assert (ps, cs) == (0.75, 0.5)
    dist = np.hypot(1 - cos, 1 - p)
    assert np.all(dist >= math.hypot(1 - cs, 1 - ps))


def test_p_star_is_closest_to_utopia_on_a_model_curve():
    p, cos = cosine_curve(small_model(), points=101)
    ps, cs = p_star(p, cos)
    i = int(np.flatnonzero(p == ps)[0])
    assert cos[i] == cs
    dist = np.hypot(1 - cos, 1 - p)
    assert dist[i] == dist.min()
    assert 0 < ps < 1


def test_p_star_ties_pick_smallest_p():
    assert p_star([0.0, 1.0], [1.0, 0.0]) == (0.0, 1.0)
    assert p_star([1.0, 0.0], [0.0, 1.0]) == (0.0, 1.0)
    with pytest.raises(UserError):
        p_star([0.0, 1.0], [1.0])


# ----------------------------------------------------------------------------- kurtosis


def test_pearson_kurtosis_matches_scipy():
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(1000, generator=g), torch.rand(7, 5, generator=g), torch.randn(3, generator=g) ** 3):
        assert pearson_kurtosis(x) == pytest.approx(stats.kurtosis(x.double().numpy().ravel(), fisher=False, bias=True), rel=1e-10)


def test_pearson_kurtosis_of_known_distributions():
    g = torch.Generator().manual_seed(0)
    assert pearson_kurtosis(torch.randn(200_000, generator=g)) == pytest.approx(3.0, abs=0.05)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    assert pearson_kurtosis(laplace) == pytest.approx(6.0, abs=0.3)
    assert pearson_kurtosis(torch.tensor([-1.0, 1.0])) == pytest.approx(1.0)


def test_pearson_kurtosis_undefined_is_nan():
    assert math.isnan(pearson_kurtosis(torch.ones(10)))
    assert math.isnan(pearson_kurtosis(torch.tensor([2.0])))


def test_per_tensor_and_kurtosis_of_kurtoses():
    model = small_model()
    kurt = per_tensor_kurtosis(model)
    assert list(kurt) == list(prunable_parameters(model))
    for name, p in prunable_parameters(model).items():
        assert kurt[name] == pytest.approx(stats.kurtosis(p.detach().double().numpy().ravel(), fisher=False))
    vals = list(kurt.values())
    assert kurtosis_of_kurtoses(kurt) == pytest.approx(stats.kurtosis(vals, fisher=False))
    # nan (constant tensors) are skipped
    assert kurtosis_of_kurtoses(vals + [math.nan]) == pytest.approx(kurtosis_of_kurtoses(vals))
    with pytest.raises(UserError):
        kurtosis_of_kurtoses([3.0, math.nan])
    with pytest.raises(UserError):
        kurtosis_of_kurtoses([3.0, 3.0, 3.0])


# ----------------------------------------------------------------------------- safe amount


def test_safe_amount_rule_and_clamp():
    ps = 0.8
    assert safe_amount(ps, math.e ** 2) == pytest.approx(ps / 2)
    assert safe_amount(ps, math.e) == pytest.approx(ps / 1.0)  # K² = e uses ln: ln(e) = 1
    assert safe_amount(ps, 2.7) == pytest.approx(ps / math.log2(2.7))  # just below e: log2
    assert safe_amount(ps, 2.0) == pytest.approx(ps)  # log2(2) = 1
    assert ps / math.log2(1.5) > ps and safe_amount(ps, 1.5) == ps  # raw rule overshoots p*: clamped
    assert safe_amount(ps, 1.0) == ps
    assert safe_amount(ps, 0.5) == ps
    assert safe_amount(ps, 1e6) == pytest.approx(ps / math.log(1e6))
    assert safe_amount(ps, 1e6) < safe_amount(ps, 100.0) < safe_amount(ps, 10.0) < ps
    with pytest.raises(UserError):
        safe_amount(ps, math.nan)


# ----------------------------------------------------------------------------- report + plot


def test_prunability_report():
    model = small_model()
    r = prunability(model)
    assert tuple(r) == PRUNABILITY_KEYS
    assert set(r) == {"p_star", "cos_at_p_star", "kurtosis_of_kurtoses", "safe_amount", "curve",
                      "per_tensor_kurtosis", "num_params", "scope"}
    assert len(r["curve"]) == 101 and all(len(pt) == 2 for pt in r["curve"])
    cos = np.array([c for _, c in r["curve"]])
    assert np.all(np.diff(cos) <= 0)
    assert r["num_params"] == sum(p.numel() for p in prunable_parameters(model).values())
    assert r["scope"] == "all"
    assert 0 <= r["safe_amount"] <= r["p_star"] <= 1
    assert r["safe_amount"] == safe_amount(r["p_star"], r["kurtosis_of_kurtoses"])
    json.dumps(r)
    rw = prunability(model, scope="weights", points=11)
    assert rw["scope"] == "weights" and len(rw["curve"]) == 11
    assert set(rw["per_tensor_kurtosis"]) == set(prunable_parameters(model, scope="weights"))


def test_prunability_fresh_model_skips_constant_batchnorm():
    torch.manual_seed(0)
    model = create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=8, depth=2, hidden=16)
    r = prunability(model)
    assert r["per_tensor_kurtosis"]["stages.0.1.weight"] is None  # BN weight = 1: undefined
    assert math.isfinite(r["kurtosis_of_kurtoses"])
    json.dumps(r, allow_nan=False)  # strict JSON


def test_plot_writes_png(tmp_path):
    r = prunability(small_model(), points=21)
    out = plot_prunability(r, tmp_path / "sub" / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.name for f in out.parent.iterdir()] == ["curve.png"]  # no temp file left
