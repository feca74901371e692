"""The ner-distill study kind on a tiny config: its entity F1 against seqeval on the cached
logits, per-token agreement by hand over the scored tokens, params, tests, resume, bad data."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compresslab.cli import main
from compresslab.data import load_dataset
from compresslab.runs.checkpoint import load_checkpoint

pytest.importorskip("transformers", reason="the bert model needs transformers (pip install 'compresslab[hf]')")
seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval is a test extra")

SPEC = """\
kind: ner-distill
name: tiny-ner
data: ner-synthetic?sentences=120&seed=0&max_len=24
seeds: [0, 1]
teacher: {name: bert, options: {hidden: 16, layers: 2, heads: 2}}
student: {name: bert, options: {hidden: 8, layers: 1, heads: 2}}
recipe: {optimizer: adamw, lr: 0.01, weight_decay: 0.0, epochs: 2, batch_size: 32}
latency: false
"""


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine train fastest on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_ner_distill_study(tmp_path, capsys, one_thread):
    spec = tmp_path / "ner.yaml"
    spec.write_text(SPEC)
    runs = tmp_path / "runs"
    assert main(["study", str(spec), "--runs", str(runs), "--quiet"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "student-kd" in out and "report:" in out
    (study,) = (runs / "studies").iterdir()
    r = json.loads((study / "results.json").read_text())
    assert r["kind"] == "ner-distill" and (study / "report.html").is_file()
    assert [x["role"] for x in r["roles"]] == ["teacher", "student-ce", "student-kd"]
    assert len(r["models"]) == 6 and len(r["steps"]["ran"]) == 6

    data = load_dataset("ner-synthetic?sentences=120&seed=0&max_len=24", val_fraction=0.1, seed=0)
    y = data.y_test.numpy()
    names = data.text["labels"]
    keep = y != -100
    dirs = r["steps"]["dirs"]
    logits = {m["name"]: np.load(runs / dirs[m["name"]] / "logits_test.npy") for m in r["models"]}
    for m in r["models"]:
        pred = logits[m["name"]].argmax(-1)
        gold_tags = [[names[t] for t in row[k]] for row, k in zip(y, keep)]
        pred_tags = [[names[t] for t in row[k]] for row, k in zip(pred, keep)]
        assert m["micro"]["f1"] == pytest.approx(seqeval.f1_score(gold_tags, pred_tags, zero_division=0), abs=1e-12)
        assert m["token_accuracy"] == pytest.approx(float((pred[keep] == y[keep]).mean()))
        if m["role"] == "teacher":
            assert m["agreement"] is None
        else:  # per token, scored positions only, against the teacher of the same seed
            t = logits[f"teacher-s{m['seed']}"].argmax(-1)
            assert m["agreement"] == pytest.approx(float((pred[keep] == t[keep]).mean()))
    for role in r["roles"]:
        first = next(m for m in r["models"] if m["role"] == role["role"])
        model, _ = load_checkpoint(runs / dirs[first["name"]])
        assert role["params"] == sum(p.numel() for p in model.parameters())
        assert role["f1"]["values"] == [m["micro"]["f1"] for m in r["models"] if m["role"] == role["role"]]
        assert role["latency_ms"] is None
    assert r["roles"][0]["params"] > r["roles"][1]["params"] == r["roles"][2]["params"]
    assert [(t["a"], t["b"], t["alternative"]) for t in r["tests"]] == [
        ("student-ce", "teacher", "two-sided"), ("student-kd", "teacher", "two-sided"),
        ("student-kd", "student-ce", "greater")]
    kd_ce = r["tests"][2]
    assert kd_ce["diff"] == pytest.approx(r["roles"][2]["f1"]["mean"] - r["roles"][1]["f1"]["mean"])
    assert len(r["claims"]) == 3

    # a re-run reuses every step
    assert main(["study", str(spec), "--runs", str(runs), "--quiet", "--json"]) == 0
    again = json.loads((study / "results.json").read_text())
    assert again["steps"]["ran"] == [] and len(again["steps"]["reused"]) == 6


def test_ner_distill_rejects_data_without_tags(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(SPEC.replace("ner-synthetic?sentences=120&seed=0&max_len=24", "digits"))
    assert main(["study", str(spec), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "not BIO-tagged token-level text" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("train-*"))


def test_preset_expands_to_a_teacher_and_two_students_per_seed():
    from compresslab.study.ner_distill import NerDistillSpec, expand
    from compresslab.study.spec import load_spec

    spec = load_spec(preset="ner-distill")
    assert isinstance(spec, NerDistillSpec) and spec.seeds == [0, 1, 2]
    assert spec.data.startswith("ner-synthetic?sentences=1800")  # the paper's NER set size
    assert spec.teacher.options["layers"] > spec.student.options["layers"]
    entries = expand(spec)
    assert [e.info["role"] for e in entries].count("teacher") == 3 and len(entries) == 9
    assert len({e.step.hash for e in entries}) == 9
    teachers = {e.info["seed"]: e.step.hash for e in entries if e.info["role"] == "teacher"}
    for e in entries:
        if e.info["role"] == "student-kd":
            assert e.step.parents["teacher"].hash == teachers[e.info["seed"]]
            assert e.step.spec["loss"] == {"kd": 0.9, "ce": pytest.approx(0.1)}
        if e.info["role"] != "teacher":
            assert e.step.spec["seed"] == e.info["seed"]
