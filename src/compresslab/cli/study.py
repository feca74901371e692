"""Studies and the run store: `study` and `doctor`."""

import json
from pathlib import Path
from typing import Optional

import typer

from compresslab.cli.common import (
    DEVICE_HELP,
    PRESETS,
    RUNS_HELP,
    Json,
    Quiet,
    Track,
    app,
    emit,
    tracker,
)
from compresslab.errors import StudyIncomplete


@app.command()
def study(
    spec: Optional[Path] = typer.Argument(None, help="Study spec (YAML); its `kind` picks the study kind. Without it: the default study on mnist1d."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Run a built-in spec by name: " + ", ".join(
        sorted(p.stem for p in PRESETS.glob("*.yaml"))) + "."),
    runs: str = typer.Option("runs", "--runs", help=RUNS_HELP + " A directory, or an fsspec URL (s3://bucket/prefix) shared by every worker."),
    executor: str = typer.Option("local", "--executor", help="local (this process, or --workers processes) or ray (one Ray task per step)."),
    workers: str = typer.Option("auto", "--workers", help="local: steps run in this many worker processes, each as soon as its parents are done. auto (default): processes and torch threads per step from the cores and the size of the steps; 1: this process."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray: auto or HOST:PORT of an existing cluster (default: start a local one)."),
    cpus_per_step: int = typer.Option(1, "--cpus-per-step", help="ray: CPUs each step asks for (also its torch threads)."),
    gpus_per_step: float = typer.Option(0.0, "--gpus-per-step", help="ray: GPUs each step asks for; a fraction (0.25) packs several steps on one GPU."),
    device: Optional[str] = typer.Option(None, "--device", help="Where every step trains and measures (default: the spec's `device`, else auto): " + DEVICE_HELP),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--nondeterministic", help="Deterministic algorithms (default: the spec's `deterministic`, else off)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Replace the spec's dataset, e.g. cifar10:/path/to/cifar-10-batches-py for the -cifar10 presets."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Smoke run: at most this many epochs in every recipe and fine-tuning."),
    subset: Optional[int] = typer.Option(None, "--subset", help="Smoke run: a seeded subset of this many training (and at most as many test) examples."),
    latency: Optional[bool] = typer.Option(None, "--latency/--no-latency", help="Measure every model's latency (default: the spec's `latency`)."),
    quiet: Quiet = False,
    as_json: Json = False,
    track: Track = None,
):
    """Run a study (train the parent, make children, controls), write report.html and results.json.

    Study kinds: the plain study (no `kind`), kurtosis, kd-functional, moonshine,
    linear-substitution, compression-functional, blockswap, embedding-compression,
    dataset-distillation, data-pruning and distilled-pruning.
    Before anything is written the
    dataset loads, every model builds and every step passes its checks.

    Steps run in worker processes or in this process as `--workers auto` judges best
    (results.json's `execution` says what it chose and why); `--workers N` fixes it.

    Re-running resumes: every finished step is reused from the run store. A step that
    fails (e.g. its loss goes NaN) is recorded with its reason; independent steps still
    run, the report lists the failure, and the exit code is 3 (study incomplete).

    \b
    Examples:
      compresslab study                 # the default study on mnist1d
      compresslab study --preset kd-functional   # KD vs controls, 6 conditions x 5 seeds
      compresslab study --preset kd-functional-v2   # SIDDO/DISDO controls, error inheritance, sweeps
      compresslab study --preset embedding-compression   # ReID embeddings: slicing, PCA, pruning, QAT to 128x
      compresslab study --preset compression-functional   # KD, pruning, quantisation vs retrains
      compresslab study my-study.yaml --runs /scratch/runs --workers 2
      compresslab study my-study.yaml --executor ray --ray-address auto --runs s3://bucket/runs
      compresslab study --preset moonshine-cifar10 --data cifar10:DIR --device cuda   # the paper's scale
      compresslab study --preset moonshine-cifar10 --data cifar10:DIR --epochs 1 --subset 512 --no-latency
      compresslab study my-study.yaml --track mlflow   # a parent run in ./mlruns, one nested run per step
      compresslab study my-study.yaml --track tensorboard:runs/tb
    """
    from compresslab.api import run_study
    from compresslab.progress import RichProgress
    from compresslab.runs.track import track_study
    from compresslab.steps.executor import Execution, parse_workers
    from compresslab.study import study_kind

    target = tracker(track)

    execution = Execution(executor, parse_workers(workers), ray_address, cpus_per_step, gpus_per_step)
    with RichProgress(quiet=quiet) as progress:
        results, out = run_study(spec, preset=preset, runs=runs, progress=progress, execution=execution,
                                 device=device, deterministic=deterministic, data=data, epochs=epochs,
                                 subset=subset, latency=latency)
    if as_json:
        typer.echo(json.dumps(results, indent=2, sort_keys=True))
    else:
        study_kind(results["kind"]).print(results, out)
    track_study(target, out)
    if results.get("failed"):
        raise StudyIncomplete(results["failed"])


@app.command()
def doctor(
    runs: Path = typer.Argument(..., help="A run store directory (the --runs of your commands)."),
    remove: bool = typer.Option(False, "--remove", help="Delete the broken steps, stale temp dirs and free lock files."),
    as_json: Json = False,
):
    """Check every step of a run store; list (and with --remove delete) the broken ones.

    A step is broken when a file cannot be read back (spec.json, model.json, metrics.json,
    model.safetensors, *.npy). Removing it is safe: the next run rebuilds only that step.
    Also lists temp dirs of dead processes, unheld lock files and failed steps with reasons.
    Exit code 1 while broken steps remain.

    JSON keys: root, steps, broken [{step, problems}], stale_tmp, stale_locks, failed
    [{step, label, reason}], healthy (and removed with --remove).

    \b
    Example:
      compresslab doctor runs            # diagnose
      compresslab doctor runs --remove   # then re-run the study
    """
    from compresslab.runs.doctor import diagnose, repair

    report = diagnose(runs)
    if remove:
        report["removed"] = repair(report)
        report["healthy"] = True

    def human(r):
        typer.echo(f"{r['root']}: {r['steps']} steps, {len(r['broken'])} broken")
        for b in r["broken"]:
            typer.echo(f"  broken {b['step']}: {'; '.join(b['problems'])}")
        for f in r["failed"]:
            typer.echo(f"  failed {f['step']} ({f['label']}): {f['reason']}")
        if r["stale_tmp"] or r["stale_locks"]:
            typer.echo(f"  {len(r['stale_tmp'])} stale temp dirs, {len(r['stale_locks'])} free lock files")
        if remove:
            rm = r["removed"]
            typer.echo(f"removed {len(rm['removed_steps'])} broken steps, {len(rm['removed_tmp'])} temp dirs, "
                       f"{len(rm['removed_locks'])} lock files; run the study again to rebuild them")
        elif r["broken"]:
            typer.echo(f"run `compresslab doctor {runs} --remove`, then the study again")

    emit(report, as_json, human)
    return 0 if report["healthy"] else 1
