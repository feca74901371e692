"""hls4ml export: a checkpoint to an HLS project for FPGAs, checked by C simulation.

hls4ml (the optional extra ``compresslab[hls]``) turns the PyTorch module into a C++
project for the Vitis HLS backend with fixed-point (``ap_fixed<W,I>``: W bits, I of them
integer bits including the sign) weights and activations. The project is written ready
for synthesis with the vendor tools (``build_prj.tcl``); synthesis itself is not run here.
Instead the C simulation (hls4ml's ``compile()``: the same C++ built with g++ into a
shared library) runs on real test inputs and is compared with the checkpoint as PyTorch
runs it: largest absolute output difference, top-1 agreement and accuracy.

**Precision.** A float checkpoint uses one type, ``--precision`` (default
``ap_fixed<16,6>``), for weights, biases, inputs, activations and accumulators, as
hls4ml's default config does (Dense outputs get hls4ml's inferred lossless width).

A ``fake-quant`` checkpoint already lives on a ``b``-bit integer grid with scale ``s``
(weight ``w = q·s``, ``|q| <= 2^(b-1) - 1`` when symmetric), so each quantised layer gets
its own weight type, from the grid, not from ``--precision`` (:func:`fixed_type`):

* integer bits ``I = floor(log2 max|w|) + 2``: the smallest I with ``2^(I-1) > max|w|``,
  so the largest weight fits in the signed range ``[-2^(I-1), 2^(I-1))``;
* fractional bits ``F = ceil(log2(1/s)) + GUARD_BITS``: the fixed-point step ``2^-F`` is
  at most ``s / 2^GUARD_BITS``, so every grid point maps to its own fixed-point value,
  within ``s / 2^(GUARD_BITS+1)`` (round to nearest, saturate);
* ``W = I + F``. As ``max|w| = s·(2^(b-1) - 1)``, ``W`` is about ``b + 1 + GUARD_BITS``.

Per-channel grids take the largest ``|w|`` and the smallest channel scale (all-zero
channels, e.g. pruned ones, are ignored). With ``act_bits`` the tensor feeding each
quantised layer (the model input, a ReLU output) gets a type by the same rule from its
calibrated range ``[lo, hi]`` (unsigned when ``lo >= 0``), saturating like the fake-quant
clamp. Quantised layers accumulate in hls4ml's inferred lossless type, so what remains of
the difference to PyTorch is the weights' rounding to ``F`` bits, the biases at
``--precision`` and the activations' step. Other transforms (torch or ONNX Runtime int8)
are exported from their float weights at ``--precision``, with a note.

**Estimates.** hls4ml 1.3.0 reads resource use and latency from the vendor tools'
synthesis reports (``hls4ml.report``); it has no estimator that runs without them, so the
result says that they need synthesis.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compresslab.errors import UserError

HLS4ML_VERSION = "1.3.0"
INSTALL = "pip install 'compresslab[hls]'"
DEFAULT_PRECISION = "ap_fixed<16,6>"
IO_TYPES = ("io_parallel", "io_stream")
BACKEND, PROJECT = "Vitis", "compresslab"
#: Extra fractional bits beyond the grid step (see the module docstring).
GUARD_BITS = 2
ROUNDING = ("AP_TRN", "AP_TRN_ZERO", "AP_RND", "AP_RND_ZERO", "AP_RND_INF", "AP_RND_MIN_INF", "AP_RND_CONV")
SATURATION = ("AP_WRAP", "AP_SAT", "AP_SAT_ZERO", "AP_SAT_SYM")
_PRECISION = re.compile(r"ap_(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*(\w+)\s*)?(?:,\s*(\w+)\s*)?>")
#: Nodes that only reshape: the type set on a layer's input goes through them to its producer.
_PASS_THROUGH = {"Flatten", "Dropout", "Identity", "flatten", "view", "reshape"}
ESTIMATES_NOTE = ("resources and latency need synthesis with the vendor tools (vitis_hls -f build_prj.tcl in the "
                  "project); hls4ml 1.3.0 has no estimator without them")


def parse_precision(text: str) -> str:
    """``ap_fixed<W,I>`` (optionally ``,ROUNDING[,SATURATION]``; ``ap_ufixed`` too), checked and
    normalised; a one-line :class:`UserError` otherwise."""
    m = _PRECISION.fullmatch(text.strip().replace(" ", ""))
    hint = f"--precision {text!r}: expected ap_fixed<W,I>, e.g. {DEFAULT_PRECISION} (W total bits, I integer bits)"
    if not m:
        raise UserError(hint)
    unsigned, width, integer, rnd, sat = m.groups()
    if not 1 <= int(width) <= 1024:
        raise UserError(f"--precision {text!r}: the width W must be 1 to 1024 bits")
    if (rnd and rnd not in ROUNDING) or (sat and sat not in SATURATION):
        raise UserError(f"--precision {text!r}: rounding is one of {', '.join(ROUNDING)}; "
                        f"saturation one of {', '.join(SATURATION)}")
    return f"ap_{unsigned}fixed<{','.join(p for p in (width, integer, rnd, sat) if p)}>"


def fixed_type(max_abs: float, step: float, *, signed: bool = True, guard: int = GUARD_BITS) -> str:
    """The ``ap_fixed`` type for values up to ``max_abs`` in size on a grid of ``step``: integer
    bits so ``max_abs`` fits, fractional bits so the step is resolved to ``step / 2^guard``
    (rounding to nearest, saturating). The rule is the module docstring's."""
    frac = math.ceil(-math.log2(step)) + guard
    integer = (math.floor(math.log2(max_abs)) if max_abs > 0 else -frac) + (2 if signed else 1)
    return f"ap_{'' if signed else 'u'}fixed<{max(integer + frac, 1)},{integer},AP_RND_CONV,AP_SAT>"


def _grid_step(scale: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> float:
    """The smallest scale among grids with a non-empty range (1.0 when all are empty)."""
    live = (hi - lo).reshape(-1) > 0
    return float(scale.reshape(-1)[live].min()) if live.any() else 1.0


def quantized_types(model: nn.Module) -> dict[str, dict]:
    """``{layer: {"weight": type, "max_abs": .., "step": ..}}`` for every fake-quantised layer of
    ``model`` (transform applied), plus ``"input": type`` where activations are quantised."""
    from compresslab.compress.quantize import ActFakeQuant, WeightFakeQuant, qparams

    out = {}
    for name, m in model.named_modules():
        fq = getattr(getattr(m, "parametrizations", None), "weight", None)
        if fq is None or not isinstance(fq[0], WeightFakeQuant):
            continue
        w = fq.original.detach()
        flat = w.reshape(w.shape[0], -1) if fq[0].per_channel else w.reshape(1, -1)
        lo, hi = flat.amin(1), flat.amax(1)
        scale, _ = qparams(lo, hi, fq[0].bits, fq[0].symmetric)
        max_abs, step = float(m.weight.detach().abs().max()), _grid_step(scale, lo, hi)
        out[name] = {"weight": fixed_type(max_abs, step), "max_abs": max_abs, "step": step}
        q = getattr(m, "input_quant", None)
        if isinstance(q, ActFakeQuant):
            a_scale, _ = qparams(q.lo, q.hi, q.bits, q.symmetric)
            lo_a, hi_a = float(q.lo), float(q.hi)
            out[name]["input"] = fixed_type(max(-lo_a, hi_a), _grid_step(a_scale, q.lo, q.hi), signed=lo_a < 0)
    return out


def _hls_model(plain: nn.Module, model: nn.Module, types: dict[str, dict]) -> nn.Module:
    """The float module ``plain`` with each fake-quantised weight replaced by its grid values in
    ``model`` (hls4ml traces plain layers; the activation quantisers become types, not nodes)."""
    with torch.no_grad():
        for name in types:
            plain.get_submodule(name).weight.copy_(model.get_submodule(name).weight)
    return plain.eval()


def _layer_types(graph, model: nn.Module, types: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """hls4ml per-layer precision overrides: weight type and lossless accumulator on each
    quantised layer, the input type on its producer (through reshapes). A layer whose only
    user is a BatchNorm keeps the default weight type, because hls4ml folds the BatchNorm
    into its weights, which moves them off the fake-quant grid (with the grid's narrow type
    the folded weights saturate). Returns the overrides and those layers' names."""
    nodes = {n.target: n for n in graph.nodes if n.op == "call_module"}
    modules = dict(model.named_modules())
    out: dict[str, dict] = {}
    folded = []
    for name, t in types.items():
        node = nodes[name]
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(modules.get(users[0].target),
                                                                         nn.modules.batchnorm._BatchNorm):
            folded.append(name)
        else:
            out.setdefault(node.name, {}).update(weight=t["weight"], accum="auto")
        src = node.args[0] if "input" in t else None
        while src is not None:
            out.setdefault(src.name, {})["result"] = t["input"]
            kind = type(modules.get(src.target)).__name__ if src.op == "call_module" else str(src.target)
            src = src.args[0] if kind in _PASS_THROUGH and src.args else None
    return out, folded


def _trace(model: nn.Module):
    from hls4ml.utils.torch import CustomFXTracer

    try:
        return CustomFXTracer().trace(model)
    except Exception as e:  # torch.fx cannot trace it: name the innermost module it was in
        names, culprit, tb = {id(m): n for n, m in model.named_modules()}, None, e.__traceback__
        while tb is not None:
            me = tb.tb_frame.f_locals.get("self")
            if id(me) in names:
                culprit = me
            tb = tb.tb_next
        where = f"layer {names[id(culprit)] or 'the model'} ({type(culprit).__name__})" if culprit else "the model"
        raise UserError(f"hls4ml cannot convert {where}: torch.fx cannot trace it ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _unsupported(graph, model: nn.Module, e: Exception) -> UserError:
    """hls4ml's 'Unsupported layer X' / 'Unsupported function f' as one line naming the layer."""
    msg, modules = _first_line(e), dict(model.named_modules())
    m = re.match(r"Unsupported (layer|function) (\w+)", msg)
    for node in graph.nodes if m else ():
        if m[1] == "layer" and node.op == "call_module" and type(modules[node.target]).__name__ == m[2]:
            return UserError(f"hls4ml {HLS4ML_VERSION} cannot convert layer {node.target} ({m[2]}); "
                             "export this model with --onnx instead")
        if m[1] == "function" and node.op != "call_module" and re.sub(r"_\d+$", "", node.name) == m[2]:
            stack = list((node.meta.get("nn_module_stack") or {}).values())
            where = f"layer {stack[-1][0]} ({stack[-1][1].__name__})" if stack else "the model's forward"
            return UserError(f"hls4ml {HLS4ML_VERSION} cannot convert {where}: it calls {m[2]}, which hls4ml does not "
                             "support; export this model with --onnx instead")
    return UserError(f"hls4ml {HLS4ML_VERSION} cannot convert this model ({msg}); export it with --onnx instead")


def require_hls(out: Path) -> None:
    """hls4ml importable, g++ on PATH, ``out`` free: checked before any work."""
    if out.exists():
        raise UserError(f"--hls4ml {out}: already exists; remove it or choose a new directory")
    if not out.parent.is_dir():
        raise UserError(f"--hls4ml {out}: directory {out.parent} does not exist")
    if importlib.util.find_spec("hls4ml") is None:
        raise UserError(f"hls4ml is not installed; install it with {INSTALL}")
    if shutil.which("g++") is None:
        raise UserError("g++ is not on PATH; hls4ml compiles its C simulation with it (e.g. apt-get install g++), "
                        f"and the Python side comes with {INSTALL}")


def _parity(reference: np.ndarray, got: np.ndarray, y: np.ndarray, task: str) -> dict:
    """The C simulation against PyTorch: the largest output difference, and top-1 agreement and
    accuracy (classification) or the mean distance between the predicted centres and each
    model's mean centre error in the targets' unit, pixels (regression)."""
    diff = float(np.abs(reference - got).max())
    if task == "regression":
        dist = lambda a, b: float(np.linalg.norm(a - b, axis=1).mean())
        return {"torch_centre_error_px": dist(reference, y),
                "parity": {"max_abs_diff": diff, "centre_distance_px": dist(reference, got),
                           "centre_error_px": dist(got, y)}}
    return {"torch_accuracy": float((reference.argmax(1) == y).mean()),
            "parity": {"max_abs_diff": diff, "top1_agreement": float((reference.argmax(1) == got.argmax(1)).mean()),
                       "accuracy": float((got.argmax(1) == y).mean())}}


def _channels_last(x: np.ndarray) -> np.ndarray:
    """hls4ml keeps tensors channels-last: (N, C, L) -> (N, L, C), (N, C, H, W) -> (N, H, W, C)."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1) if x.ndim > 2 else x, dtype=np.float32)


def export_hls(checkpoint: str | Path, out: str | Path, data: str, *, precision: str = DEFAULT_PRECISION,
               reuse_factor: int = 1, io_type: str = "io_parallel", part: str | None = None,
               parity_samples: int = 500, seed: int = 0, val_fraction: float = 0.1, progress=None) -> dict:
    """Write the hls4ml project of a checkpoint into the new directory ``out`` and check its C
    simulation against PyTorch on the first ``parity_samples`` test examples.

    Nothing is left at ``out`` when anything fails. Returns the result dict (the CLI's JSON).
    """
    from compresslab.runs.checkpoint import load_checkpoint
    from compresslab.steps import dataset
    from compresslab.steps.common import checkpoint_logits

    checkpoint, out = Path(checkpoint), Path(out)
    precision = parse_precision(precision)
    if isinstance(reuse_factor, bool) or not isinstance(reuse_factor, int) or reuse_factor < 1:
        raise UserError(f"--reuse-factor {reuse_factor!r}: must be a positive integer (1: fully parallel)")
    if io_type not in IO_TYPES:
        raise UserError(f"--io-type {io_type!r}: use {' or '.join(IO_TYPES)}")
    if parity_samples < 1:
        raise UserError(f"--parity-samples {parity_samples}: must be at least 1")
    require_hls(out)
    task = progress.task if progress is not None else (lambda label: contextlib.nullcontext())

    ds = dataset(data, val_fraction, seed)
    reference = checkpoint_logits(checkpoint, ds, "test")[:parity_samples].numpy()
    x, y = (t[:parity_samples].numpy() for t in ds.split("test"))
    model, cfg = load_checkpoint(checkpoint)
    kinds = [t["kind"] for t in cfg["transforms"]]
    notes = [f"transform {k} exported from its float weights at {precision}" for k in kinds if k != "fake-quant"]
    types = quantized_types(model) if "fake-quant" in kinds else {}
    net = _hls_model(load_checkpoint(checkpoint, apply_transforms=False)[0].cpu(), model.cpu(), types)

    import hls4ml

    log = io.StringIO()
    try:
        with task("convert to hls4ml"), contextlib.redirect_stdout(log):
            graph = _trace(net)
            try:
                config = hls4ml.utils.config_from_pytorch_model(
                    net, tuple(ds.input_shape), granularity="name", default_precision=precision,
                    default_reuse_factor=reuse_factor, channels_last_conversion="internal")
                overrides, folded = _layer_types(graph, net, types)
                for name, o in overrides.items():
                    config["LayerName"][name]["Precision"].update(o)
                notes += [f"{name}: weights at {precision}, not {types[name]['weight']}: hls4ml folds the next "
                          "BatchNorm into them" for name in folded]
                hls_model = hls4ml.converters.convert_from_pytorch_model(
                    net, output_dir=str(out), project_name=PROJECT, backend=BACKEND, io_type=io_type,
                    hls_config=config, **({"part": part} if part else {}))
            except UserError:
                raise
            except Exception as e:
                raise _unsupported(graph, net, e) from None
        with task("compile the C simulation (g++)"), contextlib.redirect_stdout(log):
            t0 = time.perf_counter()
            try:
                hls_model.compile()
            except Exception as e:
                errors = [line for line in log.getvalue().splitlines() if "error" in line.lower()]
                raise UserError(f"the C simulation did not compile ({(errors or [_first_line(e)])[0][:200]}); "
                                "try a wider --precision") from None
            compile_s = time.perf_counter() - t0
        with task(f"C simulation on {len(x)} test examples"), contextlib.redirect_stdout(log):
            got = np.asarray(hls_model.predict(_channels_last(x)), dtype=np.float32).reshape(len(x), -1)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise

    layers = [{"name": layer.name, "class": layer.class_name,
               **{k[:-2]: str(v.precision) for k, v in layer.types.items() if k in ("weight_t", "bias_t", "result_t", "accum_t")}}
              for layer in hls_model.get_layers()]
    return {"checkpoint": str(checkpoint), "hls4ml": str(out), "hls4ml_version": hls4ml.__version__,
            "backend": BACKEND, "project": PROJECT, "part": hls_model.config.get_config_value("Part"),
            "io_type": io_type, "reuse_factor": reuse_factor, "precision": precision, "transforms": kinds,
            "quantized_layers": types, "layers": layers, "examples": int(len(y)),
            **_parity(reference, got, y, ds.task),
            "compile_seconds": compile_s, "estimates": None, "estimates_note": ESTIMATES_NOTE, "notes": notes,
            "files": sorted(str(p.relative_to(out)) for p in out.iterdir())}
