"""Tests for compresslab.measure: cost counting and function comparison."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import cohen_kappa_score
from torch import nn

from compresslab.errors import UserError
from compresslab.measure import (
    accuracy,
    activation_distance,
    agreement,
    cohen_kappa,
    compare_logits,
    cost_report,
    count_bops,
    count_macs,
    count_nonzero,
    count_params,
    disagreement,
    js_divergence,
    kl_divergence,
    latency,
    layer_costs,
    model_bytes,
    model_bytes_fp32,
    output_cosine,
    softmax_probs,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))


def _softmax_np(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# --------------------------------------------------------------------------- function


def test_identities_on_own_logits():
    model = _mlp()
    logits = model(torch.randn(200, 10)).detach()
    r = compare_logits(logits, logits.clone())
    assert r["agreement"] == 1.0 and r["disagreement"] == 0.0
    assert r["kappa"] == 1.0
    assert r["js_divergence"] == 0.0
    assert abs(r["kl_ab"]) < 1e-12 and abs(r["kl_ba"]) < 1e-12
    assert r["activation_distance"] == 0.0
    assert r["output_cosine"] == pytest.approx(1.0, abs=1e-12)


def test_compare_logits_keys_and_numpy_input():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    labels = rng.integers(0, 4, size=50)
    r = compare_logits(a, b, labels)
    assert list(r) == ["agreement", "disagreement", "kappa", "js_divergence",
                       "activation_distance", "output_cosine", "kl_ab", "kl_ba",
                       "accuracy_a", "accuracy_b"]
    assert all(type(v) is float for v in r.values())
    assert "accuracy_a" not in compare_logits(a, b)
    assert r["accuracy_a"] == pytest.approx(np.mean(a.argmax(1) == labels))


def test_kappa_matches_sklearn():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    b[:150] = a[:150] + 0.1 * rng.normal(size=(150, 5))  # partly agreeing
    ref = cohen_kappa_score(a.argmax(1), b.argmax(1))
    assert cohen_kappa(a, b) == pytest.approx(ref, abs=1e-12)
    assert cohen_kappa(a, b) == cohen_kappa(b, a)


def test_kappa_degenerate_single_class():
    a = np.tile([5.0, 0.0, 0.0], (10, 1))
    assert cohen_kappa(a, a) == 1.0


def test_js_matches_scipy_and_is_symmetric():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 6)) * 3, rng.normal(size=(40, 6)) * 3
    p, q = _softmax_np(a), _softmax_np(b)
    ref = np.mean(jensenshannon(p, q, axis=1) ** 2)
    assert js_divergence(a, b) == pytest.approx(ref, rel=1e-9)
    assert js_divergence(a, b) == js_divergence(b, a)
    assert agreement(a, b) == agreement(b, a)
    assert disagreement(a, b) == pytest.approx(1 - agreement(a, b))


def test_js_bounded_by_ln2_for_disjoint_outputs():
    a = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])
    b = torch.tensor([[0.0, 1000.0], [1000.0, 0.0]])
    js = js_divergence(a, b)
    assert js == pytest.approx(math.log(2), abs=1e-9) and js <= math.log(2)
    assert not math.isnan(kl_divergence(a, b))


def test_kl_matches_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    p, q = _softmax_np(a), _softmax_np(b)
    ref = np.mean(np.sum(p * np.log(p / q), axis=1))
    assert kl_divergence(a, b) == pytest.approx(ref, rel=1e-9)
    r = compare_logits(a, b)
    assert r["kl_ab"] == pytest.approx(ref, rel=1e-9)
    assert r["kl_ba"] == pytest.approx(np.mean(np.sum(q * np.log(q / p), axis=1)), rel=1e-9)


def test_distance_and_cosine_match_numpy():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(25, 3)), rng.normal(size=(25, 3))
    p, q = _softmax_np(a), _softmax_np(b)
    assert activation_distance(a, b) == pytest.approx(np.linalg.norm(p - q, axis=1).mean())
    cos = (p * q).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1))
    assert output_cosine(a, b) == pytest.approx(cos.mean())
    probs = softmax_probs(a)
    assert probs.dtype == torch.float64 and np.allclose(probs.numpy(), p)


def test_shape_mismatch_is_user_error():
    with pytest.raises(UserError, match=r"\(10, 3\).*\(10, 4\)"):
        compare_logits(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(UserError, match=r"\(10, 3\).*\(9, 3\)"):
        js_divergence(np.zeros((10, 3)), np.zeros((9, 3)))
    with pytest.raises(UserError):
        accuracy(np.zeros((10, 3)), np.zeros(9, dtype=int))


# --------------------------------------------------------------------------- cost


def test_macs_conv2d_groups_stride():
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2)
    (row,) = layer_costs(nn.Sequential(conv), (4, 9, 9))
    # output 6 x 5 x 5 = 150 elements, fan-in (4/2) * 3 * 3 = 18
    assert row["name"] == "0" and row["outputs"] == 150 and row["fan_in"] == 18
    assert row["macs"] == 150 * 18 == count_macs(conv, (4, 9, 9))


def test_macs_conv1d_and_linear():
    conv = nn.Conv1d(3, 5, kernel_size=4)
    assert count_macs(conv, (3, 20)) == 5 * 17 * 3 * 4
    lin = nn.Linear(10, 7)
    assert count_macs(lin, (10,)) == 70
    assert count_macs(lin, (4, 10)) == 4 * 70  # leading positions count
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(5 * 17, 2))
    assert count_macs(model, (3, 20)) == 5 * 17 * 12 + 85 * 2
    assert [r["name"] for r in layer_costs(model, (3, 20))] == ["0", "2"]


def test_bops_linear_with_sparsity_and_bits():
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[:, :4] = 0.0  # half the weights zero
    (row,) = layer_costs(lin, (8,), weight_bits=4, act_bits=8)
    assert row["sparsity"] == 0.5 and row["weight_bits"] == 4 and row["act_bits"] == 8
    m, n, s, bw, ba = 4, 8, 0.5, 4, 8
    expected = m * n * ((1 - s) * ba * bw + ba + bw + math.log2(n))
    assert row["bops"] == pytest.approx(expected) == pytest.approx(992.0)
    assert count_bops(lin, (8,), weight_bits=4, act_bits=8) == pytest.approx(expected)
    # per-layer override (weight_bits, act_bits)
    model = nn.Sequential(lin)
    (row,) = layer_costs(model, (8,), layer_bits={"0": (2, 2)})
    assert (row["weight_bits"], row["act_bits"]) == (2, 2)
    assert row["bops"] == pytest.approx(32 * (0.5 * 4 + 4 + 3))
    with pytest.raises(UserError, match="typo"):
        layer_costs(model, (8,), layer_bits={"typo": (2, 2)})


def test_param_counts_and_bytes():
    lin = nn.Linear(8, 4)  # 36 params
    with torch.no_grad():
        lin.weight[:, :4] = 0.0
    lin.register_buffer("stat", torch.ones(100))  # buffers not counted
    assert count_params(lin) == 36
    assert count_nonzero(lin) == 36 - 16
    assert model_bytes(lin) == model_bytes_fp32(lin) == 144
    assert model_bytes(lin, 8) == 36
    assert model_bytes(lin, 3) == math.ceil(36 * 3 / 8)


def test_cost_report_keys():
    model = _mlp()
    r = cost_report(model, (10,), weight_bits=8, act_bits=8)
    assert list(r) == ["params", "nonzero_params", "macs", "bops", "bytes", "nonzero_bytes", "bytes_fp32"]
    assert r["params"] == 10 * 16 + 16 + 16 * 3 + 3
    assert r["macs"] == 10 * 16 + 16 * 3
    assert r["bytes"] == r["params"] and r["bytes_fp32"] == 4 * r["params"]
    # one layer's weight at 4 bits, the rest at 8; zeros drop out of nonzero_bytes only
    with torch.no_grad():
        model[0].weight[:, :5] = 0
    name = [n for n, m in model.named_modules() if m is model[0]][0]
    r = cost_report(model, (10,), weight_bits=8, act_bits=8, layer_bits={name: (4, 8)})
    assert r["bytes"] == math.ceil((160 * 4 + (16 + 48 + 3) * 8) / 8)
    assert r["nonzero_bytes"] == math.ceil((80 * 4 + (16 + 48 + 3) * 8) / 8)
    r = cost_report(model, (10,), with_latency=True)
    assert set(r["latency_ms"]) == {"batch1", "batch256"}


def test_layer_costs_dynamic_quantized_linear():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[:8] = 0.0  # half the rows
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    rows = layer_costs(q, (10,), weight_bits=8, act_bits=8)
    assert [r["name"] for r in rows] == ["0", "2"]
    assert [r["macs"] for r in rows] == [160, 48]
    assert rows[0]["sparsity"] == 0.5 and rows[0]["type"] == "Linear"


def test_training_flags_restored_and_hooks_removed():
    model = _mlp()
    model.train()
    model[2].eval()
    layer_costs(model, (10,))
    assert model.training and model[0].training and not model[2].training
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(UserError, match="input_shape"):
        layer_costs(model, (11,))  # wrong shape: forward fails
    assert model.training and not model[2].training
    assert all(not m._forward_hooks for m in model.modules())


def test_latency_positive():
    model = _mlp()
    model.train()
    t = latency(model, (10,), repeats=5, warmup=1)
    assert set(t) == {"batch1", "batch256"}
    assert all(isinstance(v, float) and v > 0 for v in t.values())
    assert model.training
    t = latency(model, (10,), batch_sizes=(2,), min_time=0.01)
    assert list(t) == ["batch2"] and t["batch2"] > 0
