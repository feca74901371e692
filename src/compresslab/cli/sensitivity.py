"""``compresslab sensitivity``: per-layer sensitivity and mixed-precision bit assignment."""
from pathlib import Path
from typing import Optional

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
    seed_option,
)
from compresslab.console import console, echo, short, table
from compresslab.errors import UserError


def _numbers(text: str | None, what: str, cast):
    if not text:
        return ()
    try:
        return tuple(cast(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"{what} {text!r}: expected a comma-separated list, e.g. 8,6,4,3,2") from None


@app.command()
def sensitivity(
    checkpoint: Path = typer.Argument(..., help="The float parent checkpoint directory."),
    data: data_option("Dataset to measure on (the parent's); regression data (bragg:synthetic) too.") = ...,
    bits: str = typer.Option("8,6,4,3,2", "--bits", "-b", help="Weight widths to try per layer (2-16), comma-separated; the widest is the budget's reference."),
    sparsities: Optional[str] = typer.Option(None, "--sparsities", help="Also prune one layer at a time (magnitude, within the layer) to these sparsities, e.g. 0.5,0.8,0.9."),
    act_bits: Optional[int] = typer.Option(None, "--act-bits", help="Also quantise the layer's input to this many bits (ranges calibrated; default weights only, inputs at 32)."),
    split: str = typer.Option("val", "--split", help="Split to measure on: val or test."),
    per_channel: bool = typer.Option(False, "--per-channel/--per-tensor", help="One weight scale per output channel (default: per tensor)."),
    asymmetric: bool = typer.Option(False, "--asymmetric", help="Asymmetric (zero-point) weight grid instead of symmetric."),
    budget_bops: Optional[float] = typer.Option(None, "--budget-bops", help="Assign per-layer bits within this many BOPs (summed over conv/linear layers)."),
    budget_bytes: Optional[float] = typer.Option(None, "--budget-bytes", help="Assign per-layer bits within this many bytes of conv/linear weights."),
    budget_ratio: Optional[float] = typer.Option(None, "--budget-ratio", help="Budget as a fraction of every layer at the widest --bits (BOPs, or bytes with --cost bytes), e.g. 0.5."),
    cost: Optional[str] = typer.Option(None, "--cost", help="What the budget counts: bops or bytes (default: bytes with --budget-bytes, else bops)."),
    objective: str = typer.Option("drift", "--objective", help="Per-layer loss to minimise: drift (JS divergence; output MSE for regression) or drop (accuracy lost; error added)."),
    method: str = typer.Option("exact", "--method", help="exact (optimal knapsack, dynamic programming), greedy, or both (the first made by --assign is exact)."),
    assign: bool = typer.Option(False, "--assign", help="Quantise the checkpoint to the assignment (fake-quant PTQ, per-layer bits) as a run-store step."),
    table_file: Optional[Path] = typer.Option(None, "--table", help="Reuse a sensitivity.json written by --out for this checkpoint instead of measuring again."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory to write sensitivity.json into (table, assignment)."),
    calib_batches: int = typer.Option(8, "--calib-batches", help="Training batches for calibrating activation ranges (with --act-bits)."),
    seed: seed_option("Seed of the val split and the calibration batches.") = 0,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
):
    """Per-layer sensitivity: quantise (or prune) one layer at a time, the rest fp32, and
    measure the accuracy drop and the drift from the parent; then, under a budget, give each
    layer its own bits (mixed precision).

    Classification: drop = accuracy lost, drift = JS divergence, plus agreement. Regression
    (bragg:synthetic): drop = centre error added (px), drift = output MSE.

    JSON keys: checkpoint, checkpoint_sha256, data, table {task, split, score, parent_score,
    bits, sparsities, act_bits, layers [name, type, params, bops_fp32, bops_share, bops, bytes,
    quant {bits: effect}, prune {sparsity: effect}], total_bops_fp32}; with a budget also
    assignment {cost, objective, budget, widest, assignments {method: {bits, cost, loss}},
    uniform {bits: {cost, loss}}}; with --assign quantized (as `compresslab quantize --json`);
    with --out json.

    \b
    Examples:
      compresslab sensitivity runs/train-1a2b... --data digits
      compresslab sensitivity runs/train-1a2b... --data digits --sparsities 0.5,0.8,0.9 --json
      compresslab sensitivity runs/train-1a2b... --data digits --budget-ratio 0.5 --method both --out sens/
      compresslab sensitivity runs/train-1a2b... --data digits --table sens/sensitivity.json --budget-ratio 0.4 --assign
    """
    from compresslab.mixed_precision import sensitivity as run
    from compresslab.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        result = run(checkpoint, data, bits=_numbers(bits, "--bits", int),
                     sparsities=_numbers(sparsities, "--sparsities", float), act_bits=act_bits, split=split,
                     per_channel=per_channel, symmetric=not asymmetric, calib_batches=calib_batches, seed=seed,
                     table=table_file, budget_bops=budget_bops, budget_bytes=budget_bytes, budget_ratio=budget_ratio,
                     cost=cost, objective=objective, method=method, make=assign, out=out, runs=runs,
                     progress=progress, device=device, deterministic=deterministic)

    def human(r):
        t = r["table"]
        reg = t["task"] == "regression"
        scale = 1 if reg else 100
        drop = "error added (px)" if reg else "accuracy drop (pp)"
        cols = ["layer", "BOPs share"] + [f"{b} bits" for b in t["bits"]] + [f"sparsity {s:g}" for s in t["sparsities"]]
        tab = table(f"{drop} on {t['split']}, one layer at a time (parent {t['score']} {t['parent_score']:.4g})", cols)
        drift = table(f"drift from the parent ({'output MSE' if reg else 'JS divergence, nats'})",
                      ["layer"] + [f"{b} bits" for b in t["bits"]] + [f"sparsity {s:g}" for s in t["sparsities"]])
        for row in t["layers"]:
            q = {int(b): e for b, e in row["quant"].items()}
            p = {float(s): e for s, e in row["prune"].items()}
            tab.add_row(row["name"], f"{100 * row['bops_share']:.1f}%",
                        *[f"{scale * q[b]['drop']:.2f}" for b in t["bits"]],
                        *[f"{scale * p[s]['drop']:.2f}" for s in t["sparsities"]])
            drift.add_row(row["name"], *[f"{q[b]['drift']:.2e}" for b in t["bits"]],
                          *[f"{p[s]['drift']:.2e}" for s in t["sparsities"]])
        console().print(tab)
        console().print(drift)
        a = r.get("assignment")
        if a:
            layers = [row["name"] for row in t["layers"]]
            tab = table(f"assignment: {a['cost']} budget {short(a['budget'])} "
                        f"({a['budget'] / a['widest']:.3f} of all at {max(t['bits'])} bits)",
                        ["", *layers, a["cost"], f"summed {a['objective']}"])
            for m, v in a["assignments"].items():
                tab.add_row(m, *[str(v["bits"][n]) for n in layers], short(v["cost"]), f"{v['loss']:.3e}")
            for b, v in a["uniform"].items():
                tab.add_row(f"uniform {b}", *[str(b)] * len(layers), short(v["cost"]), f"{v['loss']:.3e}")
            console().print(tab)
        if "quantized" in r:
            qz = r["quantized"]
            echo(f"quantised: {qz['checkpoint']}  ({qz['vs_parent'].get('accuracy_b', qz['vs_parent'].get('centre_error_px_b')):.4g} "
                 f"{t['score']} on test; BOPs {short(qz['cost']['bops'])})")
        if "json" in r:
            echo(f"wrote {r['json']}")

    emit(result, as_json, human)
