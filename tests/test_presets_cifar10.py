"""The paper-scale CIFAR-10 presets, smoke-run on a fabricated CIFAR-10 directory on the CPU:
1 epoch on a 16-image subset (`--epochs 1 --subset 16`), no latency. Marked slow (about 2
minutes together on 2 cores); CI runs them."""
import json

import pytest
from test_data import make_cifar10_dir

from compresslab.cli import main
from compresslab.study import load_spec, run_kind
from compresslab.study.spec import adjust

PRESETS = ["moonshine-cifar10", "kd-functional-cifar10", "compression-functional-cifar10", "prune-sweep-cifar10",
           "blockswap-cifar10"]
#: What a CPU smoke run trims beyond --epochs 1 --subset 16: a third replicate adds a minute and
#: no coverage, and 1,000 BlockSwap candidates per budget take 18 minutes on 2 cores.
TRIM = {"compression-functional-cifar10": {"seeds": [0, 1]}, "blockswap-cifar10": {"samples": 3}}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_cifar10_dir(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py", per_batch=8, n_test=16)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_smoke_run(preset, cifar, tmp_path, capsys):
    if preset in TRIM:
        spec = adjust(load_spec(preset=preset), data=f"cifar10:{cifar}", epochs=1, subset=16, latency=False)
        r, _ = run_kind(spec.model_copy(update=TRIM[preset]), tmp_path / "runs", device="cpu")
    else:
        code = main(["study", "--preset", preset, "--data", f"cifar10:{cifar}", "--epochs", "1", "--subset", "16",
                     "--no-latency", "--device", "cpu", "--runs", str(tmp_path / "runs"), "--quiet", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        r = json.loads(out)
    assert r["data"]["name"] == f"cifar10:{cifar}@16" and r["data"]["input_shape"] == [3, 32, 32]
    assert r["data"]["sizes"]["test"] == 16 and "subset: 16 of 40" in r["data"]["notes"][0]
    assert r["spec"]["name"] == preset and not r["failed"] and r["steps"]["ran"]


def test_presets_keep_the_paper_recipe_until_shrunk():
    spec = load_spec(preset="moonshine-cifar10")
    assert spec.teacher.name == "wrn-40-2" and spec.recipe.epochs == 200 and spec.recipe.nesterov
    assert (spec.recipe.lr, spec.recipe.weight_decay, spec.recipe.batch_size) == (0.1, 0.0005, 128)
    small = adjust(spec, data="cifar10:/d", epochs=1, subset=64, latency=False)
    assert small.recipe.epochs == 1 and small.data == "cifar10:/d@64" and small.latency is False
    assert spec.recipe.epochs == 200  # the preset itself is untouched
    cf = adjust(load_spec(preset="compression-functional-cifar10"), epochs=3)
    assert {c.name: getattr(c, "finetune_epochs", None) or getattr(c, "epochs", None) for c in cf.children
            if c.method != "distill"}["prune-50"] == 3
