"""Tests for compresslab.models: registry, options, configs, feature capture, architectures."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from compresslab.errors import UserError
from compresslab.models import (
    build_from_config,
    capture_features,
    create_model,
    feature_points,
    list_models,
    model_config,
)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one thread avoids OpenMP contention on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# One example's natural shape per model family.
NATURAL_SHAPES = {
    "mlp": (1, 40),
    "cnn1d": (1, 40),
    "gru": (1, 40),
    "transformer1d": (1, 40),
    "embedder": (1, 28, 28),  # its default backbone, lenet5
    "lenet5": (1, 28, 28),
    "resnet": (3, 32, 32),
    "wrn-": (3, 32, 32),
    "wrn1d-": (1, 40),
    "braggnn": (1, 11, 11),
    "searched": (1, 40),
    "soft-tree": (1, 8, 8),
    "convnet": (1, 28, 28),
    "bert": (16,),  # 16 token ids
}


def natural_shape(name: str) -> tuple[int, ...]:
    return next(shape for prefix, shape in sorted(NATURAL_SHAPES.items(), key=lambda kv: -len(kv[0])) if name.startswith(prefix))


def build(name: str, num_classes: int = 10, **options) -> nn.Module:
    shape = natural_shape(name)
    return create_model(name, num_classes=num_classes, in_channels=shape[0], input_shape=shape, **options)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- architectures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("lenet5", 61_706),
        ("resnet20", 269_722),
        ("resnet32", 464_154),
        ("resnet44", 658_586),
        ("resnet56", 853_018),
        ("resnet110", 1_727_962),
        ("wrn-40-2", 2_243_546),
    ],
)
def test_exact_parameter_counts(name, expected):
    assert n_params(build(name)) == expected


@pytest.mark.parametrize("name", list_models() + ["wrn-16-2", "wrn1d-16-2"])
def test_forward_gives_logits(name):
    if name == "bert":  # token ids in; one prediction per sequence with head="sequence"
        model, x = build(name, num_classes=7, head="sequence", hidden=32, vocab_size=100).eval(), torch.randint(1, 100, (2, 16))
    else:
        model, x = build(name, num_classes=7).eval(), torch.randn(2, *natural_shape(name))
    with torch.no_grad():
        assert model(x).shape == (2, 7)


def test_list_models_has_the_families():
    names = list_models()
    assert {"mlp", "cnn1d", "lenet5", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"} <= set(names)
    assert "wrn-D-K" in list_models(include_patterns=True)


def test_resnet_option_a_shortcuts_have_no_parameters():
    model = build("resnet20")
    block = model.stage2[0]
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2]) and not out[:, :8].any() and not out[:, 24:].any()


def test_resnet_1d_from_input_shape():
    model = create_model("resnet20", num_classes=10, in_channels=1, input_shape=(1, 40)).eval()
    assert isinstance(model.stem[0], nn.Conv1d)
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)


def test_lenet5_adapts_first_fc_to_input_size():
    model = create_model("lenet5", num_classes=10, in_channels=3, input_shape=(3, 32, 32)).eval()
    assert model.classifier[1].in_features == 16 * 6 * 6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="lenet5"):
        create_model("lenet5", num_classes=10, in_channels=1, input_shape=(1, 40))


def test_mlp_needs_input_shape():
    with pytest.raises(UserError, match="input_shape"):
        create_model("mlp", num_classes=10, in_channels=1)
    model = build("mlp", widths=[32, 16, 8])
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [32, 16, 8, 10]


def test_wrn_depth_must_be_6n_plus_4():
    with pytest.raises(UserError, match="6n\\+4"):
        build("wrn-15-2")


def test_wrn_1d_and_dim_option():
    model = build("wrn1d-16-2")
    assert isinstance(model.stem, nn.Conv1d) and isinstance(model.final[0], nn.BatchNorm1d)
    model = create_model("wrn-16-1", num_classes=10, in_channels=1, dim=1).eval()
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)
    with pytest.raises(UserError, match="dim"):
        create_model("wrn-16-1", num_classes=10, in_channels=3, input_shape=(3, 32, 32), dim=1)
    with pytest.raises(UserError, match="wrn1d-16-2"):
        create_model("wrn1d-16-2", num_classes=10, in_channels=3, input_shape=(3, 32, 32))


# --- names and options -----------------------------------------------------------------------


def test_unknown_model_lists_known_names():
    with pytest.raises(UserError) as err:
        create_model("resnet-9000x", num_classes=10, in_channels=3)
    message = str(err.value)
    assert "resnet-9000x" in message and "cnn1d" in message and "wrn-D-K" in message and "\n" not in message


def test_unknown_option_names_option_value_and_accepted():
    with pytest.raises(UserError) as err:
        build("cnn1d", widht=64)
    message = str(err.value)
    assert "widht" in message and "64" in message and "width: int" in message and "kernel_size: int" in message


def test_wrong_type_is_refused():
    with pytest.raises(UserError) as err:
        build("cnn1d", width="abc")
    message = str(err.value)
    assert "width" in message and "'abc'" in message and "int" in message


def test_string_number_is_coerced():
    model = build("cnn1d", width="64")
    assert model.stages[0][0].out_channels == 64
    assert model_config(model)["options"]["width"] == 64
    model = build("mlp", widths="[8, 4]")  # a list option given as a JSON string (CLI)
    assert model_config(model)["options"]["widths"] == [8, 4]
    with pytest.raises(UserError, match="widths"):
        build("mlp", widths="8,4")


def test_fixed_pattern_argument_is_not_an_option():
    with pytest.raises(UserError, match="depth"):
        build("wrn-16-2", depth=40)


# --- user models -----------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_models.py").write_text(
        textwrap.dedent(
            """
            import math
            import torch.nn as nn

            class Net(nn.Module):
                def __init__(self, in_features, hidden, num_classes):
                    super().__init__()
                    self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
                    self.extra = nn.Identity()
                    self.head = nn.Linear(hidden, num_classes)

                def forward(self, x):
                    return self.head(self.extra(self.body(x)))

            def with_shape(num_classes, in_channels, input_shape, hidden: int = 8):
                return Net(math.prod(input_shape), hidden, num_classes)

            def without_shape(num_classes, in_channels, hidden: int = 8):
                return Net(in_channels * 40, hidden, num_classes)
            """
        )
    )
    (tmp_path / "broken_user_models.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_models"
    for name in ("my_user_models", "broken_user_models"):
        sys.modules.pop(name, None)


def test_user_model_factory(user_module):
    model = create_model(f"{user_module}:with_shape", num_classes=3, in_channels=1, input_shape=(1, 40), hidden="16")
    assert model.head.in_features == 16
    assert model(torch.randn(2, 1, 40)).shape == (2, 3)
    assert model_config(model)["options"] == {"hidden": 16}
    # input_shape is not passed to a factory that does not take it
    model = create_model(f"{user_module}:without_shape", num_classes=3, in_channels=1, input_shape=(1, 40))
    assert model(torch.randn(2, 1, 40)).shape == (2, 3)
    rebuilt = build_from_config(model_config(model))
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_user_model_import_errors(user_module):
    with pytest.raises(UserError, match="broken_user_models"):
        create_model("broken_user_models:factory", num_classes=3, in_channels=1)
    with pytest.raises(UserError, match="no_such_module_xyz"):
        create_model("no_such_module_xyz:factory", num_classes=3, in_channels=1)
    with pytest.raises(UserError, match="missing"):
        create_model(f"{user_module}:missing", num_classes=3, in_channels=1)
    with pytest.raises(UserError, match="hidden: int"):
        create_model(f"{user_module}:without_shape", num_classes=3, in_channels=1, depth=2)


def test_user_model_default_feature_points(user_module):
    model = create_model(f"{user_module}:without_shape", num_classes=3, in_channels=1)
    assert feature_points(model) == {"body": "body", "extra": "extra"}
    with capture_features(model) as feats:
        model(torch.randn(2, 1, 40))
    assert feats["body"].shape == (2, 8)


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", [("cnn1d", {"width": 16}), ("wrn-16-1", {}), ("mlp", {"widths": [8, 4]}), ("resnet20", {})])
def test_build_from_config_rebuilds_same_architecture(name, options):
    torch.manual_seed(0)
    model = build(name, **options)
    config = json.loads(json.dumps(model_config(model)))  # JSON round trip
    torch.manual_seed(0)
    rebuilt = build_from_config(config)
    assert model_config(rebuilt) == model_config(model)
    a, b = model.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_model_config_requires_create_model():
    with pytest.raises(UserError):
        model_config(nn.Linear(2, 2))


# --- features --------------------------------------------------------------------------------


EXPECTED_FEATURES = {
    "resnet20": {"stem": (2, 16, 32, 32), "stage1": (2, 16, 32, 32), "stage2": (2, 32, 16, 16), "stage3": (2, 64, 8, 8), "pool": (2, 64)},
    "wrn-16-2": {"group1": (2, 32, 32, 32), "group2": (2, 64, 16, 16), "group3": (2, 128, 8, 8), "pool": (2, 128)},
    "wrn1d-16-2": {"group1": (2, 32, 40), "group2": (2, 64, 20), "group3": (2, 128, 10), "pool": (2, 128)},
    "cnn1d": {"stage1": (2, 32, 20), "stage2": (2, 32, 10), "stage3": (2, 32, 5), "hidden": (2, 128)},
    "mlp": {"hidden1": (2, 256), "hidden2": (2, 256)},
    "lenet5": {"stage1": (2, 6, 14, 14), "stage2": (2, 16, 5, 5), "fc1": (2, 120), "fc2": (2, 84)},
}


def all_hooks_removed(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name", list(EXPECTED_FEATURES))
def test_capture_features_shapes_and_cleanup(name):
    model = build(name).eval()
    assert feature_points(model).keys() == EXPECTED_FEATURES[name].keys()
    with capture_features(model) as feats:
        with torch.no_grad():
            model(torch.randn(2, *natural_shape(name)))
        assert not all_hooks_removed(model)
    assert {k: tuple(v.shape) for k, v in feats.items()} == EXPECTED_FEATURES[name]
    assert all_hooks_removed(model)


def test_capture_selected_features_and_unknown_name():
    model = build("resnet20").eval()
    with capture_features(model, ["stage2"]) as feats:
        model(torch.randn(2, 3, 32, 32))
    assert list(feats) == ["stage2"]
    with pytest.raises(UserError, match="stage1, stage2"):
        with capture_features(model, ["stage9"]):
            pass
    assert all_hooks_removed(model)


def test_hooks_removed_when_forward_fails():
    model = build("resnet20")
    with pytest.raises(RuntimeError):
        with capture_features(model) as feats:
            model(torch.randn(2, 1, 32, 32))  # wrong channel count
    assert all_hooks_removed(model)
    assert feats == {}


def test_lenet5_scale_narrows_every_layer_and_keeps_feature_points():
    # scale 0.5: conv 1->3 (5x5) + 3->8 (5x5), fc 8*5*5->60->42->10, each with biases
    expected = (3 * 25 + 3) + (8 * 3 * 25 + 8) + (200 * 60 + 60) + (60 * 42 + 42) + (42 * 10 + 10)
    narrow = build("lenet5", scale=0.5)
    assert n_params(narrow) == expected
    assert narrow.feature_points == build("lenet5").feature_points
