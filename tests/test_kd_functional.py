"""kd-functional study: spec validation, expansion, and a tiny end-to-end run through the CLI."""
import json

import pytest
import yaml

from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.study import load_spec, parse_spec
from compresslab.study.kd_functional import KDFunctionalSpec, expand_kd

# the first edition's conditions (tests/test_kd_v2.py covers the SIDDO/DISDO controls and sweeps)
CONDITIONS = ("teacher", "teacher-other-seed", "uniform-noise", "gaussian-noise", "untrained", "self", "independent")

TINY = {
    "kind": "kd-functional", "name": "tiny-kd", "data": "mnist1d",
    "teacher": {"name": "cnn1d", "options": {"width": 8, "depth": 2, "hidden": 16}},
    "student": {"name": "cnn1d", "options": {"width": 4, "depth": 2, "hidden": 8}},
    "recipe": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 2, "batch_size": 256},
    "conditions": list(CONDITIONS),
    "seeds": [1, 2],
    "adversarial": {"attack": "pgd", "eps": 0.3, "steps": 3},
}


def test_expand_gives_every_condition_its_teacher():
    entries = expand_kd(parse_spec(TINY))
    reference = entries[0].step
    assert reference.kind == "train" and reference.spec["seed"] == 0
    assert [e.name for e in entries if e.role == "control" and "condition" not in e.info] == \
        ["self-teacher", "teacher-seed1001", "teacher-seed1002"]
    by = {(e.info["condition"], e.info["seed"]): e.step for e in entries if "condition" in e.info}
    assert len(by) == len(CONDITIONS) * 2
    assert by[("teacher", 1)].parents["teacher"] is reference
    assert by[("teacher-other-seed", 2)].parents["teacher"].spec["seed"] == 1002
    assert by[("self", 1)].parents["teacher"].spec["model"] == TINY["student"]
    assert by[("uniform-noise", 2)].spec["teacher"] == {"kind": "uniform-noise", "low": 0.0, "high": 1.0, "seed": 2}
    assert by[("gaussian-noise", 1)].spec["teacher"]["sigma"] == 1.0
    assert by[("untrained", 1)].spec["teacher"] == {"kind": "untrained", "model": TINY["teacher"], "seed": 1001}
    assert by[("independent", 1)].kind == "train" and by[("independent", 1)].spec["model"] == TINY["student"]
    # the same student seed in two conditions differs only by its teacher
    assert by[("teacher", 1)].spec["seed"] == by[("independent", 1)].spec["seed"] == 1


@pytest.mark.parametrize("change, message", [
    ({"loss": {"kd": 0.9, "at": 1000}}, "noise teachers"),
    ({"loss": {"ce": 1.0}}, "distillation term"),
    ({"loss": {"kd": 1.0, "bogus": 1.0}}, "unknown terms"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"seeds": [1]}, "at least 2"),
    ({"conditions": ["teacher", "telepathy"]}, "conditions"),
    ({"metrics": ["agreement", "vibes"]}, "metrics"),
    ({"adversarial": None}, "adversarial"),
    ({"noise": {"low": 1, "high": 0}}, "high must be > low"),
])
def test_invalid_spec_is_a_one_line_user_error(change, message):
    with pytest.raises(UserError, match=message) as err:
        parse_spec({**TINY, **change})
    assert "\n" not in str(err.value)


def test_preset_parses_and_has_the_issue_conditions():
    spec = load_spec(preset="kd-functional")
    assert isinstance(spec, KDFunctionalSpec)
    assert set(spec.conditions) == {"teacher", "independent", "uniform-noise", "gaussian-noise", "untrained",
                                    "teacher-other-seed"}
    assert len(spec.seeds) == 5 and spec.data == "mnist1d"
    assert spec.teacher.options["width"] > spec.student.options["width"]


def test_tiny_study_end_to_end_through_the_cli(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    runs = tmp_path / "runs"
    assert main(["study", str(path), "--runs", str(runs), "--quiet", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["kind"] == "kd-functional"
    students = [m for m in results["models"] if m["role"] == "student"]
    assert len(students) == len(CONDITIONS) * 2
    for m in students:
        assert 0 <= m["agreement"] <= 1 and 0 <= m["js_divergence"] <= 0.7
        assert m["cka"] is None or -1 <= m["cka"] <= 1
        assert set(m["cka_points"]) == {"stage1", "stage2", "hidden"}
        assert m["adversarial_transfer"] is None or 0 <= m["adversarial_transfer"] <= 1
    # every condition summarised; teacher tested against the 6 others on the 5 default metrics
    assert set(results["summaries"]) == set(CONDITIONS)
    s = results["summaries"]["teacher"]["agreement"]
    assert s["n"] == 2 and s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert len(results["tests"]) == 6 * 5
    assert all(("significantly" in t["verdict"]) and 0 <= t["p_holm"] <= 1 for t in results["tests"])
    # 2 vs 2 seeds: the exact test can never reach 0.05; said once in the notes, not in every verdict
    assert any("cannot reach p<0.05" in n for n in results["notes"])
    assert not any("cannot reach" in t["verdict"] for t in results["tests"])
    assert set(results["accuracy_effects"]) == set(CONDITIONS) - {"independent"}
    assert "teacher retrained" in results["reference_groups"]
    # the pairwise matrices hold the teacher row that the per-model numbers came from
    names = results["pairwise"]["names"]
    i = names.index("teacher-s1")
    row = next(m for m in students if m["name"] == "teacher-s1")
    assert results["pairwise"]["agreement"][0][i] == pytest.approx(row["agreement"])
    # same-seed agreement is read off the same matrices
    j = names.index("independent-s1")
    same = results["same_seed"]["teacher"]
    assert set(results["same_seed"]) == set(CONDITIONS) - {"independent"}
    assert same["same_seed"] == pytest.approx(
        (results["pairwise"]["agreement"][i][j] + results["pairwise"]["agreement"][names.index("teacher-s2")][
            names.index("independent-s2")]) / 2)
    out = next((tmp_path / "runs" / "studies").iterdir())
    page = (out / "report.html").read_text()
    assert "<svg" in page and "data:image/png" not in page and "Verdicts" in page
    # CKA and adversarial transfer are steps: one attack crafted on the teacher, one similarity step per model
    dirs = results["steps"]["dirs"]
    assert dirs["adversarial"].startswith("adversarial-")
    assert {k.removeprefix("similarity:") for k in dirs if k.startswith("similarity:")} == set(names[1:])
    # ... whose numbers are those of the one-process measurement: cka_between and transfer_rate over all models
    from compresslab.measure.adversarial import transfer_rate
    from compresslab.measure.cka import cka_between
    from compresslab.steps import data_of
    from compresslab.steps.common import load_model

    entries = expand_kd(parse_spec(TINY))
    x, y = data_of(entries[0].step.spec).split("test")
    teacher = load_model(runs / dirs["teacher"])
    picked = {n: load_model(runs / dirs[n]) for n in ("teacher-s1", "untrained-s2")}
    rates = transfer_rate(teacher, picked, x, y, attack="pgd", eps=0.3, steps=3, seed=0)
    for n, model in picked.items():
        row = next(m for m in students if m["name"] == n)
        assert row["adversarial_transfer"] == rates[n]["transfer_rate"]
        assert row["adversarial"]["n_eligible"] == rates[n]["n_eligible"]
        direct = cka_between(teacher, model, x)
        assert {k: v["unbiased"] for k, v in row["cka_points"].items()} == \
            pytest.approx({k: v["unbiased"] for k, v in direct.items()}, abs=1e-6)
    # a re-run reuses every step, and the collector only reads their outputs: no model is loaded again
    for weights in runs.glob("*/model.safetensors"):
        weights.unlink()
    assert main(["study", str(path), "--runs", str(runs), "--quiet", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert not again["steps"]["ran"] and again["summaries"] == results["summaries"]
    assert again["models"] == results["models"]


def test_cli_rejects_a_bad_kd_spec(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "seeds": [3]}))
    assert main(["study", str(path), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_measurement_steps_check_their_settings_and_parents():
    from compresslab.runs.store import Step
    from compresslab.steps import check_step
    from compresslab.steps.specs import adversarial_spec, data_spec, similarity_spec

    data = data_spec("mnist1d")
    with pytest.raises(UserError, match="unknown attack 'cw'; use one of fgsm, pgd"):
        check_step(Step("adversarial", adversarial_spec(data, "test", attack="cw", eps=0.1, steps=1, seed=0)), {})
    with pytest.raises(UserError, match="eps must be > 0"):
        check_step(Step("adversarial", adversarial_spec(data, "test", attack="fgsm", eps=0.0, steps=1, seed=0)), {})
    with pytest.raises(UserError, match=r"needs the parents \['model'\]"):
        check_step(Step("similarity", similarity_spec(data, "test")), {"reference": None})
    # the measurement settings name the step: other CKA points, another step
    assert Step("similarity", similarity_spec(data, "test")).hash != \
        Step("similarity", similarity_spec(data, "test", cka_points=["hidden"])).hash
