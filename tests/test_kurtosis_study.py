"""Kurtosis study: tiny end-to-end run, reuse on re-run, spec validation."""
import json

import pytest

from compresslab.errors import UserError
from compresslab.study import parse_spec, run_kind
from compresslab.study.kurtosis import KurtosisSpec, expand_kurtosis, load_kurtosis_spec, measured_prunability, spearman

TINY = {
    "kind": "kurtosis", "name": "tiny-kurtosis", "data": "digits",
    "models": [{"name": "mlp", "options": {"widths": [16]}}, {"name": "mlp", "options": {"widths": [32]}}],
    "seeds": [0, 1],
    "recipe": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 2, "batch_size": 128},
    "sparsities": [0.3, 0.6, 0.9],
}


def test_tiny_study_runs_and_reuses(tmp_path):
    spec = parse_spec(TINY)
    results, out = run_kind(spec, tmp_path / "runs")
    assert {"study", "kind", "parents", "correlations", "tolerance", "note"} <= results.keys()
    assert results["kind"] == "kurtosis" and len(results["parents"]) == 4
    assert len(results["steps"]["ran"]) == 4 + 4 * 3 and not results["steps"]["reused"]
    for p in results["parents"]:
        assert p["measured_prunability"] in {0.0, 0.3, 0.6, 0.9}
        assert [s for s, _ in p["sweep"]] == [0.3, 0.6, 0.9]
        assert p["kurtosis_of_kurtoses"] is not None and 0 <= p["safe_amount"] <= p["p_star"] <= 1
    assert set(results["correlations"]) == {"kurtosis_of_kurtoses", "p_star", "safe_amount"}
    for c in results["correlations"].values():
        assert c["spearman"] is None or -1 <= c["spearman"] <= 1
    assert (out / "report.html").read_text().count("<svg") == 3  # three inline SVG panels
    assert json.loads((out / "results.json").read_text())["parents"] == results["parents"]

    again, out2 = run_kind(spec, tmp_path / "runs")
    assert out2 == out and not again["steps"]["ran"] and len(again["steps"]["reused"]) == 16
    assert again["parents"] == results["parents"]


def test_helpers():
    assert measured_prunability([[0.3, 0.9], [0.6, 0.895], [0.9, 0.5]], 0.9, 0.01) == 0.6
    assert measured_prunability([[0.3, 0.5]], 0.9, 0.01) == 0.0
    assert spearman([0.3, 0.3, 0.3], [1.0, 2.0, 3.0]) == {"spearman": None, "p_value": None}
    assert spearman([0.1, 0.2], [1.0, 2.0])["spearman"] is None
    assert spearman([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 4.0, 3.0])["spearman"] == pytest.approx(0.8)


@pytest.mark.parametrize("change", [{"sparsities": [0.5, 1.5]},
                                    {"models": [{"name": "mlp"}], "seeds": [0]},
                                    {"unknown": 1}])
def test_invalid_spec_is_user_error(change):
    with pytest.raises(UserError):
        parse_spec({**TINY, **change})


def test_preset_validates_and_shares_default_parent():
    from compresslab.study.plain import expand
    from compresslab.study.spec import load_spec

    spec = load_kurtosis_spec()
    assert isinstance(spec, KurtosisSpec) and len(spec.models) * len(spec.seeds) == 6
    default = expand(load_spec(preset="default"))
    assert expand_kurtosis(spec)[0].step.hash == default[0].step.hash


def test_kurtosis_study_through_the_cli(tmp_path, capsys):
    from compresslab.cli import main

    spec = tmp_path / "k.yaml"
    spec.write_text("kind: kurtosis\nname: k\ndata: digits\nmodels: [{name: mlp, options: {widths: [16]}}]\n"
                    "seeds: [0, 1]\nrecipe: {optimizer: adam, lr: 0.01, epochs: 1, batch_size: 128}\n"
                    "sparsities: [0.5]\n")
    assert main(["study", str(spec), "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Spearman(measured prunability, kurtosis_of_kurtoses)" in out and "report:" in out
    spec.write_text(spec.read_text().replace("[0.5]", "[1.5]"))
    assert main(["study", str(spec), "--runs", str(tmp_path / "runs"), "--quiet"]) == 2
    assert "sparsities" in capsys.readouterr().err
