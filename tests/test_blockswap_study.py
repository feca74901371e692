"""The ``blockswap`` study kind and step kind: search + AT training per budget, reuse, checks."""
import json

import pytest
import yaml

from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.study import parse_spec

TINY = {"kind": "blockswap", "name": "tiny-blockswap", "data": "mnist1d", "teacher": {"name": "wrn1d-10-1"},
        "recipe": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 1, "batch_size": 256},
        "budgets": [12000, 20000], "samples": 4, "batch": 32, "latency": False}


def test_tiny_study_searches_trains_and_reuses(tmp_path, capsys):
    spec = tmp_path / "b.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    runs = tmp_path / "runs"
    assert main(["study", str(spec), "--runs", str(runs), "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in r["students"]] == ["budget-12k", "budget-20k"]
    for s, budget in zip(r["students"], TINY["budgets"]):
        assert s["search"]["candidates"] == 4 and s["search"]["budget"] == budget
        assert abs(s["cost"]["params"] - budget) <= 0.025 * budget  # the closed-form count is the built model's
        assert s["search"]["best_params"] == s["cost"]["params"]
        csv = (runs / s["step"] / "candidates.csv").read_text().splitlines()
        assert csv[0] == "rank,score,params,genotype" and len(csv) == 5
    assert r["teacher"]["mode"] == "teacher" and sum(s["pareto"] for s in r["students"]) >= 1
    assert main(["study", str(spec), "--runs", str(runs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "budget-12k" in out and "report:" in out


def test_an_unreachable_budget_is_rejected_before_anything_is_written(tmp_path, capsys):
    spec = tmp_path / "b.yaml"
    spec.write_text(yaml.safe_dump({**TINY, "budgets": [50]}))
    assert main(["study", str(spec), "--runs", str(tmp_path / "runs"), "--quiet"]) == 2
    assert "choose a budget in that range" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change, message", [({"teacher": {"name": "cnn1d"}}, "Wide ResNet"),
                                             ({"budgets": [12000, 12000]}, "distinct"),
                                             ({"samples": 0}, "samples")])
def test_invalid_spec(change, message):
    with pytest.raises(UserError, match=message):
        parse_spec({**TINY, **change})
