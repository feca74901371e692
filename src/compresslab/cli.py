"""The ``compresslab`` command line: a thin layer over the Python API.

Every command has ``--json`` (stable keys on stdout). User errors print one line on
stderr and exit with code 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.exceptions import Abort, Exit, TyperException

from compresslab.errors import StudyIncomplete, UserError

app = typer.Typer(
    name="compresslab",
    help="Compress trained networks and measure which function the child kept.\n\n"
         "Start with `compresslab study` (the default study on MNIST-1D).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

RUNS_HELP = "Run store directory: one sub-directory per finished step, reused on re-runs."


def _emit(obj: dict, as_json: bool, human) -> None:
    if as_json:
        typer.echo(json.dumps(obj, indent=2, sort_keys=True))
    else:
        human(obj)


def _console(width: int = 120):
    """stdout console; when piped, ``width`` columns wide so that tables are not truncated."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=width)


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, v)
    _console().print(t)


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _short(v: float) -> str:
    """1234 -> 1.23k, 3.9e8 -> 390M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def parse_options(items: list[str]) -> dict:
    """``k=v`` pairs; values are parsed as YAML scalars/lists (``64``, ``[32, 64]``, ``true``)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r}: expected KEY=VALUE, e.g. --option width=64")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise UserError(f"--input-shape {text!r}: expected sizes like 3x32x32 or 1x40") from None
    if not shape or min(shape) < 1:
        raise UserError(f"--input-shape {text!r}: sizes must be positive, e.g. 3x32x32")
    return shape


@app.command()
def train(
    model: str = typer.Option(..., "--model", "-m", help="mlp, cnn1d, lenet5, resnet20|32|44|56|110, wrn-D-K, wrn1d-D-K, or package.module:factory."),
    data: str = typer.Option(..., "--data", "-d", help="mnist1d, digits, mnist:DIR, cifar10:DIR, cifar100:DIR or npz:FILE."),
    option: List[str] = typer.Option([], "--option", "-o", help="Model option KEY=VALUE, repeatable (e.g. width=64)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML file of recipe fields (optimizer, lr, schedule, epochs, ...)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the recipe's learning rate."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override the recipe's batch size."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (default) or fast (channels_last + bf16 autocast)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed for init, batch order and the validation split."),
    runs: Path = typer.Option(Path("runs"), "--runs", help=RUNS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes (torch DDP through torchrun, gloo on CPU); each batch is split over them. 1 trains in this process."),
):
    """Train a model; print its checkpoint directory.

    \b
    Examples:
      compresslab train --model cnn1d --data mnist1d --epochs 10 --option width=64
      compresslab train --model cnn1d --data mnist1d --epochs 10 --nproc 2   # 2 DDP processes
    """
    from compresslab.api import train_model
    from compresslab.progress import RichProgress

    overrides = {k: v for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size,
                                   "precision": precision}.items() if v is not None}
    with RichProgress(quiet=quiet) as progress:
        result = train_model(model, data, options=parse_options(option), recipe_file=recipe,
                             overrides=overrides, seed=seed, runs=runs, progress=progress, nproc=nproc)
    _emit(result, as_json, lambda r: typer.echo(r["checkpoint"]))


@app.command()
def info(
    checkpoint: Optional[Path] = typer.Argument(None, help="A checkpoint directory (with model.json)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Describe a fresh model instead of a checkpoint."),
    num_classes: int = typer.Option(10, "--num-classes", help="With --model: number of classes."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", help="With --model: input channels (default: from --input-shape)."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Example shape CxHxW or CxL (e.g. 3x32x32); needed with --model."),
    option: List[str] = typer.Option([], "--option", "-o", help="With --model: option KEY=VALUE, repeatable."),
    bits: Optional[int] = typer.Option(None, "--bits", min=1, max=32, help="Weight and activation bits for bytes and BOPs (default: the checkpoint's, else 32)."),
    with_latency: bool = typer.Option(False, "--latency", help="Also measure CPU latency at batch 1 and 256."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
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
                        options=parse_options(option), bits=bits, with_latency=with_latency)
    rows = [(k, _num(result[k])) for k in ("params", "nonzero_params", "macs", "bops", "bytes")]
    rows += [(f"latency_ms {k}", f"{v:.3f}") for k, v in result.get("latency_ms", {}).items()]
    _emit(result, as_json, lambda r: _table(r["model"], rows))


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory (with model.json)."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset name (as for train)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed of the validation split (use the training seed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Accuracy and loss of a checkpoint on each split.

    \b
    Example:
      compresslab evaluate runs/train-1a2b3c... --data mnist1d
    """
    from compresslab.api import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, seed=seed)
    rows = [(f"{s} accuracy", f"{100 * v['accuracy']:.2f}%") for s, v in result["splits"].items()]
    _emit(result, as_json, lambda r: _table(str(checkpoint), rows))


@app.command()
def compare(
    a: Path = typer.Argument(..., help="Reference checkpoint (e.g. the parent)."),
    b: Path = typer.Argument(..., help="Compared checkpoint (e.g. the child)."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset name."),
    split: str = typer.Option("test", "--split", help="val or test."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed of the validation split."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Functional similarity of two checkpoints on the same inputs.

    JSON keys: agreement, disagreement, kappa, js_divergence (nats), activation_distance,
    output_cosine, kl_ab, kl_ba (nats), accuracy_a, accuracy_b.

    \b
    Example:
      compresslab compare runs/train-aaa... runs/prune-bbb... --data mnist1d
    """
    from compresslab.api import compare_checkpoints

    result = compare_checkpoints(a, b, data, split=split, seed=seed)
    _emit(result, as_json, lambda r: _table(f"{a.name} vs {b.name} ({split})",
                                            [(k, f"{v:.4f}") for k, v in r.items()]))


@app.command()
def prune(
    checkpoint: Path = typer.Argument(..., help="The parent checkpoint directory."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset for fine-tuning and evaluation (the parent's)."),
    amount: Optional[float] = typer.Option(None, "--amount", help="Fraction of the parameters to remove, in (0, 1)."),
    auto: Optional[str] = typer.Option(None, "--auto", help="Choose the amount from the weights: safe (kurtosis rule) or p_star."),
    method: str = typer.Option("global-l1", "--method", help="global-l1, layer-l1, random (the control), or channel (structured: whole channels, a physically smaller model)."),
    importance: str = typer.Option("magnitude", "--importance", help="With --method channel: magnitude or taylor."),
    global_channels: bool = typer.Option(False, "--global", help="With --method channel: rank channels across layers instead of the same ratio per layer."),
    scope: str = typer.Option("all", "--scope", help="all: weights and biases of conv, linear and norm layers; weights: conv/linear weights only."),
    finetune_epochs: int = typer.Option(1, "--finetune-epochs", help="Epochs of masked fine-tuning (0: none)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Fine-tuning learning rate (default: a tenth of the parent's)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed for fine-tuning order (and random pruning); also the val split's."),
    runs: Path = typer.Option(Path("runs"), "--runs", help=RUNS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Prune a checkpoint by magnitude, fine-tune with masks kept, print the child's directory.

    \b
    Examples:
      compresslab prune runs/train-1a2b... --amount 0.8 --data mnist1d
      compresslab prune runs/train-1a2b... --auto safe --method global-l1 --data mnist1d --json
      compresslab prune runs/train-1a2b... --method channel --amount 0.5 --data mnist1d --json
    """
    from compresslab.api import prune_checkpoint
    from compresslab.progress import RichProgress

    if (amount is None) == (auto is None):
        raise UserError("give exactly one of --amount X or --auto safe|p_star")
    if auto is not None and auto not in ("safe", "p_star"):
        raise UserError(f"--auto {auto!r}: use safe or p_star")
    with RichProgress(quiet=quiet) as progress:
        result = prune_checkpoint(checkpoint, data, amount=auto or amount, method=method, scope=scope,
                                  importance=importance, global_channels=global_channels,
                                  finetune_epochs=finetune_epochs, lr=lr, seed=seed, runs=runs, progress=progress)
    _emit(result, as_json, lambda r: typer.echo(r["checkpoint"]))


def parse_bits(text: str | None, what: str):
    """``4`` -> 4; ``conv=4,linear=8`` -> ``{"conv": 4, "linear": 8}`` (bits per layer type)."""
    if text is None:
        return None
    if "=" not in text:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{what} {text!r}: expected an integer like 4, or per layer type like conv=4,linear=8") from None
    out = parse_options([i.strip() for i in text.split(",") if i.strip()])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in out.values()):
        raise UserError(f"{what} {text!r}: bit widths must be integers, e.g. conv=4,linear=8")
    return out


@app.command()
def quantize(
    checkpoint: Path = typer.Argument(..., help="The parent checkpoint directory (float; prune it first to combine)."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset for calibration, QAT and evaluation (the parent's)."),
    bits: str = typer.Option("8", "--bits", "-b", help="Weight bits, 2-16 (8 for ptq-*); per layer type as conv=4,linear=8."),
    scheme: str = typer.Option("fake", "--scheme", help="ptq-dynamic (int8 Linear kernels), ptq-static (int8 conv+linear, calibrated), fake (simulated, any width) or qat (fake-quant + fine-tuning)."),
    act_bits: Optional[str] = typer.Option(None, "--act-bits", help="fake/qat: also quantise each layer's input to this many bits (default: weights only)."),
    per_channel: bool = typer.Option(False, "--per-channel/--per-tensor", help="fake/qat: one weight scale per output channel (default: per tensor)."),
    asymmetric: bool = typer.Option(False, "--asymmetric", help="fake/qat: asymmetric (zero-point) weight grid instead of symmetric."),
    observer: str = typer.Option("minmax", "--observer", help="fake/qat activation ranges: minmax or percentile."),
    percentile: float = typer.Option(99.99, "--percentile", help="With --observer percentile: the upper percentile (lower: 100 - it)."),
    calib_batches: int = typer.Option(8, "--calib-batches", help="Training batches for calibrating activation ranges."),
    calib_batch_size: int = typer.Option(128, "--calib-batch-size", help="Examples per calibration batch."),
    epochs: int = typer.Option(3, "--epochs", help="qat: fine-tuning epochs (the parent's recipe)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="qat: learning rate (default: a tenth of the parent's)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed for calibration batches and QAT; also the val split's."),
    runs: Path = typer.Option(Path("runs"), "--runs", help=RUNS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Quantise a checkpoint; report accuracy, bits, BOPs, latency and fidelity to the parent.

    Real int8 (ptq-dynamic, ptq-static) runs int8 kernels and may be faster; fake and
    qat simulate any bit width with fp32 kernels: smaller in principle, never faster here.

    JSON keys: checkpoint, scheme, quantization, accuracy, cost, parent_cost, vs_parent,
    latency_ms {parent, child}, speedup, simulated.

    \b
    Examples:
      compresslab quantize runs/train-1a2b... --scheme ptq-dynamic --data mnist1d
      compresslab quantize runs/train-1a2b... --bits 4 --act-bits 8 --per-channel --data mnist1d
      compresslab quantize runs/train-1a2b... --scheme qat --bits conv=4,linear=4 --epochs 3 --data mnist1d --json
      compresslab quantize runs/prune-3c4d... --bits 4 --per-channel --data mnist1d   # 50% sparse at 4 bits
    """
    from compresslab.api import quantize_checkpoint
    from compresslab.progress import RichProgress

    if scheme.startswith("ptq-") and (act_bits or per_channel or asymmetric):
        raise UserError(f"--act-bits, --per-channel and --asymmetric apply to fake and qat; {scheme} "
                        "fixes its own int8 scheme")
    with RichProgress(quiet=quiet) as progress:
        result = quantize_checkpoint(checkpoint, data, scheme=scheme, bits=parse_bits(bits, "--bits"),
                                     act_bits=parse_bits(act_bits, "--act-bits"), per_channel=per_channel,
                                     symmetric=not asymmetric, observer=observer, percentile=percentile,
                                     calib_batches=calib_batches, calib_batch_size=calib_batch_size, epochs=epochs,
                                     lr=lr, seed=seed, runs=runs, progress=progress)

    def human(r):
        c, p, v = r["cost"], r["parent_cost"], r["vs_parent"]
        rows = [("checkpoint", r["checkpoint"]),
                ("test accuracy (parent → child)", f"{100 * v['accuracy_a']:.2f}% → {100 * v['accuracy_b']:.2f}%"),
                ("agreement with the parent", f"{100 * v['agreement']:.2f}%"),
                ("JS divergence (nats)", f"{v['js_divergence']:.5f}"),
                ("weight bytes (parent → child)", f"{p['bytes']:,} → {c['bytes']:,}"),
                ("BOPs (parent → child)", f"{_short(p['bops'])} → {_short(c['bops'])}")]
        for k, ratio in r["speedup"].items():
            rows.append((f"latency {k} (parent → child)", f"{r['latency_ms']['parent'][k]:.3f} → "
                         f"{r['latency_ms']['child'][k]:.3f} ms ({ratio:.2f}x)"))
        if r["simulated"]:
            rows.append(("note", "simulated quantisation: fp32 kernels, no speed-up expected"))
        _table(f"quantize ({r['scheme']})", rows)

    _emit(result, as_json, human)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Any checkpoint directory: trained, pruned, substituted or quantised."),
    onnx: Path = typer.Option(..., "--onnx", help="Output file (.onnx)."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset for the parity check (test split) and int8 calibration."),
    int8: bool = typer.Option(False, "--int8", help="Write ONNX Runtime's int8 graph instead of the fp32 one."),
    int8_scheme: str = typer.Option("auto", "--int8-scheme", help="auto, dynamic (int8 weights; activations per batch) or static (QDQ, calibrated)."),
    calib_batches: int = typer.Option(8, "--calib-batches", help="Training batches for static int8 calibration."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed of the val split and the calibration batches."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Skip the ONNX Runtime timing."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Export a checkpoint to ONNX; check parity and time it in ONNX Runtime (fp32 and int8).

    Parity: max |logit difference| and top-1 agreement against the checkpoint as PyTorch
    runs it, on the whole test split, for both the fp32 and the int8 graph.

    JSON keys: onnx, format, int8_scheme, parity {fp32, int8: max_abs_diff, top1_agreement,
    accuracy}, torch_accuracy, bytes, latency_ms {fp32, int8}, int8_speedup.

    \b
    Examples:
      compresslab export runs/prune-3c4d... --onnx model.onnx --data mnist1d
      compresslab export runs/train-1a2b... --onnx model-int8.onnx --int8 --data mnist1d --json
    """
    from compresslab.export import export_checkpoint

    result = export_checkpoint(checkpoint, onnx, data, int8=int8, int8_scheme=int8_scheme, calib_batches=calib_batches,
                               seed=seed, with_latency=not no_latency)

    def human(r):
        rows = [("wrote", f"{r['onnx']} ({r['format']}, {r['bytes'][r['format']]:,} bytes)"),
                ("checkpoint accuracy (PyTorch)", f"{100 * r['torch_accuracy']:.2f}%")]
        for k, p in r["parity"].items():
            rows.append((f"ORT {k} vs PyTorch", f"max |Δ| {p['max_abs_diff']:.2e}, top-1 agreement "
                         f"{100 * p['top1_agreement']:.2f}%, accuracy {100 * p['accuracy']:.2f}%"))
        for b, ratio in r.get("int8_speedup", {}).items():
            rows.append((f"ORT latency {b} fp32 → int8 ({r['int8_scheme']})",
                         f"{r['latency_ms']['fp32'][b]:.3f} → {r['latency_ms']['int8'][b]:.3f} ms ({ratio:.2f}x)"))
        _table(f"export {checkpoint.name}", rows)

    _emit(result, as_json, human)


@app.command()
def doctor(
    runs: Path = typer.Argument(..., help="A run store directory (the --runs of your commands)."),
    remove: bool = typer.Option(False, "--remove", help="Delete the broken steps, stale temp dirs and free lock files."),
    as_json: bool = typer.Option(False, "--json", help="Print the diagnosis as JSON."),
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

    _emit(report, as_json, human)
    return 0 if report["healthy"] else 1


def parse_loss(text: str | None) -> dict | None:
    """``kd=0.9,ce=0.1,at=1000`` or a YAML mapping ``{kd: 0.9, ce: 0.1}`` -> ``{term: weight}``."""
    import yaml

    if text is None:
        return None
    if "=" in text and not text.lstrip().startswith("{"):
        items = [i.strip() for i in text.split(",") if i.strip()]
        raw = parse_options(items)
    else:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError:
            raw = None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"--loss {text!r}: expected weighted terms like kd=0.9,ce=0.1 or '{{kd: 0.9, ce: 0.1}}'")
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"--loss: weight of {k!r} must be a number, got {v!r}")
    return {str(k): float(v) for k, v in raw.items()}


@app.command()
def distill(
    checkpoint: Path = typer.Argument(..., help="The teacher checkpoint directory."),
    student: str = typer.Option(..., "--student", "-s", help="Student model name (as for `train --model`)."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset (the teacher's)."),
    option: List[str] = typer.Option([], "--option", "-o", help="Student model option KEY=VALUE, repeatable."),
    loss: Optional[str] = typer.Option(None, "--loss", help="Weighted terms: ce, kd, at, hint; e.g. kd=0.9,ce=0.1 (the default) or ce=1,at=1000."),
    temperature: float = typer.Option(4.0, "--temperature", "-T", help="KD temperature."),
    teacher_kind: str = typer.Option("teacher", "--teacher-kind", help="teacher (the checkpoint), untrained (its architecture at random init), uniform-noise or gaussian-noise (fixed random logits per example: controls)."),
    low: float = typer.Option(0.0, "--low", help="uniform-noise: lower bound of the logits."),
    high: float = typer.Option(1.0, "--high", help="uniform-noise: upper bound of the logits."),
    sigma: float = typer.Option(1.0, "--sigma", help="gaussian-noise: standard deviation of the logits."),
    at_point: List[str] = typer.Option([], "--at-point", help="Feature point for attention transfer, repeatable; STUDENT=TEACHER maps different names (default: every shared spatial point)."),
    hint_point: List[str] = typer.Option([], "--hint-point", help="Feature point for the hint term, repeatable; STUDENT=TEACHER as for --at-point (default: every shared point)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe for the student (default: the teacher's recipe)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the recipe's learning rate."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override the recipe's batch size."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Student seed (init, batch order; noise and untrained teachers too)."),
    runs: Path = typer.Option(Path("runs"), "--runs", help=RUNS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Distil a student from a teacher; print its accuracy and how far its function is from the teacher's.

    Hinton KD by default (kd=0.9, ce=0.1, T=4). Without augmentation the teacher's
    training-set logits (and attention maps) are computed once and reused.

    \b
    Examples:
      compresslab distill runs/train-1a2b... --student cnn1d -o width=16 --data mnist1d
      compresslab distill runs/train-1a2b... --student cnn1d -o width=16 --data mnist1d --loss ce=1,at=1000
      compresslab distill runs/train-1a2b... --student cnn1d -o width=16 --data mnist1d --teacher-kind uniform-noise --json
    """
    from compresslab.api import distill_checkpoint
    from compresslab.progress import RichProgress

    def points(items: list[str]) -> dict | None:
        pairs = [p.partition("=") for p in items]
        return {s: (t if sep else s) for s, sep, t in pairs} or None

    noise = {"low": low, "high": high} if teacher_kind == "uniform-noise" else (
        {"sigma": sigma} if teacher_kind == "gaussian-noise" else None)
    overrides = {k: v for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size}.items() if v is not None}
    with RichProgress(quiet=quiet) as progress:
        result = distill_checkpoint(checkpoint, student, data, options=parse_options(option), loss=parse_loss(loss),
                                    temperature=temperature, teacher_kind=teacher_kind, noise=noise,
                                    at_points=points(at_point), hint_points=points(hint_point),
                                    recipe_file=recipe, overrides=overrides, seed=seed, runs=runs, progress=progress)

    def human(r):
        f = r["vs_teacher"]
        _table(f"student from {r['teacher_kind']} ({', '.join(f'{k}={v:g}' for k, v in r['loss'].items())}), test split",
               [("student accuracy", f"{100 * f['accuracy_b']:.2f}%"), ("teacher accuracy", f"{100 * f['accuracy_a']:.2f}%"),
                ("disagreement", f"{100 * f['disagreement']:.2f}%"), ("JS divergence", f"{f['js_divergence']:.4f}"),
                ("activation distance", f"{f['activation_distance']:.4f}")])
        typer.echo(r["checkpoint"])

    _emit(result, as_json, human)


@app.command()
def substitute(
    checkpoint: Path = typer.Argument(..., help="The teacher: a trained WRN checkpoint (wrn-D-K or wrn1d-D-K)."),
    block: str = typer.Option(..., "--block", "-b", help="Cheap block for every 3x3 conv: ConvB{b}, G{g}B{b}, A{a}B{b}, DConv, DConvG{g}, DConvA{a}, DConvB{b} (b, g, a in 2, 4, 8, 16), e.g. G8B2."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset (the teacher's)."),
    loss: str = typer.Option("at", "--loss", help="scratch (CE only), at (CE + attention transfer, beta 1000 on each group), or at+kd (plus Hinton KD)."),
    beta: float = typer.Option(1000.0, "--beta", help="Attention-transfer weight."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the teacher's recipe's epochs."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Student seed."),
    runs: Path = typer.Option(Path("runs"), "--runs", help=RUNS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Moonshine: make one cheap student of a WRN teacher (same architecture, every 3x3 conv a cheap block).

    The student uses the teacher's recipe. With --loss at it learns from the teacher's
    attention maps at the outputs of the three groups.

    \b
    Example:
      compresslab substitute runs/train-1a2b... --block G8B2 --data mnist1d
      compresslab substitute runs/train-1a2b... --block DConvB2 --data mnist1d --loss scratch --json
    """
    from compresslab.api import substitute_checkpoint
    from compresslab.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        result = substitute_checkpoint(checkpoint, block, data, mode=loss, beta=beta, epochs=epochs, seed=seed,
                                       runs=runs, progress=progress)

    def human(r):
        f = r["vs_teacher"]
        _table(f"{block} student ({loss}), test split",
               [("params", f"{r['params']:,} (teacher {r['teacher_params']:,})"),
                ("student accuracy", f"{100 * f['accuracy_b']:.2f}%"), ("teacher accuracy", f"{100 * f['accuracy_a']:.2f}%"),
                ("agreement", f"{100 * f['agreement']:.2f}%")])
        typer.echo(r["checkpoint"])

    _emit(result, as_json, human)


def parse_count(text: str) -> float:
    """``200k`` / ``1.5M`` / ``250000`` -> a number."""
    t = text.strip().lower()
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise UserError(f"--budget {text!r}: expected a parameter count like 200k, 1.5M or 250000") from None
    if value <= 0:
        raise UserError(f"--budget {text!r}: must be positive")
    return value


@app.command()
def blockswap(
    checkpoint: Path = typer.Argument(..., help="The teacher: a trained WRN checkpoint (wrn-D-K or wrn1d-D-K)."),
    budget: str = typer.Option(..., "--budget", help="Parameter budget of the student, e.g. 200k or 1.5M (±2.5%)."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset (the teacher's); one minibatch scores candidates."),
    samples: int = typer.Option(1000, "--samples", help="Candidates to sample on the budget."),
    block: List[str] = typer.Option([], "--block", "-b", help="Block types to mix, repeatable (default: Conv ConvB2 ConvB4 G4B2 G8B2 A2B2 DConv DConvB2 DConvB4)."),
    batch: int = typer.Option(128, "--batch", help="Minibatch size for the Fisher potential."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Where to save every candidate with its score (default: RUNS/blockswap/...)."),
    distill_best: bool = typer.Option(True, "--distill/--no-distill", help="Train the best candidate with attention transfer from the teacher."),
    validate: int = typer.Option(0, "--validate", help="Also train this many candidates across the score ranking (CE) and report the Spearman correlation of score and accuracy."),
    validate_epochs: Optional[int] = typer.Option(None, "--validate-epochs", help="Epochs for --validate (default: the teacher's recipe)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed for sampling, initialisation and the minibatch."),
    runs: Path = typer.Option(Path("runs"), "--runs", help=RUNS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """BlockSwap: choose a mix of cheap blocks on a parameter budget by Fisher potential at initialisation.

    Samples block mixes within ±2.5% of the budget (params counted in closed form), scores
    each untrained candidate on one minibatch, saves all candidates as CSV, and trains the
    best with attention transfer from the teacher.

    \b
    Example:
      compresslab blockswap runs/train-1a2b... --budget 100k --samples 1000 --data mnist1d
      compresslab blockswap runs/train-1a2b... --budget 100k --samples 200 --data mnist1d --validate 8 --json
    """
    from compresslab.api import blockswap_checkpoint
    from compresslab.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        result = blockswap_checkpoint(checkpoint, data, budget=parse_count(budget), samples=samples,
                                      blocks=block or None, batch=batch, seed=seed, csv_path=csv_path,
                                      distill=distill_best, validate=validate, validate_epochs=validate_epochs,
                                      runs=runs, progress=progress)

    def human(r):
        rows = [("candidates", f"{r['n_candidates']:,} ({r['draws']:,} draws)"),
                ("search time", f"{r['seconds']['total']:.1f} s (scoring {r['seconds']['scoring']:.1f} s)"),
                ("best", "-".join(r["best"])), ("best params", f"{r['best_params']:,}"), ("CSV", r["csv"])]
        if "validation" in r:
            v = r["validation"]
            rows.append(("Spearman(score, accuracy)", "undefined" if v["spearman"] is None else
                         f"{v['spearman']:+.2f} (p={v['p_value']:.2g}, n={len(v['candidates'])})"))
        if "student" in r:
            rows.append(("student accuracy (AT)", f"{100 * r['student']['accuracy']['test']:.2f}%"))
        _table("BlockSwap", rows)

    _emit(result, as_json, human)


@app.command()
def prunability(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory."),
    scope: str = typer.Option("all", "--scope", help="all (weights and biases of conv, linear, norm) or weights."),
    points: int = typer.Option(101, "--points", help="Points of the cos(p) curve on [0, 1]."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the cos(p) curve with p* and the safe amount as PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """How far can this model be pruned? From the weights alone, no data.

    p* is the sparsity whose (cos(p), p) is closest to (1, 1), where cos(p) is the cosine
    between the parameters and their magnitude-pruned copy. The safe amount divides p* by
    ln K² (K² ≥ e) or log2 K² (K² < e), K² being the kurtosis of the per-tensor kurtoses,
    clamped to [0, p*].

    JSON keys: p_star, cos_at_p_star, kurtosis_of_kurtoses, safe_amount, curve, per_tensor_kurtosis.

    \b
    Example:
      compresslab prunability runs/train-1a2b... --plot prunability.png
    """
    from compresslab.api import checkpoint_prunability

    result = checkpoint_prunability(checkpoint, scope=scope, points=points, plot=plot)
    rows = [(k, f"{result[k]:.4f}") for k in ("p_star", "cos_at_p_star", "kurtosis_of_kurtoses", "safe_amount")]
    _emit(result, as_json, lambda r: _table(f"prunability of {checkpoint.name}", rows))


@app.command()
def lottery(
    model: str = typer.Option(..., "--model", "-m", help="Model name (as for train)."),
    data: str = typer.Option(..., "--data", "-d", help="Dataset name (as for train)."),
    option: List[str] = typer.Option([], "--option", "-o", help="Model option KEY=VALUE, repeatable."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML file of recipe fields; every round trains with it."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the recipe's learning rate."),
    rounds: int = typer.Option(3, "--rounds", help="Pruning rounds (round 0 is the dense network)."),
    rate: float = typer.Option(0.2, "--rate", help="Fraction of the remaining weights pruned per round."),
    rewind_epoch: int = typer.Option(0, "--rewind-epoch", help="Rewind survivors to the weights at this epoch (0: init)."),
    control: bool = typer.Option(True, "--control/--no-control", help="Also train a random re-initialisation of each mask."),
    lmc: bool = typer.Option(True, "--lmc/--no-lmc", help="Test each round's stability by linear mode connectivity."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed for init, data order and the validation split."),
    out: Path = typer.Option(Path("runs/lottery"), "--out", help="Directory for lottery.json and lottery.png."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print lottery.json to stdout."),
):
    """Lottery tickets: iterative magnitude pruning with rewinding, a random-reinit control, and LMC.

    Each round prunes --rate of the remaining weights globally, rewinds the survivors and
    retrains. A round is stable when the error barrier between two copies trained with
    different data orders is at most 2 points.

    \b
    Example:
      compresslab lottery --model cnn1d --data mnist1d --epochs 10 --rounds 4 --out runs/lottery
    """
    from compresslab.api import _recipe
    from compresslab.progress import RichProgress
    from compresslab.study.lottery import run_lottery

    overrides = {k: v for k, v in {"epochs": epochs, "lr": lr}.items() if v is not None}
    with RichProgress(quiet=quiet) as progress:
        result = run_lottery(model, data, options=parse_options(option), recipe=_recipe(recipe, overrides),
                             rounds=rounds, rate=rate, rewind_epoch=rewind_epoch, seed=seed, control=control,
                             lmc=lmc, out=out, callback=progress)
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from rich.table import Table

    t = Table(title=f"lottery tickets: {model} on {data}")
    for col in ("round", "sparsity %", "test acc %", "control acc %", "barrier", "stable"):
        t.add_column(col, justify="right")
    for r in result["records"]:
        ctrl = r["control_test_acc"]
        t.add_row(str(r["round"]), f"{100 * r['sparsity']:.1f}", f"{100 * r['test_acc']:.2f}",
                  "–" if ctrl is None else f"{100 * ctrl:.2f}",
                  "–" if r["barrier"] is None else f"{100 * r['barrier']:.2f}",
                  "–" if r["stable"] is None else ("yes" if r["stable"] else "no"))
    _console().print(t)
    typer.echo(f"results: {out / 'lottery.json'}")
    typer.echo(f"plot: {out / 'lottery.png'}")


@app.command()
def study(
    spec: Optional[Path] = typer.Argument(None, help="Study spec (YAML). Without it: the default study on mnist1d."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Run a built-in spec by name: " + ", ".join(
        sorted(p.stem for p in (Path(__file__).parent / "study" / "presets").glob("*.yaml"))) + "."),
    runs: str = typer.Option("runs", "--runs", help=RUNS_HELP + " A directory, or an fsspec URL (s3://bucket/prefix) shared by every worker."),
    executor: str = typer.Option("local", "--executor", help="local (this process, or --workers processes) or ray (one Ray task per step)."),
    workers: int = typer.Option(1, "--workers", help="local: steps run in this many worker processes, each as soon as its parents are done."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray: auto or HOST:PORT of an existing cluster (default: start a local one)."),
    cpus_per_step: int = typer.Option(1, "--cpus-per-step", help="ray: CPUs each step asks for (also its torch threads)."),
    gpus_per_step: float = typer.Option(0.0, "--gpus-per-step", help="ray: GPUs each step asks for."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout."),
):
    """Run a study (train the parent, make children, controls), write report.html and results.json.

    Re-running resumes: every finished step is reused from the run store. A step that
    fails (e.g. its loss goes NaN) is recorded with its reason; independent steps still
    run, the report lists the failure, and the exit code is 3 (study incomplete).

    \b
    Examples:
      compresslab study                 # the default study on mnist1d
      compresslab study --preset kd-functional   # KD vs controls, 6 conditions x 5 seeds
      compresslab study --preset compression-functional   # KD, pruning, quantisation vs retrains
      compresslab study my-study.yaml --runs /scratch/runs --workers 2
      compresslab study my-study.yaml --executor ray --ray-address auto --runs s3://bucket/runs
    """
    from compresslab.progress import RichProgress
    from compresslab.study import load_spec, run_study

    from compresslab.study.compression_functional import CompressionFunctionalSpec, run_cf_study
    from compresslab.study.kd_functional import KDFunctionalSpec, run_kd_study
    from compresslab.study.kurtosis import KurtosisSpec, run_kurtosis_study
    from compresslab.study.linear_substitution import LinearSubstitutionSpec, run_linear_study
    from compresslab.study.moonshine import MoonshineSpec, run_moonshine_study

    s = load_spec(spec, preset=preset)
    runner, printer = {KurtosisSpec: (run_kurtosis_study, _print_kurtosis),
                       KDFunctionalSpec: (run_kd_study, _print_kd),
                       MoonshineSpec: (run_moonshine_study, _print_moonshine),
                       LinearSubstitutionSpec: (run_linear_study, _print_moonshine),
                       CompressionFunctionalSpec: (run_cf_study, _print_cf)}.get(type(s), (run_study, None))
    from compresslab.runs.executor import Execution, using
    from compresslab.study.steps import preflight

    execution = Execution(executor, workers, ray_address, cpus_per_step, gpus_per_step)
    preflight(s)
    with RichProgress(quiet=quiet) as progress, using(execution):
        results, out = runner(s, runs, progress=progress)
    if as_json:
        typer.echo(json.dumps(results, indent=2, sort_keys=True))
        if results.get("failed"):
            raise StudyIncomplete(results["failed"])
        return
    if printer is not None:
        printer(results, out)
        return
    from rich.table import Table

    t = Table(title=f"study {results['study']}: {results['split']} split, function metrics against the parent")
    for col in ("model", "role", "acc %", "nonzero", "BOPs", "disagree %", "JS", "ms@256"):
        t.add_column(col, justify="left" if col in ("model", "role") else "right", no_wrap=True)
    for m in results["models"]:
        lat = m["cost"].get("latency_ms", {}).get("batch256")
        t.add_row(m["name"], m["role"], f"{100 * m['accuracy']:.2f}", _short(m["cost"]["nonzero_params"]),
                  _short(m["cost"]["bops"]), f"{100 * m['function']['disagreement']:.2f}",
                  f"{m['function']['js_divergence']:.4f}", "–" if lat is None else f"{lat:.2f}")
    _console().print(t)
    typer.echo(f"report: {out / 'report.html'}")
    typer.echo(f"results: {out / 'results.json'}")
    if results.get("failed"):
        raise StudyIncomplete(results["failed"])


def _print_kurtosis(results: dict, out: Path) -> None:
    from rich.table import Table

    t = Table(title=f"study {results['study']}: does kurtosis predict prunability?")
    for col in ("parent", "acc %", "K²", "p*", "safe", "measured"):
        t.add_column(col, justify="left" if col == "parent" else "right", no_wrap=True)
    for p in results["parents"]:
        t.add_row(p["name"], f"{100 * p['accuracy']:.2f}", f"{p['kurtosis_of_kurtoses']:.3g}", f"{p['p_star']:.2f}",
                  f"{p['safe_amount']:.2f}", f"{p['measured_prunability']:.2f}")
    _console().print(t)
    for k, c in results["correlations"].items():
        r = "undefined" if c["spearman"] is None else f"{c['spearman']:+.3f} (p={c['p_value']:.3g})"
        typer.echo(f"Spearman(measured prunability, {k}) = {r}")
    typer.echo(results["note"])
    typer.echo(f"report: {out / 'report.html'}")
    typer.echo(f"results: {out / 'results.json'}")


def _print_kd(results: dict, out: Path) -> None:
    from rich.table import Table

    tested = results["spec"]["metrics"]
    short = {"js_divergence": "JS", "activation_distance": "act.dist", "adversarial_transfer": "adv.transfer %",
             "agreement": "agree %", "output_cosine": "cos", "cka_biased": "cka(biased)"}
    t = Table(title=f"study {results['study']}: students vs the teacher, {results['split']} split, "
                    f"mean [95% CI] over {len(results['spec']['seeds'])} seeds")
    for col in ("condition", "acc %", *[short.get(m, m) for m in tested]):
        t.add_column(col, justify="left" if col == "condition" else "right", no_wrap=True)

    def cell(s, pct=False):
        if not s:
            return "–"
        k, d = (100, 1) if pct else (1, 3)
        return f"{k * s['mean']:.{d}f} [{k * s['ci_low']:.{d}f},{k * s['ci_high']:.{d}f}]"

    groups = {**results["summaries"], **{f"({k})": v for k, v in results["reference_groups"].items()}}
    for name, summ in groups.items():
        t.add_row(name, cell(summ["accuracy"], True),
                  *[cell(summ.get(m), m in ("agreement", "adversarial_transfer")) for m in tested])
    _console(200).print(t)
    typer.echo(f"teacher accuracy: {100 * results['teacher']['accuracy']:.2f}%")
    for line in results["headline"]:
        typer.echo(line)
    for c, f in results["accuracy_effects"].items():
        typer.echo(f"accuracy, {c} vs independent: {100 * f['diff']:+.2f} points "
                   f"[{100 * f['ci_low']:+.2f}, {100 * f['ci_high']:+.2f}], p={f['p']:.3g}")
    typer.echo(f"report: {out / 'report.html'}")
    typer.echo(f"results: {out / 'results.json'}")


def _print_cf(results: dict, out: Path) -> None:
    from rich.table import Table

    n = len(results["spec"]["seeds"])
    t = Table(title=f"study {results['study']}: every model against its parent, {results['split']} split, "
                    f"mean [95% CI] over {n} replicates")
    for col in ("model", "family", "ratio", "BOPs", "ms@256", "acc %", "agree %", "JS", "CKA", "agree vs indep."):
        t.add_column(col, justify="left" if col in ("model", "family") else "right", no_wrap=True)
    sig = {}
    for test in results["tests"]:
        if test["metric"] == "agreement" and test["label_b"] == "independent":
            sig[test["label_a"]] = "closer" if test["significant"] else ("farther" if test["diff"] < 0 else "n.s.")

    def cell(s, pct=False, d=3):
        if not s:
            return "–"
        k, d = (100, 1) if pct else (1, d)
        return f"{k * s['mean']:.{d}f} [{k * s['ci_low']:.{d}f},{k * s['ci_high']:.{d}f}]"

    for name, s in results["summaries"].items():
        lat = (s["cost"].get("latency_ms") or {}).get("batch256")
        t.add_row(name, s["family"], f"{s['compression_ratio']:.1f}", _short(s["cost"]["bops"]),
                  "–" if lat is None else f"{lat:.2f}", cell(s["accuracy"], True), cell(s["agreement"], True),
                  cell(s["js_divergence"], d=4), cell(s["cka"], d=2), sig.get(name, ""))
    _console(200).print(t)
    for line in results["headline"]:
        typer.echo(line)
    typer.echo(f"plot: {out / 'fidelity.png'}")
    typer.echo(f"report: {out / 'report.html'}")
    typer.echo(f"results: {out / 'results.json'}")


def _print_moonshine(results: dict, out: Path) -> None:
    from rich.table import Table

    t = Table(title=f"study {results['study']}: cheap-convolution students, {results['split']} split")
    for col in ("block", "mode", "params", "MACs", "ms@256", "error %", "pareto", "agree %"):
        t.add_column(col, justify="left" if col in ("block", "mode") else "right", no_wrap=True)
    for r in [results["teacher"], *sorted(results["students"], key=lambda r: r["cost"]["params"])]:
        lat = (r["cost"].get("latency_ms") or {}).get("batch256")
        t.add_row(r["block"], r["mode"], _short(r["cost"]["params"]), _short(r["cost"]["macs"]),
                  "–" if lat is None else f"{lat:.2f}", f"{100 * r['error']:.2f}", "*" if r.get("pareto") else "",
                  f"{100 * r['function']['agreement']:.2f}")
    _console().print(t)
    typer.echo(f"report: {out / 'report.html'}")
    typer.echo(f"results: {out / 'results.json'}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and exit code 2 for anything the user can fix."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        return getattr(e, "exit_code", 2)
    except Exit as e:
        return e.exit_code
    except Abort:
        typer.echo("error: aborted", err=True)
        return 130
    except TyperException as e:
        msg = " ".join(e.format_message().split())
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
        typer.echo(f"error: {msg}{hint}", err=True)
        return 2
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
