"""Executors: local worker processes and a real local Ray cluster give bit-identical results."""
import json

import pytest
import torch

from compresslab.cli import main

SPEC = """\
name: executors
data: mnist1d
parent: {name: cnn1d, options: {width: 8, depth: 2, hidden: 16}}
recipe: {optimizer: adam, lr: 0.01, weight_decay: 0, epochs: 1, batch_size: 256}
children:
  - {name: kd, method: distill, student: {name: cnn1d, options: {width: 4, depth: 2, hidden: 8}}}
  - {name: pruned, method: prune, amount: 0.5}
  - {name: w4, method: quantize, scheme: fake, bits: 4}
controls: {seeds: [1]}
latency: false
"""
METRIC_KEYS = ("name", "accuracy", "accuracy_val", "function", "cost")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def metrics(results):
    return [{k: m[k] for k in METRIC_KEYS} for m in results["models"]]


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "ex.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_local_workers_and_ray_give_bit_identical_results(capsys, spec, tmp_path, ray_cluster):
    code, out, err = run(capsys, "study", spec, "--runs", tmp_path / "local", "--workers", 2, "--quiet", "--json")
    assert code == 0, err
    local = json.loads(out)
    code, out, err = run(capsys, "study", spec, "--runs", tmp_path / "ray", "--executor", "ray", "--quiet", "--json")
    assert code == 0, err
    on_ray = json.loads(out)
    assert metrics(on_ray) == metrics(local)
    assert len(on_ray["steps"]["ran"]) == 6 and on_ray["steps"]["reused"] == []
    # finished steps are skipped before submission
    code, out, err = run(capsys, "study", spec, "--runs", tmp_path / "ray", "--executor", "ray", "--quiet", "--json")
    assert code == 0, err
    assert json.loads(out)["steps"]["ran"] == []


def test_local_workers_resume_and_match_sequential_threads(capsys, spec, tmp_path):
    code, out, err = run(capsys, "study", spec, "--runs", tmp_path / "w", "--workers", 2, "--quiet", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert sorted(first["steps"]["ran"]) == sorted(["parent", "kd", "pruned", "w4", "parent-seed1", "kd-scratch"])
    code, out, err = run(capsys, "study", spec, "--runs", tmp_path / "w", "--quiet", "--json")
    assert code == 0 and json.loads(out)["steps"]["ran"] == []


@pytest.mark.parametrize("args,needle", [
    (["--executor", "dask"], "use local or ray"),
    (["--workers", "0"], "use auto or an integer >= 1"),
    (["--workers", "many"], "use auto or an integer >= 1"),
    (["--ray-address", "auto"], "needs --executor ray"),
    (["--gpus-per-step", "0.5"], "--gpus-per-step needs --executor ray"),
    pytest.param(["--executor", "ray", "--gpus-per-step", "1"], "this machine has no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    (["--executor", "ray", "--gpus-per-step", "-1"], "must be >= 0"),
])
def test_executor_bad_input(capsys, spec, tmp_path, args, needle):
    code, _, err = run(capsys, "study", spec, "--runs", tmp_path / "r", "--quiet", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_worker_processes_share_an_fsspec_store(capsys, spec, tmp_path):
    """`local://` goes through the fsspec remote store (upload, then the _COMPLETE marker, lock
    objects) on a real filesystem that worker processes share; results match a plain directory."""
    remote = tmp_path / "remote"
    code, out, err = run(capsys, "study", spec, "--runs", f"local://{remote}", "--workers", 2, "--quiet", "--json")
    assert code == 0, err
    shared = json.loads(out)
    code, out, err = run(capsys, "study", spec, "--runs", tmp_path / "plain", "--workers", 2, "--quiet", "--json")
    assert code == 0, err
    assert metrics(shared) == metrics(json.loads(out))
    steps = [d for d in remote.iterdir() if d.name.startswith(("train-", "distill-", "prune-", "quantize-"))]
    assert len(steps) == 6 and all((d / "_COMPLETE").is_file() for d in steps)
    assert not any((remote / ".locks").iterdir())  # every lock object was released
    assert any((remote / "studies").iterdir())
