"""hls4ml export: C-simulation parity within a bound derived from the fixed-point types,
the bit-width -> ap_fixed rule, and one-line errors that leave nothing behind."""
import contextlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.export_hls import GUARD_BITS, fixed_type, parse_precision

DATA = "digits"


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    from compresslab.api import train_model

    runs = tmp_path_factory.mktemp("hlsruns")
    return runs, train_model("mlp", DATA, options={"widths": [32]}, runs=runs, overrides={"epochs": 3})["checkpoint"]


def export(checkpoint, out, **kw):
    pytest.importorskip("hls4ml")
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH")
    from compresslab.export_hls import export_hls

    return export_hls(checkpoint, out, DATA, parity_samples=200, **kw)


@pytest.fixture(scope="module")
def float_export(parent, tmp_path_factory):
    """Through the command line, --json."""
    pytest.importorskip("hls4ml")
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH")
    out, buf = tmp_path_factory.mktemp("hf") / "prj", io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["export", str(parent[1]), "--hls4ml", str(out), "--data", DATA, "--parity-samples", "200", "--json"])
    assert code == 0
    return parent[1], json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def fake6_export(parent, tmp_path_factory):
    from compresslab.api import quantize_checkpoint

    runs, ckpt = parent
    child = quantize_checkpoint(ckpt, DATA, scheme="fake", bits=6, per_channel=True, runs=runs)["checkpoint"]
    return child, export(child, tmp_path_factory.mktemp("hq") / "prj")


def step(hls_type: str) -> float:
    """The resolution 2^-(W-I) of an hls4ml type string such as ``fixed<16,6,TRN,WRAP,0>``."""
    w, i = map(int, re.search(r"fixed<(\d+),(-?\d+)", hls_type).groups())
    return 2.0 ** -(w - i)


def error_bound(model, x, layers) -> torch.Tensor:
    """Per-output bound on |C simulation - PyTorch| for flatten -> (Linear, ReLU)* -> Linear,
    from hls4ml's arithmetic: the input, weights, biases, every product (accum_t) and every
    ReLU output (result_t) are truncated or rounded to their types, each by less than one step.
    A Linear with input error e (|x~ - x| <= e) and weight error dw gives
    |x~ w~ - x w| <= |w| e + (|x| + e) dw per product, plus one accum step per product and one
    bias step. No sum may overflow its type (checked on the float activations)."""
    types = {layer["name"]: layer for layer in layers}
    relu = max(step(layer["result"]) for layer in layers if layer["class"] == "Activation")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    h = x.flatten(1)
    e = torch.full_like(h, step(next(t["result"] for t in layers if t["class"] == "Input")))
    for k, (name, m) in enumerate(linears):
        t = types[name.replace(".", "_")]
        dw, dacc = step(t["weight"]), step(t["accum"])
        w = m.weight.detach().abs()
        e = e @ w.T + (h.abs() + e) @ torch.full_like(w.T, dw) + (m.in_features + 1) * dacc + step(t["bias"])
        h = m(h)
        assert h.abs().max() < 2 ** (int(re.search(r",(-?\d+)", t["accum"])[1]) - 1)  # the sum fits accum_t
        if k < len(linears) - 1:
            h, e = torch.relu(h), e + relu  # ReLU is 1-Lipschitz; its output is cast to result_t
    return e


def reference(checkpoint, n):
    from compresslab.runs.checkpoint import load_checkpoint
    from compresslab.steps import dataset

    x, _ = dataset(DATA, 0.1, 0).split("test")
    model = load_checkpoint(checkpoint)[0].eval()
    return model, x[:n]


@pytest.mark.parametrize("which", ["float", "fake6"])
def test_c_simulation_is_within_the_fixed_point_bound(request, which):
    checkpoint, r = request.getfixturevalue(f"{which}_export")
    model, x = reference(checkpoint, r["examples"])
    with torch.no_grad():
        bound = error_bound(model, x, r["layers"])
    p = r["parity"]
    assert 0 < p["max_abs_diff"] <= float(bound.max())
    assert p["top1_agreement"] >= 0.97
    assert p["accuracy"] == pytest.approx(r["torch_accuracy"], abs=0.03)


def test_float_checkpoint_uses_the_precision_everywhere(float_export):
    _, r = float_export
    assert r["precision"] == "ap_fixed<16,6>" and r["quantized_layers"] == {}
    dense = [layer for layer in r["layers"] if layer["class"] == "Dense"]
    assert len(dense) == 2 and all(layer["weight"].startswith("fixed<16,6,") for layer in dense)
    assert r["estimates"] is None and "synthesis" in r["estimates_note"]


def test_fake_quant_layers_get_types_from_their_grid(fake6_export):
    checkpoint, r = fake6_export
    model, _ = reference(checkpoint, 1)
    assert set(r["quantized_layers"]) == {"hidden.0.0", "fc"}
    for name, t in r["quantized_layers"].items():
        w = model.get_submodule(name).weight.detach()  # the grid values
        width, integer = map(int, re.search(r"<(\d+),(-?\d+)", t["weight"]).groups())
        frac = width - integer
        assert w.abs().max() < 2 ** (integer - 1)  # the largest weight fits
        assert 2.0 ** -frac <= t["step"] / 2**GUARD_BITS  # the grid step is resolved
        assert width <= 6 + 2 + GUARD_BITS  # about b + 1 + guard bits, far below 16
        layer = next(layer for layer in r["layers"] if layer["name"] == name.replace(".", "_"))
        assert layer["weight"].startswith(f"fixed<{width},{integer},RND_CONV,SAT")


@pytest.mark.parametrize("max_abs, step, signed, expected", [
    (0.7, 0.1, True, "ap_fixed<7,1,AP_RND_CONV,AP_SAT>"),   # 4-bit grid: I = floor(log2 .7)+2 = 1, F = ceil(log2 10)+2 = 6
    (3.0, 3.0 / 127, True, "ap_fixed<11,3,AP_RND_CONV,AP_SAT>"),  # 8-bit: I = 1+2, F = ceil(5.40)+2 = 8
    (0.125, 0.125 / 31, True, "ap_fixed<9,-1,AP_RND_CONV,AP_SAT>"),  # 6-bit, small: I = -3+2, F = ceil(7.95)+2 = 10
    (6.0, 6.0 / 255, False, "ap_ufixed<11,3,AP_RND_CONV,AP_SAT>"),  # 8-bit ReLU input: I = 2+1, F = ceil(5.41)+2 = 8
])
def test_fixed_type_by_hand(max_abs, step, signed, expected):
    assert fixed_type(max_abs, step, signed=signed) == expected


@pytest.mark.parametrize("bits", [2, 4, 6, 8, 12])
def test_fixed_type_holds_every_grid_point(bits):
    s = 0.37 / (2 ** (bits - 1) - 1)
    t = fixed_type(0.37, s)
    width, integer = map(int, re.search(r"<(\d+),(-?\d+)", t).groups())
    lo, hi, res = -(2.0 ** (integer - 1)), 2.0 ** (integer - 1) - 2.0 ** -(width - integer), 2.0 ** -(width - integer)
    grid = torch.arange(-(2 ** (bits - 1) - 1), 2 ** (bits - 1), dtype=torch.float64) * s
    fixed = torch.round(grid / res) * res
    assert lo <= grid.min() and grid.max() <= hi
    assert (fixed - grid).abs().max() <= res / 2 <= s / 2 ** (GUARD_BITS + 1)
    assert fixed.unique().numel() == grid.numel()  # distinct grid points stay distinct
    assert width <= bits + 2 + GUARD_BITS and math.isfinite(width)


@pytest.mark.parametrize("text", ["ap_fixed<16>", "fixed16", "ap_fixed<0,0>", "ap_fixed<16,6,AP_BOGUS>"])
def test_bad_precision_is_one_line_and_writes_nothing(capsys, tmp_path, text):
    out = tmp_path / "prj"
    code, _, err = run(capsys, "export", tmp_path / "nowhere", "--hls4ml", out, "--precision", text, "--data", DATA)
    assert code == 2 and err.count("\n") == 1 and "--precision" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(UserError):
        parse_precision(text)


def test_precision_strings_that_parse():
    assert parse_precision("ap_fixed<16,6>") == "ap_fixed<16,6>"
    assert parse_precision(" ap_ufixed< 8 , 0 , AP_RND , AP_SAT >") == "ap_ufixed<8,0,AP_RND,AP_SAT>"


def test_exactly_one_of_onnx_and_hls4ml(capsys, tmp_path):
    for extra in ([], ["--onnx", tmp_path / "m.onnx", "--hls4ml", tmp_path / "prj"]):
        code, _, err = run(capsys, "export", tmp_path, "--data", DATA, *extra)
        assert code == 2 and "exactly one of --onnx" in err
    assert list(tmp_path.iterdir()) == []


def test_unsupported_layer_is_named_and_nothing_is_written(capsys, tmp_path):
    pytest.importorskip("hls4ml")
    from compresslab.api import train_model

    gru = train_model("gru", "mnist1d", options={"hidden": 8}, runs=tmp_path / "runs", overrides={"epochs": 1})["checkpoint"]
    out = tmp_path / "prj"
    code, _, err = run(capsys, "export", gru, "--hls4ml", out, "--data", "mnist1d", "--parity-samples", "10")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "cannot convert layer layers.0 (GRULayer)" in err
    assert not out.exists()


def test_existing_directory_is_refused(capsys, float_export, tmp_path):
    checkpoint, _ = float_export
    code, _, err = run(capsys, "export", checkpoint, "--hls4ml", tmp_path, "--data", DATA)
    assert code == 2 and "already exists" in err


def test_project_files(float_export):
    _, r = float_export
    prj = Path(r["hls4ml"])
    for f in ("build_prj.tcl", "hls4ml_config.yml", "firmware/compresslab.cpp", "firmware/parameters.h"):
        assert (prj / f).is_file(), f
    assert r["reuse_factor"] == 1 and r["io_type"] == "io_parallel" and r["compile_seconds"] > 0


def test_parity_on_regression_reports_centre_errors_not_argmax():
    from compresslab.export_hls import _parity

    y = np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    ref = np.array([[0.0, 0.3], [1.0, 0.0]], dtype=np.float32)
    got = np.array([[0.4, 0.3], [1.0, 0.0]], dtype=np.float32)
    r = _parity(ref, got, y, "regression")
    assert r["torch_centre_error_px"] == pytest.approx(0.15)
    assert r["parity"]["centre_distance_px"] == pytest.approx(0.2) and r["parity"]["max_abs_diff"] == pytest.approx(0.4)
    assert r["parity"]["centre_error_px"] == pytest.approx(0.25)  # |(0.4, 0.3)| = 0.5, then 0
    c = _parity(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)[::-1], np.array([0, 1]), "classification")
    assert c["parity"]["top1_agreement"] == 0.0 and c["torch_accuracy"] == 1.0 and c["parity"]["accuracy"] == 0.0
