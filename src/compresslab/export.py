"""Deployment export: any checkpoint to ONNX, checked and timed in ONNX Runtime.

The exported graph is the checkpoint's float module with its simulated quantisation
(fake-quant transforms become Div/Round/Clip/Mul nodes); torch int8 transforms
(``quantize-dynamic`` / ``quantize-static``) do not export, so their float weights are
exported and ONNX Runtime quantises them itself. The int8 model comes from ONNX
Runtime's quantiser: ``dynamic`` (int8 weights, activations quantised per batch: the
fast path for Linear-heavy models) or ``static`` (QDQ, per-channel int8 weights,
uint8 activations calibrated on training batches: the path for conv nets).

Every export runs both models in ONNX Runtime on real inputs and reports the largest
absolute logit difference and the top-1 agreement with the checkpoint as PyTorch runs
it, and the latency of the fp32 and int8 graphs measured side by side.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from compresslab.errors import UserError

INT8_SCHEMES = ("auto", "dynamic", "static")


def _require_ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        raise UserError(f"ONNX export needs onnx and onnxruntime ({e.name} is missing); "
                        "pip install onnx onnxruntime") from None
    return onnxruntime


def export_onnx(model: torch.nn.Module, input_shape, path: str | Path, opset: int = 17) -> None:
    """Trace ``model`` (eval) to ONNX at ``path`` with a dynamic batch dimension."""
    x = torch.zeros(1, *input_shape)
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter prints its IR graph on failure: keep it off stdout
            torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as e:  # the exporter raises many types; all mean "not exportable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot export {type(model).__name__} to ONNX ({first[:200]}); it must trace with "
                        f"tensor inputs and outputs and only use operators ONNX opset {opset} supports") from None


def session(path: str | Path, threads: int | None = None):
    ort = _require_ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: no notices about unused initializers
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(sess, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def ort_latency(sess, input_shape, *, batch_sizes=(1, 256), warmup: int = 3, min_time: float = 0.2) -> dict[str, float]:
    """Median milliseconds per ``sess.run`` on random input, keyed ``batch<size>``: the
    protocol of :func:`compresslab.measure.latency` (about ``min_time`` s per size)."""
    name = sess.get_inputs()[0].name
    out = {}
    for bs in batch_sizes:
        x = np.random.default_rng(0).standard_normal((bs, *input_shape)).astype(np.float32)
        for _ in range(warmup):
            sess.run(None, {name: x})
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        n = min(max(5, math.ceil(min_time / max(time.perf_counter() - t0, 1e-9))), 10_000)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            times.append(time.perf_counter() - t0)
        out[f"batch{bs}"] = 1000.0 * statistics.median(times)
    return out


def quantize_onnx(fp32: Path, out: Path, scheme: str, calibration: list[np.ndarray] | None = None) -> None:
    """ONNX Runtime int8: ``dynamic`` or ``static`` (QDQ, calibrated on ``calibration``)."""
    _require_ort()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if scheme == "dynamic":
        with _quiet_logging():
            quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    with _quiet_logging():
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


@contextlib.contextmanager
def _quiet_logging():
    """ONNX Runtime's quantiser logs advice through the root logger; keep it off the user's screen."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _parity(reference: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(reference - got).max()),
            "top1_agreement": float((reference.argmax(1) == got.argmax(1)).mean()),
            "accuracy": float((got.argmax(1) == labels).mean())}


def export_checkpoint(checkpoint: str | Path, out: str | Path, data: str, *, int8: bool = False,
                      int8_scheme: str = "auto", calib_batches: int = 8, calib_batch_size: int = 128, seed: int = 0,
                      val_fraction: float = 0.1, with_latency: bool = True) -> dict:
    """Export a checkpoint to ONNX at ``out`` (the int8 graph with ``int8``, else fp32).

    Both graphs are built and checked: parity against the checkpoint as PyTorch runs
    it (transforms applied) on the test split, and ONNX Runtime latency side by side.
    ``int8_scheme`` ``auto`` follows the checkpoint's torch int8 transform if it has one,
    else uses ``static`` for models with convolutions and ``dynamic`` otherwise.
    """
    import shutil

    from compresslab.compress.quantize import calibration_batches
    from compresslab.runs.checkpoint import load_checkpoint
    from compresslab.steps import dataset
    from compresslab.steps.common import checkpoint_logits

    _require_ort()
    checkpoint, out = Path(checkpoint), Path(out)
    if int8_scheme not in INT8_SCHEMES:
        raise UserError(f"--int8-scheme {int8_scheme!r}: use one of {', '.join(INT8_SCHEMES)}")
    if out.suffix != ".onnx":
        raise UserError(f"--onnx {out}: the output file name must end in .onnx")
    if not out.parent.is_dir():
        raise UserError(f"--onnx {out}: directory {out.parent} does not exist")
    ds = dataset(data, val_fraction, seed)
    reference = checkpoint_logits(checkpoint, ds, "test").numpy()  # also checks the checkpoint fits the data
    x, y = (t.numpy() for t in ds.split("test"))
    float_model, cfg = load_checkpoint(checkpoint, apply_transforms=False)
    kinds = [t["kind"] for t in cfg["transforms"]]
    graph = load_checkpoint(checkpoint)[0] if "fake-quant" in kinds else float_model
    if int8_scheme == "auto":
        has_conv = any(isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) for m in float_model.modules())
        int8_scheme = ("dynamic" if "quantize-dynamic" in kinds else "static" if "quantize-static" in kinds
                       else "static" if has_conv else "dynamic")
    shape = tuple(ds.input_shape)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_onnx(graph, shape, fp32_path)
        calib = [b.numpy() for b in calibration_batches(torch.as_tensor(ds.x_train), calib_batches,
                                                        calib_batch_size, seed)] if int8_scheme == "static" else None
        try:
            quantize_onnx(fp32_path, int8_path, int8_scheme, calib)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"ONNX Runtime could not quantise the exported graph to int8 ({first[:200]}); "
                            "export without --int8 or try --int8-scheme dynamic") from None
        sessions = {"fp32": session(fp32_path), "int8": session(int8_path)}
        result = {"checkpoint": str(checkpoint), "onnx": str(out), "format": "int8" if int8 else "fp32",
                  "int8_scheme": int8_scheme, "transforms": kinds, "examples": int(len(y)),
                  "torch_accuracy": float((reference.argmax(1) == y).mean()), "threads": torch.get_num_threads(),
                  "parity": {k: _parity(reference, run_session(s, x), y) for k, s in sessions.items()},
                  "bytes": {k: p.stat().st_size for k, p in (("fp32", fp32_path), ("int8", int8_path))}}
        if with_latency:
            lat = {k: ort_latency(s, shape) for k, s in sessions.items()}
            result["latency_ms"] = lat
            result["int8_speedup"] = {k: lat["fp32"][k] / lat["int8"][k] for k in lat["fp32"]}
        shutil.move(str(int8_path if int8 else fp32_path), str(out))  # published only when everything passed
    return result
