"""Real int8 without torch.ao: torch.ao behind one adapter (the only file in src/ that names
it), ONNX Runtime as the backend that needs no torch.ao, and what happens when torch has
dropped it."""
import ast
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compresslab import ort, torch_ao
from compresslab.api import quantize_checkpoint, train_model
from compresslab.cli import main
from compresslab.compress import apply_transform
from compresslab.compress import quantize as q
from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.runs.checkpoint import load_checkpoint, read_model_json
from compresslab.train import evaluate_logits

SRC = Path(__file__).parent.parent / "src" / "compresslab"


def names_torch_ao(path: Path) -> list[int]:
    """Lines where the code (not its docstrings or comments) reaches torch.ao: an import,
    an attribute chain ``torch.ao...``, or a string naming a ``torch.ao.`` module."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hits += [node.lineno for a in node.names if a.name.split(".")[:2] == ["torch", "ao"]]
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")
            if mod[:2] == ["torch", "ao"] or (mod == ["torch"] and any(a.name == "ao" for a in node.names)):
                hits.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "ao" and ast.unparse(node.value) == "torch":
            hits.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and "torch.ao." in node.value and " " not in node.value.strip():
            hits.append(node.lineno)
    return hits


def test_only_the_adapter_reaches_torch_ao():
    found = {str(p.relative_to(SRC.parent)): names_torch_ao(p) for p in sorted(SRC.rglob("*.py"))}
    assert {p: lines for p, lines in found.items() if lines}.keys() == {"compresslab/torch_ao.py"}


def test_the_check_sees_every_way_in(tmp_path):
    cases = {"import torch.ao.quantization\n": [1], "from torch.ao.nn import quantized\n": [1],
             "from torch import ao\n": [1], "import torch\nx = torch.ao.quantization\n": [2],
             "import importlib\nimportlib.import_module('torch.ao.quantization')\n": [2],
             '"""torch.ao is deprecated; see torch.ao.quantization."""\n# torch.ao\n': [],
             "msg = 'runs on torch.ao.quantization, which is gone'\n": []}
    for i, (code, lines) in enumerate(cases.items()):
        (tmp_path / f"m{i}.py").write_text(code)
        assert names_torch_ao(tmp_path / f"m{i}.py") == lines, code


def mlp():
    return create_model("mlp", num_classes=10, in_channels=1, input_shape=(1, 40)).eval()


def cnn():
    return create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=16, hidden=32).eval()


@pytest.mark.parametrize("make", [mlp, cnn])
@pytest.mark.parametrize("backend", [q.ORT, q.TORCH_AO])
def test_each_backend_quantises_and_rebuilds_exactly(make, backend):
    torch.manual_seed(0)
    model = make()
    batches = [torch.randn(64, 1, 40) for _ in range(2)]
    x = torch.randn(256, 1, 40)
    ref = evaluate_logits(model, x)
    dynamic = q.dynamic_int8_transform(model, backend)
    static = q.calibrate_static_int8(model, batches, backend)
    assert dynamic.get("backend", q.TORCH_AO) == backend and (static["backend"] == q.ORT) == (backend == q.ORT)
    for t in (dynamic, static):
        t = json.loads(json.dumps(t))  # as model.json stores it
        int8 = apply_transform(model, t)
        out = evaluate_logits(int8, x)
        assert not torch.equal(out, ref)  # really quantised
        assert (out - ref).abs().max() < 0.15 * ref.abs().max()
        assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.8
        assert torch.equal(evaluate_logits(apply_transform(model, t), x), out)  # rebuilt without data, exactly
        if backend == q.ORT:
            assert isinstance(int8, ort.OrtModule) and int8(x[:0]).shape == (0, 10)


def test_ort_ranges_rebuild_what_ort_calibration_builds():
    """The stored per-tensor ranges give the graph ONNX Runtime's own calibrated quantiser gives."""
    torch.manual_seed(1)
    model = cnn()
    calib = [np.random.default_rng(i).standard_normal((64, 1, 40)).astype(np.float32) for i in range(3)]
    x = np.random.default_rng(9).standard_normal((200, 1, 40)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, a, b = (Path(tmp) / n for n in ("fp32.onnx", "a.onnx", "b.onnx"))
        ort.export_onnx(model, (1, 40), fp32)
        ort.quantize_onnx(fp32, a, "static", calib)
        ort.quantize_onnx(fp32, b, "static", ranges=ort.calibrate_onnx(fp32, calib))
        ya, yb = (ort.session(p).run(None, {"input": x})[0] for p in (a, b))
        assert np.array_equal(ya, yb)


def test_ort_dynamic_quantises_only_linear_layers():
    import onnx

    graph = ort.int8_graph(cnn(), (1, 40), "dynamic", op_types=ort.LINEAR_OPS)
    ops = {n.op_type for n in onnx.load_from_string(graph).graph.node}
    assert "MatMulInteger" in ops and "Conv" in ops and "ConvInteger" not in ops


def test_auto_picks_torch_ao_only_while_torch_has_it(monkeypatch):
    assert q.int8_backend() == (q.TORCH_AO if torch_ao.available() else q.ORT)
    assert q.int8_backend(q.ORT) == q.ORT
    monkeypatch.setattr(torch_ao, "available", lambda: False)
    assert q.int8_backend() == q.ORT
    assert q.dynamic_int8_transform(cnn())["backend"] == q.ORT
    with pytest.raises(UserError, match="use one of"):
        q.int8_backend("tflite")


def test_a_bare_module_without_input_shape_is_a_user_error():
    with pytest.raises(UserError, match="input shape"):
        q.dynamic_int8_transform(nn.Sequential(nn.Flatten(), nn.Linear(40, 10)), q.ORT)


# -- the command line, with and without torch.ao -----------------------------------------------


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    runs = tmp_path_factory.mktemp("int8runs")
    r = train_model("cnn1d", "mnist1d", options={"width": 16, "hidden": 32}, runs=runs,
                    overrides={"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 3, "batch_size": 128})
    return r["checkpoint"], runs


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("scheme", ["ptq-dynamic", "ptq-static"])
def test_without_torch_ao_quantize_still_makes_int8(capsys, monkeypatch, parent, tmp_path, scheme):
    from compresslab.steps import dataset

    ckpt, _ = parent
    runs = tmp_path / "runs"
    monkeypatch.setattr(torch_ao, "available", lambda: False)
    code, out, err = run(capsys, "quantize", ckpt, "--scheme", scheme, "--data", "mnist1d", "--runs", runs,
                         "--quiet", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["quantization"]["backend"] == q.ORT and not r["simulated"]
    assert r["vs_parent"]["agreement"] > 0.9 and r["cost"]["bops"] < r["parent_cost"]["bops"]
    model, cfg = load_checkpoint(r["checkpoint"])
    assert isinstance(model, ort.OrtModule) and cfg["transforms"][0]["backend"] == q.ORT
    x, _ = dataset("mnist1d", 0.1, 0).split("test")
    assert np.array_equal(evaluate_logits(model, x).numpy(), np.load(f"{r['checkpoint']}/logits_test.npy"))


@pytest.mark.skipif(not torch_ao.available(), reason="this torch has no torch.ao.quantization")
def test_a_torch_ao_checkpoint_without_torch_ao_is_a_one_line_error(capsys, monkeypatch, parent):
    ckpt, runs = parent
    child = quantize_checkpoint(ckpt, "mnist1d", scheme="ptq-static", runs=runs)["checkpoint"]
    assert read_model_json(child)["transforms"][0]["backend"] == "x86"  # a conv net: torch.ao while it exists
    monkeypatch.setattr(torch_ao, "available", lambda: False)
    code, out, err = run(capsys, "evaluate", child, "--data", "mnist1d")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "torch.ao.quantization" in err and "quantise its parent again" in err and "Traceback" not in err
    with pytest.raises(UserError, match="quantise its parent again"):
        apply_transform(cnn(), q.DYNAMIC_INT8)  # an old dynamic transform (no backend) as well


class Branchy(nn.Module):
    """A conv net (torch.ao first) whose data-dependent branch FX cannot trace; the ONNX
    tracer records the branch taken."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv1d(1, 8, 3), nn.Linear(8 * 38, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if h.sum() >= 0:  # always true after a ReLU
            h = h * 1.0
        return self.fc(h.flatten(1))


def test_backend_enters_the_step_spec_only_when_chosen():
    from compresslab.steps.specs import quantize_spec

    data = {"name": "mnist1d"}
    assert quantize_spec(data, "ptq-dynamic") == {"data": data, "scheme": "ptq-dynamic"}  # old hashes hold
    assert quantize_spec(data, "ptq-dynamic", backend=q.ORT)["backend"] == q.ORT
    assert quantize_spec(data, "ptq-static", backend=q.ORT)["backend"] == q.ORT
    assert "backend" not in quantize_spec(data, "ptq-static")
    with pytest.raises(UserError, match="only the real int8 schemes"):
        quantize_spec(data, "fake", bits=4, backend=q.ORT)
    with pytest.raises(UserError, match="use one of"):
        quantize_spec(data, "ptq-dynamic", backend="tflite")


def test_cli_backend_ort_runs_onnxruntime_while_torch_ao_exists(capsys, parent, tmp_path):
    ckpt, _ = parent
    code, out, err = run(capsys, "quantize", ckpt, "--scheme", "ptq-dynamic", "--backend", q.ORT, "--data", "mnist1d",
                         "--runs", tmp_path / "runs", "--quiet", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["quantization"]["backend"] == q.ORT and r["vs_parent"]["agreement"] > 0.9
    assert isinstance(load_checkpoint(r["checkpoint"])[0], ort.OrtModule)
    code, _, err = run(capsys, "quantize", ckpt, "--scheme", "fake", "--backend", q.ORT, "--data", "mnist1d",
                       "--runs", tmp_path / "runs")
    assert code == 2 and "only the real int8 schemes" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not torch_ao.available(), reason="this torch has no torch.ao.quantization")
def test_auto_falls_back_to_the_other_backend():
    torch.manual_seed(0)
    model, batches = Branchy().eval(), [torch.randn(256, 1, 40)]
    assert q.int8_backend() == q.TORCH_AO
    with pytest.raises(UserError, match="FX-traceable"):
        q.calibrate_static_int8(model, batches, q.TORCH_AO)
    t = q.calibrate_static_int8(model, batches)
    assert t["backend"] == q.ORT
    x = torch.randn(32, 1, 40)
    ref, out = evaluate_logits(model, x), evaluate_logits(q.apply_static_int8(model, t, x[:1]), x)
    assert not torch.equal(out, ref) and (out.argmax(1) == ref.argmax(1)).float().mean() > 0.8
    # neither backend takes transformer1d (FX: control flow; ONNX: export fails): the first error
    model = create_model("transformer1d", num_classes=10, in_channels=1, input_shape=(1, 40)).eval()
    with pytest.raises(UserError, match="FX-traceable"):
        q.calibrate_static_int8(model, batches)
