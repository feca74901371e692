"""``compresslab codesign``: baseline, global search, local search, hls4ml, in one command."""
from pathlib import Path
from typing import Optional

import typer

from compresslab.cli.common import Device, Json, Quiet, Runs, app, emit, on


@app.command()
def codesign(
    spec: Optional[Path] = typer.Argument(None, help="Pipeline spec (YAML; see docs/codesign.md). Or use --preset."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A shipped pipeline: codesign-bragg (Bragg-peak centres, BraggNN baseline)."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Override search.trials."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the epochs of the baseline and of every search trial."),
    data: Optional[str] = typer.Option(None, "--data", help="Override the dataset, e.g. bragg:synthetic@2000 for a quick run."),
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    as_json: Json = False,
):
    """Run the two-stage codesign pipeline and report the BOPs saved at the baseline's quality.

    Stages: (1) train the hand-designed baseline; (2) global search (Optuna NSGA-II) on the
    task metric and BOPs; (3) local search: QAT at each bit width and iterative pruning of
    the best front members; (4) hls4ml export of the winner, the cheapest model at least as
    good as the baseline, checked by C simulation. On bragg:synthetic the pseudo-Voigt fit
    is timed per patch against the winner. Every model is a run-store step: a rerun reuses
    them. Writes results.json, report.html and hls4ml/ under RUNS/codesign/<name>-<hash>/.

    JSON keys: verdict, baseline, winner, matched, bops_reduction, search {front, hypervolume,
    folder}, local {rows, front1, front2}, pseudo_voigt {centre_error_px, seconds_per_patch,
    speedup}, hls4ml {parity, precision, ...}, seconds.

    \b
    Examples:
      compresslab codesign --preset codesign-bragg
      compresslab codesign --preset codesign-bragg --data bragg:synthetic@2000 --trials 4 --epochs 1
      compresslab codesign my-pipeline.yaml --json
    """
    from compresslab.codesign_pipeline import load_spec, run_pipeline
    from compresslab.console import echo
    from compresslab.progress import RichProgress

    s = load_spec(spec, preset, **{"search.trials": trials, "search.epochs": epochs, "baseline.epochs": epochs,
                                   "data": data})
    with on(device), RichProgress(quiet=quiet) as progress:
        results, out = run_pipeline(s, runs, progress=progress,
                                    echo=(lambda *a: None) if quiet or as_json else (lambda m: typer.echo(m, err=True)))

    def human(r):
        echo(*r["verdict"], f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")

    emit(results, as_json, human)
