"""Executor scaling: one study's wall time at 1, 2, 4 and 8 local worker processes.

Usage: python benchmarks/executor_scaling.py [--preset kd-functional | --spec FILE] [--workers 1,2,4,8] [--json]

Runs the study from an empty run store (a fresh temp directory per run) as a subprocess,
``python -m compresslab.cli study ... --runs TMP --quiet --json``, timed by wall clock:
first the default, ``--workers auto``, as the baseline (the workers it chose, from
results.json's ``execution``, are shown), then each worker count that this machine has the
cores for (counts above the cores are skipped and listed: their figures need a larger
machine). ``--workers 1`` runs the steps in the command's own process; ``--workers N``
spawns N processes. Under every setting a step's torch threads come from its size, at most
``cores // N`` (:mod:`compresslab.steps.plan`). Speed-up is against the 1-worker run (else
the baseline; else none); parallel efficiency = speed-up / workers. Issue 19's goal: at
least 70% at 8 workers on a preset with 30 or more independent steps. Steps = the study's
entries (``steps.ran`` + ``steps.reused`` in results.json). Runs are sequential; other
processes on the machine distort everything: check the load average.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from compile_cpu import cpu_name  # the sibling benchmark (this script's directory is on sys.path)

from compresslab.train import native_bf16


def run_study(study_args: list[str], workers: int | None) -> dict:
    """One study into a fresh store: wall seconds and the step counts from results.json."""
    with tempfile.TemporaryDirectory(prefix="executor-scaling-") as runs:
        cmd = [sys.executable, "-m", "compresslab.cli", "study", *study_args, "--runs", runs, "--quiet", "--json"]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        found = glob.glob(os.path.join(runs, "studies", "*", "results.json"))
        results = {}
        if found:
            with open(found[0]) as f:
                results = json.load(f)
    steps = results.get("steps") or {}
    return {"workers": (results.get("execution") or {}).get("workers", workers), "wall_s": wall,
            "steps": len(steps.get("ran", [])) + len(steps.get("reused", [])), "ran": len(steps.get("ran", []))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--preset", default="kd-functional", help="built-in study preset (default kd-functional)")
    src.add_argument("--spec", help="a study spec (YAML) instead of a preset")
    ap.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts (default 1,2,4,8)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the in-process default run")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    wanted = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    counts = [w for w in wanted if w <= cores]
    skipped = [w for w in wanted if w > cores]
    study_args = [args.spec] if args.spec else ["--preset", args.preset]
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"{cpu_name()}, {cores} cores; CPU capability {capability} "
          f"(AVX-512: {'yes' if 'AVX512' in capability else 'no'}), native bf16: {'yes' if native_bf16() else 'no'}; "
          f"torch {torch.__version__}; 1-min load average {os.getloadavg()[0]:.2f}")
    print(f"study: {args.spec or '--preset ' + args.preset}, empty store per run\n")

    rows = []
    if not args.no_baseline:
        rows.append({**run_study(study_args, None), "run": "--workers auto"})
    for w in counts:
        rows.append({**run_study(study_args, w), "run": f"--workers {w}"})
    one = next((r for r in rows if r["workers"] == 1), next((r for r in rows if r["workers"] is None), None))
    for r in rows:  # without a 1-worker or baseline run there is nothing to compare against
        r["speedup"] = one["wall_s"] / r["wall_s"] if one else None
        r["efficiency"] = r["speedup"] / (r["workers"] or 1) if one else None

    print(f"{'run':20} {'workers':>7} {'wall s':>8} {'speed-up':>9} {'efficiency':>10} {'steps':>6}")
    for r in rows:
        ratios = f"{r['speedup']:8.2f}x {r['efficiency']:9.0%}" if one else f"{'-':>9} {'-':>10}"
        print(f"{r['run']:20} {r['workers'] or 1:>7} {r['wall_s']:8.1f} {ratios} {r['steps']:>6}")
    print(f"\nspeed-up against: {one['run'] if one else '-'}; efficiency = speed-up / workers")
    if skipped:
        print(f"skipped (this machine has {cores} cores): --workers {', '.join(map(str, skipped))}; "
              "those figures, and the 70%-at-8-workers goal, need a larger machine")
    print(f"1-min load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps({"cores": cores, "skipped": skipped, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
