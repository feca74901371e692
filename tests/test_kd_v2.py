"""The functional-perspective study, second edition: split seeds (init vs data order), the
SIDDO/DISDO controls, agreement split by the teacher's correctness, and sweeps as axes."""
import json

import numpy as np
import pytest
import torch
import yaml

from compresslab.cli import main
from compresslab.data import load_dataset
from compresslab.errors import UserError
from compresslab.measure.inheritance import asymmetry, split_by_correctness
from compresslab.runs.store import Step
from compresslab.steps import common
from compresslab.steps import train as train_step
from compresslab.steps.specs import data_spec, distill_spec, model_spec, train_spec
from compresslab.study import parse_spec
from compresslab.study.kd_functional import OTHER_SEED, expand_kd
from compresslab.train import Recipe, fit
from compresslab.train.fit import FitResult

DATA = data_spec("digits", 0.1, 0)
MODEL = model_spec("mlp", {"widths": [8]})


def test_a_data_seed_equal_to_the_seed_keeps_the_old_spec_and_hash():
    recipe = Recipe(epochs=1)
    old = train_spec(DATA, MODEL, recipe, 3)
    assert "data_seed" not in old
    assert Step("train", train_spec(DATA, MODEL, recipe, 3, data_seed=3)).hash == Step("train", old).hash
    split = train_spec(DATA, MODEL, recipe, 3, data_seed=4)
    assert split["data_seed"] == 4 and Step("train", split).hash != Step("train", old).hash
    d = distill_spec(DATA, MODEL, recipe, 3, loss={"kd": 1.0}, data_seed=3)
    assert "data_seed" not in d and distill_spec(DATA, MODEL, recipe, 3, loss={"kd": 1.0}, data_seed=9)["data_seed"] == 9


def test_the_train_step_seeds_init_and_data_order_separately(tmp_path, monkeypatch):
    seen = []

    def fake_fit(model, data, recipe, *, seed, **_):
        seen.append(([t.clone() for t in model.state_dict().values()], seed))
        return FitResult()

    monkeypatch.setattr(train_step, "fit", fake_fit)
    for i, (seed, data_seed) in enumerate([(1, 7), (1, 8), (2, 7)]):
        spec = train_spec(DATA, MODEL, Recipe(epochs=1), seed, data_seed=data_seed)
        train_step.run_train(Step("train", spec), tmp_path / str(i), {})
    (init_a, order_a), (init_b, order_b), (init_c, order_c) = seen
    assert all(torch.equal(a, b) for a, b in zip(init_a, init_b))  # same init seed: same initial weights
    assert not all(torch.equal(a, c) for a, c in zip(init_a, init_c))
    assert (order_a, order_b, order_c) == (7, 8, 7)  # the data seed alone reaches fit


def test_the_same_data_seed_gives_the_same_batch_order():
    data = load_dataset("digits", val_fraction=0.1, seed=0)

    def order(init_seed: int, data_seed: int) -> list[list[int]]:
        model = common.build(MODEL, data, init_seed)
        batches = []

        def probe(ctx):
            batches.append(ctx.idx.tolist())
            return ctx.logits.sum() * 0

        fit(model, data, Recipe(epochs=1, batch_size=256), loss={"probe": 1.0, "ce": 1.0}, terms={"probe": probe},
            seed=data_seed, health=False)
        return batches

    assert order(1, 5) == order(2, 5)  # another initialisation, the same order
    assert order(1, 5) != order(1, 6)


TINY = {
    "kind": "kd-functional", "name": "tiny-v2", "data": "digits",
    "teacher": {"name": "mlp", "options": {"widths": [32]}},
    "student": {"name": "mlp", "options": {"widths": [8]}},
    "recipe": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 3, "batch_size": 128},
    "conditions": ["teacher", "uniform-noise", "independent", "student-siddo", "student-disdo", "siddo", "disdo"],
    "seeds": [1, 2, 3],
    "metrics": ["agreement", "js_divergence"],
    "adversarial": None,
    "sweep": {"alpha": [0.5, 0.9], "temperature": [2], "student_widths": [[4], [8]]},
}


def test_expand_builds_the_controls_and_the_sweep():
    entries = expand_kd(parse_spec(TINY))
    by = {e.name: e.step for e in entries}
    teacher = by["teacher"]
    # SIDDO / DISDO of the teacher: its init or its data order, the other from OTHER_SEED + s
    assert (by["siddo-s2"].spec["seed"], by["siddo-s2"].spec["data_seed"]) == (teacher.spec["seed"], OTHER_SEED + 2)
    assert (by["disdo-s2"].spec["seed"], by["disdo-s2"].spec["data_seed"]) == (OTHER_SEED + 2, teacher.spec["seed"])
    assert by["siddo-s2"].spec["model"] == TINY["teacher"]
    # the student controls hold the KD student's init (SIDDO) or its data order (DISDO)
    assert (by["student-siddo-s1"].spec["seed"], by["student-siddo-s1"].spec["data_seed"]) == (1, OTHER_SEED + 1)
    assert (by["student-disdo-s1"].spec["seed"], by["student-disdo-s1"].spec["data_seed"]) == (OTHER_SEED + 1, 1)
    assert "data_seed" not in by["teacher-s1"].spec and "data_seed" not in by["independent-s1"].spec
    # alpha 0.9 is the base loss {kd: 0.9, ce: 0.1}: only alpha 0.5 adds students, for teacher and uniform-noise
    assert by["teacher-alpha0.5-s3"].spec["loss"] == {"kd": 0.5, "ce": 0.5}
    assert by["uniform-noise-alpha0.5-s1"].spec["teacher"]["kind"] == "uniform-noise"
    assert not any("alpha0.9" in n for n in by)
    assert by["teacher-T2-s1"].spec["temperature"] == 2 and by["teacher-T2-s1"].parents["teacher"] is teacher
    # widths: [8] is the student's own; [4] adds a KD and an independent student per seed
    assert by["teacher-w4-s1"].spec["student"]["options"] == {"widths": [4]}
    assert by["independent-w4-s2"].spec["model"]["options"] == {"widths": [4]}
    assert not any("-w8-" in n for n in by)
    assert len({s.hash for s in by.values()}) == len(by)  # no step twice under two names


@pytest.mark.parametrize("change, message", [
    ({"loss": {"kd": 0.9, "at": 100.0}, "conditions": ["teacher", "independent"]}, "sweep.alpha"),
    ({"control": "student-disdo", "conditions": ["teacher", "independent"]}, "control"),
    ({"sweep": {"alpha": [0.5, 0.5]}}, "distinct"),
    ({"sweep": {"alpha": [1.5]}}, "alpha"),
    ({"sweep": {"conditions": ["gaussian-noise"], "alpha": [0.5]}}, "sweep.conditions"),
    ({"sweep": {"student_widths": [4]}, "student": {"name": "cnn1d", "options": {}}}, "width_option"),
])
def test_bad_v2_specs_are_one_line_errors(change, message):
    with pytest.raises(UserError, match=message) as err:
        parse_spec({**TINY, **change})
    assert "\n" not in str(err.value)


def test_tiny_v2_study_end_to_end_through_the_cli(tmp_path, capsys):
    path = tmp_path / "v2.yaml"
    path.write_text(yaml.safe_dump(TINY))
    runs = tmp_path / "runs"
    assert main(["study", str(path), "--runs", str(runs), "--quiet", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["control"] == "student-siddo"
    # the teacher's SIDDO/DISDO retrains are reference bands, not tested conditions
    assert {"teacher SIDDO", "teacher DISDO"} <= set(results["reference_groups"])
    assert "siddo" not in results["summaries"] and "student-siddo" in results["summaries"]
    assert not any(t["label_b"] in ("siddo", "disdo") for t in results["tests"])
    # the correctness split recomputed from the stored logits
    data = load_dataset("digits", val_fraction=0.1, seed=0)
    y = data.split("test")[1].numpy()
    out = runs / results["teacher"]["step"]
    t_logits = np.load(out / "logits_test.npy")
    rows = {m["name"]: m for m in results["models"]}
    for name in ("teacher-s1", "student-siddo-s2", "siddo-s3", "teacher-T2-s1"):
        mine = split_by_correctness(t_logits, np.load(runs / rows[name]["step"] / "logits_test.npy"), y)
        assert rows[name]["by_correctness"] == pytest.approx(mine)
    # the asymmetry of the teacher condition, paired by seed with the SIDDO students
    kd = [rows[f"teacher-s{s}"]["by_correctness"] for s in (1, 2, 3)]
    ctrl = [rows[f"student-siddo-s{s}"]["by_correctness"] for s in (1, 2, 3)]
    expected = asymmetry([k["agree_right"] for k in kd], [k["agree_wrong"] for k in kd],
                         [c["agree_right"] for c in ctrl], [c["agree_wrong"] for c in ctrl], alpha=0.05, seed=0)
    got = results["asymmetry"]["teacher"]
    assert got["p_t"] == pytest.approx(expected["p_t"]) and set(results["asymmetry"]) == {"teacher", "uniform-noise"}
    assert got["p_t_holm"] >= got["p_t"]
    assert any(line.startswith("teacher vs student-siddo:") for line in results["headline"])
    # sweeps: alpha at 0.5 and the base 0.9; widths with the parameter ratio and a fit
    alpha = results["sweeps"]["alpha"]
    assert alpha["values"] == [0.5, 0.9] and set(alpha["series"]) == {"teacher", "uniform-noise"}
    assert [pt["n"] for pt in alpha["series"]["teacher"]] == [3, 3]
    assert alpha["series"]["teacher"][1]["agreement"] == results["summaries"]["teacher"]["agreement"]
    assert results["sweeps"]["temperature"]["values"] == [2, 4]
    widths = results["sweeps"]["student_widths"]
    ratios = [pt["param_ratio"] for pt in widths["series"]["teacher"]]
    assert ratios[0] < ratios[1] < 1 and set(widths["fits"]) == {"teacher", "independent"}
    page = next((runs / "studies").iterdir()).joinpath("report.html").read_text()
    assert "copy the teacher's mistakes" in page and "Sweeps" in page
    assert main(["study", str(path), "--runs", str(runs), "--quiet", "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["steps"]["ran"]


CF = """\
kind: compression-functional
name: tiny-cf-v2
data: digits
seeds: [0, 1, 2]
parent: {name: mlp, options: {widths: [32]}}
recipe: {optimizer: adam, lr: 0.01, weight_decay: 0, epochs: 3, batch_size: 128}
children:
  - {name: prune-80, method: prune, amount: 0.8}
  - {name: w2, method: quantize, scheme: fake, bits: 2}
retrain_controls: [siddo, disdo]
metrics: [agreement]
latency: false
"""


def test_compression_functional_gets_the_retrain_controls_and_the_correctness_split(tmp_path, capsys):
    from compresslab.study.compression_functional import expand

    spec = tmp_path / "cf.yaml"
    spec.write_text(CF)
    by = {e.name: e.step for e in expand(parse_spec(yaml.safe_load(CF)))}
    parent = by["parent@s1"]
    assert by["siddo@s1"].spec == {**parent.spec, "data_seed": OTHER_SEED + 1}
    assert by["disdo@s1"].spec == {**parent.spec, "seed": OTHER_SEED + 1, "data_seed": 1}
    runs = tmp_path / "runs"
    assert main(["study", str(spec), "--runs", str(runs), "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["summaries"]["siddo"]["family"] == "siddo" and r["control"] == "siddo"
    assert {t["label_a"] for t in r["tests"]} == {"prune-80", "w2"}  # the retrains are baselines, not tested
    assert set(r["asymmetry"]) == {"prune-80", "w2"} and set(r["correctness"]) >= {"prune-80", "siddo", "independent"}
    data = load_dataset("digits", val_fraction=0.1, seed=0)
    y = data.split("test")[1].numpy()
    row = next(m for m in r["models"] if m["name"] == "w2" and m["seed"] == 2)
    p_dir = next(m for m in r["models"] if m["name"] == "parent" and m["seed"] == 2)["step"]
    mine = split_by_correctness(np.load(runs / p_dir / "logits_test.npy"), np.load(runs / row["step"] / "logits_test.npy"), y)
    assert row["by_correctness"] == pytest.approx(mine)
    assert any(h.startswith("w2 vs siddo:") for h in r["headline"])
    page = next((runs / "studies").iterdir()).joinpath("report.html").read_text()
    assert "copy the parent&#x27;s mistakes" in page or "copy the parent's mistakes" in page


@pytest.mark.parametrize("preset", ["kd-functional-v2", "kd-functional-v2-digits", "kd-functional-v2-transformer"])
def test_v2_presets_expand_to_distinct_steps_sharing_the_first_edition_teacher(preset):
    from compresslab.study import load_spec

    entries = expand_kd(load_spec(preset=preset))
    steps = {e.step.hash for e in entries}
    assert len(steps) == len(entries)
    conditions = {e.info.get("condition") for e in entries}
    assert {"siddo", "disdo", "student-siddo", "student-disdo", "teacher"} <= conditions
    if preset == "kd-functional-v2":  # the same reference teacher as the kd-functional preset: one training
        assert entries[0].step.hash == expand_kd(load_spec(preset="kd-functional"))[0].step.hash
