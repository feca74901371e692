"""What a model costs: parameters, MACs, BOPs, storage bytes and latency.

Every function here is pure (no I/O, no printing). ``input_shape`` is always
the shape of ONE example, without the batch dimension, e.g. ``(1, 40)``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

from compresslab import torch_ao
from compresslab.errors import UserError
from compresslab.ort import example_input

#: Module types whose cost is counted (subclasses included); torch's dynamic-quantised
#: Linear while torch still has it.
COUNTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, *torch_ao.dynamic_linear_types())

_MAX_REPEATS = 10_000


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (buffers are not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Number of parameter elements that are not exactly zero."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def model_bytes(model: nn.Module, bits: int = 32) -> int:
    """Bytes to store every parameter at ``bits`` bits: ceil(params * bits / 8)."""
    if bits <= 0:
        raise UserError(f"bits must be a positive integer, got {bits}")
    return math.ceil(count_params(model) * bits / 8)


def model_bytes_fp32(model: nn.Module) -> int:
    """Bytes to store every parameter as float32 (``model_bytes(model, 32)``)."""
    return model_bytes(model, 32)


# --------------------------------------------------------------------------- helpers


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise UserError(
            f"input_shape must be a non-empty tuple of positive sizes (one example, "
            f"no batch dimension), got {tuple(input_shape)}"
        )
    return shape


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device of the first parameter/buffer and dtype of the first float parameter."""
    device, dtype = torch.device("cpu"), torch.float32
    for t in list(model.parameters()) + list(model.buffers()):
        device = t.device
        break
    for p in model.parameters():
        if p.is_floating_point():
            dtype = p.dtype
            break
    return device, dtype


def _weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a float tensor (dequantized for quantized layers)."""
    w = module.weight
    if callable(w):  # dynamic-quantised Linear exposes weight() as a method
        w = w()
    w = w.detach()
    return w.dequantize() if w.is_quantized else w


def _fan_in(module: nn.Module) -> int:
    """Inputs feeding one output element: in_features, or (C_in/groups)*prod(kernel); for a
    module that declares ``macs_per_position()`` (structured maps), those MACs / C_out."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.in_channels // module.groups * math.prod(module.kernel_size)
    if hasattr(module, "macs_per_position"):
        return max(1, module.macs_per_position() // module.c_out)
    return int(module.in_features)


def _counted(module: nn.Module) -> bool:
    return isinstance(module, COUNTED_LAYERS) or hasattr(module, "macs_per_position")


class _TrainingFlags:
    """Context manager: put the model in eval mode, restore every module's flag after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        return False


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    try:
        model(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"forward pass on input of shape {tuple(x.shape)} failed ({first}); "
            f"check input_shape (one example, without the batch dimension)"
        ) from e


# --------------------------------------------------------------------------- MACs / BOPs


def layer_costs(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    weight_bits: int = 32,
    act_bits: int = 32,
    layer_bits: dict[str, tuple[int, int]] | None = None,
) -> list[dict]:
    """Per-layer cost of one example, from one forward pass (batch 1, zeros).

    Counted layers are :data:`COUNTED_LAYERS` (Conv1d, Conv2d, Linear and their
    subclasses, dynamic-quantised Linear) and any module with ``macs_per_position()``
    and ``c_out`` (the structured pointwise maps of ``models.linear_subs``; their
    ``fan_in`` is MACs per output element and their sparsity 0). A model that declares
    ``activation_matmuls = True`` (a transformer from Hugging Face, timm or torchvision)
    or holds a transformers model gets one more row last,
    ``"(matmuls between activations)"``: the attention matmuls and any other matmul
    outside those layers, counted by torch's flop-counter formulas (``fan_in`` None;
    embedding lookups, norms and softmax are not counted). The example is zeros, or token
    ids for a model that takes them. Returns one dict per
    layer that ran, in module order, with keys:

    - ``name``: module path; ``type``: class name
    - ``macs``: multiply-accumulates per example (= outputs * fan_in)
    - ``fan_in`` n: in_features (Linear) or (C_in/groups)*prod(kernel) (Conv)
    - ``outputs`` m: output elements per example (conv: channels * positions;
      Linear: out_features * leading positions other than the batch)
    - ``sparsity`` s: fraction of exact zeros in the weight
    - ``weight_bits`` b_w, ``act_bits`` b_a: ``layer_bits[name]`` given as
      ``(weight_bits, act_bits)``, else the defaults
    - ``bops``: m*n*((1-s)*b_a*b_w + b_a + b_w + log2 n), per example

    A layer called several times in the forward pass has its macs, outputs and
    bops summed over the calls. Names in ``layer_bits`` that match no counted
    layer raise :class:`UserError`.
    """
    shape = _check_shape(input_shape)
    layer_bits = dict(layer_bits or {})
    names = {m: n for n, m in model.named_modules()}
    calls: dict[str, dict] = {}

    def hook(module, _inputs, output):
        name = names[module]
        out = output[0] if isinstance(output, (tuple, list)) else output
        m = out.numel() // out.shape[0]
        n = _fan_in(module)
        rec = calls.setdefault(name, {"name": name, "type": type(module).__name__,
                                      "macs": 0, "fan_in": n, "outputs": 0})
        if hasattr(module, "macs_per_position"):  # structured map: its own count per position
            rec["macs"] += m // module.c_out * module.macs_per_position()
            rec["sparsity"] = 0.0
        else:
            rec["macs"] += m * n
            rec["sparsity"] = float((_weight(module) == 0).double().mean())
        rec["outputs"] += m

    handles = [m.register_forward_hook(hook) for m in model.modules() if _counted(m)]
    matmuls = _ActivationMatmuls(model) if _multiplies_activations(model) else None
    try:
        device, dtype = _device_dtype(model)
        with _TrainingFlags(model), torch.no_grad(), matmuls or contextlib.nullcontext():
            _forward(model, example_input(model, shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()

    unknown = sorted(set(layer_bits) - set(calls))
    if unknown:
        raise UserError(f"layer_bits names {unknown} match no measured layer; "
                        f"measured layers are {sorted(calls)}")

    order = {n: i for i, n in enumerate(names.values())}
    rows = []
    for name in sorted(calls, key=order.__getitem__):
        rec = calls[name]
        b_w, b_a = layer_bits.get(name, (weight_bits, act_bits))
        m, n, s = rec["outputs"], rec["fan_in"], rec["sparsity"]
        rec.update(weight_bits=int(b_w), act_bits=int(b_a),
                   bops=float(m * n * ((1 - s) * b_a * b_w + b_a + b_w + math.log2(n))))
        rows.append(rec)
    if matmuls is not None and matmuls.macs:
        rows.append(matmuls.row(act_bits))
    return rows


def _multiplies_activations(model: nn.Module) -> bool:
    """Whether ``model`` declares ``activation_matmuls`` or holds a transformers model (a
    module with ``config`` and ``base_model_prefix``, e.g. inside a live-API wrapper)."""
    return bool(getattr(model, "activation_matmuls", False)) or any(
        hasattr(m, "base_model_prefix") and hasattr(m, "config") for m in model.modules())


# Attention kernels torch's flop counter has no formula for (the CPU flash kernel): the
# same count as its other scaled-dot-product kernels, from the query, key and value shapes.
_EXTRA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: "sdpa"}


class _ActivationMatmuls(TorchDispatchMode):
    """Counts the multiply-accumulates of matmuls that run outside every counted layer
    (attention scores ``Q K^T`` and ``softmax(...) V``, MultiheadAttention's functional
    projections), by the formulas of ``torch.utils.flop_counter`` (MACs = flops / 2).

    Used for models that declare ``activation_matmuls = True`` (Hugging Face, timm and
    torchvision models): the hooks of :func:`layer_costs` see Conv/Linear modules only.
    Operators inside a counted layer are skipped, so nothing is counted twice."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.depth, self.flops, self.outputs = model, 0, 0, 0
        self.handles: list = []

    def __enter__(self):
        def enter(*_):
            self.depth += 1

        def leave(*_):
            self.depth -= 1

        for m in self.model.modules():
            if _counted(m):
                self.handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            if func in _EXTRA_FLOPS:
                q, k, v = (tuple(t.shape) for t in args[:3])
                flops = flop_counter.sdpa_flop_count(q, k, v)
            elif func.overloadpacket in flop_counter.flop_registry:
                flops = flop_counter.flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
            else:
                return out
            first = out[0] if isinstance(out, (tuple, list)) else out
            self.flops += int(flops)
            self.outputs += first.numel() // max(first.shape[0], 1) if first.dim() else 1
        return out

    @property
    def macs(self) -> int:
        return self.flops // 2

    def row(self, act_bits: int) -> dict:
        """One row for every such matmul: both operands are activations, at ``act_bits``
        (its BOPs count the products, ``macs * act_bits^2``)."""
        return {"name": "(matmuls between activations)", "type": "matmul", "macs": self.macs,
                "fan_in": None, "outputs": self.outputs, "sparsity": 0.0, "weight_bits": int(act_bits),
                "act_bits": int(act_bits), "bops": float(self.macs * act_bits * act_bits)}


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Total multiply-accumulates for one example (sum of :func:`layer_costs`)."""
    return sum(r["macs"] for r in layer_costs(model, input_shape))


def count_bops(model: nn.Module, input_shape: Sequence[int], **bits) -> float:
    """Total BOPs for one example; ``bits`` are weight_bits, act_bits, layer_bits."""
    return float(sum(r["bops"] for r in layer_costs(model, input_shape, **bits)))


# --------------------------------------------------------------------------- latency


def latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 256),
    warmup: int = 3,
    repeats: int | None = None,
    min_time: float = 0.2,
) -> dict[str, float]:
    """Median milliseconds per forward pass, keyed ``"batch<size>"``, on the model's device.

    Runs in eval mode under ``torch.inference_mode`` on random input (token ids for a
    model that takes them, see :func:`compresslab.ort.example_input`), after
    ``warmup`` untimed calls. Without ``repeats``, the count is chosen so each
    batch size is timed for about ``min_time`` seconds (at least 5 calls, at
    most 10 000). On CUDA each call is timed by CUDA events around it (the GPU's own
    clock, after the queue has drained), elsewhere by the wall clock. Training flags are
    restored afterwards.
    """
    shape = _check_shape(input_shape)
    if repeats is not None and repeats < 1:
        raise UserError(f"repeats must be at least 1, got {repeats}")
    if any(int(b) < 1 for b in batch_sizes):
        raise UserError(f"batch sizes must be positive, got {tuple(batch_sizes)}")
    device, dtype = _device_dtype(model)
    result: dict[str, float] = {}
    with _TrainingFlags(model), torch.inference_mode():
        for bs in batch_sizes:
            x = example_input(model, shape, int(bs), random=True, device=device, dtype=dtype)
            _forward(model, x)
            for _ in range(max(warmup - 1, 0)):
                model(x)
            timed = _cuda_timer(device) if device.type == "cuda" else _wall_timer
            n = repeats
            if n is None:
                per_call = max(timed(model, x), 1e-9)
                n = min(max(5, math.ceil(min_time / per_call)), _MAX_REPEATS)
            times = [timed(model, x) for _ in range(n)]
            result[f"batch{int(bs)}"] = 1000.0 * statistics.median(times)
    return result


def _wall_timer(model: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def _cuda_timer(device: torch.device):
    """Seconds of one forward pass between two CUDA events (the queue drained first)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(model: nn.Module, x: torch.Tensor) -> float:
        torch.cuda.synchronize(device)
        start.record()
        model(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    return timed


# --------------------------------------------------------------------------- report


def _storage_bits(model: nn.Module, weight_bits: int, layer_bits: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(bits of every parameter, bits of the nonzero ones): weights of layers in
    ``layer_bits`` at their weight bits, everything else at ``weight_bits``."""
    if weight_bits <= 0:
        raise UserError(f"bits must be a positive integer, got {weight_bits}")
    own = {f"{name}.weight" if name else "weight": b_w for name, (b_w, _) in layer_bits.items()}
    stored = nonzero = 0
    for name, p in model.named_parameters():
        b = own.get(name, weight_bits)
        stored += p.numel() * b
        nonzero += int(torch.count_nonzero(p.detach())) * b
    return stored, nonzero


def cost_report(
    model: nn.Module,
    input_shape: Sequence[int] | None,
    *,
    weight_bits: int = 32,
    act_bits: int = 32,
    layer_bits: dict[str, tuple[int, int]] | None = None,
    with_latency: bool = False,
) -> dict:
    """All cost numbers in one dict with stable keys (``macs`` and ``bops`` are None when
    ``input_shape`` is: they depend on it, the rest does not).

    ``params``, ``nonzero_params``, ``macs``, ``bops``, ``bytes`` (every parameter at
    ``weight_bits``, except the weights of layers in ``layer_bits`` at their own),
    ``nonzero_bytes`` (the same counting only nonzero parameters: the size of a
    sparse encoding without its index overhead), ``bytes_fp32``, and with ``with_latency``
    also ``latency_ms`` (the dict from :func:`latency`).
    """
    rows = None if input_shape is None else layer_costs(model, input_shape, weight_bits=weight_bits,
                                                         act_bits=act_bits, layer_bits=layer_bits)
    stored, nonzero = _storage_bits(model, weight_bits, layer_bits or {})
    report = {
        "params": count_params(model),
        "nonzero_params": count_nonzero(model),
        "macs": None if rows is None else sum(r["macs"] for r in rows),
        "bops": None if rows is None else float(sum(r["bops"] for r in rows)),
        "bytes": math.ceil(stored / 8),
        "nonzero_bytes": math.ceil(nonzero / 8),
        "bytes_fp32": model_bytes_fp32(model),
    }
    if with_latency and input_shape is not None:
        report["latency_ms"] = latency(model, input_shape)
    return report
