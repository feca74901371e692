"""Checkpoints: round trips, transforms, and refusing bad or unsafe files."""
import os

import pytest
import torch

from compresslab.compress.quantize import DYNAMIC_INT8, quantize_dynamic_int8
from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.runs.checkpoint import load_checkpoint, load_foreign_state_dict, save_checkpoint
from compresslab.runs.store import read_json, write_json


def _model():
    torch.manual_seed(0)
    return create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=8, depth=2, hidden=16)


def test_round_trip_gives_identical_outputs(tmp_path):
    m = _model().eval()
    save_checkpoint(tmp_path, m)
    loaded, cfg = load_checkpoint(tmp_path)
    assert cfg["model"]["name"] == "cnn1d" and cfg["model"]["options"]["width"] == 8
    x = torch.randn(16, 1, 40)
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))


def test_quantize_transform_rebuilds_the_same_int8_model(tmp_path):
    m = _model().eval()
    save_checkpoint(tmp_path, m, transforms=[DYNAMIC_INT8])
    loaded, _ = load_checkpoint(tmp_path)
    float_model, _ = load_checkpoint(tmp_path, apply_transforms=False)
    x = torch.randn(16, 1, 40)
    with torch.no_grad():
        assert torch.equal(quantize_dynamic_int8(m)(x), loaded(x))
        assert not torch.equal(float_model(x), loaded(x))


def test_weights_not_matching_model_json(tmp_path):
    save_checkpoint(tmp_path, _model())
    cfg = read_json(tmp_path / "model.json")
    cfg["model"]["options"]["width"] = 16
    write_json(tmp_path / "model.json", cfg)
    with pytest.raises(UserError, match="does not match .*model.json: shape mismatch"):
        load_checkpoint(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path):
    save_checkpoint(tmp_path, _model())
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(UserError, match="model.safetensors"):
        load_checkpoint(tmp_path)


def test_missing_checkpoint_dir(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope")


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_foreign_pt_loads_plain_state_dicts_and_refuses_code(tmp_path):
    sd = _model().state_dict()
    torch.save(sd, tmp_path / "ok.pt")
    loaded = load_foreign_state_dict(tmp_path / "ok.pt")
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())

    marker = tmp_path / "pwned"
    torch.save({"weight": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to load"):
        load_foreign_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
