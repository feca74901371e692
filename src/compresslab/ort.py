"""ONNX export and ONNX Runtime int8 on the CPU: the base that both ``compress.quantize``
(int8 models that do not need torch's own quantisation) and ``export`` (deployment files)
build on.

:func:`quantize_onnx` runs ONNX Runtime's quantiser, ``dynamic`` (int8 weights,
activations quantised per batch) or ``static`` (QDQ: per-channel int8 weights, uint8
activations). Static calibration can be split from quantisation: :func:`calibrate_onnx`
returns every activation range, and ``quantize_onnx(..., ranges=...)`` rebuilds the same
graph from those numbers alone, so a checkpoint can store them and reload without data.
:class:`OrtModule` runs such a graph as a torch module.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from compresslab.errors import UserError

#: ONNX operators a ``torch.nn.Linear`` exports to (Gemm for 2-D inputs, MatMul + Add otherwise).
LINEAR_OPS = ("Gemm", "MatMul")


def require_ort():
    """The ``onnxruntime`` module; a one-line UserError when it or ``onnx`` is missing."""
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


def session(path: str | Path | bytes, threads: int | None = None):
    """A CPU inference session of the ONNX file at ``path`` (or serialised model bytes)."""
    ort = require_ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: no notices about unused initializers
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                providers=["CPUExecutionProvider"])


class _Batches:
    """ONNX Runtime's calibration reader protocol over a list of input arrays."""

    def __init__(self, batches: list[np.ndarray]):
        self.it = iter(batches)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {"input": x}

    def rewind(self):  # unused by MinMax calibration; part of the reader interface
        pass


def quantize_onnx(fp32: Path, out: Path, scheme: str, calibration: list[np.ndarray] | None = None, *,
                  op_types: tuple[str, ...] | None = None, ranges: dict[str, list[float]] | None = None) -> None:
    """ONNX Runtime int8: ``dynamic`` or ``static`` (QDQ, calibrated on ``calibration``, or
    from ``ranges`` as :func:`calibrate_onnx` returns them). ``op_types`` limits which
    operators are quantised (default: every one the quantiser supports)."""
    require_ort()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    ops = list(op_types) if op_types else None
    if scheme == "dynamic":
        with _quiet_logging():
            quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=ops)
        return
    extra = {}
    if ranges is not None:  # every range is given: one zero batch satisfies the calibrator, the overrides win
        extra["TensorQuantOverrides"] = {k: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                                         for k, (lo, hi) in ranges.items()}
        calibration = [np.zeros((1, *_input_shape(fp32)), np.float32)]
    with _quiet_logging():
        quantize_static(str(fp32), str(out), _Batches(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                        extra_options=extra)


def calibrate_onnx(fp32: Path, calibration: list[np.ndarray]) -> dict[str, list[float]]:
    """``{tensor: [min, max]}`` over ``calibration`` for every tensor ONNX Runtime's static
    quantiser calibrates (its MinMax calibrator): the numbers ``quantize_onnx(ranges=...)`` takes."""
    require_ort()
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="compresslab-calib-") as tmp, _quiet_logging():
        cal = create_calibrator(str(fp32), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(_Batches(calibration))
        data = cal.compute_data().data
    return {k: [float(np.asarray(v.range_value[0]).reshape(-1)[0]), float(np.asarray(v.range_value[1]).reshape(-1)[0])]
            for k, v in data.items()}


def _input_shape(path: Path) -> tuple[int, ...]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims[1:])


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


def int8_graph(model: torch.nn.Module, input_shape, scheme: str, *, op_types: tuple[str, ...] | None = None,
               ranges: dict[str, list[float]] | None = None) -> bytes:
    """``model`` exported and quantised by ONNX Runtime (see :func:`quantize_onnx`), as bytes."""
    with tempfile.TemporaryDirectory(prefix="compresslab-int8-") as tmp:
        fp32, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_onnx(model, input_shape, fp32)
        quantize_onnx(fp32, out, scheme, op_types=op_types, ranges=ranges)
        return out.read_bytes()


def onnx_ranges(model: torch.nn.Module, input_shape, batches: list[torch.Tensor]) -> dict[str, list[float]]:
    """:func:`calibrate_onnx` of ``model`` exported to ONNX, on ``batches``."""
    with tempfile.TemporaryDirectory(prefix="compresslab-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, input_shape, fp32)
        return calibrate_onnx(fp32, [b.detach().cpu().float().numpy() for b in batches])


class OrtModule(torch.nn.Module):
    """An ONNX graph run by ONNX Runtime on the CPU, called like the torch model it came
    from: float input, float logits on the input's device. It has no parameters and no
    submodules (no feature points). The session, created at the first call with torch's
    thread count, is not copied or pickled: a copy builds its own."""

    def __init__(self, graph: bytes, description: str = ""):
        super().__init__()
        self.graph, self.description, self._session = graph, description, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._session is None:
            self._session = session(self.graph)
        xs = x.detach().float().cpu()
        name = self._session.get_inputs()[0].name
        if len(xs) == 0:  # ONNX Runtime rejects an empty batch: run one example for the output width
            out = self._session.run(None, {name: np.zeros((1, *xs.shape[1:]), np.float32)})[0][:0]
        else:
            out = self._session.run(None, {name: xs.numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    def __getstate__(self):
        return {**self.__dict__, "_session": None}

    def extra_repr(self) -> str:
        return f"{self.description}, {len(self.graph):,} bytes" if self.description else f"{len(self.graph):,} bytes"
