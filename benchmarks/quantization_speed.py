"""Does int8 make inference faster here? fp32 torch vs torch int8 vs ONNX Runtime fp32/int8.

Usage: flock /tmp/bench.lock .venv/bin/python benchmarks/quantization_speed.py [--threads 2] [--min-time 0.5]

For a Linear-heavy MLP (784-1024-1024-10) and two conv nets (the default study's
cnn1d-64 on 1x40 signals, ResNet-20 on 3x32x32 images), in one process, median ms per
forward pass at batch 1 and 256 through every path compresslab offers:

* torch fp32 (eval, inference_mode);
* torch int8 dynamic (``quantize_dynamic_int8``: int8 Linear kernels);
* torch int8 static (``calibrate_static_int8``: FX, fused conv/linear+ReLU, fbgemm);
* torchao ``Int8DynamicActivationInt8WeightConfig`` (MLP only; skipped unless torchao is installed);
* ONNX Runtime fp32, and ONNX Runtime int8 dynamic and static (QDQ) from ``quantize_onnx``.

Then ratios: each torch path against torch fp32, each ORT int8 path against ORT fp32,
and the best int8 path against torch fp32. int8 arithmetic is at most ~4x denser
than fp32, so about 4x is the physical limit. Calibration uses random inputs; the
weights are random with trained-like BatchNorm statistics and biases (see ``trained_like``).
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from compresslab.compress.quantize import apply_static_int8, calibrate_static_int8, quantize_dynamic_int8
from compresslab.export import export_onnx, ort_latency, quantize_onnx, session
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads (default 2)")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds timed per batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {args.threads}, load average {os.getloadavg()[0]:.2f}")
    print("median ms per forward pass; ratio = reference / path (higher is faster)\n")
    for name, (make, shape) in MODELS.items():
        model = trained_like(make()).eval()
        calib = [torch.randn(128, *shape) for _ in range(4)]
        paths = {"torch fp32": model, "torch int8 dynamic": quantize_dynamic_int8(model)}
        paths["torch int8 static"] = apply_static_int8(model, calibrate_static_int8(model, calib), calib[0][:1])
        if name.startswith("mlp"):
            ao = torchao_int8(model)
            if ao is not None:
                paths["torchao int8 dyn-act"] = ao
        times = {k: latency(m, shape, batch_sizes=BATCHES, min_time=args.min_time) for k, m in paths.items()}
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_onnx(model, shape, fp32)
            onnx_paths = {"ORT fp32": fp32}
            for scheme in ("dynamic", "static"):
                out = Path(tmp) / f"{scheme}.onnx"
                quantize_onnx(fp32, out, scheme, [c.numpy() for c in calib])
                onnx_paths[f"ORT int8 {scheme}"] = out
            for k, p in onnx_paths.items():
                times[k] = ort_latency(session(p, args.threads), shape, batch_sizes=BATCHES, min_time=args.min_time)
        print(f"== {name} (input {'x'.join(map(str, shape))})")
        print(f"{'path':22} " + " ".join(f"{'b' + str(b) + ' ms':>10} {'ratio':>7}" for b in BATCHES)
              + "   ratio vs")
        for k, t in times.items():
            ref = "torch fp32" if k.startswith("torch") else "ORT fp32"
            cells = " ".join(f"{t[f'batch{b}']:10.3f} {times[ref][f'batch{b}'] / t[f'batch{b}']:6.2f}x" for b in BATCHES)
            print(f"{k:22} {cells}   {ref}")
        for b in BATCHES:
            key = f"batch{b}"
            best = min((k for k in times if "int8" in k), key=lambda k: times[k][key])
            fastest_fp32 = min(("torch fp32", "ORT fp32"), key=lambda k: times[k][key])
            print(f"batch {b}: best int8 path {best}: {times['torch fp32'][key] / times[best][key]:.2f}x vs torch fp32, "
                  f"{times[fastest_fp32][key] / times[best][key]:.2f}x vs the fastest fp32 ({fastest_fp32})")
        print()


if __name__ == "__main__":
    main()
