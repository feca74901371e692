"""Pruning through the CLI and the prune-sweep study (tiny)."""
import json

import pytest

from compresslab.cli import main
from compresslab.study import load_spec, run_kind

PRUNABILITY_KEYS = {"p_star", "cos_at_p_star", "kurtosis_of_kurtoses", "safe_amount", "curve", "per_tensor_kurtosis"}


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def parent(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--model", "cnn1d", "--data", "mnist1d", "--epochs", 2, "--runs",
                         tmp_path / "runs", "-o", "width=8", "-o", "depth=2", "-o", "hidden=16", "--quiet", "--json")
    assert code == 0, err
    return json.loads(out)["checkpoint"]


def test_prunability_is_data_free_and_has_stable_keys(capsys, parent, tmp_path):
    png = tmp_path / "curve.png"
    code, out, err = run(capsys, "prunability", parent, "--json", "--plot", png)
    assert code == 0, err
    r = json.loads(out)
    assert PRUNABILITY_KEYS <= r.keys()
    assert 0 < r["safe_amount"] <= r["p_star"] < 1 and len(r["curve"]) == 101
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prune_amount_and_auto(capsys, parent, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = run(capsys, "prune", parent, "--amount", 0.6, "--data", "mnist1d", "--runs", runs, "--quiet",
                         "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert 0 < r["param_cosine"]["after_pruning"] < 1
    code, out, _ = run(capsys, "info", r["checkpoint"], "--json")
    info = json.loads(out)
    assert info["nonzero_params"] < 0.45 * info["params"]  # norm params are pruned too; biases count

    code, out, err = run(capsys, "prune", parent, "--auto", "safe", "--data", "mnist1d", "--runs", runs, "--quiet",
                         "--json")
    assert code == 0, err
    auto = json.loads(out)
    code, out, _ = run(capsys, "prunability", parent, "--json")
    assert auto["amount"] == pytest.approx(json.loads(out)["safe_amount"])
    assert auto["amount_rule"]["rule"] == "safe"


@pytest.mark.parametrize("args, needle", [
    (["--amount", 1.5], "(0, 1)"),
    ([], "exactly one"),
    (["--amount", 0.5, "--auto", "safe"], "exactly one"),
    (["--auto", "max"], "safe or p_star"),
    (["--amount", 0.5, "--method", "biggest"], "global-l1"),
])
def test_prune_bad_input(capsys, parent, tmp_path, args, needle):
    code, _, err = run(capsys, "prune", parent, "--data", "mnist1d", "--runs", tmp_path / "r2", *args)
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "r2").exists() or not any(p.name.startswith("prune-") for p in (tmp_path / "r2").iterdir())


def test_prune_sweep_study(tmp_path):
    from conftest import TINY_STUDY

    spec = tmp_path / "sweep.yaml"
    children = ("children:\n  - {name: p30, method: prune, amount: 0.3}\n  - {name: p80, method: prune, amount: 0.8}\n"
                "  - {name: star, method: prune, amount: p_star}\n  - {name: safe, method: prune, amount: safe}\n"
                "  - {name: rand80, method: prune, amount: 0.8, criterion: random}\n")
    text = TINY_STUDY.format(epochs=2)
    spec.write_text(text[:text.index("children:")] + children + text[text.index("controls:"):])
    results, out = run_kind(load_spec(spec), tmp_path / "runs")
    by = {m["name"]: m for m in results["models"]}
    assert by["p80"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert by["star"]["amount_rule"]["p_star"] == pytest.approx(by["star"]["sparsity"], abs=1e-3)
    assert by["safe"]["sparsity"] <= by["star"]["sparsity"] + 1e-9
    # L1 keeps more of the parameter vector than random pruning at the same sparsity
    assert by["p80"]["param_cosine"] > by["rand80"]["param_cosine"]
    html = (out / "report.html").read_text()
    assert "Pruning sweep" in html and "safe amount" in html


def test_channel_pruning_saves_a_smaller_model_that_reloads(capsys, parent, tmp_path):
    import torch

    from compresslab.runs.checkpoint import load_checkpoint, read_model_json

    code, out, err = run(capsys, "prune", parent, "--method", "channel", "--amount", 0.5, "--data", "mnist1d",
                         "--runs", tmp_path / "runs", "--quiet", "--json")
    assert code == 0, err
    r = json.loads(out)
    s = r["structured"]
    assert s["params_after"] < 0.5 * s["params_before"] and s["macs_after"] < s["macs_before"]
    assert s["latency_ms"]["after"]["batch256"] > 0 and s["speedup"]["batch1"] > 0
    assert read_model_json(r["checkpoint"])["structure"]  # the changed widths are recorded
    code, out, _ = run(capsys, "info", r["checkpoint"], "--json")
    assert json.loads(out)["params"] == s["params_after"]
    a, _ = load_checkpoint(r["checkpoint"])
    b, _ = load_checkpoint(r["checkpoint"])
    x = torch.randn(8, 1, 40)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and a(x).shape == (8, 10)
    code, _, err = run(capsys, "prune", parent, "--method", "channel", "--auto", "safe", "--data", "mnist1d",
                       "--runs", tmp_path / "runs")
    assert code == 2 and "--amount" in err


def test_lottery_command(capsys, tmp_path):
    out = tmp_path / "lt"
    code, stdout, err = run(capsys, "lottery", "--model", "mlp", "-o", "widths=[16]", "--data", "digits",
                            "--epochs", 2, "--lr", 0.01, "--rounds", 1, "--rate", 0.5, "--out", out, "--quiet",
                            "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert [x["round"] for x in r["records"]] == [0, 1]
    assert r["records"][1]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert isinstance(r["records"][1]["barrier"], float) and (out / "lottery.png").is_file()
    code, _, err = run(capsys, "lottery", "--model", "mlp", "--data", "digits", "--rounds", 0, "--out", out)
    assert code == 2 and "rounds" in err and err.count("\n") == 1


def test_prune_records_per_tensor_sparsity(capsys, parent, tmp_path):
    code, out, err = run(capsys, "prune", parent, "--amount", 0.5, "--method", "layer-l1", "--data", "mnist1d",
                         "--runs", tmp_path / "runs", "--quiet", "--json")
    assert code == 0, err
    metrics = json.loads((tmp_path / "runs" / json.loads(out)["checkpoint"].rsplit("/", 1)[1] / "metrics.json")
                         .read_text())
    per = metrics["sparsity"]["per_tensor"]
    assert per and all(abs(v - 0.5) < 0.1 for k, v in per.items() if k.endswith("weight"))
    assert metrics["sparsity"]["global"] == pytest.approx(0.5, abs=0.01)
