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


def takes_token_ids(model: torch.nn.Module) -> bool:
    """Whether ``model`` takes integer token ids: it says so with an integer ``input_dtype``
    (:class:`compresslab.models.hf.HFClassifier` does) and gives ``vocab_size``."""
    dtype = getattr(model, "input_dtype", None)
    return isinstance(dtype, torch.dtype) and not dtype.is_floating_point and not dtype.is_complex


def example_input(model: torch.nn.Module, input_shape, batch: int = 1, *, random: bool = False,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A batch ``(batch, *input_shape)`` that ``model`` can run.

    Float models get zeros (``random``: standard normal) in ``dtype`` (default float32).
    Models that take token ids (:func:`takes_token_ids`) get ids drawn uniformly below
    their ``vocab_size`` from a fixed seed, none equal to their ``pad_id`` except the last
    position of every sequence longer than one token, which is padding: a trace (ONNX
    export, Torch-Pruning's graph) then sees the attention mask at work instead of a mask
    of ones that the model may skip."""
    shape = (int(batch), *(int(d) for d in input_shape))
    if not takes_token_ids(model):
        make = torch.randn if random else torch.zeros
        return make(shape, device=device, dtype=dtype or torch.float32)
    vocab, pad = int(model.vocab_size), int(getattr(model, "pad_id", 0) or 0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, max(vocab - 1, 1), shape, generator=g)
    ids = ids + (ids >= pad).long() if vocab > 1 else ids  # skip the pad id
    if shape[-1] > 1:
        ids[..., -1] = pad
    return ids.to(device=device, dtype=model.input_dtype)


def export_onnx(model: torch.nn.Module, input_shape, path: str | Path, opset: int = 17) -> None:
    """Trace ``model`` (eval) to ONNX at ``path`` with a dynamic batch dimension; the input
    is float32, or int64 token ids for a model that takes them (:func:`example_input`)."""
    x = example_input(model, input_shape)
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
        calibration = [np.zeros((1, *_input_shape(fp32)), _input_numpy_dtype(fp32))]
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


def _input_numpy_dtype(path: Path) -> type:
    """The numpy dtype of the graph's first input (int64 token ids or float32)."""
    import onnx

    elem = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.elem_type
    return np.int64 if elem == onnx.TensorProto.INT64 else np.float32


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
        token = takes_token_ids(model)
        return calibrate_onnx(fp32, [(b.detach().cpu().long() if token else b.detach().cpu().float()).numpy()
                                     for b in batches])


class OrtModule(torch.nn.Module):
    """An ONNX graph run by ONNX Runtime on the CPU, called like the torch model it came
    from: float input (int64 token ids for a graph that takes them), float logits on the
    input's device. It has no parameters and no submodules (no feature points). ``like``,
    the torch model the graph came from, lends its token-id attributes (``input_dtype``,
    ``vocab_size``, ``pad_id``) so :func:`example_input` feeds it ids. The session,
    created at the first call with torch's thread count, is not copied or pickled: a copy
    builds its own."""

    def __init__(self, graph: bytes, description: str = "", like: torch.nn.Module | None = None):
        super().__init__()
        self.graph, self.description, self._session = graph, description, None
        if like is not None and takes_token_ids(like):
            self.input_dtype, self.vocab_size = like.input_dtype, int(like.vocab_size)
            self.pad_id = int(getattr(like, "pad_id", 0) or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._session is None:
            self._session = session(self.graph)
        token = self._session.get_inputs()[0].type == "tensor(int64)"
        xs = x.detach().cpu().long() if token else x.detach().float().cpu()
        name = self._session.get_inputs()[0].name
        if len(xs) == 0:  # ONNX Runtime rejects an empty batch: run one example for the output width
            out = self._session.run(None, {name: np.zeros((1, *xs.shape[1:]), np.int64 if token else np.float32)})[0][:0]
        else:
            out = self._session.run(None, {name: xs.numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    def __getstate__(self):
        return {**self.__dict__, "_session": None}

    def extra_repr(self) -> str:
        return f"{self.description}, {len(self.graph):,} bytes" if self.description else f"{len(self.graph):,} bytes"
