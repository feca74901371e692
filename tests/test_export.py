"""ONNX export: parity in ONNX Runtime for pruned and quantised checkpoints, int8, errors."""
import json
import sys

import onnx
import pytest
import torch

from compresslab.api import prune_checkpoint, quantize_checkpoint, train_model
from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.export import export_onnx


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    runs = tmp_path_factory.mktemp("xruns")
    parent = train_model("cnn1d", "mnist1d", options={"width": 16, "hidden": 32}, runs=runs,
                         overrides={"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 4})["checkpoint"]
    pruned = prune_checkpoint(parent, "mnist1d", amount=0.7, runs=runs)["checkpoint"]
    fake = quantize_checkpoint(parent, "mnist1d", scheme="fake", bits=4, act_bits=8, per_channel=True,
                               runs=runs)["checkpoint"]
    static = quantize_checkpoint(parent, "mnist1d", scheme="ptq-static", runs=runs)["checkpoint"]
    return {"parent": parent, "pruned": pruned, "fake": fake, "static": static}


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("which", ["pruned", "fake"])
def test_parity_of_pruned_and_quantised_models(capsys, models, tmp_path, which):
    out = tmp_path / f"{which}.onnx"
    code, stdout, err = run(capsys, "export", models[which], "--onnx", out, "--data", "mnist1d", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    onnx.checker.check_model(str(out))
    fp32 = r["parity"]["fp32"]
    assert fp32["top1_agreement"] >= (1.0 if which == "pruned" else 0.98)
    # fp32 graphs match to float precision; round() ties can flip a fake-quant code at a few elements
    assert fp32["max_abs_diff"] < (1e-4 if which == "pruned" else 0.1)
    assert fp32["accuracy"] == pytest.approx(r["torch_accuracy"], abs=0.02)
    assert r["parity"]["int8"]["top1_agreement"] > 0.8
    assert r["latency_ms"]["fp32"]["batch256"] > 0 and r["int8_speedup"]["batch256"] > 0
    if which == "fake":  # the simulated quantisation is in the graph
        ops = {n.op_type for n in onnx.load(str(out)).graph.node}
        assert {"Round", "Clip"} <= ops
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary files left


def test_int8_export_of_a_static_int8_checkpoint(capsys, models, tmp_path):
    out = tmp_path / "int8.onnx"
    code, stdout, err = run(capsys, "export", models["static"], "--onnx", out, "--int8", "--data", "mnist1d",
                            "--no-latency", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["format"] == "int8" and r["int8_scheme"] == "static" and "latency_ms" not in r
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert r["bytes"]["int8"] < 0.75 * r["bytes"]["fp32"]  # graph overhead dominates a model this small
    assert r["parity"]["int8"]["top1_agreement"] > 0.85  # two int8 implementations of one float model


def test_unexportable_model_gets_a_clear_error(tmp_path):
    class Eigen(torch.nn.Module):  # eigvalsh has no ONNX operator
        def forward(self, x):
            return torch.linalg.eigvalsh(x @ x.transpose(-1, -2))

    with pytest.raises(UserError, match="cannot export Eigen to ONNX.*eigvalsh"):
        export_onnx(Eigen(), (4, 4), tmp_path / "m.onnx")


@pytest.mark.parametrize("make_args,needle", [
    (lambda m, t: [m["parent"], "--onnx", t / "x.txt"], "must end in .onnx"),
    (lambda m, t: [m["parent"], "--onnx", t / "nodir" / "x.onnx"], "does not exist"),
    (lambda m, t: [t / "missing", "--onnx", t / "x.onnx"], "not found"),
    (lambda m, t: [m["parent"], "--onnx", t / "x.onnx", "--int8-scheme", "int4"], "use one of"),
])
def test_export_bad_input(capsys, models, tmp_path, make_args, needle):
    code, _, err = run(capsys, "export", *make_args(models, tmp_path), "--data", "mnist1d")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.onnx"))


def test_missing_onnxruntime_is_a_user_error(capsys, models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    code, _, err = run(capsys, "export", models["parent"], "--onnx", tmp_path / "m.onnx", "--data", "mnist1d")
    assert code == 2 and "pip install onnx onnxruntime" in err
    assert not (tmp_path / "m.onnx").exists()
