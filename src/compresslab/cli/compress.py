"""Commands that make a compressed child of a checkpoint, and export."""

import json
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
    Runs,
    Track,
    app,
    data_option,
    emit,
    on,
    parse_bits,
    parse_count,
    parse_loss,
    parse_options,
    seed_option,
    track_steps,
    tracker,
)
from compresslab.console import console, print_pairs, short
from compresslab.errors import UserError


@app.command()
def prune(
    checkpoint: Path = typer.Argument(..., help="The parent checkpoint directory."),
    data: data_option("Dataset for fine-tuning and evaluation (the parent's).") = ...,
    amount: Optional[float] = typer.Option(None, "--amount", help="Fraction of the parameters to remove, in (0, 1)."),
    auto: Optional[str] = typer.Option(None, "--auto", help="Choose the amount from the weights: safe (kurtosis rule) or p_star."),
    method: str = typer.Option("global-l1", "--method", help="global-l1, layer-l1, random (the control), or channel (structured: whole channels, a physically smaller model)."),
    importance: str = typer.Option("magnitude", "--importance", help="With --method channel: magnitude or taylor."),
    global_channels: bool = typer.Option(False, "--global", help="With --method channel: rank channels across layers instead of the same ratio per layer."),
    round_to: Optional[int] = typer.Option(None, "--round-to", help="With --method channel: round each layer's kept channels to a multiple of N (at least N; faster kernels)."),
    scope: str = typer.Option("all", "--scope", help="all: weights and biases of conv, linear and norm layers; weights: conv/linear weights only."),
    finetune_epochs: int = typer.Option(1, "--finetune-epochs", help="Epochs of masked fine-tuning (0: none)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Fine-tuning learning rate (default: a tenth of the parent's)."),
    seed: seed_option("Seed for fine-tuning order (and random pruning); also the val split's.") = 0,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
    track: Track = None,
):
    """Prune a checkpoint by magnitude, fine-tune with masks kept, print the child's directory.

    \b
    Examples:
      compresslab prune runs/train-1a2b... --amount 0.8 --data mnist1d
      compresslab prune runs/train-1a2b... --auto safe --method global-l1 --data mnist1d --json
      compresslab prune runs/train-1a2b... --method channel --amount 0.5 --data mnist1d --json
      compresslab prune runs/train-1a2b... --method channel --amount 0.5 --round-to 8 --data mnist1d
    """
    from compresslab.api import prune_checkpoint
    from compresslab.progress import RichProgress

    if (amount is None) == (auto is None):
        raise UserError("give exactly one of --amount X or --auto safe|p_star")
    if auto is not None and auto not in ("safe", "p_star"):
        raise UserError(f"--auto {auto!r}: use safe or p_star")
    target = tracker(track)
    with RichProgress(quiet=quiet) as progress:
        result = prune_checkpoint(checkpoint, data, amount=auto or amount, method=method, scope=scope,
                                  importance=importance, global_channels=global_channels, round_to=round_to,
                                  finetune_epochs=finetune_epochs, lr=lr, seed=seed, runs=runs, progress=progress,
                                  device=device, deterministic=deterministic)
    emit(result, as_json, lambda r: typer.echo(r["checkpoint"]))
    track_steps(target, result)


@app.command()
def quantize(
    checkpoint: Path = typer.Argument(..., help="The parent checkpoint directory (float; prune it first to combine)."),
    data: data_option("Dataset for calibration, QAT and evaluation (the parent's).") = ...,
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
    backend: str = typer.Option("auto", "--backend", help="ptq-*: int8 kernels from torch.ao or onnxruntime; auto = torch.ao while torch has it (faster at batch 256), else onnxruntime (faster at batch 1; docs/quantization.md)."),
    seed: seed_option("Seed for calibration batches and QAT; also the val split's.") = 0,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
    track: Track = None,
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
    target = tracker(track)
    with RichProgress(quiet=quiet) as progress:
        result = quantize_checkpoint(checkpoint, data, scheme=scheme, bits=parse_bits(bits, "--bits"),
                                     act_bits=parse_bits(act_bits, "--act-bits"), per_channel=per_channel,
                                     symmetric=not asymmetric, observer=observer, percentile=percentile,
                                     calib_batches=calib_batches, calib_batch_size=calib_batch_size, epochs=epochs,
                                     lr=lr, seed=seed, backend=backend, runs=runs, progress=progress, device=device,
                                     deterministic=deterministic)

    def human(r):
        c, p, v = r["cost"], r["parent_cost"], r["vs_parent"]
        rows = [("checkpoint", r["checkpoint"])]
        if "centre_error_px_a" in v:  # regression
            rows += [("test centre error (parent → child)", f"{v['centre_error_px_a']:.4f} → {v['centre_error_px_b']:.4f} px"),
                     ("centre distance to the parent", f"{v['centre_distance_px']:.4f} px"),
                     ("output MSE to the parent", f"{v['mse']:.2e}")]
        else:
            rows += [("test accuracy (parent → child)", f"{100 * v['accuracy_a']:.2f}% → {100 * v['accuracy_b']:.2f}%"),
                     ("agreement with the parent", f"{100 * v['agreement']:.2f}%"),
                     ("JS divergence (nats)", f"{v['js_divergence']:.5f}")]
        rows += [("weight bytes (parent → child)", f"{p['bytes']:,} → {c['bytes']:,}"),
                 ("BOPs (parent → child)", f"{short(p['bops'])} → {short(c['bops'])}")]
        for k, ratio in r["speedup"].items():
            rows.append((f"latency {k} (parent → child)", f"{r['latency_ms']['parent'][k]:.3f} → "
                         f"{r['latency_ms']['child'][k]:.3f} ms ({ratio:.2f}x)"))
        if r["simulated"]:
            rows.append(("note", "simulated quantisation: fp32 kernels, no speed-up expected"))
        print_pairs(f"quantize ({r['scheme']})", rows)

    emit(result, as_json, human)
    track_steps(target, result)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Any checkpoint directory: trained, pruned, substituted or quantised."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Output file (.onnx); this or --hls4ml."),
    hls4ml: Optional[Path] = typer.Option(None, "--hls4ml", help="Write an hls4ml (Vitis HLS) project into this new directory and check it by C simulation (needs compresslab[hls] and g++)."),
    tree_json: Optional[Path] = typer.Option(None, "--tree-json", help="A soft-tree checkpoint as JSON (docs/soft-tree.md), checked against PyTorch by its pure-Python interpreter on --parity-samples test examples."),
    precision: str = typer.Option("ap_fixed<16,6>", "--precision", help="--hls4ml: fixed-point type ap_fixed<W,I> of a float checkpoint (fake-quant layers get types from their bit widths)."),
    reuse_factor: int = typer.Option(1, "--reuse-factor", help="--hls4ml: multiplications sharing one multiplier (1: fully parallel, lowest latency)."),
    io_type: str = typer.Option("io_parallel", "--io-type", help="--hls4ml: io_parallel (whole tensors in registers) or io_stream (FIFOs)."),
    part: Optional[str] = typer.Option(None, "--part", help="--hls4ml: FPGA part, e.g. xcu250-figd2104-2L-e (default: hls4ml's Vitis default)."),
    parity_samples: int = typer.Option(500, "--parity-samples", help="--hls4ml, --tree-json: test examples run through the C simulation or the JSON interpreter."),
    quiet: Quiet = False,
    data: data_option("Dataset for the parity check (test split) and int8 calibration.") = ...,
    int8: bool = typer.Option(False, "--int8", help="Write ONNX Runtime's int8 graph instead of the fp32 one."),
    int8_scheme: str = typer.Option("auto", "--int8-scheme", help="auto, dynamic (int8 weights; activations per batch) or static (QDQ, calibrated)."),
    calib_batches: int = typer.Option(8, "--calib-batches", help="Training batches for static int8 calibration."),
    seed: seed_option("Seed of the val split and the calibration batches.") = 0,
    no_latency: bool = typer.Option(False, "--no-latency", help="Skip the ONNX Runtime timing."),
    device: Device = "auto",
    as_json: Json = False,
):
    """Export a checkpoint to ONNX; check parity and time it in ONNX Runtime (fp32 and int8).

    Parity: max |logit difference| and top-1 agreement against the checkpoint as PyTorch
    runs it, on the whole test split, for both the fp32 and the int8 graph.

    JSON keys: onnx, format, int8_scheme, parity {fp32, int8: max_abs_diff, top1_agreement,
    accuracy}, torch_accuracy, bytes, latency_ms {fp32, int8}, int8_speedup, fidelity (the
    `compresslab fidelity` report of pytorch, onnx-fp32 and onnx-int8: metrics with bootstrap
    CIs per pair, accuracy per class, the disagreeing inputs).

    With --hls4ml: an HLS project for FPGAs (hls4ml, Vitis backend, ready for synthesis,
    which is not run) and its C simulation compared with PyTorch on --parity-samples test
    examples. JSON keys: hls4ml, part, io_type, reuse_factor, precision, quantized_layers,
    layers, parity {max_abs_diff, top1_agreement, accuracy}, torch_accuracy, compile_seconds
    (regression data: parity {max_abs_diff, centre_distance_px, centre_error_px},
    torch_centre_error_px).

    \b
    Examples:
      compresslab export runs/prune-3c4d... --onnx model.onnx --data mnist1d
      compresslab export runs/train-1a2b... --onnx model-int8.onnx --int8 --data mnist1d --json
      compresslab export runs/quantize-5e6f... --hls4ml hls/ --data digits --reuse-factor 4   # see docs/codesign.md
      compresslab export runs/train-7a8b... --tree-json tree.json --data digits   # soft-tree; see docs/soft-tree.md

    With --tree-json: JSON keys tree_json, depth, leaves, examples, parity {top1_agreement,
    max_abs_diff (max-path leaf probabilities, interpreter vs PyTorch)}, torch_accuracy.
    """
    from compresslab.export import export_checkpoint

    if sum(o is not None for o in (onnx, hls4ml, tree_json)) != 1:
        raise UserError("give exactly one of --onnx FILE, --hls4ml DIR or --tree-json FILE")
    if tree_json is not None:
        return _export_tree(checkpoint, tree_json, data, parity_samples=parity_samples, seed=seed, as_json=as_json)
    if hls4ml is not None:
        return _export_hls(checkpoint, hls4ml, data, precision=precision, reuse_factor=reuse_factor, io_type=io_type,
                           part=part, parity_samples=parity_samples, seed=seed, quiet=quiet, as_json=as_json)

    with on(device):
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
        print_pairs(f"export {checkpoint.name}", rows)
        from compresslab.cli.fidelity import print_fidelity

        if "fidelity" in r:
            print_fidelity(r["fidelity"], f"fidelity of the ONNX graphs to {checkpoint.name} on {data} test", show=5)

    emit(result, as_json, human)


def _export_tree(checkpoint: Path, out: Path, data: str, *, parity_samples: int, seed: int, as_json: bool) -> None:
    """`export --tree-json`: the soft tree as JSON, its pure-Python interpreter checked against PyTorch."""
    import torch

    from compresslab.data import load_dataset
    from compresslab.models.soft_tree import SoftTree, predict_json, tree_to_json
    from compresslab.runs.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    if not isinstance(model, SoftTree):
        raise UserError(f"--tree-json needs a soft-tree checkpoint; {checkpoint} holds {type(model).__name__}")
    if parity_samples < 1:
        raise UserError(f"--parity-samples must be >= 1, got {parity_samples}")
    if not out.parent.is_dir():
        raise UserError(f"--tree-json {out}: no directory {out.parent}; create it first")
    ds = load_dataset(data, seed=seed)
    x, y = ds.x_test[:parity_samples].float(), ds.y_test[:parity_samples]
    tree = tree_to_json(model.eval().cpu())
    with torch.no_grad():
        ref = model(x).double().exp()
    got = torch.tensor([predict_json(tree, row.flatten().tolist(), tree["predict"] == "mixture") for row in x], dtype=torch.float64)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(tree))
    tmp.replace(out)
    result = {"tree_json": str(out), "depth": tree["depth"], "leaves": len(tree["leaves"]), "examples": len(x),
              "parity": {"top1_agreement": float((got.argmax(1) == ref.argmax(1)).double().mean()),
                         "max_abs_diff": float((got - ref).abs().max())},
              "torch_accuracy": float((ref.argmax(1) == y).double().mean())}

    def human(r):
        print_pairs(f"soft-tree export {checkpoint.name}", [
            ("wrote", f"{r['tree_json']} (depth {r['depth']}, {r['leaves']} leaves)"),
            ("checkpoint accuracy (PyTorch, max-path)", f"{100 * r['torch_accuracy']:.2f}% on {r['examples']} test examples"),
            ("JSON interpreter vs PyTorch", f"top-1 agreement {100 * r['parity']['top1_agreement']:.2f}%, "
                                            f"max |Δ prob| {r['parity']['max_abs_diff']:.2e}")])

    emit(result, as_json, human)


def _export_hls(checkpoint: Path, out: Path, data: str, *, quiet: bool, as_json: bool, **options) -> None:
    """`export --hls4ml`: the hls4ml project and its C-simulation parity table."""
    from compresslab.export_hls import export_hls
    from compresslab.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        result = export_hls(checkpoint, out, data, progress=progress, **options)

    def human(r):
        p = r["parity"]
        rows = [("wrote", f"{r['hls4ml']} (hls4ml {r['hls4ml_version']}, {r['backend']}, part {r['part']})"),
                ("io type, reuse factor", f"{r['io_type']}, {r['reuse_factor']}"),
                ("precision", r["precision"] if not r["quantized_layers"] else "per layer, from the fake-quant bits")]
        rows += [(f"  {name} weights", t["weight"] + (f", input {t['input']}" if "input" in t else ""))
                 for name, t in r["quantized_layers"].items()]
        rows.append(("C simulation compile (g++)", f"{r['compile_seconds']:.1f} s"))
        if "torch_centre_error_px" in r:  # regression
            rows += [("checkpoint centre error (PyTorch)", f"{r['torch_centre_error_px']:.4f} px on {r['examples']} test examples"),
                     ("C simulation vs PyTorch", f"max |Δ| {p['max_abs_diff']:.2e}, centres {p['centre_distance_px']:.4f} px "
                                                 f"apart, centre error {p['centre_error_px']:.4f} px")]
        else:
            rows += [("checkpoint accuracy (PyTorch)", f"{100 * r['torch_accuracy']:.2f}% on {r['examples']} test examples"),
                     ("C simulation vs PyTorch", f"max |Δ| {p['max_abs_diff']:.2e}, top-1 agreement "
                                                 f"{100 * p['top1_agreement']:.2f}%, accuracy {100 * p['accuracy']:.2f}%")]
        rows.append(("resources, latency", r["estimates_note"]))
        rows += [("note", n) for n in r["notes"]]
        print_pairs(f"hls4ml export {checkpoint.name}", rows)

    emit(result, as_json, human)


@app.command()
def distill(
    checkpoint: Path = typer.Argument(..., help="The teacher checkpoint directory."),
    student: str = typer.Option(..., "--student", "-s", help="Student model name (as for `train --model`)."),
    data: data_option("Dataset (the teacher's).") = ...,
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
    epochs: Epochs = None,
    lr: Lr = None,
    batch_size: BatchSize = None,
    seed: seed_option("Student seed (init, batch order; noise and untrained teachers too).") = 0,
    data_seed: DataSeed = None,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
    track: Track = None,
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

    target = tracker(track)

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
                                    recipe_file=recipe, overrides=overrides, seed=seed, data_seed=data_seed, runs=runs,
                                    progress=progress, device=device, deterministic=deterministic)

    def human(r):
        f = r["vs_teacher"]
        print_pairs(f"student from {r['teacher_kind']} ({', '.join(f'{k}={v:g}' for k, v in r['loss'].items())}), test split",
                    [("student accuracy", f"{100 * f['accuracy_b']:.2f}%"),
                     ("teacher accuracy", f"{100 * f['accuracy_a']:.2f}%"),
                     ("disagreement", f"{100 * f['disagreement']:.2f}%"), ("JS divergence", f"{f['js_divergence']:.4f}"),
                     ("activation distance", f"{f['activation_distance']:.4f}")])
        typer.echo(r["checkpoint"])

    emit(result, as_json, human)
    track_steps(target, result)


@app.command()
def substitute(
    checkpoint: Path = typer.Argument(..., help="The teacher: a trained WRN checkpoint (wrn-D-K or wrn1d-D-K)."),
    block: str = typer.Option(..., "--block", "-b", help="Cheap block for every 3x3 conv: ConvB{b}, G{g}B{b}, A{a}B{b}, DConv, DConvG{g}, DConvA{a}, DConvB{b} (b, g, a in 2, 4, 8, 16), e.g. G8B2."),
    data: data_option("Dataset (the teacher's).") = ...,
    loss: str = typer.Option("at", "--loss", help="scratch (CE only), at (CE + attention transfer, beta 1000 on each group), or at+kd (plus Hinton KD)."),
    beta: float = typer.Option(1000.0, "--beta", help="Attention-transfer weight."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the teacher's recipe's epochs."),
    seed: seed_option("Student seed.") = 0,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
    track: Track = None,
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

    target = tracker(track)

    with RichProgress(quiet=quiet) as progress:
        result = substitute_checkpoint(checkpoint, block, data, mode=loss, beta=beta, epochs=epochs, seed=seed,
                                       runs=runs, progress=progress, device=device, deterministic=deterministic)

    def human(r):
        f = r["vs_teacher"]
        print_pairs(f"{block} student ({loss}), test split",
                    [("params", f"{r['params']:,} (teacher {r['teacher_params']:,})"),
                     ("student accuracy", f"{100 * f['accuracy_b']:.2f}%"),
                     ("teacher accuracy", f"{100 * f['accuracy_a']:.2f}%"),
                     ("agreement", f"{100 * f['agreement']:.2f}%")])
        typer.echo(r["checkpoint"])

    emit(result, as_json, human)
    track_steps(target, result)


@app.command()
def blockswap(
    checkpoint: Path = typer.Argument(..., help="The teacher: a trained WRN checkpoint (wrn-D-K or wrn1d-D-K)."),
    budget: str = typer.Option(..., "--budget", help="Parameter budget of the student, e.g. 200k or 1.5M (±2.5%)."),
    data: data_option("Dataset (the teacher's); one minibatch scores candidates.") = ...,
    samples: int = typer.Option(1000, "--samples", help="Candidates to sample on the budget."),
    block: List[str] = typer.Option([], "--block", "-b", help="Block types to mix, repeatable (default: Conv ConvB2 ConvB4 G4B2 G8B2 A2B2 DConv DConvB2 DConvB4)."),
    batch: int = typer.Option(128, "--batch", help="Minibatch size for the Fisher potential."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Where to save every candidate with its score (default: RUNS/blockswap/...)."),
    distill_best: bool = typer.Option(True, "--distill/--no-distill", help="Train the best candidate with attention transfer from the teacher."),
    validate: int = typer.Option(0, "--validate", help="Also train this many candidates across the score ranking (CE) and report the Spearman correlation of score and accuracy."),
    validate_epochs: Optional[int] = typer.Option(None, "--validate-epochs", help="Epochs for --validate (default: the teacher's recipe)."),
    seed: seed_option("Seed for sampling, initialisation and the minibatch.") = 0,
    runs: Runs = Path("runs"),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
    track: Track = None,
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

    target = tracker(track)

    with RichProgress(quiet=quiet) as progress:
        result = blockswap_checkpoint(checkpoint, data, budget=parse_count(budget), samples=samples,
                                      blocks=block or None, batch=batch, seed=seed, csv_path=csv_path,
                                      distill=distill_best, validate=validate, validate_epochs=validate_epochs,
                                      runs=runs, progress=progress, device=device, deterministic=deterministic)

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
        print_pairs("BlockSwap", rows)

    emit(result, as_json, human)
    track_steps(target, result.get("student"))  # the trained student (--distill) is the run-store step


@app.command()
def prunability(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory."),
    scope: str = typer.Option("all", "--scope", help="all (weights and biases of conv, linear, norm) or weights."),
    points: int = typer.Option(101, "--points", help="Points of the cos(p) curve on [0, 1]."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the cos(p) curve with p* and the safe amount as PNG."),
    as_json: Json = False,
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
    emit(result, as_json, lambda r: print_pairs(f"prunability of {checkpoint.name}", rows))


@app.command()
def lottery(
    model: str = typer.Option(..., "--model", "-m", help="Model name (as for train)."),
    data: data_option("Dataset name (as for train).") = ...,
    option: List[str] = typer.Option([], "--option", "-o", help="Model option KEY=VALUE, repeatable."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML file of recipe fields; every round trains with it."),
    epochs: Epochs = None,
    lr: Lr = None,
    rounds: int = typer.Option(3, "--rounds", help="Pruning rounds (round 0 is the dense network)."),
    rate: float = typer.Option(0.2, "--rate", help="Fraction of the remaining weights pruned per round."),
    rewind_epoch: int = typer.Option(0, "--rewind-epoch", help="Rewind survivors to the weights at this epoch (0: init)."),
    control: bool = typer.Option(True, "--control/--no-control", help="Also train a random re-initialisation of each mask."),
    lmc: bool = typer.Option(True, "--lmc/--no-lmc", help="Test each round's stability by linear mode connectivity."),
    seed: seed_option("Seed for init, data order and the validation split.") = 0,
    inner_data: Optional[str] = typer.Option(
        None, "--inner-data", help="Distilled pruning: train the prune loop on this set (e.g. distilled:DIR from "
        "compresslab distill-data); each round's ticket is then trained on --data."),
    inner_epochs: Optional[int] = typer.Option(None, "--inner-epochs", help="Epochs per round on --inner-data "
                                               "(default: the recipe's epochs)."),
    out: Path = typer.Option(Path("runs/lottery"), "--out", help="Directory for lottery.json and lottery.png."),
    quiet: Quiet = False,
    device: Device = "auto",
    deterministic: Deterministic = False,
    as_json: Json = False,
):
    """Lottery tickets: iterative magnitude pruning with rewinding, a random-reinit control, and LMC.

    Each round prunes --rate of the remaining weights globally, rewinds the survivors and
    retrains. A round is stable when the error barrier between two copies trained with
    different data orders is at most 2 points.

    With --inner-data (distilled pruning, McDermott & Cummings 2023) the loop trains on a
    small synthetic set and rewinds to the initialisation; each round's mask is then trained
    once on --data, and that is the accuracy reported.

    \b
    Example:
      compresslab lottery --model cnn1d --data mnist1d --epochs 10 --rounds 4 --out runs/lottery
      compresslab lottery --model convnet -o width=32 --data mnist:DIR --inner-data distilled:runs/distill-data-HASH --inner-epochs 50
    """
    from compresslab.api import load_recipe
    from compresslab.progress import RichProgress
    from compresslab.study.lottery import run_lottery

    overrides = {k: v for k, v in {"epochs": epochs, "lr": lr}.items() if v is not None}
    with RichProgress(quiet=quiet) as progress, on(device, deterministic):
        result = run_lottery(model, data, options=parse_options(option), recipe=load_recipe(recipe, overrides),
                             rounds=rounds, rate=rate, rewind_epoch=rewind_epoch, seed=seed, control=control,
                             lmc=lmc, out=out, callback=progress, inner_data=inner_data,
                             inner_epochs=inner_epochs)
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from rich.table import Table

    t = Table(title=f"lottery tickets: {model} on {data}")
    for col in ("round", "sparsity %", "test acc %", "control acc %", "barrier", "stable", "points real",
                "points inner", "s"):
        t.add_column(col, justify="right")
    for r, cost in zip(result["records"], result["costs"]):
        ctrl = r["control_test_acc"]
        t.add_row(str(r["round"]), f"{100 * r['sparsity']:.1f}", f"{100 * r['test_acc']:.2f}",
                  "–" if ctrl is None else f"{100 * ctrl:.2f}",
                  "–" if r["barrier"] is None else f"{100 * r['barrier']:.2f}",
                  "–" if r["stable"] is None else ("yes" if r["stable"] else "no"),
                  str(cost["points_real"]), str(cost["points_inner"]), f"{cost['seconds']:.1f}")
    console().print(t)
    typer.echo(f"results: {out / 'lottery.json'}")
    typer.echo(f"plot: {out / 'lottery.png'}")
