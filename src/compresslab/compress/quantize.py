"""Quantisation: simulated (fake-quant at 2–16 bits, QAT) and real int8 on CPU.

Simulated quantisation rounds weights (and optionally each quantised layer's input
activations) onto a ``bits``-bit integer grid and maps them straight back to float, so
any bit width can be studied with fp32 kernels:

    q = clamp(round(x / scale) + zero_point, qmin, qmax),   x̂ = (q - zero_point) * scale

*Symmetric* grids are signed and sign-symmetric, ``q ∈ [-(2^(b-1) - 1), 2^(b-1) - 1]``,
``zero_point = 0``, ``scale = max|x| / qmax``; *asymmetric* grids are ``q ∈ [0, 2^b - 1]``
with ``scale = (max - min) / qmax`` over a range widened to include 0, so 0 (a pruned
weight, a ReLU zero) is always exact. Inside the range the error is at most ``scale / 2``.
Weights are quantised per tensor or per output channel from their own min/max, at every
forward (so QAT sees its current weights). Activation ranges come from an observer:
``minmax`` (over calibration batches) or ``percentile`` (the mean over batches of the
per-batch lower/upper percentiles), and during QAT from an exponential moving average.
Gradients use the straight-through estimator: identity inside the range, zero for
clipped elements.

Real int8 runs int8 kernels on the CPU, through one of two backends:

* ``ptq-dynamic``: Linear weights int8 per tensor, activations quantised per batch on
  the fly, everything else fp32 (:func:`quantize_dynamic_int8`);
* ``ptq-static``: conv/linear weights int8 per channel, activations uint8 with ranges
  from calibration, BatchNorm folded (:func:`calibrate_static_int8`).

``torch.ao`` (fbgemm/x86: dynamic-quantised Linear modules, FX graph mode static) is the
default while torch has it: it measured faster at batch 256, the batch studies time
(MLP static 1.7x and dynamic 1.4x faster than ONNX Runtime's; cnn1d-64 static 1.4x), and
its modules keep feature points, so CKA still measures int8 children. ``onnxruntime`` (the
model traced to ONNX and quantised by ONNX Runtime, run by an
:class:`compresslab.ort.OrtModule`: dynamic int8 on Gemm/MatMul only, static QDQ) needs no
torch.ao and is the fastest int8 path at batch 1 for every model measured (2-6.5x); choose
it with ``backend="onnxruntime"`` (``--backend``). Figures: ``benchmarks/quantization_speed.py``,
``docs/quantization.md``. A backend that cannot take the model (FX cannot trace it, ONNX
cannot export it) hands it to the other. torch.ao is deprecated upstream; it is reached only
through the ``compresslab.torch_ao`` adapter, and when it is gone every model uses ONNX
Runtime (:func:`int8_backend`).

Both are recorded as checkpoint *transforms* (``model.json``) with their backend,
re-applied on load from the float weights; calibrated ranges are stored in the transform
(torch.ao's per observer, ONNX Runtime's per tensor), so loading never needs data. A
transform without a backend is torch.ao's; loading one where torch.ao is missing is a
one-line :class:`UserError` that says what to do.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from compresslab import ort, torch_ao
from compresslab.errors import UserError

DYNAMIC_INT8 = {"kind": "quantize-dynamic", "dtype": "qint8", "modules": ["Linear"]}
#: int8 backends: ONNX Runtime, torch's own kernels (through the ``compresslab.torch_ao`` adapter).
ORT, TORCH_AO = "onnxruntime", torch_ao.NAME
BACKENDS = ("auto", ORT, TORCH_AO)
LAYER_TYPES = ("conv", "linear")
OBSERVERS = ("minmax", "percentile")
MIN_BITS, MAX_BITS = 2, 16
MAX_CALIB_BATCHES, MAX_CALIB_BATCH = 10_000, 65_536


def layer_type(module: nn.Module) -> str | None:
    """``"conv"``, ``"linear"`` or None (not quantised)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def check_bits(bits: int, what: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(f"{what} {bits!r}: must be an integer from {MIN_BITS} to {MAX_BITS}")
    return bits


def per_type(bits: int | dict | None, what: str) -> dict | None:
    """``4`` -> ``{"conv": 4, "linear": 4}``; a dict may give either or both types
    (missing types are left unquantised) and ``"layers": {module name: bits}``, a layer's
    own width that overrides its type's (a mixed-precision assignment: only the layers
    named, or of a type given, are quantised); None stays None. Without ``layers`` the
    result is what it always was, so existing specs and step hashes do not move."""
    if bits is None:
        return None
    if isinstance(bits, dict):
        unknown = set(bits) - set(LAYER_TYPES) - {"layers"}
        if unknown:
            raise UserError(f"{what}: unknown layer types {sorted(unknown)}; use {', '.join(LAYER_TYPES)} "
                            "or layers={name: bits}")
        out = {t: check_bits(b, f"{what}[{t}]") for t, b in bits.items() if t != "layers"}
        if "layers" in bits:
            if not isinstance(bits["layers"], dict) or not bits["layers"]:
                raise UserError(f"{what}: layers must map module names to bits, e.g. {{'net.0': 4}}")
            out["layers"] = {str(n): check_bits(b, f"{what}[layers][{n}]") for n, b in bits["layers"].items()}
        return out
    return {t: check_bits(bits, what) for t in LAYER_TYPES}


def bits_for(bits: dict | None, name: str, module: nn.Module) -> int | None:
    """The width that a :func:`per_type` dict gives layer ``name``: its own, else its type's,
    else None (not quantised)."""
    if not bits:
        return None
    own = bits.get("layers", {})
    return own[name] if name in own else bits.get(layer_type(module))


# -- the integer grid ------------------------------------------------------------------------


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of the grid."""
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` (float tensors shaped like ``lo``) covering ``[lo, hi] ∪ {0}``."""
    lo = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0.0)
    hi = torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0.0)
    qmin, qmax = qrange(bits, symmetric)
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        return scale.clamp_min(tiny), torch.zeros_like(scale)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(tiny)
    return scale, torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = torch.round(x / scale) + zero_point
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round ``x`` onto the grid and back; straight-through gradient inside the range.

    Without autograd it is plain tensor ops (div, round, clamp), so it exports to ONNX.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _FakeQuantSTE.apply(x, scale, zero_point, qmin, qmax)
    return (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale


# -- modules -----------------------------------------------------------------------------------


class WeightFakeQuant(nn.Module):
    """Parametrization of a conv/linear weight: its fake-quantised copy, the range read off
    the current weight (per tensor, or per output channel = dim 0)."""

    def __init__(self, bits: int, symmetric: bool = True, per_channel: bool = True):
        super().__init__()
        self.bits, self.symmetric, self.per_channel = check_bits(bits), symmetric, per_channel

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.per_channel:
                flat = w.reshape(w.shape[0], -1)
                shape = (-1,) + (1,) * (w.dim() - 1)
                lo, hi = flat.amin(1).reshape(shape), flat.amax(1).reshape(shape)
            else:
                lo, hi = w.min(), w.max()
            scale, zp = qparams(lo, hi, self.bits, self.symmetric)
        return fake_quantize(w, scale, zp, *qrange(self.bits, self.symmetric))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, per_channel={self.per_channel}"


class ActFakeQuant(nn.Module):
    """Fake-quantises a layer's input with a per-tensor range held in ``lo`` / ``hi``.

    ``calibrating``: observe the range (min-max: running extremes; percentile: running
    mean of per-batch percentiles) and pass the input through unchanged. Otherwise
    quantise; in training mode (QAT) the range first moves towards the batch's by an
    exponential moving average with ``momentum``.
    """

    def __init__(self, bits: int, observer: str = "minmax", percentile: float = 99.99, momentum: float = 0.01,
                 symmetric: bool = False):
        super().__init__()
        if observer not in OBSERVERS:
            raise UserError(f"activation observer {observer!r}: use {' or '.join(OBSERVERS)}")
        self.bits, self.observer, self.percentile = check_bits(bits), observer, percentile
        self.momentum, self.symmetric = momentum, symmetric
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.calibrating, self.batches = False, 0

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().float().reshape(-1)
        if self.observer == "minmax":
            return x.min(), x.max()
        if x.numel() > 2**20:  # quantiles of a fixed, evenly strided subsample
            x = x[:: x.numel() // 2**20 + 1]
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], device=x.device)
        lo, hi = torch.quantile(x, q)
        return lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            lo, hi = self._batch_range(x)
            n = self.batches
            if self.observer == "minmax":
                self.lo.copy_(lo if n == 0 else torch.minimum(self.lo, lo))
                self.hi.copy_(hi if n == 0 else torch.maximum(self.hi, hi))
            else:
                self.lo.copy_((self.lo * n + lo) / (n + 1))
                self.hi.copy_((self.hi * n + hi) / (n + 1))
            self.batches += 1
            return x
        if self.training:
            lo, hi = self._batch_range(x)
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)
        scale, zp = qparams(self.lo, self.hi, self.bits, self.symmetric)
        return fake_quantize(x, scale, zp, *qrange(self.bits, self.symmetric))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, observer={self.observer}, range=[{float(self.lo):.4g}, {float(self.hi):.4g}]"


def _quant_input_hook(module: nn.Module, args):
    return (module.input_quant(args[0]), *args[1:])


def attach_fake_quant(model: nn.Module, weight_bits: int | dict, *, act_bits: int | dict | None = None,
                      per_channel: bool = True, symmetric: bool = True, observer: str = "minmax",
                      percentile: float = 99.99, act_ranges: dict[str, list[float]] | None = None) -> nn.Module:
    """Fake-quantise ``model`` in place: every Conv1d/Conv2d/Linear of a type in
    ``weight_bits``, or named in its ``layers`` (:func:`per_type`), gets its weight parametrized (:class:`WeightFakeQuant`), and with
    ``act_bits`` its input quantised by an :class:`ActFakeQuant` (asymmetric) held as
    ``input_quant``. Module names and feature points are unchanged. ``act_ranges``
    (``{layer: [lo, hi]}``) restores calibrated ranges; otherwise call :func:`calibrate`.
    Undo with :func:`strip_fake_quant`."""
    wbits, abits = per_type(weight_bits, "weight bits"), per_type(act_bits, "activation bits")
    found = {n: m for n, m in model.named_modules() if layer_type(m)}
    for spec, what in ((wbits, "weight bits"), (abits, "activation bits")):
        unknown = sorted(set((spec or {}).get("layers", {})) - set(found))
        if unknown:
            raise UserError(f"{what} name layers {unknown} that are not conv/linear layers of the model; "
                            f"its layers are {sorted(found)}")
    layers = [(n, m) for n, m in found.items() if bits_for(wbits, n, m)]
    if not layers:
        raise UserError(f"the model has no {' or '.join(t for t in wbits or LAYER_TYPES if t != 'layers')} "
                        "layers to quantise")
    if act_ranges is not None and abits:
        missing = {n for n, m in layers if bits_for(abits, n, m)} - set(act_ranges)
        if missing:
            raise UserError(f"activation ranges are missing for {sorted(missing)}; re-create the quantised checkpoint")
    for name, m in layers:
        parametrize.register_parametrization(m, "weight", WeightFakeQuant(bits_for(wbits, name, m), symmetric,
                                                                          per_channel))
        if bits_for(abits, name, m):
            m.input_quant = ActFakeQuant(bits_for(abits, name, m), observer, percentile).to(m.weight.device)
            if act_ranges is not None:
                m.input_quant.lo.fill_(act_ranges[name][0])
                m.input_quant.hi.fill_(act_ranges[name][1])
            m._fq_hook = m.register_forward_pre_hook(_quant_input_hook)
    return model


def act_quantizers(model: nn.Module) -> dict[str, ActFakeQuant]:
    return {n: m.input_quant for n, m in model.named_modules() if isinstance(getattr(m, "input_quant", None), ActFakeQuant)}


def act_ranges(model: nn.Module) -> dict[str, list[float]]:
    """``{layer: [lo, hi]}`` of every activation quantiser (JSON-ready)."""
    return {n: [float(q.lo), float(q.hi)] for n, q in act_quantizers(model).items()}


@contextmanager
def _calibrating(model: nn.Module):
    quants = act_quantizers(model).values()
    for q in quants:
        q.calibrating, q.batches = True, 0
    try:
        yield
    finally:
        for q in quants:
            q.calibrating = False


def calibration_batches(x: torch.Tensor, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """``batches`` random training batches, without replacement: at most one pass over ``x``
    (repeating examples would not change the observed ranges, only cost time)."""
    if not (1 <= batches <= MAX_CALIB_BATCHES and 1 <= batch_size <= MAX_CALIB_BATCH):
        raise UserError(f"calibration takes 1 to {MAX_CALIB_BATCHES:,} batches of 1 to {MAX_CALIB_BATCH:,} examples, "
                        f"got {batches} x {batch_size}")
    if len(x) == 0:
        raise UserError("calibration needs training data, but the training split is empty")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    need = min(batches * batch_size, len(x))
    order = order[:need].to(x.device)
    return [x[order[i:i + batch_size]] for i in range(0, need, batch_size)]


def calibrate(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, list[float]]:
    """Observe the activation ranges on ``batches`` (eval mode); returns :func:`act_ranges`."""
    model.eval()
    with _calibrating(model), torch.no_grad():
        for xb in batches:
            model(xb)
    return act_ranges(model)


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """Remove the fake-quant parametrizations and input quantisers in place, keeping the
    float (latent) weights: what a checkpoint stores."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        if isinstance(getattr(m, "input_quant", None), ActFakeQuant):
            m._fq_hook.remove()
            del m.input_quant, m._fq_hook
    return model


def fake_quant_transform(weight_bits: int | dict, *, act_bits: int | dict | None, per_channel: bool, symmetric: bool,
                         observer: str, percentile: float, ranges: dict[str, list[float]] | None) -> dict:
    """The ``model.json`` transform that rebuilds a fake-quantised model from float weights."""
    return {"kind": "fake-quant", "weight_bits": per_type(weight_bits, "weight bits"),
            "act_bits": per_type(act_bits, "activation bits"), "per_channel": per_channel, "symmetric": symmetric,
            "observer": observer, "percentile": percentile, "act_ranges": ranges or {}}


def apply_fake_quant_transform(model: nn.Module, t: dict) -> nn.Module:
    model = attach_fake_quant(copy.deepcopy(model), t["weight_bits"], act_bits=t["act_bits"],
                              per_channel=t["per_channel"], symmetric=t["symmetric"], observer=t["observer"],
                              percentile=t["percentile"], act_ranges=t["act_ranges"] if t["act_bits"] else None)
    return model.eval()


# -- real int8: ONNX Runtime or torch.ao --------------------------------------------------------


def int8_backend(backend: str = "auto") -> str:
    """The backend that runs int8 first: ``auto`` is :data:`TORCH_AO` while torch
    has it (measured fastest at batch 256, and its modules keep feature points for CKA), else
    :data:`ORT` (see :func:`_with_fallback` for a model the first one cannot take)."""
    if backend not in BACKENDS:
        raise UserError(f"int8 backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return TORCH_AO if torch_ao.available() else ORT
    return backend


def _with_fallback(backend: str, build):
    """``build(backend)`` for the backend :func:`int8_backend` picks; with ``auto``, when that
    one cannot take the model (a UserError: FX cannot trace it, ONNX cannot export it), the
    other backend if there is one. Both failing raises the first error."""
    chosen = int8_backend(backend)
    try:
        return build(chosen)
    except UserError as first:
        other = ORT if chosen == TORCH_AO else TORCH_AO
        if backend != "auto" or (other == TORCH_AO and not torch_ao.available()):
            raise
        try:
            return build(other)
        except UserError:
            raise first from None


def _input_shape(model: nn.Module, example: torch.Tensor | None = None) -> tuple[int, ...]:
    if example is not None:
        return tuple(example.shape[1:])
    shape = (getattr(model, "compresslab_config", None) or {}).get("input_shape")
    if not shape:
        raise UserError("int8 through ONNX Runtime needs the model's input shape, which its config does not record")
    return tuple(shape)


def dynamic_int8_transform(model: nn.Module, backend: str = "auto") -> dict:
    """The ``quantize-dynamic`` transform for ``model``: :data:`DYNAMIC_INT8` (torch.ao) or
    the same with ``backend: onnxruntime`` and the input shape the ONNX graph is traced at."""
    def build(chosen: str) -> dict:
        if chosen == TORCH_AO:
            return DYNAMIC_INT8
        shape = _input_shape(model)
        if backend == "auto":
            ort.int8_graph(model, shape, "dynamic", op_types=ort.LINEAR_OPS)  # does it export?
        return {**DYNAMIC_INT8, "backend": ORT, "input_shape": list(shape)}

    return _with_fallback(backend, build)


def quantize_dynamic_int8(model: nn.Module, transform: dict = DYNAMIC_INT8) -> nn.Module:
    """A copy of ``model`` whose Linear layers run int8 dynamic-quantised kernels: weights
    int8 per tensor (symmetric, min-max), activations quantised per batch on the fly; other
    layers stay fp32. ``transform`` (:func:`dynamic_int8_transform`) names the backend; one
    without a backend is torch.ao's (every checkpoint made before ONNX Runtime was added)."""
    if transform.get("backend", TORCH_AO) == TORCH_AO:
        torch_ao.require("this dynamic int8 model (transform quantize-dynamic)")
        return torch_ao.quantize_dynamic(model)
    graph = ort.int8_graph(model, transform["input_shape"], "dynamic", op_types=ort.LINEAR_OPS)
    return ort.OrtModule(graph, "onnxruntime int8 dynamic (Linear)", like=model).eval()


def calibrate_static_int8(model: nn.Module, batches: list[torch.Tensor], backend: str = "auto") -> dict:
    """Calibrate static int8 on ``batches``; returns the ``quantize-static`` transform, its
    activation ranges included. Backend: :func:`int8_backend`."""
    def build(chosen: str) -> dict:
        example = batches[0][:1]
        if chosen == TORCH_AO:
            prepared = torch_ao.prepare_static(model, example)
            with torch.no_grad():
                for xb in batches:
                    prepared(xb)
            return {"kind": "quantize-static", "backend": "x86", "act_ranges": torch_ao.activation_ranges(prepared)}
        shape = _input_shape(model, example)
        return {"kind": "quantize-static", "backend": ORT, "input_shape": list(shape),
                "act_ranges": ort.onnx_ranges(model, shape, batches)}

    return _with_fallback(backend, build)


def apply_static_int8(model: nn.Module, t: dict, example: torch.Tensor) -> nn.Module:
    """Rebuild the static int8 model of transform ``t`` from float ``model``."""
    if t.get("backend") == ORT:
        graph = ort.int8_graph(model, t["input_shape"], "static", ranges=t["act_ranges"])
        return ort.OrtModule(graph, "onnxruntime int8 static (QDQ)", like=model).eval()
    torch_ao.require("this static int8 model (transform quantize-static, backend x86)")
    return torch_ao.convert_static(torch_ao.prepare_static(model, example), t["act_ranges"])


def quantized_layer_bits(model: nn.Module, transforms: list[dict]) -> dict[str, tuple[int, int]]:
    """Per-layer ``(weight_bits, act_bits)`` that ``transforms`` give a float ``model``
    (what the BOPs formula needs); layers not listed stay at 32/32."""
    bits: dict[str, tuple[int, int]] = {}
    for t in transforms:
        for name, m in model.named_modules():
            kind = layer_type(m)
            if kind is None:
                continue
            if t["kind"] == "quantize-dynamic" and kind == "linear":
                bits[name] = (8, 8)
            elif t["kind"] == "quantize-static":
                bits[name] = (8, 8)
            elif t["kind"] == "fake-quant" and bits_for(t["weight_bits"], name, m):
                bits[name] = (bits_for(t["weight_bits"], name, m), bits_for(t["act_bits"], name, m) or 32)
    return bits
