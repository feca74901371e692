"""Tests for the sequence models (models/sequence.py): gru and transformer1d."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compresslab.compress.quantize import quantize_dynamic_int8
from compresslab.data.core import Dataset
from compresslab.errors import UserError
from compresslab.measure.cost import cost_report, count_macs
from compresslab.models import build_from_config, capture_features, create_model, model_config
from compresslab.train import accuracy, fit
from compresslab.train.recipe import Recipe


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one thread avoids OpenMP contention on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, shape=(1, 40), num_classes: int = 10, **options) -> nn.Module:
    return create_model(name, num_classes=num_classes, in_channels=shape[0], input_shape=shape, **options)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- hand formulas --------------------------------------------------------------------------


def gru_params(c: int, k: int, hidden: int = 64, layers: int = 1, bidirectional: bool = False) -> int:
    dirs = 2 if bidirectional else 1
    total, i = 0, c
    for _ in range(layers):
        total += dirs * 3 * (hidden * (i + hidden) + 2 * hidden)  # W_ih, W_hh, b_ih, b_hh of 3 gates
        i = hidden * dirs
    return total + hidden * dirs * k + k


def transformer_params(c: int, length: int, k: int, dim: int = 64, depth: int = 2, heads: int = 4, patch: int = 4,
                       mlp_ratio: int = 2) -> int:
    tokens = -(-length // patch)
    f = mlp_ratio * dim
    layer = (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 4 * dim + (2 * dim * f + f + dim)
    return (c * patch * dim + dim) + tokens * dim + depth * layer + 2 * dim + dim * k + k


GRU_CASES = [
    ((1, 40), {}),
    ((1, 40), {"hidden": 16, "layers": 2}),
    ((2, 24), {"hidden": 8, "layers": 3, "bidirectional": True}),
]
TRANSFORMER_CASES = [
    ((1, 40), {}),
    ((1, 40), {"dim": 32, "depth": 3, "heads": 2, "patch": 5, "mlp_ratio": 4}),
    ((2, 42), {"dim": 16, "depth": 1, "heads": 4}),  # 42 = 10 patches of 4 + 2 padded
]


def test_default_parameter_counts():
    assert n_params(build("gru")) == gru_params(1, 10) == 13_514
    assert n_params(build("transformer1d")) == transformer_params(1, 40, 10) == 68_682


@pytest.mark.parametrize("shape, options", GRU_CASES)
def test_gru_parameter_count(shape, options):
    assert n_params(build("gru", shape, num_classes=7, **options)) == gru_params(shape[0], 7, **options)


@pytest.mark.parametrize("shape, options", TRANSFORMER_CASES)
def test_transformer_parameter_count(shape, options):
    model = build("transformer1d", shape, num_classes=7, **options)
    assert n_params(model) == transformer_params(shape[0], shape[1], 7, **options)


# --- shapes, configs, determinism -----------------------------------------------------------


@pytest.mark.parametrize("name, options", [("gru", {}), ("gru", {"bidirectional": True, "layers": 2}),
                                           ("transformer1d", {})])
@pytest.mark.parametrize("shape", [(1, 40), (2, 24)])
def test_output_shape(name, options, shape):
    model = build(name, shape, num_classes=5, **options)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 5)


@pytest.mark.parametrize("name, options", [("gru", {"hidden": 16, "layers": 2, "bidirectional": True}),
                                           ("transformer1d", {"dim": 32, "depth": 3})])
def test_config_round_trip(name, options):
    model = build(name, **options)
    cfg = model_config(model)
    assert cfg["name"] == name and cfg["input_shape"] == [1, 40]
    assert {k: cfg["options"][k] for k in options} == options
    rebuilt = build_from_config(cfg)
    assert type(rebuilt) is type(model)
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)


def test_gru_options_validated_from_strings():
    model = create_model("gru", num_classes=3, in_channels=1, input_shape=(1, 40), hidden="8", bidirectional="true")
    assert model.layers[0].gru.bidirectional and model.layers[0].gru.hidden_size == 8
    assert model_config(model)["options"] == {"hidden": 8, "layers": 1, "bidirectional": True}


@pytest.mark.parametrize("name", ["gru", "transformer1d"])
def test_initialisation_is_deterministic(name):
    torch.manual_seed(3)
    a = build(name).state_dict()
    torch.manual_seed(3)
    b = build(name).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gru_input_length_is_free_but_transformer_length_is_fixed():
    gru = build("gru")
    assert gru(torch.randn(2, 1, 17)).shape == (2, 10)
    transformer = build("transformer1d")
    with pytest.raises(UserError, match="length 40"):
        transformer(torch.randn(2, 1, 24))


def test_bidirectional_final_state_reads_both_ends():
    model = build("gru", hidden=4, bidirectional=True).eval()
    x = torch.randn(2, 1, 40)
    with torch.no_grad():
        seq = model.layers[0](x)
        pooled = model.pool(seq)
        out, h_n = model.layers[0].gru(x.transpose(1, 2))
    assert torch.equal(pooled, torch.cat([seq[:, :4, -1], seq[:, 4:, 0]], dim=1))
    assert torch.allclose(pooled, torch.cat([h_n[0], h_n[1]], dim=1))  # the final hidden states


# --- transformer forward --------------------------------------------------------------------


def test_encoder_block_matches_the_layer_and_train_eval_agree():
    model = build("transformer1d")
    tokens = torch.randn(4, 64, 10)
    block = model.blocks[0]
    expected = block.layer(tokens.transpose(1, 2)).transpose(1, 2)  # train mode: the layer's own forward
    assert torch.equal(block(tokens), expected)
    x = torch.randn(4, 1, 40)
    train_out = model.train()(x)
    with torch.no_grad():
        eval_out = model.eval()(x)
    assert torch.allclose(train_out, eval_out, atol=1e-5)


# --- feature points ------------------------------------------------------------------------


EXPECTED_FEATURES = {
    ("gru", ()): {"layer1": (3, 64, 40), "pool": (3, 64)},
    ("gru", (("layers", 2), ("bidirectional", True), ("hidden", 8))):
        {"layer1": (3, 16, 40), "layer2": (3, 16, 40), "pool": (3, 16)},
    ("transformer1d", ()): {"embed": (3, 64, 10), "block1": (3, 64, 10), "block2": (3, 64, 10), "pool": (3, 64)},
}


@pytest.mark.parametrize("key", list(EXPECTED_FEATURES))
@pytest.mark.parametrize("train", [True, False])
def test_feature_points_are_tensors(key, train):
    name, options = key
    model = build(name, **dict(options)).train(train)
    with capture_features(model) as feats:
        with torch.set_grad_enabled(train):
            model(torch.randn(3, 1, 40))
    assert all(isinstance(v, torch.Tensor) for v in feats.values())
    assert {k: tuple(v.shape) for k, v in feats.items()} == EXPECTED_FEATURES[key]
    assert all(not m._forward_hooks for m in model.modules())


# --- training ------------------------------------------------------------------------------


def separable(n: int = 192, length: int = 40, seed: int = 0) -> Dataset:
    """Three classes: a step up, a step down, or flat, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    t = torch.linspace(-1, 1, length)
    shapes = torch.stack([(t > 0).float() * 2 - 1, (t < 0).float() * 2 - 1, torch.zeros(length)])
    x = (shapes[y] + 0.3 * torch.randn(n, length, generator=g))[:, None, :]
    return Dataset("separable", x, y, x[:12], y[:12], x[:12], y[:12], num_classes=3)


@pytest.mark.parametrize("name, options", [("gru", {"hidden": 16}), ("transformer1d", {"dim": 16, "heads": 2})])
def test_trains_on_separable_data(name, options):
    torch.manual_seed(0)
    model = build(name, num_classes=3, **options)
    data = separable()
    recipe = Recipe(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant", epochs=10, batch_size=32)
    history = fit(model, data, recipe, seed=0).history
    assert history[-1]["loss"] < 0.25 * history[0]["loss"]
    assert history[-1]["acc"] >= 0.95
    assert accuracy(model, data.x_train, data.y_train) >= 0.95


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape, options, match",
    [
        ("transformer1d", (1, 40), {"dim": 30, "heads": 4}, "divisible by heads"),
        ("transformer1d", (1, 40), {"patch": 41}, "patch <= signal length"),
        ("transformer1d", (1, 40), {"depth": 0}, ">= 1"),
        ("transformer1d", (1, 28, 28), {}, r"1-D signals \(C, L\)"),
        ("gru", (1, 40), {"hidden": 0}, "hidden >= 1"),
        ("gru", (1, 40), {"layers": 0}, "layers >= 1"),
        ("gru", (1, 28, 28), {}, r"1-D signals \(C, L\)"),
        ("gru", (1, 40), {"heads": 2}, "unknown option"),
    ],
)
def test_bad_options(name, shape, options, match):
    with pytest.raises(UserError, match=match) as info:
        build(name, shape, **options)
    assert "\n" not in str(info.value)


# --- cost ---------------------------------------------------------------------------------


def test_cost_counts_recurrent_and_attention_macs():
    # GRU: 3 gates x H x (C + H) per step and direction; head H*dirs x K.
    gru = build("gru")
    assert count_macs(gru, (1, 40)) == 40 * 3 * 64 * (1 + 64) + 64 * 10
    bi = build("gru", (2, 24), hidden=8, layers=2, bidirectional=True)
    assert count_macs(bi, (2, 24)) == 24 * 2 * 3 * 8 * ((2 + 8) + (16 + 8)) + 16 * 10
    # Transformer: patch conv; per token q/k/v/out projections 4d^2, QK^T and AV 2Td, FFN 2df.
    d, t, f = 64, 10, 128
    per_layer = t * (4 * d * d + 2 * t * d) + t * 2 * d * f
    expected = t * d * 4 + 2 * per_layer + d * 10
    transformer = build("transformer1d")
    assert count_macs(transformer, (1, 40)) == expected
    for model in (gru, transformer):
        report = cost_report(model, (1, 40))
        assert report["params"] == n_params(model) and report["macs"] > 0 and report["bops"] > 0


@pytest.mark.parametrize("name", ["gru", "transformer1d"])
def test_dynamic_int8_copy_runs(name):
    model = build(name).eval()
    x = torch.randn(4, 1, 40)
    q = quantize_dynamic_int8(model)
    with torch.no_grad():
        assert torch.allclose(q(x), model(x), atol=0.1)
    assert count_macs(q, (1, 40)) == count_macs(model, (1, 40))
