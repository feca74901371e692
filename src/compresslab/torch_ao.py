"""The one door to ``torch.ao.quantization``: torch's own int8 kernels (fbgemm / x86).

``torch.ao.quantization`` is deprecated upstream (pytorch#157591) and will be removed from
torch. compresslab still uses it where it measured fastest (static int8 of conv nets at
large batches, see ``docs/quantization.md``), and only through this module: no other file
in ``src/`` may name ``torch.ao`` (``tests/test_int8_backends.py`` checks), so its removal
breaks this file alone. When it is gone, :func:`available` is False, new int8 models use
ONNX Runtime, and loading a checkpoint made here raises :func:`require`'s one-line error.

The deprecation warnings torch raises here are left as they are.
"""
from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from compresslab.errors import UserError

#: How messages name this backend.
NAME = "torch.ao"


@functools.cache
def _modules() -> dict | None:
    try:
        import torch.ao.nn.quantized.dynamic as dynamic
        import torch.ao.quantization as quantization
        import torch.ao.quantization.quantize_fx as quantize_fx
    except ImportError:
        return None
    return {"dynamic": dynamic, "quantization": quantization, "fx": quantize_fx}


def available() -> bool:
    """Whether this torch still has ``torch.ao.quantization`` (and its FX front end)."""
    return _modules() is not None


def require(what: str) -> None:
    """Raise a one-line UserError saying what to do when :func:`available` is False."""
    if not available():
        raise UserError(f"{what} runs on torch.ao.quantization, which this PyTorch ({torch.__version__}) no longer "
                        "has; delete that checkpoint and quantise its parent again (compresslab then uses ONNX "
                        "Runtime), or install a PyTorch that still has torch.ao.quantization")


def dynamic_linear_types() -> tuple[type, ...]:
    """The dynamic-quantised Linear class (for cost counting), or ``()`` without torch.ao."""
    return (_modules()["dynamic"].Linear,) if available() else ()


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval) with every ``nn.Linear`` dynamic int8: weights per tensor
    (symmetric, min-max), activations quantised per batch on the fly."""
    require("dynamic int8 (quantize-dynamic without a backend)")
    q = _modules()["quantization"]
    return q.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def _static_qconfig():
    """Activations uint8 per tensor from min/max over [0, 127] (7 bits, which avoids overflow
    in fbgemm's int8 kernels on CPUs without VNNI); weights int8 per channel, symmetric."""
    q = _modules()["quantization"]
    qconfig = q.QConfig(activation=q.MinMaxObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=127),
                        weight=q.PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                    qscheme=torch.per_channel_symmetric))
    return q.QConfigMapping().set_global(qconfig)


def prepare_static(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """FX static int8, prepared: a traced copy of ``model`` with conv/linear(+ReLU) fused and
    observers on every activation. Raises UserError for a model FX cannot trace."""
    require("static int8 (quantize-static, backend x86)")
    try:
        return _modules()["fx"].prepare_fx(copy.deepcopy(model).eval(), _static_qconfig(), (example,))
    except Exception as e:  # symbolic tracing fails on data-dependent control flow
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"static int8 needs an FX-traceable model; {type(model).__name__} is not ({first}). "
                        "Use --scheme ptq-dynamic or fake") from None


def activation_ranges(prepared: nn.Module) -> dict[str, list[float]]:
    """``{observer: [min, max]}`` of every per-tensor activation observer of a prepared model."""
    return {n: [float(o.min_val), float(o.max_val)] for n, o in _observers(prepared).items() if o.min_val.dim() == 0}


def convert_static(prepared: nn.Module, ranges: dict[str, list[float]]) -> nn.Module:
    """The int8 model of ``prepared`` with its activation observers set to ``ranges``."""
    observers = _observers(prepared)
    for name, (lo, hi) in ranges.items():
        if name not in observers:
            raise UserError(f"static int8 transform names observer {name!r} that this model does not have; "
                            "re-create the quantised checkpoint")
        observers[name].min_val = torch.tensor(lo)
        observers[name].max_val = torch.tensor(hi)
    return _modules()["fx"].convert_fx(prepared).eval()


def _observers(prepared: nn.Module) -> dict[str, nn.Module]:
    base = _modules()["quantization"].observer.ObserverBase
    return {n: m for n, m in prepared.named_modules() if isinstance(m, base)}
