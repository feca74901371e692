"""``compresslab local-search``: stage 2 of codesign (QAT and pruning of the front's candidates)."""

from pathlib import Path
from typing import List, Optional

import typer

from compresslab.cli.common import (
    Deterministic,
    Device,
    Json,
    Quiet,
    Runs,
    app,
    data_option,
    emit,
    parse_bits,
    seed_option,
)
from compresslab.console import console, short, table
from compresslab.errors import UserError


def _bits_list(text: str) -> list[int]:
    if not text.strip():
        return []
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--bits {text!r}: expected comma-separated integers, e.g. 8,6,4") from None


@app.command("local-search")
def local_search(
    checkpoints: List[Path] = typer.Argument(..., help="The candidates: trained float checkpoints (run-store train steps, e.g. the global search's front)."),
    data: data_option("Dataset the candidates were trained on (fine-tuning and evaluation).") = ...,
    bits: str = typer.Option("8,6,4", "--bits", help="QAT bit widths (weights and layer inputs), each 2-16; empty: no uniform QAT."),
    mixed: Optional[List[str]] = typer.Option(None, "--mixed", help="A mixed-precision QAT child per use, bits per layer type, e.g. conv=8,linear=4 (repeatable)."),
    weights_only: bool = typer.Option(False, "--weights-only", help="Quantise weights only (layer inputs stay fp32: BOPs count b_a = 32)."),
    prune_rounds: int = typer.Option(3, "--prune-rounds", help="Rounds of iterative magnitude pruning (0: none); every round is also quantised at each width."),
    prune_amount: float = typer.Option(0.2, "--prune-amount", help="Fraction of the remaining weights (or channels, --structured) each round removes."),
    structured: bool = typer.Option(False, "--structured", help="Prune whole channels (Torch-Pruning: a physically smaller model) instead of single weights."),
    round_to: Optional[int] = typer.Option(None, "--round-to", help="With --structured: keep channel counts multiples of N (at least N)."),
    qat_epochs: int = typer.Option(2, "--qat-epochs", help="QAT fine-tuning epochs (the candidate's recipe at a tenth of its lr)."),
    finetune_epochs: int = typer.Option(2, "--finetune-epochs", help="Fine-tuning epochs after each pruning round."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="A hand-designed checkpoint on the same data (e.g. BraggNN): report the BOPs reduction at matched metric."),
    tolerance: float = typer.Option(0.0, "--tolerance", help="How much worse than the baseline still matches, in the metric's units (accuracy fraction or px)."),
    split: str = typer.Option("test", "--split", help="Split whose metric the fronts and the match use: test or val."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where results.json and fronts.svg go (default: <runs>/local-search/<hash12>)."),
    seed: seed_option("Seed for fine-tuning and calibration; also the val split's.") = 0,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
):
    """Quantise (QAT) and prune every candidate; print both Pareto fronts and the baseline match.

    Every child is a run-store step: a rerun reuses all of them. BOPs count each layer at its
    bits and weight sparsity. The second front is metric vs BOPs over candidates and children.

    JSON keys: data, score, sense, split, candidates, rows, front1, front2, baseline, match,
    tolerance, out.

    \b
    Examples:
      compresslab local-search runs/train-1a2b... runs/train-3c4d... --data bragg:synthetic
      compresslab local-search runs/train-1a2b... --data digits --bits 8,4 --prune-rounds 2 --json
      compresslab local-search runs/train-1a2b... --data bragg:synthetic --baseline runs/train-9ccb... --tolerance 0.005
      compresslab local-search runs/train-1a2b... --data digits --bits 8 --mixed conv=8,linear=4 --prune-rounds 0
      compresslab local-search runs/train-1a2b... --data digits --structured --round-to 8 --prune-amount 0.3
    """
    from compresslab import device as devices
    from compresslab.progress import RichProgress
    from compresslab.study.local_search import run_local_search

    mixes = [parse_bits(m, "--mixed") for m in mixed or []]
    if any(not isinstance(m, dict) for m in mixes):
        raise UserError("--mixed gives bits per layer type, e.g. conv=8,linear=4; use --bits for one width")
    with devices.using(devices.Runtime(device, deterministic)), RichProgress(quiet=quiet) as progress:
        result = run_local_search(checkpoints, data, bits=_bits_list(bits), mixed=mixes, prune_rounds=prune_rounds,
                                  prune_amount=prune_amount, structured=structured, round_to=round_to,
                                  qat_epochs=qat_epochs, finetune_epochs=finetune_epochs, act_bits=not weights_only,
                                  baseline=baseline, tolerance=tolerance, split=split, seed=seed, runs=runs, out=out,
                                  progress=progress)
    emit(result, as_json, _human)


def _human(r: dict) -> None:
    front1, front2 = set(r["front1"]), set(r["front2"])
    rows = [(str(row["candidate"]), row["name"], short(row["bops"]), f"{row['metric']:.4g}",
             f"{1 - row['nonzero_params'] / row['params']:.0%}", "★" if i in front1 else "",
             "★" if i in front2 else "") for i, row in enumerate(r["rows"])]
    t = table(f"local search on {r['data']}", ["cand.", "model", "BOPs", f"{r['score']} ({r['split']})", "zeros",
                                               "front 1", "front 2"], left=2)
    for row in rows:
        t.add_row(*row)
    console().print(t)
    if r["baseline"]:
        b, m = r["baseline"], r["match"]
        typer.echo(f"baseline: {r['score']} {b['metric']:.4g}, {short(b['bops'])} BOPs")
        if m is None:
            typer.echo(f"no child matches the baseline (tolerance {r['tolerance']:g})")
        else:
            typer.echo(f"matched: candidate {m['candidate']} {m['name']}, {r['score']} {m['metric']:.4g}, "
                       f"{short(m['bops'])} BOPs: {m['reduction']:.1f}x fewer BOPs than the baseline")
    typer.echo(f"results: {r['out']}/results.json, plot: {r['out']}/fronts.svg")
