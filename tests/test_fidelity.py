"""`compresslab fidelity` and export's fidelity block: every number against a direct computation."""
import json
import shlex
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from scipy.special import rel_entr
from sklearn.metrics import cohen_kappa_score, confusion_matrix, recall_score

from compresslab.cli import main
from compresslab.data import load_dataset
from compresslab.export import export_onnx
from compresslab.fidelity import disagreement_figure
from compresslab.measure.cka import cka_between
from compresslab.measure.fidelity import fidelity_report
from compresslab.measure.function import cohen_kappa
from compresslab.measure.stats import summarize
from compresslab.models import create_model
from compresslab.runs.checkpoint import load_checkpoint, save_checkpoint

TRAIN = ["train", "--model", "mlp", "--data", "digits", "--option", "widths=[32]", "--epochs", "3", "-q"]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, *args) -> dict:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A parent mlp on digits (8x8 images), a pruned and a ptq-dynamic child, the pruned child's ONNX file."""
    root = tmp_path_factory.mktemp("fid")
    runs = root / "runs"
    assert main([*TRAIN, "--runs", str(runs), "--json"]) == 0
    parent = next(runs.glob("train-*"))
    assert main(["prune", str(parent), "--amount", "0.6", "--data", "digits", "--runs", str(runs), "-q"]) == 0
    pruned = next(runs.glob("prune-*"))
    assert main(["quantize", str(parent), "--scheme", "ptq-dynamic", "--data", "digits", "--runs", str(runs), "-q",
                 "--json"]) == 0
    onnx = root / "child.onnx"
    assert main(["export", str(pruned), "--onnx", str(onnx), "--data", "digits", "--no-latency", "--json"]) == 0
    return {"runs": runs, "parent": parent, "pruned": pruned, "quantized": next(runs.glob("quantize-*")),
            "onnx": onnx, "root": root}


def torch_logits(checkpoint: Path, x: torch.Tensor) -> np.ndarray:
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return model.eval()(x).numpy().astype(np.float64)


def test_help_of_every_command_used(capsys):
    for command in ("fidelity", "train", "prune", "quantize", "export"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "Example" in out, command
    code, out, _ = run(capsys, "fidelity", "--help")
    for option in ("--data", "--split", "--out", "--grid", "--n-boot", "--confidence", "--json"):
        assert option in out


def test_metrics_equal_direct_computations(capsys, store, tmp_path):
    out = tmp_path / "fid"
    r = cli_json(capsys, "fidelity", store["parent"], store["pruned"], store["onnx"], "--data", "digits",
                 "--out", out, "--n-boot", "300")
    ds = load_dataset("digits", seed=0)
    x, y = ds.split("test")
    sess = onnxruntime.InferenceSession(str(store["onnx"]), providers=["CPUExecutionProvider"])
    direct = {"parent": torch_logits(store["parent"], x), "child": torch_logits(store["pruned"], x),
              "exported": sess.run(None, {"input": x.numpy()})[0].astype(np.float64)}
    y = y.numpy()
    assert r["names"] == ["parent", "child", "exported"] and r["examples"] == len(y)

    # the ONNX leg computes what the checkpoint computes
    assert np.abs(direct["exported"] - direct["child"]).max() < 1e-4

    for pair in r["pairs"]:
        a, b = direct[pair["a"]], direct[pair["b"]]
        m = pair["metrics"]
        pa, pb = torch.softmax(torch.as_tensor(a), 1).numpy(), torch.softmax(torch.as_tensor(b), 1).numpy()
        expect = {"agreement": np.mean(a.argmax(1) == b.argmax(1)),
                  "kappa": cohen_kappa_score(a.argmax(1), b.argmax(1)),
                  "js_divergence": np.mean(0.5 * (rel_entr(pa, (pa + pb) / 2) + rel_entr(pb, (pa + pb) / 2)).sum(1)),
                  "kl_ab": rel_entr(pa, pb).sum(1).mean(), "kl_ba": rel_entr(pb, pa).sum(1).mean(),
                  "activation_distance": np.linalg.norm(pa - pb, axis=1).mean(),
                  "output_cosine": np.mean((pa * pb).sum(1) / np.linalg.norm(pa, axis=1) / np.linalg.norm(pb, axis=1))}
        for key, value in expect.items():
            assert m[key]["value"] == pytest.approx(value, abs=1e-6), (pair["a"], pair["b"], key)
            assert m[key]["ci_low"] <= m[key]["value"] <= m[key]["ci_high"]
        assert pair["disagreeing"] == int((a.argmax(1) != b.argmax(1)).sum())
        if pair["disagreeing"]:  # the agreement CI has width when some examples differ
            assert m["agreement"]["ci_low"] < m["agreement"]["ci_high"]
    parent_child = r["pairs"][0]
    assert parent_child["metrics"]["agreement"]["value"] < 1  # a pruned child that differs somewhere
    assert [p["cka"] for p in r["pairs"][1:]] == [None, None]  # ONNX: no feature points
    cka = cka_between(load_checkpoint(store["parent"])[0], load_checkpoint(store["pruned"])[0], x)
    assert parent_child["cka"] == pytest.approx({k: v["cka"] for k, v in cka.items()}, abs=1e-6)
    assert set(parent_child["cka"]) == {"hidden1"}

    for name, logits in direct.items():
        pred = logits.argmax(1)
        got = r["models"][name]
        assert got["accuracy"]["value"] == pytest.approx(np.mean(pred == y))
        assert got["accuracy"]["ci_low"] <= got["accuracy"]["value"] <= got["accuracy"]["ci_high"]
        cm = confusion_matrix(y, pred, labels=range(10))
        assert [c["accuracy"] for c in got["per_class"]] == pytest.approx(recall_score(y, pred, average=None))
        assert [c["support"] for c in got["per_class"]] == cm.sum(1).tolist()
        assert [c["correct"] for c in got["per_class"]] == np.diag(cm).tolist()

    preds = np.stack([direct[n].argmax(1) for n in r["names"]])
    where = np.flatnonzero((preds != preds[0]).any(0))
    assert [d["index"] for d in r["disagreements"]] == where.tolist()
    assert [d["label"] for d in r["disagreements"]] == y[where].tolist()
    assert [[d["predictions"][n] for n in r["names"]] for d in r["disagreements"]] == preds[:, where].T.tolist()

    # --out: the same report, and the PNG grid of the disagreeing 8x8 images
    assert json.loads((out / "fidelity.json").read_text()) == r
    png = out / "fidelity-disagreements.png"
    assert sorted(p.name for p in out.iterdir()) == ["fidelity-disagreements.png", "fidelity.json"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_human_output_and_quantized_child(capsys, store):
    code, out, err = run(capsys, "fidelity", store["parent"], store["pruned"], "--data", "digits", "--show", "3")
    assert code == 0, err
    assert "parent vs child" in out and "accuracy % per class" in out and "CKA hidden1" in out
    assert "wrote" not in out  # no --out: nothing written
    r = cli_json(capsys, "fidelity", store["parent"], store["quantized"], "--data", "digits", "--n-boot", "100")
    assert r["models"]["child"]["accuracy"]["value"] == pytest.approx(
        json.loads((store["quantized"] / "metrics.json").read_text())["accuracy"]["test"], abs=1e-6)


def test_bootstrap_cis_are_the_stats_helpers(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 4))
    b = a + rng.normal(scale=1.5, size=a.shape)
    y = rng.integers(0, 4, 200)
    r = fidelity_report({"a": a, "b": b}, y, n_boot=500, seed=3)
    m = r["pairs"][0]["metrics"]
    same = (a.argmax(1) == b.argmax(1)).astype(float)
    s = summarize(same, n_boot=500, seed=3)
    assert (m["agreement"]["ci_low"], m["agreement"]["ci_high"]) == (s["ci_low"], s["ci_high"])
    # kappa: recomputed on the very example sets summarize resamples
    idx = np.random.default_rng(3).integers(0, 200, size=(500, 200))
    boot = [cohen_kappa(a[i], b[i]) for i in idx]
    assert (m["kappa"]["ci_low"], m["kappa"]["ci_high"]) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))


def test_one_d_signals_are_drawn_as_lines():
    x = np.random.default_rng(0).normal(size=(5, 1, 40)).astype(np.float32)
    report = {"names": ["parent", "child"],
              "disagreements": [{"index": i, "label": 0, "predictions": {"parent": 0, "child": 1}} for i in (1, 3)]}
    fig = disagreement_figure(x, report)
    assert [len(ax.lines) for ax in fig.axes[:2]] == [1, 1]
    assert disagreement_figure(np.zeros((5, 2, 3, 4, 5)), report) is None  # 3-D volumes: no grid


def test_retrain_band_appears_when_a_second_seed_is_trained(capsys, store):
    r = cli_json(capsys, "fidelity", store["parent"], store["pruned"], "--data", "digits", "--n-boot", "100")
    assert r["retrain_band"] is None and r["retrain_note"].startswith("no independent retrain in the store")
    command = r["retrain_command"]
    assert command in r["retrain_note"] and "--seed 1" in command
    args = shlex.split(command)
    assert args[:2] == ["compresslab", "train"]
    assert main([*args[1:], "-q"]) == 0  # the printed command makes the retrain
    retrain = [p for p in store["runs"].glob("train-*") if p != store["parent"]]
    assert len(retrain) == 1
    code, out, _ = run(capsys, "fidelity", store["parent"], store["pruned"], "--data", "digits", "--n-boot", "100")
    assert code == 0 and "independent retrains (1)" in out
    r = cli_json(capsys, "fidelity", store["parent"], store["pruned"], "--data", "digits", "--n-boot", "100")
    band = r["retrain_band"]
    ds = load_dataset("digits", seed=0)
    x = ds.split("test")[0]
    p, q = torch_logits(store["parent"], x), torch_logits(retrain[0], x)
    assert band["retrains"][0]["checkpoint"] == str(retrain[0])
    assert band["agreement"]["low"] == pytest.approx(np.mean(p.argmax(1) == q.argmax(1)))
    child = r["pairs"][0]["metrics"]["agreement"]
    want = ("within" if child["value"] >= band["agreement"]["low"] else
            "overlaps" if child["ci_high"] >= band["agreement"]["low"] else "outside")
    assert band["judged"]["child"]["status"] == want


@pytest.fixture
def bad(store, tmp_path):
    """Checkpoints and an ONNX file that do not fit digits or the parent."""
    signal = tmp_path / "signal"  # built for 1-D inputs of length 40
    save_checkpoint(signal, create_model("mlp", num_classes=10, in_channels=1, input_shape=(1, 40), widths=[8]))
    five = tmp_path / "five"  # 8x8 inputs, 5 classes
    save_checkpoint(five, create_model("mlp", num_classes=5, in_channels=1, input_shape=(1, 8, 8), widths=[8]))
    onnx = tmp_path / "signal.onnx"
    export_onnx(create_model("mlp", num_classes=10, in_channels=1, input_shape=(1, 40), widths=[8]), (1, 40), onnx)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    return {"signal": signal, "five": five, "onnx": onnx, "junk": junk}


@pytest.mark.parametrize("case, needle", [
    ("shape", "built for inputs [1, 40]"),
    ("classes", "5 classes"),
    ("onnx", "takes inputs of shape"),
    ("junk", "cannot load"),
    ("dataset", "nosuch"),
    ("missing", "not found"),
])
def test_bad_input_exits_2_and_writes_nothing(capsys, store, bad, tmp_path, case, needle):
    p, c, d = store["parent"], store["pruned"], "digits"
    args = {"shape": [p, bad["signal"]], "classes": [p, bad["five"]], "onnx": [p, c, bad["onnx"]],
            "junk": [p, c, bad["junk"]], "dataset": [p, c], "missing": [p, tmp_path / "nope"]}[case]
    if case == "dataset":
        d = "nosuch"
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "fidelity", *args, "--data", d, "--out", out)
    assert code == 2
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and needle in err
    assert not out.exists()


def test_export_appends_its_fidelity(capsys, store, tmp_path):
    r = cli_json(capsys, "export", store["quantized"], "--onnx", tmp_path / "q.onnx", "--data", "digits",
                 "--no-latency")
    assert set(r["parity"]) == {"fp32", "int8"}  # the existing keys are unchanged
    f = r["fidelity"]
    assert f["names"] == ["pytorch", "onnx-fp32", "onnx-int8"]
    pairs = {(p["a"], p["b"]): p for p in f["pairs"]}
    for k in ("fp32", "int8"):
        assert pairs[("pytorch", f"onnx-{k}")]["metrics"]["agreement"]["value"] == pytest.approx(
            r["parity"][k]["top1_agreement"])
        assert f["models"][f"onnx-{k}"]["accuracy"]["value"] == pytest.approx(r["parity"][k]["accuracy"])
    assert f["models"]["pytorch"]["accuracy"]["value"] == pytest.approx(r["torch_accuracy"])
    code, out, _ = run(capsys, "export", store["pruned"], "--onnx", tmp_path / "p.onnx", "--data", "digits",
                       "--no-latency")
    assert code == 0 and "pytorch vs onnx-fp32" in out
