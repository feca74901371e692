"""``compresslab landscape``: the Hessian trace and the loss landscape around a checkpoint."""
from pathlib import Path
from typing import Optional

import typer

from compresslab.cli.common import Deterministic, Device, Json, Quiet, app, data_option, emit, seed_option
from compresslab.console import echo


@app.command()
def landscape(
    checkpoint: Path = typer.Argument(..., help="A float checkpoint directory (a trained or pruned model)."),
    data: data_option("Dataset to measure the loss on (the checkpoint's).") = ...,
    dims: int = typer.Option(1, "--dims", help="1: a loss curve along one direction; 2: a loss surface over two."),
    span: float = typer.Option(1.0, "--span", help="Grid over [-span, span] in units of the filter-normalised "
                               "direction (1 = a step as large as each filter)."),
    points: int = typer.Option(21, "--points", help="Grid points per direction (>= 3; odd puts θ on the grid)."),
    split: str = typer.Option("train", "--split", help="Split the loss is measured on: train, val or test."),
    hessian_samples: int = typer.Option(32, "--hessian-samples", help="Rademacher vectors for the Hutchinson "
                                        "Hessian-trace estimate (0: skip it)."),
    max_examples: int = typer.Option(2048, "--max-examples", help="Measure on the first N examples of the split."),
    batch_size: int = typer.Option(256, "--batch-size", help="Batch size of the Hessian-vector products."),
    masked: bool = typer.Option(True, "--mask/--no-mask", help="Treat weights that are exactly zero as pruned: "
                                "the Hessian and the directions cover the kept weights only."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the plot here: FILE.svg or FILE.png."),
    seed: seed_option("Seed of the directions and the Rademacher vectors (the train/val split is the "
                      "checkpoint's own, from its spec.json).") = 0,
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
):
    """How sharp is the minimum a checkpoint sits in? Hutchinson's estimate of the trace of the
    Hessian of the mean cross-entropy (± its standard error over the random vectors), and the
    loss along filter-normalised random directions (Li et al., NeurIPS 2018), with BatchNorm
    statistics recomputed at every point.

    The summary: loss at θ, the largest rise on the grid, and sharpness = the mean loss
    increase at distance span/2 from θ. A larger trace or sharpness means a sharper minimum.

    JSON keys: checkpoint, data, data_split {seed, val_fraction, from}, split, n, seed, masked, pruned, params, hessian {trace,
    stderr, samples, per_sample, params}, landscape {coords, loss, error, span, points,
    split, dims, n, centre}, summary {centre_loss, max_rise, sharpness, radius}, seconds
    {hessian, landscape}, out (with --out).

    \b
    Examples:
      compresslab landscape runs/train-1a2b... --data mnist1d
      compresslab landscape runs/train-1a2b... --data mnist1d --dims 2 --points 21 --out landscape.svg
      compresslab landscape runs/prune-3c4d... --data mnist1d --hessian-samples 64 --json
    """
    from compresslab.api import landscape_checkpoint
    from compresslab.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        result = landscape_checkpoint(checkpoint, data, dims=dims, span=span, points=points, split=split,
                                      hessian_samples=hessian_samples, max_examples=max_examples,
                                      batch_size=batch_size, seed=seed, masked=masked, out=out,
                                      progress=progress, device=device, deterministic=deterministic)

    def human(r):
        s, land = r["summary"], r["landscape"]
        kept = f", {r['params'] - r['pruned']:,} of {r['params']:,} weights kept" if r["masked"] else ""
        echo(f"{r['checkpoint']} on {r['data']} {r['split']} ({r['n']} examples{kept})")
        if "hessian" in r:
            h = r["hessian"]
            echo(f"Hessian trace (Hutchinson, {h['samples']} samples): {h['trace']:.5g} ± {h['stderr']:.2g} "
                 f"(stderr; {h['params']:,} coordinates, {r['seconds']['hessian']:.1f}s)")
        echo(f"{land['dims']}-D landscape, {land['points']} points per direction over ±{land['span']:g} "
             f"({r['seconds']['landscape']:.1f}s):")
        echo(f"  loss at θ {s['centre_loss']:.4g} (error {land['centre']['error']:.4f}); "
             f"max rise {s['max_rise']:.4g}; sharpness (mean rise at radius {s['radius']:g}) {s['sharpness']:.4g}")
        if "out" in r:
            echo(f"wrote {r['out']}")

    emit(result, as_json, human)
