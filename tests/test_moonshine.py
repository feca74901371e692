"""Moonshine study and `compresslab substitute`: tiny end-to-end runs, spec validation."""
import json

import pytest
import yaml

from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.study import parse_spec
from compresslab.study.moonshine import expand_moonshine, pareto_front

TINY = {
    "kind": "moonshine", "name": "tiny-moonshine", "data": "mnist1d",
    "teacher": {"name": "wrn1d-10-1"},
    "recipe": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 1, "batch_size": 256},
    "blocks": ["Conv", "DConv", "G4B2"],
    "modes": ["scratch", "at", "at+kd"],
    "latency": False,
}


def test_pareto_front():
    pts = [(10, 0.5), (5, 0.6), (20, 0.4), (8, 0.7), (30, 0.45), (5, 0.65)]
    assert pareto_front(pts) == [1, 0, 2]


def test_expand_reuses_the_teacher_for_the_conv_scratch_student():
    teacher, *students = expand_moonshine(parse_spec(TINY))
    by = {s.name: s.step for s in students}
    assert len(by) == 9 and by["Conv-scratch"].hash == teacher.step.hash
    assert by["DConv-at"].spec["loss"] == {"ce": 1.0, "at": 1000.0}
    assert by["G4B2-at+kd"].spec["loss"] == {"kd": 0.9, "ce": pytest.approx(0.1), "at": 1000.0}
    assert by["G4B2-scratch"].spec["model"]["options"] == {"block": "G4B2"}


@pytest.mark.parametrize("change, message", [({"blocks": ["Ghost"]}, "unknown block"),
                                             ({"teacher": {"name": "cnn1d"}}, "Wide ResNet"),
                                             ({"modes": ["telepathy"]}, "modes"),
                                             ({"blocks": ["DConv", "DConv"]}, "distinct")])
def test_invalid_spec(change, message):
    with pytest.raises(UserError, match=message):
        parse_spec({**TINY, **change})


def test_tiny_study_through_the_cli(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert main(["study", str(path), "--runs", str(tmp_path / "runs"), "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["kind"] == "moonshine" and len(r["students"]) == 9
    conv = next(s for s in r["students"] if s["name"] == "Conv-scratch")
    assert conv["cost"]["params"] == r["teacher"]["cost"]["params"] and conv["function"]["agreement"] == 1.0
    dconv = next(s for s in r["students"] if s["name"] == "DConv-at")
    assert dconv["cost"]["params"] < r["teacher"]["cost"]["params"]
    front = [s for s in r["students"] if s["pareto"]]
    assert front and min(s["cost"]["params"] for s in r["students"]) == min(s["cost"]["params"] for s in front)
    page = next((tmp_path / "runs" / "studies").iterdir()) / "report.html"
    assert page.read_text().count("<svg") == 1


def test_substitute_cli(tmp_path, capsys):
    from compresslab.api import train_model

    runs = tmp_path / "runs"
    teacher = train_model("wrn1d-10-1", "mnist1d", overrides={"epochs": 1, "optimizer": "adam", "lr": 0.01},
                          runs=runs)["checkpoint"]
    assert main(["substitute", teacher, "--block", "DConvB2", "--data", "mnist1d", "--runs", str(runs),
                 "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["block"] == "DConvB2" and r["loss"] == {"ce": 1.0, "at": 1000.0}
    assert r["params"] < r["teacher_params"]
    for bad, message in ((["--block", "Ghost"], "unknown block"), (["--block", "DConv", "--loss", "magic"], "--loss")):
        assert main(["substitute", teacher, *bad, "--data", "mnist1d", "--runs", str(runs), "--quiet"]) == 2
        assert message in capsys.readouterr().err
    other = train_model("cnn1d", "mnist1d", overrides={"epochs": 1}, runs=runs)["checkpoint"]
    assert main(["substitute", other, "--block", "DConv", "--data", "mnist1d", "--runs", str(runs), "--quiet"]) == 2
    assert "Wide ResNet" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["moonshine", "moonshine-mnist"])
def test_presets_parse_and_every_block_fits_the_teacher(preset):
    from compresslab.models import create_model
    from compresslab.study import load_spec

    spec = load_spec(preset=preset)
    dim_shape = (1, 40) if spec.teacher.name.startswith("wrn1d") else (1, 28, 28)
    for block in spec.blocks:  # every block must divide every width of this teacher
        create_model(spec.teacher.name, num_classes=10, in_channels=1, input_shape=dim_shape, block=block)


def test_linear_substitution_fits_budgets_and_runs_through_the_cli(tmp_path, capsys):
    from compresslab.measure import count_params
    from compresslab.models import create_model
    from compresslab.study.linear_substitution import fitted_blocks

    raw = {"kind": "linear-substitution", "name": "tiny-linear", "data": "mnist1d", "teacher": {"name": "wrn1d-10-1"},
           "recipe": TINY["recipe"], "budgets": [6000], "compare": ["DConvB2"], "latency": False}
    spec = parse_spec(raw)
    fitted = fitted_blocks(spec)
    assert {f["kind"] for f in fitted} == {"lowrank", "acdc", "shuffle", "hashed"}
    for f in fitted:  # the closed-form count is the built network's, and within the budget
        net = create_model("wrn1d-10-1", num_classes=10, in_channels=1, input_shape=(1, 40), block=f["block"])
        assert count_params(net) == f["params"] <= 6000
    path = tmp_path / "l.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["study", str(path), "--runs", str(tmp_path / "runs"), "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {s["block"] for s in r["students"]} == {"DConvB2", "DConv", *(f["block"] for f in fitted)}
    assert len(r["substitutes"]) == len(fitted)
    with pytest.raises(UserError, match="DConv-family"):
        fitted_blocks(parse_spec({**raw, "base": "G8B2"}))


def test_scaled_weight_decay_only_changes_substituted_students():
    plain = expand_moonshine(parse_spec({**TINY, "blocks": ["DConv", "DConv+lowrank2"]}))[1:]
    scaled = expand_moonshine(parse_spec({**TINY, "blocks": ["DConv", "DConv+lowrank2"],
                                          "scale_substitute_wd": True}))[1:]
    for a, b in zip(plain, scaled):
        assert (a.step.hash == b.step.hash) == ("+" not in a.info["block"])
        assert b.step.spec.get("scale_substitute_wd", False) == ("+" in b.info["block"])
