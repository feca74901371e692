"""`compresslab ls / show / pin / gc` on a real tiny run store: one study, two single-step
trainings and a pruned child of one of them (a checkpoint parent)."""
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_STUDY

from compresslab.api import _checkpoint_step
from compresslab.cli import main
from compresslab.runs.browse import checkpoint_dirname
from compresslab.study.references import studies


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The store, built once: {"root", "study", "train", "train2", "prune"} (dir names)."""
    base = tmp_path_factory.mktemp("store")
    runs = base / "runs"
    (base / "tiny.yaml").write_text(TINY_STUDY.format(epochs=1))
    assert main(["study", str(base / "tiny.yaml"), "--runs", str(runs), "-q"]) == 0
    names = {}
    for key, seed in (("train", 0), ("train2", 1)):
        before = set(os.listdir(runs))
        assert main(["train", "-m", "mlp", "-d", "digits", "--epochs", "1", "--seed", str(seed), "--runs", str(runs),
                     "-q"]) == 0
        (names[key],) = set(os.listdir(runs)) - before
    before = set(os.listdir(runs))
    assert main(["prune", str(runs / names["train"]), "--amount", "0.5", "-d", "digits", "--finetune-epochs", "0",
                 "--runs", str(runs), "-q"]) == 0
    (names["prune"],) = set(os.listdir(runs)) - before
    (names["study"],) = os.listdir(runs / "studies")
    return {"root": runs, **names}


@pytest.fixture
def store(built, tmp_path):
    """A private copy of the built store (file times kept)."""
    root = tmp_path / "runs"
    shutil.copytree(built["root"], root)
    return {**built, "root": root}


def step_names(root: Path) -> set[str]:
    return {d.name for d in root.iterdir() if (d / "spec.json").is_file()}


def reachable(root: Path, roots: set[str]) -> set[str]:
    """Brute force: follow spec.json parents, checkpoint parents by the API's own hashing."""
    by_checkpoint = {_checkpoint_step(root / n).dirname: n for n in step_names(root) if (root / n / "model.json").exists()}
    seen, todo = set(), list(roots)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        spec = root / n / "spec.json"
        if spec.is_file():
            todo += [by_checkpoint.get(p, p) for p in json.loads(spec.read_text())["parents"].values()]
    return seen


def study_dirs(root: Path) -> dict[str, str]:
    (d,) = (root / "studies").iterdir()
    return json.loads((d / "results.json").read_text())["steps"]["dirs"]


def test_ls_lists_every_step_and_the_study(store, capsys):
    root = store["root"]
    rc, out, _ = cli(capsys, "ls", root, "--json")
    r = json.loads(out)
    assert rc == 0 and {s["dir"] for s in r["steps"]} == step_names(root)
    times = [s["time"] for s in r["steps"]]
    assert times == sorted(times, reverse=True)
    for s in r["steps"]:
        d = root / s["dir"]
        metrics = json.loads((d / "metrics.json").read_text())
        assert s["test_acc"] == metrics["accuracy"]["test"] and s["params"] == metrics["cost"]["params"]
        assert s["bytes"] == sum(p.stat().st_size for p in d.iterdir())
        assert s["parents"] == json.loads((d / "spec.json").read_text())["parents"]
        assert s["studies"] == (1 if s["dir"] in reachable(root, set(study_dirs(root).values())) else 0)
    (st,) = r["studies"]
    assert st["dir"] == store["study"] and st["source"] == "recorded" and st["steps"] == study_dirs(root)

    rc, out, _ = cli(capsys, "ls", root, "--kind", "prune", "--json")
    assert {s["dir"] for s in json.loads(out)["steps"]} == {n for n in step_names(root) if n.startswith("prune-")}

    rc, out, _ = cli(capsys, "ls", root)
    assert rc == 0 and all(n in out for n in step_names(root)) and store["study"] in out


def test_show_lineage_and_studies(store, capsys):
    root, dirs = store["root"], study_dirs(store["root"])
    rc, out, _ = cli(capsys, "show", root / dirs["kd"], "--json")
    r = json.loads(out)
    assert rc == 0 and r["studies"] == [store["study"]]
    assert r["spec"] == json.loads((root / dirs["kd"] / "spec.json").read_text())["spec"]
    assert r["lineage"]["parents"]["teacher"]["dir"] == dirs["parent"]
    assert r["lineage"]["parents"]["teacher"]["in_store"] and r["lineage"]["parents"]["teacher"]["parents"] == {}

    # a single-step child's checkpoint parent is found again by content; a hash prefix works with --runs
    prefix = store["prune"].split("-")[1][:6]
    rc, out, _ = cli(capsys, "show", prefix, "--runs", root, "--json")
    r = json.loads(out)
    parent = r["lineage"]["parents"]["parent"]
    assert r["dir"] == store["prune"] and r["studies"] == []
    assert parent["dir"] == store["train"] and parent["recorded_as"].startswith("checkpoint-")

    rc, out, _ = cli(capsys, "show", store["prune"], "--runs", root)
    assert rc == 0 and store["train"] in out and "recorded as checkpoint-" in out


def test_checkpoint_names_match_the_api(store):
    for n in step_names(store["root"]):
        assert checkpoint_dirname(store["root"] / n) == _checkpoint_step(store["root"] / n).dirname


def test_old_results_are_expanded_again(store):
    root = store["root"]
    path = root / "studies" / store["study"] / "results.json"
    results = json.loads(path.read_text())
    recorded = results["steps"].pop("dirs")
    path.write_text(json.dumps(results))
    (st,) = studies(root)
    assert st["source"] == "expanded" and st["steps"] == recorded and st["warning"] is None

    results["spec"]["recipe"]["epochs"] = -1  # no longer validates: keep what existed when it was written
    path.write_text(json.dumps(results))
    t = path.stat().st_mtime
    (st,) = studies(root)
    assert st["source"] == "older" and "cannot tell its steps" in st["warning"]
    assert set(st["steps"]) == {n for n in step_names(root) if (root / n / "spec.json").stat().st_mtime <= t}
    assert set(recorded.values()) <= set(st["steps"])


def test_gc_deletes_exactly_the_unreferenced_unpinned_steps(store, capsys):
    root = store["root"]
    assert cli(capsys, "pin", store["prune"], "--runs", root)[0] == 0
    assert (root / ".pins" / f"{store['prune']}.json").is_file()
    names = step_names(root)
    keep = reachable(root, set(study_dirs(root).values()) | {store["prune"]})
    expected = names - keep
    assert expected == {store["train2"]} and store["train"] in keep  # kept through the pinned child
    rc, out, _ = cli(capsys, "ls", root, "--json")
    assert {s["dir"] for s in json.loads(out)["steps"] if s["kept_by_pin"]} == reachable(root, {store["prune"]})
    size = sum(p.stat().st_size for n in expected for p in (root / n).rglob("*") if p.is_file())

    rc, out, _ = cli(capsys, "gc", root, "--keep-studies", "--min-age", "0", "--dry-run", "--json")
    assert rc == 0 and set(json.loads(out)["delete"]) == expected and json.loads(out)["bytes"] == size
    assert step_names(root) == names

    rc, out, _ = cli(capsys, "gc", root, "--keep-studies", "--min-age", "0", "--yes", "--json")
    r = json.loads(out)
    assert rc == 0 and set(r["deleted"]) == expected and r["bytes_freed"] == size and r["skipped"] == []
    assert step_names(root) == names - expected
    assert not any((root / ".tmp").iterdir())

    # unpinned, the pruned child and its checkpoint parent go too
    assert cli(capsys, "pin", store["prune"], "--runs", root, "--unpin")[0] == 0
    rc, out, _ = cli(capsys, "gc", root, "--keep-studies", "--min-age", "0", "--dry-run", "--json")
    assert set(json.loads(out)["delete"]) == {store["prune"], store["train"]}


def test_gc_keeps_recent_steps_and_asks(store, capsys, monkeypatch):
    root = store["root"]
    names = step_names(root)
    rc, out, _ = cli(capsys, "gc", root, "--keep-studies", "--dry-run", "--json")  # default --min-age 60
    assert rc == 0 and json.loads(out)["delete"] == [] and set(json.loads(out)["recent"]) == names

    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    rc, out, _ = cli(capsys, "gc", root, "--keep-studies", "--min-age", "0")
    assert rc == 1 and "nothing deleted" in out and store["train2"] in out
    assert step_names(root) == names


def test_gc_skips_a_step_another_process_holds(store, capsys):
    root, victim = store["root"], store["train2"]
    (root / ".locks").mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(root / '.locks' / (victim + '.lock'))!r}, 'a+')\n"
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, out, err = cli(capsys, "gc", root, "--keep-studies", "--min-age", "0", "--yes", "--json")
        r = json.loads(out)
        assert rc == 0 and victim not in r["deleted"] and r["skipped"] == [{"step": victim,
                                                                          "reason": "locked by another process"}]
        assert victim in r["writers"] and "being written" in err
        assert (root / victim / "spec.json").is_file()
    finally:
        holder.kill()
        holder.wait()
    with open(root / ".locks" / f"{victim}.lock", "a+") as f:  # the lock is free again
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    rc, out, _ = cli(capsys, "gc", root, "--keep-studies", "--min-age", "0", "--yes", "--json")
    assert victim in json.loads(out)["deleted"] and not (root / victim).exists()


def test_pin_marks_a_step(store, capsys):
    root = store["root"]
    rc, out, _ = cli(capsys, "pin", root / store["train2"], "--json")
    assert rc == 0 and json.loads(out) == {"root": str(root.resolve()), "step": store["train2"], "pinned": True,
                                           "changed": True}
    rc, out, _ = cli(capsys, "ls", root, "--json")
    assert [s["pinned"] for s in json.loads(out)["steps"] if s["dir"] == store["train2"]] == [True]
    rc, out, _ = cli(capsys, "pin", store["train2"], "--runs", root, "--unpin")
    assert rc == 0 and "unpinned" in out and not (root / ".pins" / f"{store['train2']}.json").exists()


@pytest.mark.parametrize("args, message", [
    (["show", "train-0000", "--runs", "{root}"], "no step 'train-0000'"),
    (["show", "train-", "--runs", "{root}"], "matches"),
    (["show", "{tmp}/nothing-here"], "not a step directory"),
    (["ls", "{tmp}"], "not a run store"),
    (["ls", "{tmp}/missing"], "no such directory"),
    (["gc", "{root}"], "--keep-studies"),
    (["gc", "{root}", "--keep-studies", "--json"], "--dry-run or --yes"),
    (["gc", "s3://bucket/runs", "--keep-studies"], "remote run stores are not supported"),
])
def test_bad_input_is_one_line_and_exit_2(store, tmp_path, capsys, args, message):
    (tmp_path / "notes.txt").write_text("not a store")
    names = step_names(store["root"])
    args = [a.format(root=store["root"], tmp=tmp_path) for a in args]
    rc, out, err = cli(capsys, *args)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert step_names(store["root"]) == names

