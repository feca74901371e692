"""``compresslab distill-data``: a small synthetic training set, stored as a run-store step."""
from __future__ import annotations

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
    parse_options,
    seed_option,
)


@app.command("distill-data")
def distill_data(
    data: data_option("An image dataset: digits, mnist:DIR, cifar10:DIR, ...") = ...,
    ipc: int = typer.Option(..., "--ipc", help="Images per class (1, 10, 50 in the papers)."),
    method: str = typer.Option("dm", "--method", help="dm (distribution matching), dc (gradient matching), "
                                                       "random (real images) or herding (real images)."),
    init: Optional[str] = typer.Option(None, "--init", help="dm/dc: start from real images or noise "
                                                            "(default: real for dm, noise for dc, as the papers)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="dm/dc: image updates (default 1000)."),
    model: str = typer.Option("convnet", "--model", "-m", help="The network distillation embeds with / matches "
                                                               "gradients of (needs embed() for dm)."),
    option: List[str] = typer.Option([], "--option", "-o", help="Model option KEY=VALUE, repeatable (e.g. width=32)."),
    lr_img: Optional[float] = typer.Option(None, "--lr-img", help="Image learning rate (default 1.0 dm, 0.1 dc)."),
    batch_real: Optional[int] = typer.Option(None, "--batch-real", help="Real images per class per step (default 256)."),
    dsa: bool = typer.Option(False, "--dsa", help="dm/dc: differentiable siamese augmentation."),
    seed: seed_option("Seed for the synthetic set and the source's validation split.") = 0,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
):
    """Distil a dataset into IPC synthetic images per class; print the step directory and the
    dataset name to train on.

    \b
    Examples:
      compresslab distill-data --data digits --ipc 10 --method dm -o width=32 --iterations 200
      compresslab train --model convnet -o width=32 --data distilled:runs/distill-data-0123456789abcdef
      compresslab distill-data --data mnist:DIR --ipc 1 --method random   # the baseline
    """
    from compresslab.api import distill_data as run
    from compresslab.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        result = run(data, ipc=ipc, method=method, init=init, iterations=iterations, model=model,
                     options=parse_options(option), lr_img=lr_img, batch_real=batch_real, dsa=dsa, seed=seed,
                     runs=runs, progress=progress, device=device, deterministic=deterministic)
    emit(result, as_json, _print)


def _print(r: dict) -> None:
    typer.echo(r["directory"])
    typer.echo(r["data"])
    typer.echo(f"{r['examples']} images ({r['method']}, {r['ipc']} per class, {r['train_points_seen']:,} real "
               f"examples read, {r['seconds']:.1f} s); train on it with --data distilled:DIR", err=True)
