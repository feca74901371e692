"""Devices, precision and determinism: what ``--device`` means, and what ran where.

* :func:`resolve` turns ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` into a
  ``torch.device``, with a one-line :class:`UserError` for a device this machine lacks.
* :class:`Runtime` is how a step runs (device, determinism): an execution setting, not
  part of a step's hash, so a study can resume on another machine. :func:`using` makes
  it current for the steps run inside the block (:func:`current`).
* :func:`precision_flags` sets TF32 for a recipe's precision on CUDA (``fp32`` is true
  fp32: TF32 off); :func:`determinism` turns on deterministic algorithms.
* :func:`describe` records the device name, torch and CUDA versions with every result.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import platform
from dataclasses import dataclass

import torch

from compresslab.errors import UserError

DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps."
#: cuBLAS needs a fixed workspace to be deterministic (CUDA's documented setting).
CUBLAS_WORKSPACE = ":4096:8"


def cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve(name: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for ``name``; ``auto`` (or None) is CUDA when present, else CPU."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda") if cuda_count() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: use {DEVICE_HELP}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        n = cuda_count()
        if n == 0:
            built = f"this torch ({torch.__version__}) has no CUDA support" if torch.version.cuda is None \
                else "no CUDA device is visible"
            raise UserError(f"--device {name}: {built}; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {name}: this machine has {n} CUDA device{'s' * (n > 1)} "
                            f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise UserError(f"--device {name}: Apple's MPS backend is not available here; use --device cpu")
        return dev
    raise UserError(f"--device {name!r}: use {DEVICE_HELP}")


def check_gpus_per_step(gpus: float) -> None:
    """``--gpus-per-step``: between 0 and the number of GPUs this machine has."""
    if gpus < 0:
        raise UserError(f"--gpus-per-step {gpus:g}: must be >= 0")
    n = cuda_count()
    if gpus > n:
        have = "no CUDA GPU" if n == 0 else f"{n} CUDA GPU{'s' * (n > 1)}"
        raise UserError(f"--gpus-per-step {gpus:g}: this machine has {have}; use at most {n}"
                        + (" (fractions such as 0.25 share one GPU)" if n else ""))


@dataclass(frozen=True)
class Runtime:
    """How steps run: ``device`` (a :func:`resolve` name) and ``deterministic``."""

    device: str = "auto"
    deterministic: bool = False

    @property
    def torch_device(self) -> torch.device:
        return resolve(self.device)


_current: contextvars.ContextVar[Runtime] = contextvars.ContextVar("runtime", default=Runtime())  # noqa: B039


def current() -> Runtime:
    return _current.get()


@contextlib.contextmanager
def using(runtime: Runtime):
    """Run the steps started inside this block with ``runtime`` (resolved first, so a bad
    device fails before anything starts)."""
    resolve(runtime.device)
    token = _current.set(runtime)
    try:
        with determinism(runtime.deterministic):
            yield runtime
    finally:
        _current.reset(token)


@contextlib.contextmanager
def determinism(on: bool):
    """``torch.use_deterministic_algorithms(on)`` with cuDNN autotuning off and cuBLAS's
    fixed workspace, restored afterwards. Off: torch's defaults (fast, not reproducible on GPU)."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


@contextlib.contextmanager
def precision_flags(precision: str, device: torch.device):
    """TF32 for matmuls and convolutions on CUDA: off for ``fp32`` (true fp32), on for
    ``tf32`` and ``fast`` (whose bf16 autocast leaves some ops in fp32). Nothing on CPU."""
    if device.type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    allow = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters (else buffers) live; CPU for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def describe(device: torch.device | str | None = None, *, precision: str | None = None,
             deterministic: bool | None = None) -> dict:
    """What a result was computed on: device, its name, torch/CUDA versions, threads, and
    (when given) precision and the determinism flag."""
    dev = resolve(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
    out = {"device": str(dev), "name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "num_threads": torch.get_num_threads()}
    if precision is not None:
        out["precision"] = precision
    if deterministic is not None:
        out["deterministic"] = deterministic
    return out


def record(device: torch.device, precision: str = "fp32") -> dict:
    """:func:`describe` for a step that just ran under the current runtime."""
    return describe(device, precision=precision, deterministic=current().deterministic)


__all__ = ["CUBLAS_WORKSPACE", "DEVICE_HELP", "Runtime", "check_gpus_per_step", "cuda_count",
           "current", "describe", "determinism", "model_device", "precision_flags", "record", "resolve",
           "using"]
