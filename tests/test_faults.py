"""Faults, each in a real subprocess: kill -9 mid-study, two runs of one study at once,
stale locks of dead processes, corrupted files and `compresslab doctor`; a SIGKILL at each
of the store's write points, a full disk and a remote store that errors (issue 19,
``docs/reliability.md``). All marked ``faults`` (skip them with ``-m 'not faults'``)."""
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import deterministic
from fsspec.implementations.local import LocalFileSystem

from compresslab.cli import main
from compresslab.errors import UserError
from compresslab.runs import faults
from compresslab.runs.doctor import check_step, diagnose
from compresslab.runs.store import COMPLETE, LOCKS, RunStore, Step, StoreError, disk_full
from compresslab.study import load_spec
from compresslab.study.plain import expand

pytestmark = pytest.mark.faults

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


# --- issue 19: a kill at any write point, a full disk, a remote store that errors --------------------------------
# The studies below run the real CLI in subprocesses. The write points and the fault hook are
# compresslab.runs.faults; docs/reliability.md tables what each fault does and what the user does.

#: Three steps (train, prune, quantize), one epoch, no latency: every number in results.json
#: but the timings is a pure function of the spec, so runs compare exactly.
KILL_SPEC = """\
name: kills
data: mnist1d
parent: {name: cnn1d, options: {width: 8, depth: 2, hidden: 16}}
recipe: {optimizer: adam, lr: 0.01, weight_decay: 0, epochs: 1, batch_size: 256}
children:
  - {name: pruned, method: prune, amount: 0.5}
  - {name: int8, method: quantize}
controls: {seeds: []}
latency: false
"""
TESTS = Path(__file__).parent
#: Runs the CLI with the flaky:// filesystem below registered (the CLI itself cannot know it).
FLAKY_MAIN = ("import sys; sys.path.insert(0, {tests!r}); import test_faults; test_faults.FlakyFileSystem.register(); "
              "from compresslab.cli import main; sys.exit(main(sys.argv[1:]))")


def cli_env(home: Path, **extra: str) -> dict:
    """The subprocess environment: one torch thread, its own remote-store cache under ``home``,
    millisecond retry sleeps, no warnings (stderr is then the one error line), no fault unless
    ``extra`` sets one."""
    env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.LOG_ENV)}
    return {**env, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(home / "cache"), "PYTHONWARNINGS": "ignore",
            "COMPRESSLAB_REMOTE_RETRY": "6:0.001", **extra}


def run_study(spec: Path, runs: str | Path, env: dict, flaky: bool = False) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", FLAKY_MAIN.format(tests=str(TESTS))] if flaky else \
        [sys.executable, "-m", "compresslab.cli"]
    return subprocess.run([*head, "study", str(spec), "--runs", str(runs), "--quiet", "--json"],
                          capture_output=True, text=True, env=env, timeout=600)



def read_trace(path: Path) -> list[tuple[str, int, str]]:
    """``(point, n, detail)`` per line of a COMPRESSLAB_FAULT_LOG file."""
    if not path.is_file():
        return []
    return [(p, int(n), detail) for _, p, n, *rest in (line.split(" ", 3) for line in path.read_text().splitlines())
            for detail in [rest[0] if rest else ""]]


def schedule(trace: list[tuple[str, int, str]], k: int, rng: random.Random) -> list[tuple[str, int, str]]:
    """``k`` instants of ``trace``: the points in a shuffled order, round-robin, each point's
    hits shuffled, so every point is drawn before any is drawn twice."""
    by_point = defaultdict(list)
    for hit in trace:
        by_point[hit[0]].append(hit)
    points = sorted(by_point)
    rng.shuffle(points)
    for hits in by_point.values():
        rng.shuffle(hits)
    out = []
    while len(out) < k and any(by_point.values()):
        out += [by_point[p].pop() for p in points if by_point[p]][: k - len(out)]
    return out


def assert_clean(runs: Path) -> None:
    """`compresslab doctor`'s diagnosis finds nothing broken and no temp dir; no temp file is left anywhere."""
    report = diagnose(runs)  # what `compresslab doctor` prints (in process: one CLI start less per kill)
    assert report["broken"] == [] and report["stale_tmp"] == [], report
    assert not list(runs.rglob(".*.tmp")), list(runs.rglob(".*.tmp"))


def assert_remote_complete(base: Path) -> None:
    """Every step directory of a remote store has its _COMPLETE marker and every file it lists."""
    steps = [d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "studies"]
    assert steps
    for d in steps:
        listed = json.loads((d / COMPLETE).read_text())["files"]
        assert sorted(listed) == sorted(p.name for p in d.iterdir() if p.name != COMPLETE) and check_step(d) == []


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Undisturbed runs of KILL_SPEC with the fault log on: a local store, a remote store
    (``local://``), and a second machine (an empty cache) reading that remote store.
    Returns the spec, the local run's deterministic results and the three traces."""
    home = tmp_path_factory.mktemp("clean")
    spec = home / "kills.yaml"
    spec.write_text(KILL_SPEC)
    traces, results = {}, {}
    for name, runs, env_home in (("local", home / "runs", home), ("remote", f"local://{home}/remote", home),
                                 ("download", f"local://{home}/remote", home / "machine2")):
        log = home / f"{name}.trace"
        proc = run_study(spec, runs, cli_env(env_home, **{faults.LOG_ENV: str(log)}))
        assert proc.returncode == 0, proc.stderr
        traces[name], results[name] = read_trace(log), deterministic(json.loads(proc.stdout))
    assert results["remote"] == results["local"] == results["download"]  # the store does not change a number
    return {"spec": spec, "results": results["local"], "traces": traces, "remote": home / "remote", "home": home}


def test_fault_hook_parses_counts_and_acts(tmp_path):
    log = tmp_path / "log"
    assert faults.parse("spec:2, remote-put:5:eio") == {("spec", 2): "kill", ("remote-put", 5): "eio"}
    for bad in ("nowhere:1", "spec:0", "spec:x", "spec:1:explode"):
        with pytest.raises(ValueError, match="expected <point>:<n>"):
            faults.parse(bad)
    try:
        faults.configure("json:2:enospc", str(log))
        faults.hit("json", "a.json")  # the first hit passes
        with pytest.raises(OSError) as e:
            faults.hit("json", "b.json")
        assert e.value.errno == errno.ENOSPC and e.value.filename == "b.json" and disk_full(e.value)
        faults.hit("json", "c.json")  # only the 2nd
        with pytest.raises(ValueError, match="unknown fault point"):
            faults.hit("jsn")
    finally:
        faults.configure(None)
    assert [line.split()[1:] for line in log.read_text().splitlines()] == [
        ["json", "1", "a.json"], ["json", "2", "b.json"], ["json", "3", "c.json"]]
    faults.hit("not-checked-when-off")  # unset: nothing happens, not even the name check


def test_a_step_that_failed_before_is_never_finished_and_failed_at_once(tmp_path):
    """The failure record goes before the publishing rename: a kill just after it (point
    ``renamed``, simulated here by an injected error) finds no stale record of a done step."""
    store, step = RunStore(tmp_path / "runs"), Step("train", {"x": 3})
    store.record_failure(step, UserError("loss is NaN"))
    record = tmp_path / "runs" / ".failed" / f"{step.dirname}.json"
    assert record.is_file()
    try:
        faults.configure("renamed:1:eio")
        with pytest.raises(OSError, match="injected"):
            store.run(step, lambda out: (out / "w.txt").write_text("ok"))
    finally:
        faults.configure(None)
    assert store.is_done(step) and not record.exists()


def test_every_write_point_is_hit_by_a_tiny_study(clean):
    hit = {p for trace in clean["traces"].values() for p, _, _ in trace}
    assert hit == set(faults.POINTS), f"never reached: {set(faults.POINTS) - hit}; not in POINTS: {hit - set(faults.POINTS)}"


def _kill_and_rerun(case: tuple[int, str, str, int, str], clean: dict, home: Path) -> dict:
    """One instant: run the study with a SIGKILL there, check what is left, rerun it."""
    i, scenario, point, n, detail = case
    spec, work = clean["spec"], home / f"kill{i:02d}"
    work.mkdir()
    local, remote = work / "runs", work / "remote"
    runs = local if scenario == "local" else f"local://{remote}"
    if scenario == "download":  # the study finished on another machine; this one's cache is empty
        shutil.copytree(clean["remote"], remote)
    killed = run_study(spec, runs, cli_env(work, **{faults.ENV: f"{point}:{n}:kill"}))
    assert killed.returncode == -signal.SIGKILL, (case, killed.returncode, killed.stderr[-500:])
    if scenario == "local":  # nothing half-written under a step's name
        assert all(check_step(d) == [] for d in local.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and d.name != "studies")
    rerun = run_study(spec, runs, cli_env(work))
    assert rerun.returncode == 0, (case, rerun.stderr[-2000:])
    assert deterministic(json.loads(rerun.stdout)) == clean["results"], case
    if scenario == "local":
        assert_clean(local)
    else:
        cache = next((work / "cache" / "compresslab" / "stores").iterdir())
        assert_clean(cache)
        assert_remote_complete(remote)
    return {"i": i, "scenario": scenario, "point": point, "n": n, "detail": detail.replace(str(clean["home"]), "…")}


@pytest.mark.slow
def test_kill_at_20_seeded_write_points_then_rerun_completes_clean_and_equal(clean, tmp_path):
    """20 SIGKILLs at instants drawn (seed 19) from the clean runs' traces: 12 in a local
    store, 6 in a remote store while steps upload, 2 while a second machine downloads. After
    each: the rerun exits 0, doctor finds a clean store, results.json equals the clean run's."""
    rng = random.Random(19)
    traces = clean["traces"]
    remote_trace = [h for h in traces["remote"] if h[0].startswith("remote-") or h[0] in ("lock", "renamed")]
    plan = [("local", h) for h in schedule(traces["local"], 12, rng)] + \
        [("remote", h) for h in schedule(remote_trace, 6, rng)] + \
        [("download", h) for h in schedule(traces["download"], 2, rng)]
    cases = [(i, scenario, *hit) for i, (scenario, hit) in enumerate(plan)]
    with ThreadPoolExecutor(max(1, min(4, (os.cpu_count() or 1)))) as pool:
        done = list(pool.map(lambda c: _kill_and_rerun(c, clean, tmp_path), cases))
    lines = [f"  {d['i']:2d} {d['scenario']:8s} {d['point']}:{d['n']} {d['detail']}" for d in done]
    print("\nkill instants hit (scenario point:n detail):", *lines, sep="\n")
    if os.environ.get("COMPRESSLAB_ARTIFACTS"):  # CI keeps them (pytest -q hides the print)
        out = Path(os.environ["COMPRESSLAB_ARTIFACTS"]) / "faults"
        out.mkdir(parents=True, exist_ok=True)
        (out / "kill-instants.txt").write_text("\n".join(lines) + "\n")
    assert len(done) == 20
    assert {d["point"] for d in done} == set(faults.POINTS)  # every write point was killed at least once


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``where``; None when this machine does not let us."""
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return None
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    return "tmpfs" if proc.returncode == 0 else None


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_full_disk_fails_in_one_line_then_rerun_completes(disk, clean, tmp_path):
    """The store's filesystem fills during the third step: a 200 KiB tmpfs where root may mount
    (two steps fit), else (and always for ``injected``) ENOSPC injected when the third step's
    files are written. One line, exit 2, no step directory half-written; once there is room
    the rerun completes with the clean run's results."""
    mnt = tmp_path / "disk"
    used = _mount_tmpfs(mnt, "200k") if disk == "tmpfs" else None
    mnt.mkdir(exist_ok=True)
    print(f"\nfull disk by {'a 200 KiB tmpfs' if used else 'COMPRESSLAB_FAULT=step-files:3:enospc'}"
          f"{' (mount was not permitted here)' if disk == 'tmpfs' and not used else ''}")
    runs = mnt / "runs"
    try:
        fault = {} if used else {faults.ENV: "step-files:3:enospc"}
        proc = run_study(clean["spec"], runs, cli_env(tmp_path, **fault))
        lines = proc.stderr.strip().splitlines()
        print(lines[-1] if lines else "(no stderr)")
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        m = re.fullmatch(r"error: run store (\S+) is full \((\d+\.\d) MiB free\) writing (\S+); free space or point "
                         r"--runs elsewhere, then rerun", lines[0])
        assert m and m.group(1) == str(runs), lines[0]
        free = shutil.disk_usage(runs).free / 2**20
        assert abs(float(m.group(2)) - free) < 0.2  # the free space it names is the store's
        failing = m.group(3).split("/")[0]
        assert re.fullmatch(r"(train|prune|quantize)-[0-9a-f]{16}", failing)
        steps = [d for d in runs.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "studies"]
        assert failing not in {d.name for d in steps} and len(steps) == 2
        assert all(check_step(d) == [] for d in steps)  # what is there is complete
        assert not any((runs / ".tmp").iterdir()) and not (runs / ".failed").exists()
        assert not (runs / "studies").exists()
        if used:
            subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        proc = run_study(clean["spec"], runs, cli_env(tmp_path))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert deterministic(json.loads(proc.stdout)) == clean["results"]
        assert json.loads(proc.stdout)["steps"]["ran"] != []
        assert_clean(runs)
    finally:
        if used:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_while_the_report_is_written_is_one_line(tmp_path):
    import errno

    from pydantic import BaseModel

    from compresslab.study.kinds import publish

    class Spec(BaseModel):
        name: str = "full"

    def report(results, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.raises(StoreError, match=r"is full \(.* MiB free\) writing .*report\.html") as e:
        publish(Spec(), RunStore(tmp_path / "runs"), {}, {}, report)
    assert e.value.full and "\n" not in str(e.value)


def test_disk_full_is_recognised_from_errno_rust_and_numpy_errors(tmp_path):
    from compresslab.runs.store import RunStore

    store = RunStore(tmp_path / "runs")
    errors = [OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")),
              RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
              OSError("10000 requested and 1008 written"), OSError(errno.EDQUOT, "Disk quota exceeded")]
    for i, err in enumerate(errors):
        def fn(out, err=err):
            (out / "model.safetensors").write_bytes(b"half")
            raise err

        with pytest.raises(StoreError, match=r"run store .* is full \(\d+\.\d MiB free\) writing ") as e:
            store.run(Step("train", {"i": i}), fn)
        assert "model.safetensors" in str(e.value) or str(tmp_path / "x") in str(e.value)
    assert not disk_full(OSError(errno.EIO, "Input/output error"))
    assert not any((tmp_path / "runs" / ".tmp").iterdir())
    assert [d.name for d in (tmp_path / "runs").iterdir() if not d.name.startswith(".")] == []
    with pytest.raises(StoreError):  # the store's failure is never recorded as the step's
        store.record_failure(Step("train", {}), StoreError("full", full=True))
    assert not (tmp_path / "runs" / ".failed").exists()


class FlakyFileSystem(LocalFileSystem):
    """A local directory behind a bad network: each call fails (``ConnectionError``, before it
    acts) with probability ``FLAKY_RATE``, from a ``random.Random(FLAKY_SEED)``. Each
    successful upload or write, and each injected failure, is appended to ``FLAKY_LOG``."""

    protocol = ("flaky",)

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.rate = float(os.environ.get("FLAKY_RATE", "0"))
        self.rng = random.Random(int(os.environ.get("FLAKY_SEED", "0")))
        self.log = os.environ.get("FLAKY_LOG")

    @classmethod
    def register(cls) -> None:
        import fsspec

        fsspec.register_implementation("flaky", cls, clobber=True)

    def _note(self, what: str, path) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{what} {path}\n")

    def _flake(self, op: str, path) -> None:
        if self.rng.random() < self.rate:
            self._note("FAIL", f"{op}:{path}")
            raise ConnectionError(f"injected {op} failure")

    def exists(self, path, **kw):
        self._flake("exists", path)
        return super().exists(path, **kw)

    def info(self, path, **kw):
        self._flake("info", path)
        return super().info(path, **kw)

    def ls(self, path, detail=False, **kw):
        self._flake("ls", path)
        return super().ls(path, detail=detail, **kw)

    def cat_file(self, path, start=None, end=None, **kw):
        self._flake("cat", path)
        return super().cat_file(path, start=start, end=end, **kw)

    def get_file(self, rpath, lpath, **kw):
        self._flake("get", rpath)
        return super().get_file(rpath, lpath, **kw)

    def put_file(self, lpath, rpath, **kw):
        self._flake("put", rpath)
        super().put_file(lpath, rpath, **kw)
        self._note("PUT", self._strip_protocol(rpath))

    def pipe_file(self, path, value, **kw):
        self._flake("pipe", path)
        super().pipe_file(path, value, **kw)
        self._note("PUT", self._strip_protocol(path))

    def makedirs(self, path, exist_ok=False):
        self._flake("makedirs", path)
        return super().makedirs(path, exist_ok=exist_ok)

    def rm(self, path, recursive=False, maxdepth=None):
        self._flake("rm", path)
        return super().rm(path, recursive=recursive, maxdepth=maxdepth)

    def _open(self, path, mode="rb", **kw):
        self._flake("open", path)
        return super()._open(path, mode=mode, **kw)


def test_remote_store_retries_with_exponential_backoff_then_fails_in_one_line(tmp_path, monkeypatch):
    from compresslab.runs.store import RemoteStore

    FlakyFileSystem.register()
    monkeypatch.setenv("FLAKY_RATE", "1")
    monkeypatch.setenv("COMPRESSLAB_REMOTE_RETRY", "5:0.25")
    import fsspec

    fsspec.filesystem("flaky").__class__.clear_instance_cache()
    store = RunStore(f"flaky://{tmp_path}/remote", cache=tmp_path / "cache")
    assert isinstance(store, RemoteStore) and (store.attempts, store.delay) == (5, 0.25)
    sleeps = []
    monkeypatch.setattr("compresslab.runs.store.time.sleep", sleeps.append)
    with pytest.raises(StoreError, match=r"^remote run store flaky://\S+: check \S+/_COMPLETE failed 5 times "
                                         r"\(ConnectionError: injected exists failure\); check the store"):
        store.is_done(Step("train", {}))
    assert len(sleeps) == 4  # between the 5 attempts
    for k, s in enumerate(sleeps):  # 0.25 s, doubling, each times a jitter in [0.5, 1]
        assert 0.5 * 0.25 * 2**k <= s <= 0.25 * 2**k
    monkeypatch.setenv("COMPRESSLAB_REMOTE_RETRY", "0:1")
    with pytest.raises(UserError, match="COMPRESSLAB_REMOTE_RETRY='0:1': expected ATTEMPTS:FIRST_DELAY_SECONDS"):
        RunStore(f"flaky://{tmp_path}/remote2", cache=tmp_path / "cache2")


def test_study_through_a_20_percent_failing_remote_store_equals_a_clean_run(clean, tmp_path):
    """Seeded: 20% of the remote calls (reads, listings, uploads, the marker) fail. The retries
    carry the study through with the clean run's numbers; each step's _COMPLETE is written
    after every file it lists. A store that always fails ends in one line, exit 2."""
    log, url = tmp_path / "flaky.log", f"flaky://{tmp_path}/remote"
    env = cli_env(tmp_path, FLAKY_RATE="0.2", FLAKY_SEED="19", FLAKY_LOG=str(log))
    proc = run_study(clean["spec"], url, env, flaky=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert deterministic(json.loads(proc.stdout)) == clean["results"]
    events = [line.split(" ", 1) for line in log.read_text().splitlines()]
    failed = sum(kind == "FAIL" for kind, _ in events)
    puts = [path for kind, path in events if kind == "PUT"]
    print(f"\n{failed} injected failures (all retried), {len(puts)} uploads and writes; the study completed")
    assert failed >= 10
    markers = [i for i, p in enumerate(puts) if p.endswith(f"/{COMPLETE}")]
    assert len(markers) == 3
    for i in markers:
        step_dir = puts[i].rsplit("/", 1)[0]
        files = [j for j, p in enumerate(puts) if p.startswith(step_dir + "/") and j != i]
        listed = json.loads(Path(puts[i]).read_text())["files"]
        assert files and max(files) < i  # every data file before the marker, none after
        assert sorted({puts[j].rsplit("/", 1)[1] for j in files}) == sorted(listed)
    assert_remote_complete(tmp_path / "remote")

    down = run_study(clean["spec"], f"flaky://{tmp_path}/down", cli_env(tmp_path, FLAKY_RATE="1"), flaky=True)
    lines = down.stderr.strip().splitlines()
    print(lines[-1] if lines else "(no stderr)")
    assert down.returncode == 2 and len(lines) == 1, down.stderr[-2000:]
    assert re.fullmatch(r"error: remote run store flaky://\S+/down: \w+ \S+ failed 6 times \(ConnectionError: "
                        r"injected \w+ failure\); check the store \(network, credentials, quota\) and rerun: finished "
                        r"steps are kept", lines[0]), lines[0]
