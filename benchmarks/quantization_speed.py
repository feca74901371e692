"""Does int8 make inference faster here? Every int8 backend side by side, in one process.

Usage: flock /tmp/bench.lock .venv/bin/python benchmarks/quantization_speed.py [--threads 2] [--min-time 0.5]

For a Linear-heavy MLP (784-1024-1024-10) and two conv nets (the default study's
cnn1d-64 on 1x40 signals, ResNet-20 on 3x32x32 images), median ms per forward pass at
batch 1 and 256, every path timed the same way (``compresslab.measure.latency``, the
protocol ``compresslab quantize`` reports), one after another:

* torch fp32 (eval, inference_mode);
* torch.ao int8 dynamic and static (the ``compresslab.torch_ao`` adapter: int8 Linear
  kernels; FX, fused conv/linear+ReLU, fbgemm); skipped when torch no longer has torch.ao;
* torchao ``Int8DynamicActivationInt8WeightConfig`` (MLP only; skipped unless torchao is installed);
* ONNX Runtime fp32, and ONNX Runtime int8 dynamic (Gemm/MatMul only) and static (QDQ),
  run as ``compresslab.ort.OrtModule``: exactly what ``--scheme ptq-dynamic`` / ``ptq-static``
  build with the onnxruntime backend (numpy conversion included).

Then ratios against torch fp32 and, for ORT paths, against ORT fp32; the best int8 path
per batch size; and the backend ``auto`` picks for each scheme. int8 arithmetic is at
most ~4x denser than fp32, so about 4x is the physical limit. Calibration uses random
inputs; the weights are random with trained-like BatchNorm statistics and biases (see
``trained_like``). The header names the machine: CPU model and int8-relevant flags from
/proc/cpuinfo, library versions, threads, load.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
from pathlib import Path

import torch
from torch import nn

from compresslab import ort, torch_ao
from compresslab.compress.quantize import (
    DYNAMIC_INT8,
    ORT,
    TORCH_AO,
    apply_static_int8,
    calibrate_static_int8,
    dynamic_int8_transform,
    int8_backend,
    quantize_dynamic_int8,
)
from compresslab.measure.cost import latency
from compresslab.models import create_model

BATCHES = (1, 256)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


MODELS = {
    "mlp-784-1024-1024-10": (mlp, (1, 28, 28)),
    "cnn1d-64": (lambda: create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=64,
                                      hidden=128), (1, 40)),
    "resnet20": (lambda: create_model("resnet20", num_classes=10, in_channels=3, input_shape=(3, 32, 32)),
                 (3, 32, 32)),
}


def trained_like(model: nn.Module) -> nn.Module:
    """Give BatchNorm statistics and affine parameters, and every bias, distinct random values.

    An untrained model's all-zero biases (and identity BatchNorm) become identical ONNX
    initializers that the exporter deduplicates through Identity nodes; ONNX Runtime's
    static quantiser then leaves those convolutions in fp32 (measured: 6x slower int8
    graph for cnn1d-64). Trained models do not have that degeneracy.
    """
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
            elif getattr(m, "bias", None) is not None and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                m.bias.normal_(0, 0.01, generator=g)
    return model


def torchao_int8(model: nn.Module):
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return None
    m = copy.deepcopy(model)
    quantize_(m, Int8DynamicActivationInt8WeightConfig())
    return m


INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def machine(threads: int) -> str:
    """CPU model, the int8-relevant flags it has, library versions, threads and load."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith(key)), "?")
    flags = set(field("flags").split())
    versions = [f"torch {torch.__version__}", f"onnxruntime {ort.require_ort().__version__}"]
    try:
        import torchao
        versions.append(f"torchao {torchao.__version__}")
    except ImportError:
        versions.append("torchao not installed")
    return (f"{field('model name')} ({platform.machine()}, {os.cpu_count()} cores), int8 flags: "
            f"{' '.join(f for f in INT8_FLAGS if f in flags) or 'none'}\n"
            f"{', '.join(versions)}, torch.ao {'present' if torch_ao.available() else 'absent'}, "
            f"threads {threads}, load average {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads (default 2)")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds timed per batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(machine(args.threads))
    print("median ms per forward pass; ratio = reference / path (higher is faster)\n")
    for name, (make, shape) in MODELS.items():
        model = trained_like(make()).eval()
        model.compresslab_config = {"input_shape": list(shape)}
        calib = [torch.randn(128, *shape) for _ in range(4)]
        paths = {"torch fp32": model}
        if torch_ao.available():
            paths["torch.ao int8 dynamic"] = quantize_dynamic_int8(model, DYNAMIC_INT8)
            paths["torch.ao int8 static"] = apply_static_int8(model, calibrate_static_int8(model, calib, TORCH_AO),
                                                              calib[0][:1])
        if name.startswith("mlp"):
            ao = torchao_int8(model)
            if ao is not None:
                paths["torchao int8 dyn-act"] = ao
        with tempfile.TemporaryDirectory() as tmp:
            ort.export_onnx(model, shape, Path(tmp) / "fp32.onnx")
            paths["ORT fp32"] = ort.OrtModule((Path(tmp) / "fp32.onnx").read_bytes())
        paths["ORT int8 dynamic"] = quantize_dynamic_int8(model, dynamic_int8_transform(model, ORT))
        paths["ORT int8 static"] = apply_static_int8(model, calibrate_static_int8(model, calib, ORT), calib[0][:1])
        times = {k: latency(m, shape, batch_sizes=BATCHES, min_time=args.min_time) for k, m in paths.items()}
        print(f"== {name} (input {'x'.join(map(str, shape))})")
        print(f"{'path':22} " + " ".join(f"{'b' + str(b) + ' ms':>10} {'ratio':>12}" for b in BATCHES)
              + "   ratio vs")
        for k, t in times.items():
            refs = ["torch fp32"] + (["ORT fp32"] if k.startswith("ORT int8") else [])
            ratio = lambda b: "/".join(f"{times[r][f'batch{b}'] / t[f'batch{b}']:.2f}x" for r in refs)
            cells = " ".join(f"{t[f'batch{b}']:10.3f} {ratio(b):>12}" for b in BATCHES)
            print(f"{k:22} {cells}   {' / '.join(refs)}")
        for b in BATCHES:
            key = f"batch{b}"
            best = min((k for k in times if "int8" in k), key=lambda k: times[k][key])
            fastest_fp32 = min(("torch fp32", "ORT fp32"), key=lambda k: times[k][key])
            print(f"batch {b}: best int8 path {best}: {times['torch fp32'][key] / times[best][key]:.2f}x vs torch fp32, "
                  f"{times[fastest_fp32][key] / times[best][key]:.2f}x vs the fastest fp32 ({fastest_fp32})")
        print(f"auto backend for ptq-dynamic and ptq-static: {int8_backend()}\n")


if __name__ == "__main__":
    main()
