"""The study end to end: results, report, determinism, resume after kill -9."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compresslab.cli import main
from compresslab.study import load_spec, run_kind
from compresslab.study.plain import expand

MODEL_KEYS = {"name", "role", "method", "step", "accuracy", "accuracy_val", "cost", "function", "train_seconds"}


def test_tiny_study_through_the_cli(capsys, tiny_study, tmp_path):
    runs = tmp_path / "runs"
    assert main(["study", str(tiny_study), "--runs", str(runs), "--quiet", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in results["models"]]
    assert names == ["parent", "kd", "pruned", "int8", "parent-seed1", "kd-scratch"]
    for m in results["models"]:
        assert MODEL_KEYS <= m.keys()
        assert {"params", "nonzero_params", "macs", "bops", "bytes"} <= m["cost"].keys()
    by = {m["name"]: m for m in results["models"]}
    # identities: the parent against itself
    f = by["parent"]["function"]
    assert f["disagreement"] == 0 and f["js_divergence"] == 0 and f["kappa"] == 1
    assert f["output_cosine"] == pytest.approx(1)
    # what each compression did to cost
    assert by["pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert by["pruned"]["cost"]["nonzero_params"] < 0.52 * by["parent"]["cost"]["params"]
    assert by["int8"]["cost"]["bops"] < by["parent"]["cost"]["bops"]
    assert by["kd"]["cost"]["params"] < by["parent"]["cost"]["params"]
    assert by["parent-seed1"]["function"]["disagreement"] > 0
    assert results["independent_baseline"]["disagreement"]["n"] == 1
    out = runs / "studies"
    (study_dir,) = out.iterdir()
    html = (study_dir / "report.html").read_text()
    assert "<svg" in html and "pruned" in html and "<script" not in html
    assert json.loads((study_dir / "results.json").read_text())["models"][0]["name"] == "parent"


def test_same_spec_and_seed_give_bit_identical_results(tiny_study, tmp_path):
    spec = load_spec(tiny_study)
    r1, _ = run_kind(spec, tmp_path / "a")
    r2, _ = run_kind(spec, tmp_path / "b")
    for m1, m2 in zip(r1["models"], r2["models"]):
        assert m1["function"] == m2["function"] and m1["accuracy"] == m2["accuracy"]
        for f in ("model.safetensors", "logits_test.npy"):
            assert (tmp_path / "a" / m1["step"] / f).read_bytes() == (tmp_path / "b" / m2["step"] / f).read_bytes()
    r3, _ = run_kind(spec, tmp_path / "a")
    assert r3["steps"]["ran"] == [] and len(r3["steps"]["reused"]) == 6


def test_resume_after_kill_reruns_nothing_finished(tmp_path):
    spec_path = tmp_path / "slow.yaml"
    from conftest import TINY_STUDY

    # long enough children that the kill lands mid-study
    spec_path.write_text(TINY_STUDY.format(epochs=2).replace(
        "{name: kd, method: distill,",
        "{name: kd, method: distill, recipe: {optimizer: adam, lr: 0.01, epochs: 150, batch_size: 256},"))
    runs = tmp_path / "runs"
    spec = load_spec(spec_path)
    parent_dir = runs / expand(spec)[0].step.dirname
    proc = subprocess.Popen([sys.executable, "-m", "compresslab.cli", "study", str(spec_path), "--runs", str(runs),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                    p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)})
    deadline = time.time() + 120
    while not parent_dir.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # let it get into the distillation step
    assert proc.poll() is None, "the study ended before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert parent_dir.is_dir()
    assert not (runs / "studies").exists()  # the study did not finish
    leftovers = list((runs / ".tmp").iterdir())
    assert leftovers, "the killed step should have left its temp directory"
    inode = (parent_dir / "model.safetensors").stat().st_ino

    results, _ = run_kind(spec, runs)
    assert "parent" in results["steps"]["reused"] and "kd" in results["steps"]["ran"]
    assert (parent_dir / "model.safetensors").stat().st_ino == inode
    assert not any((runs / ".tmp").iterdir())
    for m in results["models"]:
        assert (runs / m["step"] / "spec.json").is_file()
    # no half-written step: every step directory is complete
    for d in runs.iterdir():
        if d.name.startswith(("train-", "distill-", "prune-", "quantize-")):
            assert {"spec.json", "model.json", "model.safetensors", "metrics.json", "logits_test.npy"} <= \
                {p.name for p in d.iterdir()}


def test_nan_step_fails_alone_and_the_study_reports_it_incomplete(capsys, tmp_path):
    import json

    from conftest import TINY_STUDY

    spec_path = tmp_path / "nan.yaml"
    spec_path.write_text(TINY_STUDY.format(epochs=1).replace(
        "{name: pruned, method: prune, amount: 0.5}", "{name: pruned, method: prune, amount: 0.5, finetune_lr: 1e37}"))
    runs = tmp_path / "runs"
    assert main(["study", str(spec_path), "--runs", str(runs), "--quiet", "--json"]) == 3
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "study incomplete: 1 step(s) failed" in err and "pruned: " in err
    assert "loss became" in err
    results = json.loads(out)
    assert list(results["failed"]) == ["pruned"] and "loss became" in results["failed"]["pruned"]
    assert {m["name"] for m in results["models"]} == {"parent", "kd", "int8", "parent-seed1", "kd-scratch"}
    entries = {e.name: e for e in expand(load_spec(spec_path))}
    assert (runs / entries["int8"].step.dirname / "model.safetensors").is_file()  # independent branches finished
    assert not any(d.name.startswith("prune-") for d in runs.iterdir())  # nothing half-written
    record = json.loads((runs / ".failed" / f"{entries['pruned'].step.dirname}.json").read_text())
    assert record["label"] == "pruned" and "loss became" in record["reason"]
    report = next((runs / "studies").iterdir()) / "report.html"
    assert "Incomplete: 1 step(s) failed" in report.read_text()


def test_deterministic_results_drop_what_measures_the_run_at_any_depth():
    from compresslab.study.kinds import deterministic

    results = {"seconds": 3.2, "store": "/x", "execution": {"workers": 2},
               "rows": [{"accuracy": 0.9, "distill_seconds": 1.9, "cost": {"latency_ms": {"batch1": 0.3}, "params": 10}},
                        {"search_ms_per_query": 0.1, "ms_per_batch": 2.0, "params_after": 5}],
               "steps": {"ran": ["a"], "reused": ["b"], "dirs": {"a": "train-1", "b": "train-2"}}}
    assert deterministic(results) == {"rows": [{"accuracy": 0.9, "cost": {"params": 10}}, {"params_after": 5}],
                                      "steps": {"a": "train-1", "b": "train-2"}}
