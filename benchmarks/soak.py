"""Soak: every study preset's tiny configuration in a loop for N minutes, with random kills.

Usage: python benchmarks/soak.py [--minutes 30] [--presets default,kurtosis] [--kill-prob 0.5] [--seed 0]
                                 [--evict 0.5] [--kill-window 1.0] [--dir DIR --keep] [--json]
Example: nice -n 10 python benchmarks/soak.py --minutes 3

Each preset gets its own persistent run store, ``DIR/stores/<preset>`` (``--dir``; default a
temp directory, removed at the end unless ``--keep``). The presets take turns (round-robin)
until ``--minutes`` have passed; an iteration that starts before then runs to its end. An
*iteration* runs the preset's tiny configuration (``TINY`` below: smoke flags that finish
in roughly 5-40 s on 2 cores) as ``python -m compresslab.cli study --preset P --runs STORE
--quiet --json ...`` to completion:

- With probability ``--kill-prob`` (seeded by ``--seed``) the run is SIGKILLed, its whole
  process group, at an instant drawn uniformly from (0, ``--kill-window`` x the preset's last
  unkilled wall time), then run again until it completes. Reruns are never killed. The
  first iteration of a preset is never killed: it gives the reference results and the first
  wall time. A run that ends before its kill instant is a *missed* kill and counts as clean.
- The first completion is the preset's reference; every later completion's ``results.json``
  (the ``--json`` output) is compared with it as ``compresslab.study.kinds.deterministic``
  leaves it: without the keys that measure the run (wall times, latencies, the store's
  location, how the steps were executed: ``run_key``) and with ``steps`` as each entry's
  step directory (which ran and which were reused differs by design). A difference is
  reported with its first key path.
- After each completion the store is checked as ``compresslab doctor STORE --json`` checks it
  (``compresslab.runs.doctor.diagnose``, in this process): broken steps, temp directories of
  dead processes and failure records are problems. Lock files nobody holds are not: the store
  keeps one per step it ever wrote, and doctor lists them all as ``stale_locks`` after any run.
- Then a seeded random ``--evict`` share (default half) of the store's finished step
  directories is deleted, each under its step lock, the way ``compresslab gc`` deletes
  (``compresslab.runs.browse.delete_steps``), so the next iteration trains again rather than
  only reusing.

Figures, per preset and in total: iterations (completions), kills (delivered), missed kills,
reruns, diffs (iterations whose results differ from the reference), doctor problems, failures
(a nonzero exit we did not cause), peak RSS (``ru_maxrss`` of each study process from
``os.wait4``: MiB, the largest), and the store's size (bytes of every file under it) after the
first and after the last completion, with the lock, failure-record and temp entries left at
the end. Exit code 1 when any diff, doctor problem or failure was seen; 2 on bad arguments.
Children get ``OMP_NUM_THREADS=1`` unless it is set in this process's environment. Presets
that need data not in the repository (the ``-cifar10`` ones: ``--data cifar10:DIR``) and the
``search/`` and ``codesign/`` specs (``compresslab search`` / ``codesign``, not ``study``) are
skipped and listed. Other processes on the machine change the wall times, so kill instants too.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from compile_cpu import cpu_name  # the sibling benchmark (this script's directory is on sys.path)

from compresslab.runs.browse import delete_steps, step_dirs
from compresslab.runs.doctor import diagnose
from compresslab.runs.store import FAILED, LOCKS, TMP
from compresslab.study.kinds import deterministic

REPO = Path(__file__).resolve().parent.parent
PRESETS = REPO / "src" / "compresslab" / "study" / "presets"
SMOKE = ["--epochs", "1", "--subset", "256", "--no-latency"]
#: Each study preset's tiny configuration: ``flags`` after ``study``; ``spec``: top-level keys of
#: the preset replaced (then soak runs a copy of the preset, ``DIR/specs/<preset>.yaml``, instead
#: of ``--preset``); ``s``: the wall seconds one run into an empty store took here (2 shared
#: cores, OMP_NUM_THREADS=1, nice 10, about 3 s of it Python and torch start-up).
TINY: dict[str, dict] = {
    "compression-functional": {"flags": SMOKE, "s": 14.1},
    "compression-functional-mnist": {"flags": SMOKE, "s": 14.7},
    "data-pruning-kd": {"flags": SMOKE, "s": 9.2},
    "dataset-distillation": {"flags": SMOKE, "s": 16.6, "spec": {  # as given: 72 s
        "ipcs": [1], "eval_seeds": [0, 1],
        "methods": [{"method": "dm", "iterations": 10, "batch_real": 32}, {"method": "dc", "iterations": 5, "batch_real": 32},
                    {"method": "random"}]}},
    "default": {"flags": SMOKE, "s": 6.7},
    "distilled-pruning": {"flags": SMOKE, "s": 20.3, "spec": {  # as given: 65 s
        "distill": {"method": "dm", "ipc": 1, "iterations": 10, "batch_real": 32}, "rounds": 2, "inner_epochs": 2,
        "seeds": [0, 1], "lmc_points": 3, "hessian_samples": 2, "hessian_examples": 64, "landscape_points": 3,
        "landscape_dims": 1}},
    "embedding-compression": {"flags": SMOKE, "s": 24.0},
    "kd-functional": {"flags": SMOKE, "s": 19.8},
    "kd-functional-mnist": {"flags": SMOKE, "s": 18.8},
    "kd-functional-v2": {"flags": SMOKE, "s": 25.6},
    "kd-functional-v2-digits": {"flags": SMOKE, "s": 9.8},
    "kd-functional-v2-transformer": {"flags": SMOKE, "s": 12.4},
    "kurtosis": {"flags": SMOKE, "s": 8.0},
    "linear-substitution": {"flags": SMOKE, "s": 14.6},
    "moonshine": {"flags": SMOKE, "s": 12.7},
    "moonshine-mnist": {"flags": SMOKE, "s": 19.1, "spec": {"blocks": ["Conv", "G4B2", "DConvB2"]}},  # as given: 44 s
    "ner-distill": {"flags": SMOKE, "s": 12.4},
    "prune-sweep": {"flags": SMOKE, "s": 6.0},
    "prune-sweep-lenet5": {"flags": SMOKE, "s": 6.1},
}
#: Presets soak does not run, and why.
SKIP_DATA = "needs --data cifar10:DIR (CIFAR-10 is not in the repository)"


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every compresslab command
        print(f"soak.py: error: {message}", file=sys.stderr)
        sys.exit(2)


def bad(message: str):
    print(f"soak.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def all_presets() -> tuple[list[str], dict[str, str]]:
    """The study presets soak runs, and the ones it skips with the reason."""
    runnable, skipped = [], {}
    for f in sorted(PRESETS.glob("*.yaml"), key=lambda f: f.stem):
        data = str((yaml.safe_load(f.read_text()) or {}).get("data", ""))
        path = data.partition(":")[2]
        if f.stem.endswith("-cifar10"):
            skipped[f.stem] = SKIP_DATA
        elif "/" in path and not (REPO / path).exists():
            skipped[f.stem] = f"its data {data} is not there (relative to {REPO})"
        elif f.stem not in TINY:
            skipped[f.stem] = "no tiny configuration in soak.py's TINY table yet"
        else:
            runnable.append(f.stem)
    for sub, command in (("search", "compresslab search"), ("codesign", "compresslab codesign")):
        for f in sorted((PRESETS / sub).glob("*.yaml")):
            skipped[f"{sub}/{f.stem}"] = f"not a study preset ({command})"
    return runnable, skipped


def study_args(preset: str, work: Path) -> list[str]:
    """``--preset P``, or a copy of the preset with ``TINY[P]["spec"]``'s keys replaced."""
    over = TINY[preset].get("spec")
    if not over:
        return ["--preset", preset]
    spec = work / "specs" / f"{preset}.yaml"
    if not spec.is_file():
        raw = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text())
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(yaml.safe_dump({**raw, **over}, sort_keys=False))
    return [str(spec)]


def first_difference(a, b, path: str = "") -> str | None:
    """The first key path where ``a`` and ``b`` differ, with both values; None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}.{k}: only in the {'reference' if k in a else 'new run'}"
            if (d := first_difference(a[k], b[k], f"{path}.{k}")) is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            if (d := first_difference(x, y, f"{path}[{i}]")) is not None:
                return d
        return None
    if a != b or type(a) is not type(b):
        return f"{path}: {str(a)[:60]} vs {str(b)[:60]}"
    return None


def run_once(cmd: list[str], env: dict, logs: Path, kill_at: float | None) -> dict:
    """One study process. ``kill_at``: seconds after the start to SIGKILL its process group,
    unless it has ended. Returns wall seconds, exit code, whether we killed it, ru_maxrss (KiB)."""
    out, err = logs / "stdout.json", logs / "stderr.txt"
    with open(out, "wb") as o, open(err, "wb") as e:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, cwd=REPO, start_new_session=True)
    killed, pid, status, usage = False, 0, 0, None
    try:
        while kill_at is not None and not pid:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if not pid and time.perf_counter() - t0 >= kill_at:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: start_new_session made the child its leader
                killed = True
                break
            time.sleep(0.01)
        if not pid:
            _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # Ctrl-C: the study is in its own session, so it would not get the SIGINT
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen does not wait for it again
    if killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group that outlived its leader
    return {"wall": wall, "rc": proc.returncode, "killed": killed, "maxrss_kib": usage.ru_maxrss,
            "stdout": out, "stderr": err}


def tree_bytes(root: Path) -> int:
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def entries(d: Path) -> int:
    return sum(1 for _ in d.iterdir()) if d.is_dir() else 0


def new_row() -> dict:
    return {"iterations": 0, "kills": 0, "missed_kills": 0, "reruns": 0, "diffs": 0, "first_diff": None,
            "doctor_problems": 0, "first_doctor_problem": None, "failures": 0, "peak_rss_mib": 0.0,
            "store_bytes_first": None, "store_bytes_last": None, "store_growth_bytes": None, "lock_files": 0,
            "failure_records": 0, "tmp_entries": 0, "wall_s": [], "evicted": 0}


def main() -> None:
    ap = ArgParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog="Example: nice -n 10 python benchmarks/soak.py --minutes 3 --presets default,kurtosis")
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to start new iterations (default 30)")
    ap.add_argument("--presets", help="comma-separated study presets (default: every one with a tiny configuration)")
    ap.add_argument("--kill-prob", type=float, default=0.5, help="chance an iteration is SIGKILLed once (default 0.5)")
    ap.add_argument("--kill-window", type=float, default=1.0,
                    help="kill instants are uniform in (0, this x the last unkilled wall time) (default 1.0)")
    ap.add_argument("--evict", type=float, default=0.5, help="share of step dirs deleted after each iteration (default 0.5)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kills, their instants and the evictions (default 0)")
    ap.add_argument("--dir", help="work directory (default: a temp directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (a given --dir is always kept)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (the table goes to stderr)")
    args = ap.parse_args()
    if not args.minutes > 0:
        bad(f"--minutes must be > 0, got {args.minutes}")
    if not 0 <= args.kill_prob <= 1:
        bad(f"--kill-prob must be in [0, 1], got {args.kill_prob}")
    if not 0 < args.kill_window <= 1:
        bad(f"--kill-window must be in (0, 1], got {args.kill_window}")
    if not 0 <= args.evict <= 1:
        bad(f"--evict must be in [0, 1], got {args.evict}")
    if args.dir and Path(args.dir).exists() and not Path(args.dir).is_dir():
        bad(f"--dir {args.dir} is a file; pass a directory")
    runnable, skipped = all_presets()
    if args.presets:
        wanted = [p.strip() for p in args.presets.split(",") if p.strip()]
        for p in wanted:
            if p in skipped:
                bad(f"preset {p}: {skipped[p]}")
            if p not in runnable:
                bad(f"unknown preset {p!r}; choose from {', '.join(runnable)}")
        if not wanted:
            bad("--presets is empty")
        presets = list(dict.fromkeys(wanted))
        skipped = {}
    else:
        presets = runnable

    report = print if not args.json else (lambda *a, **k: print(*a, **k, file=sys.stderr))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="soak-"))
    keep = args.keep or bool(args.dir)
    machine = (f"{cpu_name()}, {os.cpu_count()} cores; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; "
               f"1-min load average {os.getloadavg()[0]:.2f}")
    report(machine)
    report(f"soak: {len(presets)} presets, {args.minutes:g} min, kill-prob {args.kill_prob:g}, "
           f"evict {args.evict:g}, seed {args.seed}, work dir {work}")
    for p, why in skipped.items():
        report(f"skipped {p}: {why}")

    rng = random.Random(args.seed)
    rows = {p: new_row() for p in presets}
    refs: dict[str, dict] = {}
    last_clean: dict[str, float] = {}
    failures: list[dict] = []
    active = list(presets)
    t_start = time.monotonic()
    deadline = t_start + args.minutes * 60
    turn = 0
    try:
        while active and time.monotonic() < deadline:
            preset = active[turn % len(active)]
            turn += 1
            row = rows[preset]
            store, logs = work / "stores" / preset, work / "logs" / preset
            logs.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "compresslab.cli", "study", *study_args(preset, work), "--runs", str(store),
                   "--quiet", "--json", *TINY[preset]["flags"]]
            kill_at = None
            if preset in last_clean and rng.random() < args.kill_prob:
                kill_at = rng.uniform(0, args.kill_window * last_clean[preset])
            t_it = time.monotonic()
            r = run_once(cmd, env, logs, kill_at)
            row["peak_rss_mib"] = max(row["peak_rss_mib"], r["maxrss_kib"] / 1024)
            if r["killed"]:
                row["kills"] += 1
                note = f"killed at {kill_at:.1f} s, rerun"
                r = run_once(cmd, env, logs, None)  # reruns are never killed
                row["reruns"] += 1
                row["peak_rss_mib"] = max(row["peak_rss_mib"], r["maxrss_kib"] / 1024)
            else:
                if kill_at is not None:
                    row["missed_kills"] += 1
                note = "clean" if kill_at is None else f"kill at {kill_at:.1f} s missed"
                if r["rc"] == 0:
                    last_clean[preset] = r["wall"]
            wall = time.monotonic() - t_it
            if r["rc"] != 0:
                tail = Path(r["stderr"]).read_text(errors="replace")[-2000:]
                row["failures"] += 1
                failures.append({"preset": preset, "rc": r["rc"], "stderr_tail": tail})
                print(f"{preset}: exit {r['rc']} (not our kill), dropped from the soak; stderr tail:\n{tail}",
                      file=sys.stderr, flush=True)
                active.remove(preset)
                continue
            row["iterations"] += 1
            row["wall_s"].append(round(wall, 2))
            try:
                results = deterministic(json.loads(Path(r["stdout"]).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                results = {"unreadable --json output": str(e)}
            diff = None
            if preset not in refs:
                refs[preset] = results
            elif (diff := first_difference(refs[preset], results)) is not None:
                row["diffs"] += 1
                row["first_diff"] = row["first_diff"] or diff
            doc = diagnose(store)
            problems = [f"broken {b['step']}: {'; '.join(b['problems'])}" for b in doc["broken"]] + \
                [f"stale temp dir {t}" for t in doc["stale_tmp"]] + \
                [f"failed {f['step']}: {f['reason']}" for f in doc["failed"]]
            if problems or not doc["healthy"]:
                row["doctor_problems"] += 1
                row["first_doctor_problem"] = row["first_doctor_problem"] or (problems or ["not healthy"])[0]
            size = tree_bytes(store)
            if row["store_bytes_first"] is None:
                row["store_bytes_first"] = size
            row["store_bytes_last"] = size
            row["lock_files"] = entries(store / LOCKS)
            row["failure_records"] = entries(store / FAILED)
            row["tmp_entries"] = entries(store / TMP)
            done = step_dirs(store)
            victims = sorted(d.name for d in rng.sample(done, round(len(done) * args.evict)))
            row["evicted"] += len(delete_steps(store, victims)["deleted"])
            print(f"[{time.monotonic() - t_start:6.0f} s] {preset:30} #{row['iterations']:<3} {note:28} "
                  f"wall {wall:5.1f} s  rss {r['maxrss_kib'] / 1024:5.0f} MiB  "
                  f"results {'ok' if diff is None else 'DIFF ' + diff}  doctor {'ok' if not problems else problems[0]}",
                  file=sys.stderr, flush=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    for row in rows.values():
        if row["store_bytes_first"] is not None:
            row["store_growth_bytes"] = row["store_bytes_last"] - row["store_bytes_first"]
    keys = ("iterations", "kills", "missed_kills", "reruns", "diffs", "doctor_problems", "failures", "evicted")
    total = {k: sum(r[k] for r in rows.values()) for k in keys}
    total["peak_rss_mib"] = max((r["peak_rss_mib"] for r in rows.values()), default=0.0)
    total["store_growth_bytes"] = sum(r["store_growth_bytes"] or 0 for r in rows.values())
    elapsed = time.monotonic() - t_start
    load_end = os.getloadavg()[0]

    report(f"\n{'preset':30} {'iter':>4} {'kills':>5} {'missed':>6} {'reruns':>6} {'diffs':>5} {'doctor':>6} "
           f"{'fail':>4} {'peak RSS MiB':>12} {'store MiB first -> last':>23} {'growth bytes':>12} {'locks':>5} {'tmp':>3}")
    for p, r in rows.items():
        store = (f"{r['store_bytes_first'] / 2**20:9.2f} -> {r['store_bytes_last'] / 2**20:9.2f} {r['store_growth_bytes']:+12,d}"
                 if r["store_bytes_first"] is not None else f"{'-':>23} {'-':>12}")
        report(f"{p:30} {r['iterations']:>4} {r['kills']:>5} {r['missed_kills']:>6} {r['reruns']:>6} {r['diffs']:>5} "
               f"{r['doctor_problems']:>6} {r['failures']:>4} {r['peak_rss_mib']:>12.0f} {store} {r['lock_files']:>5} "
               f"{r['tmp_entries']:>3}")
    report(f"{'total':30} {total['iterations']:>4} {total['kills']:>5} {total['missed_kills']:>6} {total['reruns']:>6} "
           f"{total['diffs']:>5} {total['doctor_problems']:>6} {total['failures']:>4} {total['peak_rss_mib']:>12.0f} "
           f"{'':>23} {total['store_growth_bytes']:+12,d}")
    for p, r in rows.items():
        if r["first_diff"]:
            report(f"{p}: first difference {r['first_diff']}")
        if r["first_doctor_problem"]:
            report(f"{p}: first doctor problem {r['first_doctor_problem']}")
    report(f"\n{elapsed / 60:.1f} min; 1-min load average at the end {load_end:.2f}")
    bad_run = total["diffs"] or total["doctor_problems"] or total["failures"]
    if args.json:
        print(json.dumps({"machine": machine, "minutes": args.minutes, "elapsed_s": round(elapsed, 1),
                          "kill_prob": args.kill_prob, "kill_window": args.kill_window, "evict": args.evict,
                          "seed": args.seed, "load_end": load_end, "presets": rows, "total": total,
                          "skipped": skipped, "failures": failures, "ok": not bad_run,
                          "tiny": {p: {k: v for k, v in TINY[p].items() if k != "s"} for p in presets}}, indent=2))
    sys.exit(1 if bad_run else 0)


if __name__ == "__main__":
    main()
