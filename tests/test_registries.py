"""Study kinds and step kinds are registries: a new kind is one module, with no edit elsewhere.

The toy kinds below stand in for that module: registering them is all it takes for
``compresslab study`` to parse, check, run, resume and report them.
"""
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.runs.store import RunStore, Step, read_json, write_json
from compresslab.steps import data_of, get_step, list_steps, register_step, registry
from compresslab.study import Entry, kinds, list_study_kinds, parse_spec, register_study_kind, run_kind


@pytest.fixture(autouse=True)
def clean_registries(monkeypatch):
    """Kinds a test registers are gone after it."""
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))
    monkeypatch.setattr(registry, "_STEPS", dict(registry._STEPS))


class ToySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["toy"]
    name: str = "toy"
    data: str = "digits"
    scales: list[float] = [1.0, 2.0]


def check_scaled_mean(step: Step, parents: dict) -> None:
    if step.spec["scale"] <= 0:
        raise UserError(f"scale {step.spec['scale']}: must be > 0")


def register_toys(calls: list):
    @register_step("scaled-mean", check=check_scaled_mean)
    def run(step, out: Path, parents, callback=None):
        calls.append(step.spec["scale"])
        x = data_of(step.spec).x_train
        write_json(out / "mean.json", {"mean": float(x.mean()) * step.spec["scale"]})

    def expand(spec: ToySpec) -> list[Entry]:
        data = {"name": spec.data, "val_fraction": 0.1, "seed": 0}
        return [Entry(f"x{s:g}", "child", "scaled-mean", Step("scaled-mean", {"data": data, "scale": s}), {"scale": s})
                for s in spec.scales]

    def collect(spec, entries, store: RunStore, progress=None) -> dict:
        return {"means": {e.name: read_json(store.path(e.step) / "mean.json")["mean"] for e in entries}}

    def report(results, path: Path):
        path.write_text(f"<html><body>{json.dumps(results['means'])}</body></html>")

    def show(results, out):
        print(f"toy means: {results['means']}")

    register_study_kind("toy", spec=ToySpec, expand=expand, collect=collect, report=report, print=show)


def test_a_new_study_kind_and_step_kind_run_through_the_cli(tmp_path, capsys):
    calls = []
    register_toys(calls)
    assert "toy" in list_study_kinds() and "scaled-mean" in list_steps()
    spec = tmp_path / "toy.yaml"
    spec.write_text(yaml.safe_dump({"kind": "toy", "scales": [1.0, 3.0]}))
    runs = tmp_path / "runs"
    assert main(["study", str(spec), "--runs", str(runs), "--quiet", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    from compresslab.data import load_dataset

    mean = float(load_dataset("digits", val_fraction=0.1, seed=0).x_train.mean())
    assert results["means"] == pytest.approx({"x1": mean, "x3": 3 * mean})
    assert results["kind"] == "toy" and results["data"]["name"] == "digits" and sorted(calls) == [1.0, 3.0]
    assert main(["study", str(spec), "--runs", str(runs), "--quiet"]) == 0  # resumes: nothing runs again
    assert capsys.readouterr().out.startswith("toy means: ") and len(calls) == 2
    out = next((runs / "studies").iterdir())
    assert json.loads((out / "results.json").read_text())["means"] == results["means"]
    assert "x3" in (out / "report.html").read_text()


def test_a_step_check_rejects_before_anything_is_written(tmp_path, capsys):
    register_toys([])
    spec = tmp_path / "toy.yaml"
    spec.write_text(yaml.safe_dump({"kind": "toy", "scales": [1.0, -2.0]}))
    assert main(["study", str(spec), "--runs", str(tmp_path / "runs"), "--quiet"]) == 2
    assert capsys.readouterr().err == "error: scale -2.0: must be > 0\n"
    assert not (tmp_path / "runs").exists()


def test_unknown_kinds_name_the_known_ones():
    with pytest.raises(UserError, match=r"spec: unknown study kind 'nope'; known kinds: .*kd-functional.*moonshine"):
        parse_spec({"kind": "nope"})
    with pytest.raises(UserError, match=r"no step kind .nope. registered; known step kinds: adversarial, blockswap, "
                       r".*distill, .*embed-qat, .*prune, .*train"):
        get_step("nope")
    with pytest.raises(UserError, match="kind must be a string"):
        parse_spec({"kind": ["toy"]})


def test_registering_a_kind_twice_is_an_error():
    register_toys([])
    with pytest.raises(ValueError, match="already registered"):
        register_study_kind("toy", spec=ToySpec, expand=None, collect=None, report=None, print=None)
    with pytest.raises(ValueError, match="already registered"):
        register_step("train")(lambda *a: None)


def test_run_kind_is_the_python_api_of_the_same_thing(tmp_path):
    register_toys([])
    results, out = run_kind(parse_spec({"kind": "toy", "scales": [2.0]}), tmp_path / "runs")
    assert list(results["means"]) == ["x2"] and np.isfinite(results["means"]["x2"])
    assert out.parent == tmp_path / "runs" / "studies" and results["steps"]["ran"] == ["x2"]
