"""No loader executes code from data: YAML specs and recipes, npz datasets, checkpoints.

(Pickled `.pt` state dicts: tests/test_checkpoint.py; CIFAR batches through the restricted
unpickler: tests/test_data.py. Each crafts a payload whose unpickling would run os.system.)
"""
import os

import numpy as np
import pytest
import torch

from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.runs.checkpoint import load_checkpoint


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_yaml_python_tags_are_refused_in_specs_and_recipes(capsys, tmp_path):
    marker = tmp_path / "pwned"
    payload = f'!!python/object/apply:os.system ["touch {marker}"]'
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: {payload}\nparent: {{name: mlp}}\n")
    code, err = run(capsys, "study", spec, "--runs", tmp_path / "runs", "--quiet")
    assert code == 2 and "malformed YAML at line 1" in err
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"epochs: {payload}\n")
    code, err = run(capsys, "train", "--model", "mlp", "--data", "digits", "--recipe", recipe, "--runs",
                    tmp_path / "runs", "--quiet")
    assert code == 2 and "malformed YAML" in err
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_npz_with_pickled_objects_is_refused(capsys, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    obj = np.empty(1, dtype=object)
    obj[0] = Evil(marker)
    np.savez(path, x_train=obj, y_train=np.zeros(1, "int64"), x_test=obj, y_test=np.zeros(1, "int64"))
    code, err = run(capsys, "train", "--model", "mlp", "--data", f"npz:{path}", "--runs", tmp_path / "runs", "--quiet")
    assert code == 2 and str(path) in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_pickle_posing_as_model_safetensors_is_refused(tmp_path):
    from compresslab.models import create_model
    from compresslab.runs.checkpoint import save_checkpoint

    model = create_model("mlp", num_classes=10, in_channels=1, input_shape=(1, 8, 8), widths=[8])
    save_checkpoint(tmp_path / "ckpt", model)
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": Evil(marker)}, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(UserError, match="model.safetensors: unreadable safetensors file"):
        load_checkpoint(tmp_path / "ckpt")
    assert not marker.exists()
