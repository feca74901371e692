"""``compresslab search``: global architecture search (Optuna) on the task metric and BOPs."""
from pathlib import Path
from typing import Optional

import typer

from compresslab.cli.common import Device, Json, Lr, Quiet, RecipeFile, Runs, app, data_option, emit, on, seed_option


@app.command()
def search(
    space: str = typer.Argument(..., help="Search-space YAML (see docs/codesign.md), or a shipped space's name, e.g. codesign-bragg-space."),
    data: data_option("Dataset to train every trial on, e.g. digits, mnist1d or bragg:synthetic (regression).") = ...,
    trials: int = typer.Option(20, "--trials", help="Trials in the study in all; a rerun with more extends it."),
    objectives: Optional[str] = typer.Option(None, "--objectives", help="The task metric first (accuracy, or error on regression data), then costs: bops, latency, params. Default: METRIC,bops."),
    epochs: int = typer.Option(5, "--epochs", help="Training epochs of every (promoted) trial."),
    recipe: RecipeFile = None,
    lr: Lr = None,
    sampler: str = typer.Option("nsga2", "--sampler", help="nsga2 (NSGA-II, default), tpe or random."),
    batch: int = typer.Option(8, "--batch", help="Trials asked at once, trained in parallel and halved together (NSGA-II's population)."),
    halving: int = typer.Option(1, "--halving", help="Successive-halving rounds per batch: train at E/2^H ... E epochs, keeping the better half by Pareto rank each time; 0 turns it off."),
    storage: Optional[str] = typer.Option(None, "--storage", help="sqlite (default: study.db in the search folder), journal (a file several processes can share) or an RDB URL."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="A trained checkpoint to mark on the plot, e.g. BraggNN trained with the same epochs."),
    workers: int = typer.Option(1, "--workers", help="Train this many trials at once in worker processes."),
    executor: str = typer.Option("local", "--executor", help="local (this process, or --workers processes) or ray (one Ray task per trial)."),
    seed: seed_option("Seed of the sampler, the weights and the validation split.") = 0,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    as_json: Json = False,
):
    """Search architectures for the Pareto front of accuracy (or error) against BOPs.

    Every trial is a run-store train step of the `searched` model, so a rerun reuses
    finished trials and a killed search resumes. Writes front.csv, front.json, trials.csv,
    pareto.svg and hypervolume.svg under RUNS/search/<space>-<hash>/; each front member's
    model spec works with train, prune, quantize, export and compare.

    \b
    Examples:
      compresslab search space.yaml --data digits --trials 20 --epochs 3
      compresslab search codesign-bragg-space --data bragg:synthetic --objectives error,bops,params --recipe adam.yaml
      compresslab search space.yaml --data mnist1d --trials 40 --workers 2 --storage journal
    """
    from compresslab.api import load_recipe
    from compresslab.progress import RichProgress
    from compresslab.steps.executor import Execution
    from compresslab.study.search import search as run_search

    execution = Execution(executor, workers)

    def line(t: dict) -> None:
        if quiet:
            return
        vals = ", ".join(f"{k} {v:.4g}" for k, v in t["values"].items())
        what = t["failure"] if t["state"] == "failed" else f"{vals} ({t['epochs']} epochs, {'trained' if t['ran'] else 'reused'})"
        typer.echo(f"trial {t['trial']} {t['state']}: {what}", err=True)

    with on(device), RichProgress(quiet=quiet) as progress:
        results, folder = run_search(space, data, trials=trials, objectives=objectives or "", epochs=epochs,
                                     recipe=load_recipe(recipe, {} if lr is None else {"lr": lr}).model_dump(),
                                     sampler=sampler, seed=seed, runs=runs, storage=storage, batch=batch,
                                     halving=halving, reference=reference, execution=execution,
                                     progress=progress, on_trial=line)
    emit(results, as_json, _print)


def _print(r: dict) -> None:
    from compresslab.console import echo

    objs = r["objectives"]
    echo(f"{r['complete']} complete, {r['stopped']} stopped early, {r['failed']} failed; "
         f"front of {len(r['front'])}, normalised hypervolume {r['hypervolume']:.4f}")
    echo("trial  " + "  ".join(f"{o:>12}" for o in objs) + "  model")
    for f in r["front"]:
        echo(f"{f['trial']:>5}  " + "  ".join(f"{f[o]:>12.4g}" for o in objs) + "  " + _short(f["model"]["options"]))
    typer.echo(r["folder"])


def _short(arch: dict) -> str:
    """``cnn 8k3+16k3p`` style summary of an architecture."""
    if arch["family"] == "mlp":
        return "mlp " + "-".join(str(u["width"]) for u in arch["layers"])
    blocks = "+".join(f"{b['channels']}k{b['kernel']}{'s' if b['skip'] else ''}{b['pool'][0] if b['pool'] != 'none' else ''}"
                      for b in arch["blocks"])
    return f"cnn {blocks}" + (f" head {'-'.join(map(str, arch['head']))}" if arch["head"] else "")
