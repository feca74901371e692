"""Commands about one model: train it, describe its cost, evaluate it, compare two."""

from pathlib import Path
from typing import List, Optional

import typer

from compresslab.cli.common import (
    BatchSize,
    DataSeed,
    Deterministic,
    Device,
    Epochs,
    Json,
    Lr,
    Quiet,
    RecipeFile,
    Runs,
    Track,
    app,
    data_option,
    emit,
    parse_options,
    parse_shape,
    seed_option,
    track_steps,
    tracker,
)
from compresslab.console import echo, num, print_pairs
from compresslab.errors import UserError


@app.command()
def train(
    model: str = typer.Option(..., "--model", "-m", help="mlp, cnn1d, gru, transformer1d, lenet5, resnet20|32|44|56|110, wrn-D-K, wrn1d-D-K, braggnn, soft-tree (-o depth=8), or package.module:factory."),
    data: data_option("mnist1d, digits, mnist:DIR, cifar10:DIR, cifar100:DIR, npz:FILE, or bragg:synthetic (regression: MSE loss, mean centre error in px).") = ...,
    option: List[str] = typer.Option([], "--option", "-o", help="Model option KEY=VALUE, repeatable (e.g. width=64)."),
    recipe: RecipeFile = None,
    epochs: Epochs = None,
    lr: Lr = None,
    batch_size: BatchSize = None,
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (default) or fast (channels_last + bf16 autocast)."),
    seed: seed_option("Seed for init, batch order and the validation split.") = 0,
    data_seed: DataSeed = None,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes (torch DDP through torchrun: gloo on CPU, NCCL with one GPU per process on CUDA); each batch is split over them. 1 trains in this process."),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="With --nproc on CUDA: BatchNorm statistics over the whole batch (SyncBatchNorm) instead of each process's slice."),
    track: Track = None,
):
    """Train a model; print its checkpoint directory.

    \b
    Examples:
      compresslab train --model cnn1d --data mnist1d --epochs 10 --option width=64
      compresslab train --model cnn1d --data mnist1d --epochs 10 --nproc 2   # 2 DDP processes
      compresslab train --model cnn1d --data mnist1d --epochs 10 --track mlflow   # also log to ./mlruns
      compresslab train --model braggnn --data bragg:synthetic --epochs 5 --lr 0.003   # Bragg-peak centres
    """
    from compresslab.api import train_model
    from compresslab.progress import RichProgress

    target = tracker(track)

    overrides = {k: v for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size,
                                   "precision": precision}.items() if v is not None}
    with RichProgress(quiet=quiet) as progress:
        result = train_model(model, data, options=parse_options(option), recipe_file=recipe,
                             overrides=overrides, seed=seed, data_seed=data_seed, runs=runs, progress=progress, nproc=nproc, sync_bn=sync_bn,
                             device=device, deterministic=deterministic)
    emit(result, as_json, _print_trained)
    track_steps(target, result)


def _print_trained(r: dict) -> None:
    """The checkpoint directory on stdout; on regression data its mean centre error on stderr."""
    typer.echo(r["checkpoint"])
    if "centre_error_px" in r:
        typer.echo("mean centre error: " + ", ".join(f"{s} {v:.4f} px" for s, v in r["centre_error_px"].items()
                                                    if v is not None), err=True)


@app.command()
def info(
    checkpoint: Optional[Path] = typer.Argument(None, help="A checkpoint directory (with model.json)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Describe a fresh model instead of a checkpoint."),
    num_classes: int = typer.Option(10, "--num-classes", help="With --model: number of classes."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", help="With --model: input channels (default: from --input-shape, else 1)."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Example shape CxHxW or CxL (e.g. 3x32x32): with --model, needed for MACs, BOPs and latency."),
    option: List[str] = typer.Option([], "--option", "-o", help="With --model: option KEY=VALUE, repeatable."),
    bits: Optional[int] = typer.Option(None, "--bits", min=1, max=32, help="Weight and activation bits for bytes and BOPs (default: the checkpoint's, else 32)."),
    with_latency: bool = typer.Option(False, "--latency", help="Also measure CPU latency at batch 1 and 256."),
    device: Device = "auto",
    as_json: Json = False,
):
    """Cost of a model: params, nonzero params, MACs, BOPs, bytes [, latency].

    \b
    Examples:
      compresslab info runs/train-1a2b3c... --latency --json
      compresslab info --model wrn-40-2 --input-shape 3x32x32
    """
    from compresslab.api import model_info
    from compresslab.models import list_models

    if (checkpoint is None) == (model is None):
        raise UserError("give a checkpoint directory or --model NAME (known models: "
                        f"{', '.join(list_models())})")
    shape = parse_shape(input_shape) if input_shape else None
    result = model_info(checkpoint=checkpoint, model=model, num_classes=num_classes,
                        in_channels=in_channels or (shape[0] if shape else 1), input_shape=shape,
                        options=parse_options(option), bits=bits, with_latency=with_latency, device=device)
    rows = [(k, num(result[k])) for k in ("params", "nonzero_params", "macs", "bops", "bytes") if result[k] is not None]
    rows += [(f"latency_ms {k}", f"{v:.3f}") for k, v in result.get("latency_ms", {}).items()]

    def human(r):
        print_pairs(r["model"], rows)
        if "note" in r:
            echo(f"note: {r['note']}")

    emit(result, as_json, human)


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory (with model.json)."),
    data: data_option("Dataset name (as for train).") = ...,
    seed: seed_option("Seed of the validation split (use the training seed).") = 0,
    device: Device = "auto",
    as_json: Json = False,
):
    """Accuracy and loss of a checkpoint on each split (regression data: mean centre error in px, MSE).

    \b
    Examples:
      compresslab evaluate runs/train-1a2b3c... --data mnist1d
      compresslab evaluate runs/train-4d5e6f... --data bragg:synthetic
    """
    from compresslab.api import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, seed=seed, device=device)
    rows = [(f"{s} accuracy", f"{100 * v['accuracy']:.2f}%") if "accuracy" in v
            else (f"{s} centre error", f"{v['centre_error_px']:.4f} px") for s, v in result["splits"].items()]
    emit(result, as_json, lambda r: print_pairs(str(checkpoint), rows))


@app.command()
def compare(
    a: Path = typer.Argument(..., help="Reference checkpoint (e.g. the parent)."),
    b: Path = typer.Argument(..., help="Compared checkpoint (e.g. the child)."),
    data: data_option("Dataset name.") = ...,
    split: str = typer.Option("test", "--split", help="val or test."),
    seed: seed_option("Seed of the validation split.") = 0,
    device: Device = "auto",
    as_json: Json = False,
):
    """Functional similarity of two checkpoints on the same inputs.

    JSON keys: agreement, disagreement, kappa, js_divergence (nats), activation_distance,
    output_cosine, kl_ab, kl_ba (nats), accuracy_a, accuracy_b. On regression data
    (bragg:synthetic): mse (of the outputs), centre_distance_px, centre_error_px_a, centre_error_px_b.

    \b
    Example:
      compresslab compare runs/train-aaa... runs/prune-bbb... --data mnist1d
    """
    from compresslab.api import compare_checkpoints

    result = compare_checkpoints(a, b, data, split=split, seed=seed, device=device)
    emit(result, as_json, lambda r: print_pairs(f"{a.name} vs {b.name} ({split})",
                                            [(k, f"{v:.4f}") for k, v in r.items()]))
