"""GPU training throughput: ``fit`` against a hand-written loop, per model and precision, and MFU.

Usage: python benchmarks/gpu_throughput.py [--device cuda] [--batch 512] [--steps 100] [--json]

For resnet20, wrn-16-4 and wrn-40-2 on synthetic 3x32x32 data resident on the GPU (SGD with
Nesterov momentum, batch 512):

1. a hand-written loop (tensor-indexed batches, crop-flip augmentation on the device, one
   optimizer step per batch, no read-back until the end) against ``fit`` with the same
   recipe, in ``fp32`` (TF32 off) and ``fast`` (bf16 autocast + channels_last); goal: fit at
   0.95x the hand loop or better in the same precision, and ``fast`` at 2.5x ``fp32`` or better
   on wrn-40-2;
2. images/s, and model FLOP utilisation: 3 x 2 x MACs per image against the bf16 GEMM peak
   measured in the same process (an 8192 x 8192 matmul).

Both sides are timed with ``torch.cuda.synchronize`` around a fixed number of steps after a
warm-up, interleaved over rounds; ratios are medians of per-round ratios. Without a CUDA
device it prints why and exits 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from compresslab.data.core import Dataset, augment
from compresslab.measure import count_macs
from compresslab.models import create_model
from compresslab.train import Recipe, fit

MODELS = ("resnet20", "wrn-16-4", "wrn-40-2")
PRECISIONS = ("fp32", "fast")


def gemm_peak(device, n: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matmul FLOP/s on ``device``."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def hand_loop(model, x, y, recipe: Recipe, steps: int, gen) -> float:
    """Seconds for ``steps`` optimizer steps of the plainest loop that does the same work."""
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                          weight_decay=recipe.weight_decay)
    fast = recipe.precision == "fast"
    if fast:
        model.to(memory_format=torch.channels_last)
    model.train()
    n, bs = x.shape[0], recipe.batch_size
    torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=gen, device=x.device)
        for i in range(0, n - bs + 1, bs):
            idx = order[i:i + bs]
            xb = augment(x[idx], crop_padding=4, flip=True, generator=gen)
            if fast:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
                loss = F.cross_entropy(model(xb).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def fit_loop(model, data: Dataset, recipe: Recipe, steps: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fit(model, data, recipe, max_steps=steps, health=False)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda}): "
              "nothing to measure; run this on a GPU machine")
        return 0
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    peak = gemm_peak(device)
    n = args.batch * 20
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, 3, 32, 32, device=device, generator=g)
    y = torch.randint(0, 10, (n,), device=device, generator=g)
    data = Dataset("synthetic", x, y, x[:0], y[:0], x[:0], y[:0], num_classes=10)
    rows = []
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"bf16 GEMM peak {peak / 1e12:.0f} TFLOP/s; batch {args.batch}, {args.steps} steps x {args.rounds} rounds")
    for name in args.models:
        flops = 3 * 2 * count_macs(create_model(name, num_classes=10, in_channels=3, input_shape=(3, 32, 32)),
                                   (3, 32, 32))
        for precision in PRECISIONS:
            recipe = Recipe(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                            epochs=1000, batch_size=args.batch, augment="crop-flip", precision=precision)
            hand_t, fit_t = [], []
            for r in range(args.rounds + 1):  # round 0 warms up (cuDNN autotuning, allocator)
                torch.manual_seed(0)
                a = create_model(name, num_classes=10, in_channels=3, input_shape=(3, 32, 32)).to(device)
                b = create_model(name, num_classes=10, in_channels=3, input_shape=(3, 32, 32)).to(device)
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
                h = hand_loop(a, x, y, recipe, args.steps, torch.Generator(device=device).manual_seed(r))
                f = fit_loop(b, data, recipe, args.steps)
                if r:
                    hand_t.append(h)
                    fit_t.append(f)
            ips_hand = args.steps * args.batch / min(hand_t)
            ips_fit = args.steps * args.batch / min(fit_t)
            ratio = statistics.median(h / f for h, f in zip(hand_t, fit_t))
            rows.append({"model": name, "precision": precision, "hand_images_per_s": ips_hand,
                         "fit_images_per_s": ips_fit, "fit_over_hand": ratio,
                         "mfu_fit": ips_fit * flops / peak})
            print(f"{name:>9} {precision:>5}: hand {ips_hand:9,.0f} img/s  fit {ips_fit:9,.0f} img/s  "
                  f"fit/hand {ratio:.3f}  MFU {100 * ips_fit * flops / peak:5.1f}%")
    for name in args.models:
        by = {r["precision"]: r for r in rows if r["model"] == name}
        print(f"{name}: fast / fp32 (fit) = {by['fast']['fit_images_per_s'] / by['fp32']['fit_images_per_s']:.2f}x")
    if args.json:
        print(json.dumps({"device": torch.cuda.get_device_name(device), "peak_flops": peak, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
