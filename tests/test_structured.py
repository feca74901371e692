"""Structured (channel) pruning with torch-pruning: smaller models, save/rebuild, errors."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from compresslab.compress.structured import apply_structure, structure_of, structured_prune
from compresslab.errors import UserError
from compresslab.measure.cost import count_macs, count_params
from compresslab.models import build_from_config, create_model, model_config

MODELS = {
    "cnn1d": (1, 40),
    "resnet20": (3, 16, 16),
    "wrn-16-2": (3, 16, 16),
    "lenet5": (1, 28, 28),
    "mlp": (1, 40),
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    shape = MODELS[name]
    return create_model(name, num_classes=10, in_channels=shape[0], input_shape=shape)


def _batch(name: str, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn((n, *MODELS[name]), generator=g), torch.randint(0, 10, (n,), generator=g)


def _reload(model: nn.Module, structure: dict) -> nn.Module:
    """What loading a checkpoint does: fresh build, apply_structure, strict load (through JSON)."""
    structure = json.loads(json.dumps(structure))
    fresh = apply_structure(build_from_config(model_config(model)), structure)
    fresh.load_state_dict(model.state_dict(), strict=True)
    return fresh.eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_prune_shrinks_and_runs(name):
    model = _model(name)
    x, _ = _batch(name)
    shape = MODELS[name]
    report = structured_prune(model, shape, amount=0.5)
    assert report["params_after"] < report["params_before"] == count_params(_model(name))
    assert report["macs_after"] < report["macs_before"]
    assert report["params_after"] == count_params(model)
    assert report["macs_after"] == count_macs(model, shape)
    assert report["mac_ratio"] == pytest.approx(report["macs_after"] / report["macs_before"])
    assert report["structure"]
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (8, 10)


@pytest.mark.parametrize("name", ["cnn1d", "resnet20", "wrn-16-2"])
def test_save_reload_identical_outputs(name):
    model = _model(name)
    x, y = _batch(name)
    model.train()
    model(x)  # non-trivial BatchNorm running statistics
    report = structured_prune(model, MODELS[name], amount=0.4, importance="taylor", data=(x, y))
    assert report["structure"] == structure_of(model)
    model.eval()
    rebuilt = _reload(model, report["structure"])
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert count_params(rebuilt) == report["params_after"]


def test_structure_example_cnn1d():
    model = create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=8, depth=2, hidden=16)
    structured_prune(model, (1, 40), amount=0.5)
    s = structure_of(model)
    assert s["stages.0.0"] == {"type": "Conv1d", "in_channels": 1, "out_channels": 4, "groups": 1}
    assert s["stages.0.1"] == {"type": "BatchNorm1d", "num_features": 4}
    assert s["hidden.0"] == {"type": "Linear", "in_features": 4 * 10, "out_features": 8}
    assert s["fc"] == {"type": "Linear", "in_features": 8, "out_features": 10}
    assert structure_of(_model("cnn1d")) == {}


def test_resnet20_option_a_streams_are_protected():
    """The zero-padding shortcut changes the channel count: residual streams keep their widths."""
    model = _model("resnet20")
    report = structured_prune(model, MODELS["resnet20"], amount=0.5)
    assert report["protected"]["fc"] == "produces the logits"
    assert "ConstantPadNd" in report["protected"]["stem.0"]
    assert {f"stage{s}.{b}.conv2" for s in (1, 2, 3) for b in range(3)} <= report["protected"].keys()
    assert model.stage2[0].conv2.out_channels == 32 and model.stage2[0].conv1.out_channels == 16
    assert model.fc.in_features == 64


def test_wrn_prunes_residual_streams():
    model = _model("wrn-16-2")
    structured_prune(model, MODELS["wrn-16-2"], amount=0.5)
    assert (model.group1[0].shortcut.in_channels, model.group1[0].shortcut.out_channels) == (8, 16)
    assert model.fc.in_features == 64 and model.fc.out_features == 10


def test_global_and_uniform_differ():
    widths = {}
    for global_pruning in (False, True):
        model = _model("wrn-16-2")
        report = structured_prune(model, MODELS["wrn-16-2"], amount=0.5, global_pruning=global_pruning)
        widths[global_pruning] = report["structure"]
    uniform = {k: v["out_channels"] for k, v in widths[False].items() if v["type"] == "Conv2d"}
    assert set(uniform.values()) == {8, 16, 32, 64}  # every width halved
    assert widths[True] != widths[False]


def test_taylor_differs_from_magnitude():
    structures = {}
    for importance in ("magnitude", "taylor"):
        model = _model("lenet5")
        structures[importance] = structured_prune(model, MODELS["lenet5"], amount=0.5, importance=importance,
                                                  global_pruning=True, data=_batch("lenet5", 32))["structure"]
    assert structures["magnitude"] != structures["taylor"]


def test_side_effects_restored():
    model = _model("cnn1d")
    x, y = _batch("cnn1d")
    model.train()
    structured_prune(model, MODELS["cnn1d"], amount=0.3, importance="taylor", data=(x, y))
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    bn = model.stages[0][1]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))  # no forward in train mode


def test_round_to():
    model = _model("mlp")
    structured_prune(model, MODELS["mlp"], amount=0.3, round_to=16)
    assert [layer[0].out_features for layer in model.hidden] == [176, 176]


def test_depthwise_groups_rebuilt():
    """A depthwise conv whose channels shrink gets new groups; apply_structure follows."""
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.ReLU(), nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 25, 4))
    original = copy.deepcopy(model)
    report = structured_prune(model, (3, 5, 5), amount=0.5)
    assert report["structure"] is None  # no compresslab config
    s = structure_of(model, reference=original)
    assert s["2"] == {"type": "Conv2d", "in_channels": 8, "out_channels": 8, "groups": 8}
    rebuilt = apply_structure(copy.deepcopy(original), s)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 5, 5)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("kwargs, match", [
    ({"amount": 0.0}, "amount"),
    ({"amount": 1.0}, "amount"),
    ({"amount": True}, "amount"),
    ({"amount": "0.5"}, "amount"),
    ({"amount": 0.5, "importance": "l1"}, "importance"),
    ({"amount": 0.5, "importance": "taylor"}, "data"),
    ({"amount": 0.5, "importance": "taylor", "data": (torch.zeros(2, 1, 7), torch.zeros(2))}, "does not fit"),
    ({"amount": 0.5, "round_to": 0}, "round_to"),
])
def test_bad_inputs(kwargs, match):
    model = _model("cnn1d")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UserError, match=match):
        structured_prune(model, MODELS["cnn1d"], **kwargs)
    if "data" not in kwargs:  # validation happens before anything is touched
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_input_shape_and_structure():
    with pytest.raises(UserError):
        structured_prune(_model("cnn1d"), (1, 40, 40), amount=0.5)
    fresh = _model("cnn1d")
    with pytest.raises(UserError, match="does not match"):
        apply_structure(fresh, {"stages.0.0": {"type": "Linear", "in_features": 1, "out_features": 2}})
    with pytest.raises(UserError, match="does not match"):
        apply_structure(fresh, {"nope": {"type": "Conv1d"}})
    with pytest.raises(UserError, match="malformed"):
        apply_structure(fresh, {"stages.0.0": {"type": "Conv1d", "in_channels": 1}})
