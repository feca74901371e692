"""``--track``: steps and studies logged to MLflow and TensorBoard, read back with their own readers.

Every expected value comes from the run store itself (spec.json, metrics.json, results.json),
so the tests check that what the tracker holds is what the store holds.
"""
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.runs.track import Tracker, flatten, parse_track

TINY = ["--model", "cnn1d", "--data", "mnist1d", "--epochs", "2", "--option", "width=8", "--option", "depth=2",
        "--option", "hidden=16", "--quiet", "--json"]
COMMANDS = ["train", "distill", "prune", "quantize", "substitute", "blockswap", "study"]


@pytest.fixture(autouse=True)
def _default_experiment(monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study (conftest's spec) run once with ``--track mlflow:DIR``."""
    pytest.importorskip("mlflow")
    from conftest import TINY_STUDY

    root = tmp_path_factory.mktemp("tracked")
    spec = root / "tiny.yaml"
    spec.write_text(TINY_STUDY.format(epochs=2))
    code = main(["study", str(spec), "--runs", str(root / "runs"), "--quiet", "--json", "--track", f"mlflow:{root / 'mlruns'}"])
    assert code == 0
    (study_dir,) = (root / "runs" / "studies").iterdir()
    return root, study_dir, json.loads((study_dir / "results.json").read_text())


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def client_at(path: Path):
    """MLflow's own client on the file store at ``path``, and the experiment id."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store opt-in
    client = pytest.importorskip("mlflow").MlflowClient(tracking_uri=path.resolve().as_uri())
    return client, client.get_experiment_by_name("compresslab").experiment_id


def events(logdir: Path):
    """TensorBoard's own reader of the event files in ``logdir``."""
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = reader.EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("text, expected", [
    ("mlflow", Tracker("mlflow", "./mlruns")),
    ("mlflow:", Tracker("mlflow", "./mlruns")),
    ("mlflow:/tmp/x", Tracker("mlflow", "/tmp/x")),
    ("mlflow:http://host:5000", Tracker("mlflow", "http://host:5000")),
    ("MLflow:file:///tmp/x", Tracker("mlflow", "file:///tmp/x")),
    ("tensorboard:runs/tb", Tracker("tensorboard", "runs/tb")),
    (None, None),
])
def test_parse_track(text, expected):
    assert parse_track(text) == expected


@pytest.mark.parametrize("text", ["wandb", "tensorboard", "tensorboard:", "tensorboard: ", "mlflw:x", ""])
def test_malformed_track_values_are_user_errors(text):
    with pytest.raises(UserError, match="--track"):
        parse_track(text)


@pytest.mark.parametrize("command", ["train", "study"])
def test_a_malformed_track_stops_the_command_before_any_work(capsys, tmp_path, command):
    runs = tmp_path / "runs"
    args = ["train", *TINY] if command == "train" else ["study"]
    code = main([*args, "--runs", str(runs), "--track", "wandb"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --track 'wandb'") and err.count("\n") == 1, err
    assert not runs.exists()  # nothing was trained or written
    assert main([*args, "--runs", str(runs), "--track", "tensorboard"]) == 2
    assert "tensorboard:DIR" not in capsys.readouterr().out and not runs.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_that_makes_steps_takes_track(command):
    import typer.main

    from compresslab.cli.common import app

    click = typer.main.get_command(app).commands[command]
    (opt,) = [p for p in click.params if "--track" in p.opts]
    assert "mlflow" in opt.help and "tensorboard:DIR" in opt.help


def test_flatten_joins_nested_keys_and_keeps_lists():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}


def test_a_study_is_a_parent_run_with_one_nested_run_per_step(study):
    root, study_dir, results = study
    client, exp = client_at(root / "mlruns")
    (parent,) = client.search_runs([exp], filter_string=f"attributes.run_name = '{study_dir.name}'")
    assert parent.data.params["kind"] == results["kind"] and parent.data.params["study"] == "tiny"
    assert parent.data.params["spec.parent.name"] == results["spec"]["parent"]["name"]
    assert parent.data.metrics["seconds"] == pytest.approx(results["seconds"])
    assert parent.data.metrics["steps.ran"] == len(results["steps"]["ran"]) == 6
    assert parent.data.tags["compresslab.report"] == str(study_dir / "report.html")

    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    dirs = results["steps"]["dirs"]
    assert sorted(r.info.run_name for r in children) == sorted(dirs) == sorted(m["name"] for m in results["models"])
    rows = {m["name"]: m for m in results["models"]}
    for run in children:
        entry = run.info.run_name
        step_dir = study_dir.parent.parent / dirs[entry]
        spec, metrics = read(step_dir / "spec.json"), read(step_dir / "metrics.json")
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        # the spec, flattened
        assert p["kind"] == spec["kind"]
        for key, value in flatten(spec["spec"], "spec").items():
            assert p[key] == (value if isinstance(value, str) else json.dumps(value)), key
        assert {k.removeprefix("parent.") for k in p if k.startswith("parent.")} == set(spec["parents"])
        # accuracy per split and cost
        for split, acc in metrics["accuracy"].items():
            assert m[f"accuracy.{split}"] == pytest.approx(acc)
        for key in ("params", "macs", "bops", "bytes"):
            assert m[f"cost.{key}"] == pytest.approx(metrics["cost"][key])
        # what the study measured against the parent
        assert m["study.function.agreement"] == pytest.approx(rows[entry]["function"]["agreement"])
        # paths, not files
        assert t["compresslab.step_dir"] == str(step_dir) and t["compresslab.entry"] == entry
        assert Path(t["compresslab.checkpoint"]) == step_dir / "model.safetensors"
        assert t["compresslab.reused"] == "false"
        assert not list((root / "mlruns").rglob("model.safetensors"))
        # the training curve, indexed by epoch
        if "history" in metrics:
            for key in ("loss", "acc"):
                curve = sorted((x.step, x.value) for x in client.get_metric_history(run.info.run_id, f"history.{key}"))
                assert curve == [(h["epoch"], pytest.approx(h[key])) for h in metrics["history"]]
    trained = [r for r in children if "history.loss" in r.data.metrics]
    assert {r.info.run_name for r in trained} >= {"parent", "kd", "parent-seed1", "kd-scratch"}


def test_a_study_to_tensorboard(study, tmp_path):
    pytest.importorskip("tensorboard")
    root, study_dir, results = study
    spec = root / "tiny.yaml"
    tb = tmp_path / "tb"
    assert main(["study", str(spec), "--runs", str(root / "runs"), "--quiet", "--json", "--track", f"tensorboard:{tb}"]) == 0
    top = events(tb / study_dir.name)
    assert top.Scalars("steps.reused")[0].value == 6  # every step came from the store this time
    assert "headline/text_summary" not in top.Tags()["tensors"]  # the plain study has none
    for entry, dirname in results["steps"]["dirs"].items():
        metrics = read(root / "runs" / dirname / "metrics.json")
        acc = events(tb / study_dir.name / entry)
        assert acc.Scalars("accuracy.test")[0].value == pytest.approx(metrics["accuracy"]["test"], rel=1e-6)
        assert acc.Scalars("cost.macs")[0].value == pytest.approx(metrics["cost"]["macs"], rel=1e-6)
        assert {"params/text_summary", "paths/text_summary"} <= set(acc.Tags()["tensors"])
        if "history" in metrics:
            curve = [(e.step, e.value) for e in acc.Scalars("history.loss")]
            assert curve == [(h["epoch"], pytest.approx(h["loss"], rel=1e-6)) for h in metrics["history"]]


def test_train_and_prune_commands_track_their_step(capsys, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    runs, tb, mlruns = tmp_path / "runs", tmp_path / "tb", tmp_path / "mlruns"
    assert main(["train", *TINY, "--runs", str(runs), "--track", f"tensorboard:{tb}"]) == 0
    out, err = capsys.readouterr()
    trained = Path(json.loads(out)["checkpoint"])
    assert err == f"tracked 1 step in TensorBoard {tb}\n"
    acc = events(tb / trained.name)
    history = read(trained / "metrics.json")["history"]
    assert [(e.step, e.value) for e in acc.Scalars("history.acc")] == [
        (h["epoch"], pytest.approx(h["acc"], rel=1e-6)) for h in history]

    assert main(["prune", str(trained), "--data", "mnist1d", "--amount", "0.5", "--runs", str(runs), "--quiet", "--json",
                 "--track", f"mlflow:{mlruns}"]) == 0
    pruned = Path(json.loads(capsys.readouterr().out)["checkpoint"])
    client, exp = client_at(mlruns)
    (run,) = client.search_runs([exp])
    assert run.info.run_name == pruned.name and run.data.params["kind"] == "prune"
    assert run.data.params["spec.amount"] == "0.5"
    # a checkpoint given on the command line is a parent named by its content hash; the label names its directory
    assert run.data.params["parent.parent"] == read(pruned / "spec.json")["parents"]["parent"]
    assert run.data.tags["compresslab.label"] == f"prune {trained.name}"
    metrics = read(pruned / "metrics.json")
    assert run.data.metrics["cost.nonzero_params"] == metrics["cost"]["nonzero_params"]
    assert run.data.metrics["cost.nonzero_params"] < run.data.metrics["cost.params"]
    assert run.data.tags["compresslab.reused"] == "false" and run.info.status == "FINISHED"


def test_an_unreachable_server_warns_in_one_line_and_the_run_completes(capsys, tmp_path):
    pytest.importorskip("mlflow")
    runs = tmp_path / "runs"
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["train", *TINY, "--runs", str(runs), "--track", f"mlflow:{url}"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"warning: --track mlflow:{url}: could not log"), err
    assert f"no server answered at {url}" in err and "the run store is complete" in err
    assert (Path(json.loads(out)["checkpoint"]) / "model.safetensors").is_file()


@pytest.mark.parametrize("backend, module", [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_package_warns_in_one_line_and_the_run_completes(capsys, monkeypatch, tmp_path, backend, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import` of it now raises ImportError
    where = tmp_path / "tracked"
    assert main(["train", *TINY, "--runs", str(tmp_path / "runs"), "--track", f"{backend}:{where}"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and f"the {backend} package is not installed" in err, err
    assert f"compresslab[{backend}]" in err
    assert (Path(json.loads(out)["checkpoint"]) / "spec.json").is_file()
    assert not where.exists()
