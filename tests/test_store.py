"""Run store: content hashing, atomic publication, reuse, stale temp cleanup."""
import json
import os
import subprocess
import sys

import pytest

from compresslab.errors import UserError
from compresslab.runs.store import TMP, RunStore, Step, read_json


def test_hash_depends_on_spec_and_parents_not_on_key_order():
    a = Step("train", {"x": 1, "y": [1, 2]})
    b = Step("train", {"y": [1, 2], "x": 1})
    assert a.hash == b.hash
    assert Step("train", {"x": 2, "y": [1, 2]}).hash != a.hash
    assert Step("prune", {"amount": 0.5}, parents={"parent": a}).hash != \
        Step("prune", {"amount": 0.5}, parents={"parent": Step("train", {"x": 3})}).hash
    assert a.dirname.startswith("train-") and len(a.dirname) == len("train-") + 16


def test_run_publishes_once_and_reuses(tmp_path):
    store = RunStore(tmp_path)
    step = Step("train", {"x": 1})
    calls = []

    def work(d):
        calls.append(d)
        (d / "out.txt").write_text("hello")

    path, ran = store.run(step, work)
    assert ran and path == tmp_path / step.dirname
    assert (path / "out.txt").read_text() == "hello"
    spec = read_json(path / "spec.json")
    assert spec["hash"] == step.hash and spec["spec"] == {"x": 1}
    path2, ran2 = store.run(step, work)
    assert (path2, ran2) == (path, False) and len(calls) == 1


def test_failed_step_leaves_nothing(tmp_path):
    store = RunStore(tmp_path)
    step = Step("train", {"x": 1})

    def boom(d):
        (d / "half.bin").write_bytes(b"x" * 10)
        raise UserError("loss became nan")

    with pytest.raises(UserError):
        store.run(step, boom)
    assert not store.path(step).exists()
    assert not any((tmp_path / TMP).iterdir())


def test_stale_tmp_from_dead_process_is_removed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    stale = tmp_path / TMP / f"train-abc.{dead_pid}.deadbeef"
    live = tmp_path / TMP / f"train-def.{os.getpid()}.cafebabe"
    stale.mkdir(parents=True)
    live.mkdir(parents=True)
    RunStore(tmp_path)
    assert not stale.exists() and live.exists()


def test_store_on_a_file_is_a_user_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        RunStore(f)


def test_corrupt_json_names_the_file(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text("{not json")
    with pytest.raises(UserError, match="metrics.json"):
        read_json(p)
    p.write_text(json.dumps({"a": 1}))
    assert read_json(p) == {"a": 1}
