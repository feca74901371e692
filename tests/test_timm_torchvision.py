"""``timm:NAME`` and ``torchvision:NAME`` as compresslab models.

On the CPU torch wheel of this project's machine timm and torchvision do not import
(torchvision's wheels fail with ``operator torchvision::nms does not exist``, and timm
needs torchvision), so every test that needs one skips with the import error as its
reason; on a machine where they import (a CUDA torch build with its torchvision) they
run. What runs everywhere: the one-line error a user gets when they do not import.

References: parameter counts from the libraries' own constructors, MACs from torch's
``FlopCounterMode`` (flops / 2) on the same input.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils import flop_counter

from compresslab.cli import main
from compresslab.compress.prune import prune, sparsity_report
from compresslab.compress.quantize import attach_fake_quant, dynamic_int8_transform, quantize_dynamic_int8
from compresslab.compress.structured import structured_prune
from compresslab.errors import UserError
from compresslab.measure.cost import count_macs, count_params
from compresslab.models import capture_features, create_model, feature_points
from compresslab.runs.checkpoint import load_checkpoint, save_checkpoint


def _import_error(package: str) -> str | None:
    """None when ``package`` imports, else why not (the skip reason)."""
    try:
        __import__(package)
    except Exception as e:  # ImportError, or operators that fail to register
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{package} does not import here ({type(e).__name__}: {first[:160]})"
    return None


TIMM, TORCHVISION = _import_error("timm"), _import_error("torchvision")
needs_timm = pytest.mark.skipif(TIMM is not None, reason=TIMM or "")
needs_torchvision = pytest.mark.skipif(TORCHVISION is not None, reason=TORCHVISION or "")
SHAPE = (3, 32, 32)


def reference_macs(model: torch.nn.Module, shape=SHAPE) -> int:
    """torch's flop counter on one example (its CPU attention kernel counted like the others)."""
    aten = torch.ops.aten
    cpu_sdpa = {aten._scaled_dot_product_flash_attention_for_cpu:
                lambda q, k, v, *a, out_shape=None, **kw: flop_counter.sdpa_flop_count(q, k, v)}
    model.eval()
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


# ---------------------------------------------------------------------------------------- not importable


@pytest.mark.skipif(TIMM is None, reason="timm imports here")
def test_timm_unavailable_is_one_line_with_the_reason(capsys):
    with pytest.raises(UserError, match="timm models need timm, which does not import here"):
        create_model("timm:resnet18", num_classes=10, in_channels=3)
    assert main(["info", "--model", "timm:resnet18", "--input-shape", "3x32x32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "timm" in err and "does not import here" in err


@pytest.mark.skipif(TORCHVISION is None, reason="torchvision imports here")
def test_torchvision_unavailable_is_one_line_with_the_reason(capsys):
    assert main(["info", "--model", "torchvision:resnet18", "--input-shape", "3x32x32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "torchvision models need torchvision" in err


# ---------------------------------------------------------------------------------------- timm


@needs_timm
def test_timm_resnet_builds_runs_and_counts():
    import timm

    model = create_model("timm:resnet18", num_classes=10, in_channels=3, input_shape=SHAPE).eval()
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)
    assert count_params(model) == count_params(timm.create_model("resnet18", num_classes=10))
    assert count_macs(model, SHAPE) == reference_macs(model)
    one_channel = create_model("timm:resnet18", num_classes=4, in_channels=1)
    assert one_channel(torch.zeros(1, 1, 32, 32)).shape == (1, 4)


@needs_timm
def test_timm_feature_points_are_its_feature_info():
    model = create_model("timm:resnet18", num_classes=10, in_channels=3).eval()
    points = feature_points(model)
    assert list(points) == [info["module"] for info in model.feature_info]
    with capture_features(model) as feats:
        model(torch.zeros(2, *SHAPE))
    channels = {info["module"]: info["num_chs"] for info in model.feature_info}
    assert {k: v.shape[1] for k, v in feats.items()} == channels


@needs_timm
def test_timm_vit_counts_attention_matmuls():
    model = create_model("timm:vit_tiny_patch16_224", num_classes=10, in_channels=3, img_size=32, patch_size=8)
    macs = count_macs(model, SHAPE)
    assert macs == reference_macs(model)  # Linear layers by hooks + Q K^T and A V counted apart
    assert feature_points(model)  # its blocks


@needs_timm
def test_timm_prune_quantize_and_rebuild(tmp_path):
    model = create_model("timm:resnet18", num_classes=10, in_channels=3, input_shape=SHAPE).eval()
    x = torch.randn(2, *SHAPE)
    masks = prune(model, 0.5)
    assert sparsity_report(model, masks)["global"] == pytest.approx(0.5, abs=1e-3)
    report = structured_prune(model, SHAPE, amount=0.25)
    assert report["params_after"] < report["params_before"] and model(x).shape == (2, 10)
    save_checkpoint(tmp_path / "ck", model)
    loaded, _ = load_checkpoint(tmp_path / "ck")
    torch.testing.assert_close(loaded(x), model(x))
    fq = attach_fake_quant(loaded, 8)
    assert torch.isfinite(fq(x)).all() and not torch.equal(fq(x), model(x))
    q = quantize_dynamic_int8(model, dynamic_int8_transform(model))
    assert q(x).shape == (2, 10)


# ---------------------------------------------------------------------------------------- torchvision


@needs_torchvision
def test_torchvision_resnet_builds_runs_counts_and_prunes(tmp_path):
    import torchvision

    model = create_model("torchvision:resnet18", num_classes=10, in_channels=3, input_shape=SHAPE).eval()
    x = torch.randn(2, *SHAPE)
    assert model(x).shape == (2, 10)
    assert count_params(model) == count_params(torchvision.models.resnet18(num_classes=10))
    assert count_macs(model, SHAPE) == reference_macs(model)
    assert "layer1" in feature_points(model)
    report = structured_prune(model, SHAPE, amount=0.25)
    assert report["params_after"] < report["params_before"]
    save_checkpoint(tmp_path / "ck", model)
    torch.testing.assert_close(load_checkpoint(tmp_path / "ck")[0](x), model(x))
    q = quantize_dynamic_int8(model, dynamic_int8_transform(model))
    assert q(x).shape == (2, 10)


@needs_torchvision
def test_torchvision_refuses_other_channel_counts():
    with pytest.raises(UserError, match="takes 3 input channels"):
        create_model("torchvision:resnet18", num_classes=10, in_channels=1)
    with pytest.raises(UserError, match="torchvision:no_such_net"):
        create_model("torchvision:no_such_net", num_classes=10, in_channels=3)


# ---------------------------------------------------------------------------------------- without the packages


class _TimmLike(torch.nn.Module):
    """A module laid out as timm lays out a model: ``feature_info`` names its stages."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, stride=2, padding=1),
                                          torch.nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.head = torch.nn.Linear(8, 10)
        self.feature_info = [{"num_chs": 4, "reduction": 1, "module": "stem"},
                             {"num_chs": 8, "reduction": 4, "module": "blocks.1"},
                             {"num_chs": 9, "reduction": 8, "module": "not.there"}]

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_feature_info_gives_the_feature_points():
    model = _TimmLike()
    assert feature_points(model) == {"stem": "stem", "blocks.1": "blocks.1"}  # a missing module is left out
    with capture_features(model) as feats:
        model(torch.zeros(2, *SHAPE))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"stem": (2, 4, 32, 32), "blocks.1": (2, 8, 8, 8)}


def test_a_tuple_output_gives_its_first_item():
    gru = torch.nn.Sequential()
    gru.add_module("rnn", torch.nn.GRU(3, 5, batch_first=True))
    with capture_features(gru, ["rnn"]) as feats:
        out, _ = gru.rnn(torch.zeros(2, 7, 3))
    torch.testing.assert_close(feats["rnn"], out)
