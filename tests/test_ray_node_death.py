"""Issue 19, fault 1: a Ray worker node dies mid-step, and the study still completes.

A real two-node Ray cluster on this machine: a head with no CPUs (so no step can run on it)
and a worker node with one, each a ``ray start --block`` in its own session. A study runs
through ``compresslab study --executor ray --ray-address`` on it. When the ``kd`` step's
temp directory appears in the store, the test SIGKILLs that node's raylet and every other
process of the node (its workers, the step's among them), as when a machine is lost; then
it starts a replacement node. The step is retried there by Ray (``max_retries``, see
``compresslab.steps.executor.RAY_MAX_RETRIES``), the study exits 0, no step directory is
written twice or half, ``doctor`` finds the store clean, and ``results.json`` equals an
undisturbed run's (the local executor, one thread per step like the Ray tasks) exactly.

Only processes this test started are ever signalled (found from the ``ray start`` processes
it spawned, and from open files under its own Ray temp directory); ``ray stop`` is never
used, because it stops every Ray instance of the user. ``pytest -s`` prints what happened.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import deterministic

#: parent (2 epochs), then kd (its own 6-epoch recipe, so the kill lands well inside it) and
#: pruned; no controls. Every number of results.json but the timings is a function of the spec.
SPEC = """\
name: ray-node-death
data: mnist1d
parent: {name: cnn1d, options: {width: 8, depth: 2, hidden: 16}}
recipe: {optimizer: adam, lr: 0.01, weight_decay: 0, epochs: 2, batch_size: 256}
children:
  - name: kd
    method: distill
    student: {name: cnn1d, options: {width: 4, depth: 2, hidden: 8}}
    recipe: {optimizer: adam, lr: 0.01, weight_decay: 0, epochs: 6, batch_size: 256}
  - {name: pruned, method: prune, amount: 0.5}
controls: {seeds: [], student_from_scratch: false}
latency: false
"""
KILLED_KIND = "distill-"  # the kd step: the one killed mid-step
NODE_START_S, STUDY_S = 120, 300  # deadlines, generous for a loaded 2-core machine


def ray_cli() -> str:
    path = Path(sys.executable).with_name("ray")
    return str(path) if path.is_file() else (shutil.which("ray") or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, by parent pid (a snapshot: take it before killing
    anything, since children of a dead process are re-parented)."""
    children: dict[int, list[int]] = {}
    for pid in pids():
        try:
            children.setdefault(ppid(pid), []).append(pid)
        except (OSError, ValueError):
            pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        try:
            pid = ppid(pid)
        except (OSError, ValueError):
            break
        out.append(pid)
    return out


def holding_files_under(directory: str) -> list[int]:
    """Processes with an open file under ``directory`` (every Ray process keeps its log open
    in the session directory): what is left of this test's cluster, and nobody else's."""
    found = []
    for pid in pids():
        if pid == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(directory + "/"):
                    found.append(pid)
                    break
            except OSError:
                pass
    return found


def sigkill(pids_: list[int]) -> None:
    for pid in pids_:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Cluster:
    """Head and worker nodes started by this test (``ray start --block``, one session each)."""

    def __init__(self, logs: Path):
        self.logs, self.ray = logs, ray_cli()
        self.temp = f"/tmp/ray-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths must fit in 107 chars
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.drivers: list[subprocess.Popen] = []  # the studies run against it (killed too if the test fails)
        # Token auth off (this is a local test cluster), and the head declares a silent node dead
        # after 3 missed health checks a second apart (Ray's default: 5 missed, 3 s apart).
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("COMPRESSLAB_FAULT", "COMPRESSLAB_RAY"))}
        self.env = {**inherited, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                    "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def start(self, name: str, head: bool = False) -> None:
        where = (["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                  f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}"] if head else
                 [f"--address={self.address}", "--num-cpus=1"])
        ports = [f"--{opt}={free_port()}" for opt in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "metrics-export-port", "runtime-env-agent-port")]
        with open(self.logs / f"{name}.log", "w") as log:
            self.nodes[name] = subprocess.Popen(
                [self.ray, "start", *where, *ports, "--block", "--disable-usage-stats", f"--temp-dir={self.temp}",
                 f"--object-store-memory={80 * 2**20}"],
                start_new_session=True, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def wait_started(self, name: str) -> None:
        deadline = time.monotonic() + NODE_START_S
        while "Ray runtime started" not in (self.logs / f"{name}.log").read_text():
            proc = self.nodes[name]
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray node {name} did not start: {(self.logs / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def raylet(self, name: str) -> int:
        found = [p for p in descendants(self.nodes[name].pid) if comm(p) == "raylet"]
        assert len(found) == 1, (name, found)
        return found[0]

    def kill(self, name: str) -> tuple[int, list[int]]:
        """SIGKILL node ``name``: its raylet first, then every other process of the node."""
        raylet = self.raylet(name)
        procs = descendants(self.nodes[name].pid)  # before the raylet dies and its workers are re-parented
        os.kill(raylet, signal.SIGKILL)
        sigkill(procs)
        self.nodes[name].wait(timeout=30)
        return raylet, procs

    def close(self) -> None:
        """SIGKILL every process of this cluster and of the studies run on it (each is the leader
        of its own session); then whatever still holds a file in the cluster's temp dir."""
        procs = [p for proc in [*self.drivers, *self.nodes.values()] for p in descendants(proc.pid)]
        sigkill(procs)
        for proc in [*self.drivers, *self.nodes.values()]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (left := holding_files_under(self.temp)) and time.monotonic() < deadline:
            sigkill(left)
            time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path):
    if not ray_cli():
        pytest.skip("the `ray` command is not installed (pip install 'compresslab[ray]')")
    pytest.importorskip("ray")
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def study(cluster: Cluster, spec: Path, runs: Path, env: dict, log: Path, *args: str) -> subprocess.Popen:
    """``compresslab study SPEC --runs RUNS --quiet --json ARGS`` in the background."""
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "compresslab.cli", "study", str(spec), "--runs", str(runs),
                                 "--quiet", "--json", *args], env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
    cluster.drivers.append(proc)
    return proc


def finish(proc: subprocess.Popen, what: str, log: Path) -> dict:
    try:
        out, _ = proc.communicate(timeout=STUDY_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{what} did not finish in {STUDY_S} s: {log.read_text()[-2000:]}")
    assert proc.returncode == 0, f"{what} exited {proc.returncode}: {log.read_text()[-3000:]}"
    return json.loads(out)



def doctor(runs: Path, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "compresslab.cli", "doctor", str(runs), "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def step_dirs(runs: Path) -> dict[str, tuple[int, int]]:
    """Finished step directories: name -> (inode, mtime_ns) of their spec.json."""
    return {d.name: ((s := (d / "spec.json").stat()).st_ino, s.st_mtime_ns)
            for d in runs.iterdir() if (d / "spec.json").is_file()}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
def test_worker_node_killed_mid_step_study_completes_through_ray_retries(cluster, tmp_path):
    t0 = time.monotonic()
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    env = {**cluster.env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    runs, ref_runs = tmp_path / "ray-runs", tmp_path / "ref-runs"

    cluster.start("head", head=True)
    cluster.start("node1")  # joins once the head's GCS answers
    # the undisturbed reference meanwhile: local executor, one torch thread per step like a Ray task
    ref = study(cluster, spec, ref_runs, env, tmp_path / "ref.err")
    cluster.wait_started("head")
    on_ray = study(cluster, spec, runs, env, tmp_path / "ray.err", "--executor", "ray", "--ray-address", cluster.address)
    cluster.wait_started("node1")
    raylets = {cluster.raylet("node1"): "node1"}
    t_up = time.monotonic()

    attempts: dict[str, str] = {}  # temp dir of a step attempt -> the node whose raylet runs it

    def watch() -> list[str]:
        names = [d.name for d in (runs / ".tmp").iterdir()] if (runs / ".tmp").is_dir() else []
        for name in names:
            if name not in attempts:
                pid = int(name.split(".")[-2])
                attempts[name] = next((raylets[a] for a in ancestors(pid) if a in raylets), "?")
        return names

    deadline = time.monotonic() + STUDY_S
    while not any(n.startswith(KILLED_KIND) for n in watch()):
        assert on_ray.poll() is None, f"the study ended before its kd step started: {(tmp_path / 'ray.err').read_text()}"
        assert time.monotonic() < deadline, "the kd step never started"
        time.sleep(0.01)
    victim = next(n for n in attempts if n.startswith(KILLED_KIND))
    killed_dir = victim.split(".")[0]
    assert attempts[victim] == "node1"  # the step runs on the worker node (the head has no CPU)
    before = step_dirs(runs)  # finished before the kill: must stay untouched
    raylet, procs = cluster.kill("node1")
    t_kill = time.monotonic()
    wall_kill = time.time()
    assert killed_dir not in step_dirs(runs)  # the kill landed mid-step: nothing can publish it now
    cluster.start("node2")
    cluster.wait_started("node2")
    raylets[cluster.raylet("node2")] = "node2"
    t_node2 = time.monotonic()
    while on_ray.poll() is None and time.monotonic() < deadline:
        watch()
        time.sleep(0.02)
    results = finish(on_ray, "the study on Ray", tmp_path / "ray.err")
    t_done = time.monotonic()
    reference = finish(ref, "the undisturbed local run", tmp_path / "ref.err")

    after = step_dirs(runs)
    retried = {n: node for n, node in attempts.items() if n.startswith(killed_dir)}
    print(f"\ncluster up (head + node1) {t_up - t0:.1f} s; steps finished before the kill: {sorted(before)}")
    print(f"killed node1 (raylet pid {raylet}, {len(procs)} processes) in {killed_dir}, "
          f"{t_kill - t_up:.1f} s after it was up; node2 up {t_node2 - t_kill:.1f} s later")
    print(f"attempts of the killed step (temp dir -> node): {retried}")
    print(f"its retry published it {(runs / killed_dir / 'spec.json').stat().st_mtime - wall_kill:.1f} s after the "
          f"kill; study done {t_done - t_kill:.1f} s after the kill; whole test {time.monotonic() - t0:.1f} s")

    # the study completed through Ray's task retries: the killed step ran again, on the new node
    assert list(retried.values()) == ["node1", "node2"], retried
    assert sorted(results["steps"]["ran"]) == ["kd", "parent", "pruned"] and results["failed"] == {}
    # no step written twice: the steps finished before the kill are the same files
    assert {k: after[k] for k in before} == before
    # none written half: every step the reference has, complete; the killed one published after the kill
    assert set(after) == set(step_dirs(ref_runs)) == set(results["steps"]["dirs"].values())
    assert (runs / killed_dir / "spec.json").stat().st_mtime >= wall_kill
    assert not (runs / ".tmp").exists() or not any((runs / ".tmp").iterdir())
    report = doctor(runs, env)
    assert report["healthy"] and report["broken"] == [] and report["failed"] == [] and report["stale_tmp"] == []
    assert report["steps"] == 3
    # the results equal the undisturbed run's, exactly
    assert deterministic(results) == deterministic(reference)
    stored = next((runs / "studies").iterdir()) / "results.json"
    assert deterministic(json.loads(stored.read_text())) == deterministic(reference)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
def test_ray_retries_a_dead_worker_then_fails_in_one_line_and_never_retries_a_user_error(tmp_path, monkeypatch,
                                                                                          capsys):
    """A local Ray instance whose workers are SIGKILLed once a step has written its files (the
    fault hook's ``step-files`` point, in every fresh worker): the step is tried
    1 + ``COMPRESSLAB_RAY_MAX_RETRIES`` times, each in a new worker, then the study stops with
    one line. A step that raises a UserError (a NaN loss) is tried once, recorded as failed."""
    ray = pytest.importorskip("ray")
    from compresslab.cli import main

    if ray.is_initialized():
        ray.shutdown()
    trace = tmp_path / "trace.log"
    monkeypatch.setenv("COMPRESSLAB_FAULT", "step-files:1")  # read by the workers Ray starts, not by this process
    monkeypatch.setenv("COMPRESSLAB_FAULT_LOG", str(trace))
    monkeypatch.setenv("COMPRESSLAB_RAY_MAX_RETRIES", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    one_step = "\n".join(line for line in SPEC.splitlines()
                         if line.startswith(("name", "data", "parent", "recipe", "controls", "latency")))
    good, nan = tmp_path / "good.yaml", tmp_path / "nan.yaml"
    good.write_text(one_step + "\nchildren: []\n")
    nan.write_text(one_step.replace("lr: 0.01", "lr: 1.0e+37") + "\nchildren: []\n")

    def tries() -> list[list[str]]:  # (pid, point, n, step) per hit, read so far
        return [line.split() for line in trace.read_text().splitlines()] if trace.exists() else []

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        assert main(["study", str(good), "--runs", str(tmp_path / "good"), "--executor", "ray", "--quiet"]) == 2
        good_hits = tries()
        _, err = capsys.readouterr()
        assert main(["study", str(nan), "--runs", str(tmp_path / "nan"), "--executor", "ray", "--quiet"]) == 3
        nan_hits = tries()[len(good_hits):]
    finally:
        ray.shutdown()
    # the good step: killed after its files, in two workers (1 try + 1 retry); then one line, nothing published
    killed = [h for h in good_hits if h[1] == "step-files"]
    assert len(killed) == 2 and len({pid for pid, *_ in killed}) == 2
    # stderr: Ray's own notices of each worker death and retry, then compresslab's one line
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: step train-") and "Ray lost it (WorkerCrashedError) after 1 retries" in last, err
    assert "Traceback" not in err
    assert not any(d.name.startswith("train-") for d in (tmp_path / "good").iterdir())
    # the NaN step: one try, its UserError recorded as the step's failure, not retried
    assert [h[1] for h in nan_hits if h[1] in ("tmp-dir", "step-files")] == ["tmp-dir"]
    assert len(list((tmp_path / "nan" / ".failed").iterdir())) == 1


def test_ray_retries_setting(monkeypatch):
    from compresslab.errors import UserError
    from compresslab.steps.executor import RAY_MAX_RETRIES, RAY_RETRIES_ENV, ray_max_retries

    monkeypatch.delenv(RAY_RETRIES_ENV, raising=False)
    assert ray_max_retries() == RAY_MAX_RETRIES == 3
    monkeypatch.setenv(RAY_RETRIES_ENV, "0")
    assert ray_max_retries() == 0
    for bad in ("-1", "two", "1.5"):
        monkeypatch.setenv(RAY_RETRIES_ENV, bad)
        with pytest.raises(UserError, match="use an integer >= 0"):
            ray_max_retries()


def test_ray_errors_become_one_line(tmp_path):
    """What ``ray.get`` raises, as the CLI shows it: a StoreError raised inside a task (Ray wraps
    it in a RayTaskError) is the StoreError again; a worker lost on every attempt is a UserError
    naming the step and the retries; a bug in a step keeps its RayTaskError (and traceback)."""
    ray = pytest.importorskip("ray")
    from types import SimpleNamespace

    from compresslab.errors import UserError
    from compresslab.runs.store import Step, StoreError
    from compresslab.steps.executor import _ray_result

    step = Step("train", {"seed": 0}, {})

    def raising(error):
        return SimpleNamespace(get=lambda ref: (_ for _ in ()).throw(error), exceptions=ray.exceptions)

    full = StoreError(f"run store {tmp_path} is full (0.0 MiB free) writing x; free space, then rerun")
    wrapped = ray.exceptions.RayTaskError("_run_step", "Traceback ...", full, "ray::_run_step", 1, "10.0.0.1")
    with pytest.raises(StoreError) as caught:
        _ray_result(raising(wrapped), None, step, 3)
    assert caught.value is full and "\n" not in str(caught.value)
    with pytest.raises(UserError, match=rf"^step {step.dirname}: Ray lost it \(WorkerCrashedError\) after 3 retries;"):
        _ray_result(raising(ray.exceptions.WorkerCrashedError()), None, step, 3)
    bug = ray.exceptions.RayTaskError("_run_step", "Traceback ...", KeyError("x"), "ray::_run_step", 1, "10.0.0.1")
    with pytest.raises(ray.exceptions.RayTaskError):
        _ray_result(raising(bug), None, step, 3)
    assert _ray_result(SimpleNamespace(get=lambda ref: ("ran", step.dirname), exceptions=ray.exceptions),
                       None, step, 3) == ("ran", step.dirname)
