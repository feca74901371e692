"""Faults, each in a real subprocess: kill -9 mid-study, two runs of one study at once,
stale locks of dead processes, corrupted files and `compresslab doctor`."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from compresslab.cli import main
from compresslab.runs.store import COMPLETE, LOCKS, RunStore, Step
from compresslab.study import load_spec
from compresslab.study.plain import expand

SPEC = """\
name: faults
data: mnist1d
parent: {name: cnn1d, options: {width: 8, depth: 2, hidden: 16}}
recipe: {optimizer: adam, lr: 0.01, weight_decay: 0, epochs: 3, batch_size: 128}
children:
  - {name: kd, method: distill, student: {name: cnn1d, options: {width: 4, depth: 2, hidden: 8}}}
  - {name: pruned, method: prune, amount: 0.5, finetune_epochs: 2}
  - {name: w4, method: quantize, scheme: qat, bits: 4, epochs: 2}
controls: {seeds: [1, 2]}
latency: false
"""


def study_cmd(spec, runs, *extra):
    return [sys.executable, "-m", "compresslab.cli", "study", str(spec), "--runs", str(runs), "--quiet", *extra]


def finished(runs):
    return {d.name for d in runs.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "studies"
            and (d / "spec.json").is_file()}


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "faults.yaml"
    path.write_text(SPEC)
    return path


def test_kill_9_mid_study_then_resume_reuses_every_finished_step(spec, tmp_path, capsys):
    runs = tmp_path / "runs"
    proc = subprocess.Popen(study_cmd(spec, runs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:  # kill while a step is being written, after two have finished
        if runs.is_dir() and len(finished(runs)) >= 2 and any((runs / ".tmp").glob("*")):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = finished(runs)
    assert len(done_before) >= 2
    steps = [d for d in runs.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert {d.name for d in steps} == done_before  # no half-written step directory
    assert main(["study", str(spec), "--runs", str(runs), "--quiet", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    dirs = {e.name: e.step.dirname for e in expand(load_spec(spec))}
    ran = {dirs[n] for n in results["steps"]["ran"]}
    assert not ran & done_before  # nothing that had finished was trained again
    assert ran | {dirs[n] for n in results["steps"]["reused"]} == set(dirs.values())
    assert not any((runs / ".tmp").glob("*"))  # the killed run's temp directory is gone


def test_two_processes_running_one_study_share_the_work(spec, tmp_path):
    runs = tmp_path / "runs"
    procs = [subprocess.Popen(study_cmd(spec, runs, "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    a, b = (json.loads(o[0]) for o in outs)
    ran_a, ran_b = set(a["steps"]["ran"]), set(b["steps"]["ran"])
    assert not ran_a & ran_b  # no step was trained twice
    assert ran_a | ran_b == {e.name for e in expand(load_spec(spec))}
    assert [m["function"] for m in a["models"]] == [m["function"] for m in b["models"]]
    assert not any((runs / ".tmp").glob("*"))


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    step = Step("train", {"x": 1}, label="x")
    code = ("import sys, time; from compresslab.runs.store import RunStore, Step\n"
            f"s = RunStore({str(tmp_path)!r})\n"
            "with s.lock(Step('train', {'x': 1})):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    store = RunStore(tmp_path)
    from compresslab.runs.doctor import _lock_free

    lock_file = tmp_path / LOCKS / f"{step.dirname}.lock"
    assert not _lock_free(lock_file)  # a live holder keeps it
    assert json.loads(lock_file.read_text())["pid"] == holder.pid
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    t0 = time.perf_counter()
    with store.lock(step):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert time.perf_counter() - t0 < 2


def test_remote_lock_of_a_dead_process_is_stale(tmp_path):
    import socket

    import fsspec

    store = RunStore("memory://faults-lock", cache=tmp_path / "cache")
    step = Step("train", {"x": 2})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = f"{store.base}/{LOCKS}/{step.dirname}.lock"
    fs = fsspec.filesystem("memory")
    fs.pipe(path, json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "time": time.time()}).encode())
    with store.lock(step):
        assert json.loads(fs.cat(path))["pid"] == os.getpid()
    assert not fs.exists(path)


def test_nan_step_in_a_subprocess_exits_3_and_keeps_the_rest(spec, tmp_path):
    spec.write_text(SPEC.replace("amount: 0.5, finetune_epochs: 2", "amount: 0.5, finetune_epochs: 2, finetune_lr: 1e37"))
    runs = tmp_path / "runs"
    proc = subprocess.run(study_cmd(spec, runs, "--json"), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1 and "pruned: " in proc.stderr
    results = json.loads(proc.stdout)
    assert list(results["failed"]) == ["pruned"]
    assert len(finished(runs)) == len(expand(load_spec(spec))) - 1  # every independent step finished


def test_corrupted_files_are_named_and_doctor_removes_them(capsys, tmp_path):
    from conftest import TINY_STUDY

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_STUDY.format(epochs=1))
    runs = tmp_path / "runs"
    assert main(["study", str(spec), "--runs", str(runs), "--quiet"]) == 0
    capsys.readouterr()
    entries = {e.name: e.step.dirname for e in expand(load_spec(spec))}
    weights = runs / entries["pruned"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    (runs / entries["kd"] / "metrics.json").write_text('{"accuracy": ')  # corrupted
    proc = subprocess.run([sys.executable, "-m", "compresslab.cli", "evaluate", str(runs / entries["pruned"]),
                           "--data", "mnist1d"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert str(weights) in proc.stderr and "unreadable safetensors" in proc.stderr and "doctor" in proc.stderr
    assert main(["study", str(spec), "--runs", str(runs), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(runs / entries["kd"] / "metrics.json") in err and len(err.strip().splitlines()) == 1

    assert main(["doctor", str(runs), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {b["step"] for b in report["broken"]} == {entries["pruned"], entries["kd"]}
    assert report["steps"] == len(set(entries.values()))
    assert main(["doctor", str(runs), "--remove"]) == 0
    assert "removed 2 broken steps" in capsys.readouterr().out
    assert main(["doctor", str(runs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["broken"] == []
    assert main(["study", str(spec), "--runs", str(runs), "--quiet", "--json"]) == 0  # rebuilds only those two
    assert set(json.loads(capsys.readouterr().out)["steps"]["ran"]) == {"kd", "pruned"}


def test_remote_store_trusts_only_completed_steps(tmp_path, capsys):
    from conftest import TINY_STUDY

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_STUDY.format(epochs=1))
    url = "memory://faults-store/runs"
    code = main(["study", str(spec), "--runs", url, "--quiet", "--json"])
    assert code == 0
    first = json.loads(capsys.readouterr().out)
    store = RunStore(url, cache=tmp_path / "fresh-cache")  # a worker on "another machine": empty cache
    entries = expand(load_spec(spec))
    assert all(store.is_done(e.step) for e in entries)
    parent = store.path(entries[0].step)
    assert (parent / "model.safetensors").is_file() and (parent / COMPLETE).is_file()
    assert store.fs.exists(f"{store.base}/studies")  # the study's outputs are shared too
    # a step whose files were uploaded but whose marker was not is not trusted
    store.fs.rm(f"{store.base}/{entries[1].step.dirname}/{COMPLETE}")
    assert not store.is_done(entries[1].step)
    assert main(["study", str(spec), "--runs", url, "--quiet", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["steps"]["ran"] == [entries[1].name]
    assert [m["function"] for m in again["models"]] == [m["function"] for m in first["models"]]
