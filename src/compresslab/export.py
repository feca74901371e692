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

import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compresslab.errors import UserError
from compresslab.ort import export_onnx, quantize_onnx, session  # noqa: F401  (export_onnx, session: re-exported)
from compresslab.ort import require_ort as _require_ort

INT8_SCHEMES = ("auto", "dynamic", "static")


def run_session(sess, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def ort_latency(sess, input_shape, *, batch_sizes=(1, 256), warmup: int = 3, min_time: float = 0.2,
                vocab_size: int | None = None) -> dict[str, float]:
    """Median milliseconds per ``sess.run`` on random input, keyed ``batch<size>``: the
    protocol of :func:`compresslab.measure.latency` (about ``min_time`` s per size). A graph
    that takes int64 token ids gets ids drawn below ``vocab_size``."""
    name = sess.get_inputs()[0].name
    token = sess.get_inputs()[0].type == "tensor(int64)"
    if token and not vocab_size:
        raise UserError("this ONNX graph takes token ids: give ort_latency the vocabulary size to draw them from")
    out = {}
    for bs in batch_sizes:
        rng = np.random.default_rng(0)
        x = (rng.integers(0, vocab_size, (bs, *input_shape), dtype=np.int64) if token
             else rng.standard_normal((bs, *input_shape)).astype(np.float32))
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


def _parity(reference: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict:
    """Largest logit difference (over every position), top-1 agreement and accuracy over the
    scored examples (tokens with a label, for token-level data)."""
    ref, g, y = _scored(reference, got, labels)
    return {"max_abs_diff": float(np.abs(reference - got).max()),
            "top1_agreement": float((ref.argmax(-1) == g.argmax(-1)).mean()),
            "accuracy": float((g.argmax(-1) == y).mean())}


def _scored(reference: np.ndarray, got: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token-level logits ``(N, L, C)`` and labels ``(N, L)`` flattened to the labelled tokens
    (:func:`compresslab.data.core.valid_tokens`); example-level arrays as they are."""
    from compresslab.data.core import valid_tokens

    y = torch.from_numpy(np.asarray(labels))
    ref, y_flat = valid_tokens(torch.from_numpy(reference), y)
    g, _ = valid_tokens(torch.from_numpy(got), y)
    return ref.numpy(), g.numpy(), y_flat.numpy()


def export_checkpoint(checkpoint: str | Path, out: str | Path, data: str, *, int8: bool = False,
                      int8_scheme: str = "auto", calib_batches: int = 8, calib_batch_size: int = 128, seed: int = 0,
                      val_fraction: float = 0.1, with_latency: bool = True) -> dict:
    """Export a checkpoint to ONNX at ``out`` (the int8 graph with ``int8``, else fp32).

    Both graphs are built and checked: parity against the checkpoint as PyTorch runs
    it (transforms applied) on the test split, and ONNX Runtime latency side by side.
    ``fidelity`` is :func:`compresslab.measure.fidelity.fidelity_report` of the three
    (``pytorch``, ``onnx-fp32``, ``onnx-int8``): every output metric per pair with bootstrap
    CIs, accuracy per class, and the inputs where they disagree.
    ``int8_scheme`` ``auto`` follows the checkpoint's torch int8 transform if it has one,
    else uses ``static`` for models with convolutions and ``dynamic`` otherwise.
    """
    import shutil

    from compresslab.compress.quantize import calibration_batches
    from compresslab.measure.fidelity import fidelity_report
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
        got = {k: run_session(s, x) for k, s in sessions.items()}
        scored = {k: _scored(reference, g, y) for k, g in got.items()}  # token-level: the labelled tokens
        ref_flat, _, y_flat = scored["fp32"]
        result = {"checkpoint": str(checkpoint), "onnx": str(out), "format": "int8" if int8 else "fp32",
                  "int8_scheme": int8_scheme, "transforms": kinds, "examples": int(len(y)),
                  "torch_accuracy": float((ref_flat.argmax(-1) == y_flat).mean()), "threads": torch.get_num_threads(),
                  "parity": {k: _parity(reference, g, y) for k, g in got.items()},
                  "fidelity": fidelity_report({"pytorch": ref_flat, **{f"onnx-{k}": v[1] for k, v in scored.items()}},
                                              y_flat),
                  "bytes": {k: p.stat().st_size for k, p in (("fp32", fp32_path), ("int8", int8_path))}}
        if y.ndim == 2:
            result["scored_tokens"] = int(len(y_flat))
        if with_latency:
            vocab = getattr(float_model, "vocab_size", None)
            lat = {k: ort_latency(s, shape, vocab_size=vocab) for k, s in sessions.items()}
            result["latency_ms"] = lat
            result["int8_speedup"] = {k: lat["fp32"][k] / lat["int8"][k] for k in lat["fp32"]}
        shutil.move(str(int8_path if int8 else fp32_path), str(out))  # published only when everything passed
    return result
