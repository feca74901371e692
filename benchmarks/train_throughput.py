"""Training throughput: ``fit`` vs a minimal hand-written loop, fast vs fp32, and MFU.

Usage: python benchmarks/train_throughput.py [--quick] [--json]

1. ``fit`` against a plain PyTorch loop (same initial weights, same tensors, same
   batch order, SGD, same number of steps, fp32) for resnet20 on random 3x32x32 data
   and cnn1d on MNIST-1D; goal fit/plain >= 0.95.
2. ``precision="fast"`` (channels_last, + bf16 autocast where the CPU has native
   bf16) vs fp32 with ``fit``; goal >= 1.8x on resnet20. On CPUs without native bf16
   a forced-autocast run is added to show why fit skips it there.
3. Model FLOP utilisation: training FLOPs ~ 3 x 2 x MACs per example, against a
   GEMM peak measured in the same process.

Runs are interleaved (each round runs every variant once, in rotating order) after a
warm-up. Ratios are the median of per-round ratios (the two runs of a round are
seconds apart, so slow drifts in machine speed cancel); samples/s are the best round
(interference only ever slows a run down). Timings are wall clock around the
whole call, including optimizer and scheduler setup. Other processes on the machine
distort everything (OpenMP threads stall when cores are shared): check the load
average it prints and the spread of the per-round numbers.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from compresslab.data.core import Dataset
from compresslab.train import Recipe, fit, native_bf16

LR, MOMENTUM, WD, BATCH = 0.05, 0.9, 5e-4, 128


# -- the two loops ----------------------------------------------------------------------------


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> None:
    """What one would write by hand: shuffled index batches, CE, SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    model.train()
    g = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], BATCH):
            idx = perm[i:i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                return


def samples_in(n: int, steps: int) -> int:
    """Examples processed by ``steps`` batches of BATCH over epochs of ``n`` (last batch partial)."""
    per_epoch = -(-n // BATCH)
    full, rest = divmod(steps, per_epoch)
    return full * n + min(rest * BATCH, n)


def run_plain(init: nn.Module, data: Dataset, steps: int) -> float:
    model = copy.deepcopy(init)
    t = time.perf_counter()
    plain_loop(model, data.x_train, data.y_train, steps)
    return samples_in(len(data.y_train), steps) / (time.perf_counter() - t)


def run_fit(init: nn.Module, data: Dataset, steps: int, precision: str) -> float:
    model = copy.deepcopy(init)
    per_epoch = -(-len(data.y_train) // BATCH)
    recipe = Recipe(lr=LR, momentum=MOMENTUM, weight_decay=WD, batch_size=BATCH, precision=precision,
                    epochs=-(-steps // per_epoch))
    t = time.perf_counter()
    result = fit(model, data, recipe, max_steps=steps)
    elapsed = time.perf_counter() - t
    assert result.steps == steps
    return samples_in(len(data.y_train), steps) / elapsed


# -- FLOPs --------------------------------------------------------------------------------------


def macs_per_example(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of Conv/Linear layers for one example (forward hooks)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:  # ConvNd: each output element costs (in/groups) * prod(kernel) MACs
            k = 1
            for s in module.kernel_size:
                k *= s
            total += output.numel() * (module.in_channels // module.groups) * k

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total


def gemm_peak(dtype: torch.dtype, reps: int = 5) -> tuple[float, int]:
    """Best-of-``reps`` GFLOP/s of an n x n matmul: n = 2048, or 512 when the dtype is
    so slow (emulated bf16) that 2048 would take minutes. Returns (GFLOP/s, n)."""
    for n in (512, 2048):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        if n == 512:
            a @ b  # warm-up (library initialisation)
        t = time.perf_counter()
        a @ b
        first = time.perf_counter() - t
        if n == 2048 or first > 0.05:
            break
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9, n


# -- driver ------------------------------------------------------------------------------------


def bench_model(init: nn.Module, data: Dataset, steps: int, rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds of plain / fit fp32 / fit fast; samples/s per round."""
    variants = {
        "plain": lambda: run_plain(init, data, steps),
        "fit": lambda: run_fit(init, data, steps, "fp32"),
        "fit_fast": lambda: run_fit(init, data, steps, "fast"),
    }
    for fn in (lambda: run_plain(init, data, 2), lambda: run_fit(init, data, 2, "fp32"),
               lambda: run_fit(init, data, 2, "fast")):
        fn()  # warm-up: allocator, oneDNN primitives, autocast caches
    results: dict[str, list[float]] = {k: [] for k in variants}
    keys = list(variants)
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            results[k].append(variants[k]())
    return results


def loop_overhead(rounds: int) -> dict[str, float]:
    """Per-step time of fit and the plain loop on a model too small to matter
    (8 -> 10 linear, batch 128): their difference is fit's own per-step overhead,
    a number far less sensitive to machine noise than the ratios of real runs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 8, generator=g)
    y = torch.randint(0, 10, (4096,), generator=g)
    data = Dataset("tiny", x, y, x[:0], y[:0], x[:0], y[:0], num_classes=10)
    torch.manual_seed(0)
    init = nn.Sequential(nn.Flatten(), nn.Linear(8, 10))
    steps = 320
    per_step = {"plain": [], "fit": []}
    run_plain(init, data, 32)  # warm-up
    run_fit(init, data, 32, "fp32")
    for r in range(rounds):
        for k in ("plain", "fit") if r % 2 == 0 else ("fit", "plain"):
            sps = run_plain(init, data, steps) if k == "plain" else run_fit(init, data, steps, "fp32")
            per_step[k].append(BATCH / sps * 1e6)
    best = {k: min(v) for k, v in per_step.items()}
    return {"plain_us": best["plain"], "fit_us": best["fit"], "overhead_us": best["fit"] - best["plain"]}


def forced_bf16(init: nn.Module, data: Dataset, steps: int) -> float:
    """fit fast with bf16 autocast forced on (what ``fast`` would do on a bf16 CPU)."""
    fit_module = importlib.import_module("compresslab.train.fit")
    saved = fit_module.native_bf16
    fit_module.native_bf16 = lambda: True
    try:
        run_fit(init, data, 1, "fast")  # warm-up
        return run_fit(init, data, steps, "fast")
    finally:
        fit_module.native_bf16 = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, one round (smoke run)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = ap.parse_args()

    from compresslab.data import load_dataset
    from compresslab.models import create_model

    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    native = native_bf16()
    fast_mode = ("channels_last + bf16 autocast" if native else
                 "channels_last, fp32 (this CPU has no native bf16, so fit skips autocast)")
    peak32, n32 = gemm_peak(torch.float32, reps=2 if args.quick else 5)
    peak16, n16 = gemm_peak(torch.bfloat16, reps=2 if args.quick else 3)
    fast_peak = peak16 if native else peak32

    g = torch.Generator().manual_seed(0)
    n_img = 512 if args.quick else 2048
    x = torch.randn(n_img, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_img,), generator=g)
    random_images = Dataset("random-3x32x32", x, y, x[:0], y[:0], x[:0], y[:0], num_classes=10)
    mnist1d = load_dataset("mnist1d")

    # (model, data, steps per run, rounds, steps for the forced-bf16 run)
    cases = [
        ("resnet20", random_images, 3 if args.quick else 4, 1 if args.quick else 12, 1),
        ("cnn1d", mnist1d, 10 if args.quick else 84, 1 if args.quick else 15, 10),
    ]
    rows = []
    for name, data, steps, rounds, bf16_steps in cases:
        torch.manual_seed(0)
        init = create_model(name, num_classes=data.num_classes, in_channels=data.in_channels,
                            input_shape=data.input_shape)
        macs = macs_per_example(init, data.input_shape)
        runs = bench_model(init, data, steps, rounds)
        best = {k: max(v) for k, v in runs.items()}
        paired = lambda a, b: statistics.median(x / y for x, y in zip(runs[a], runs[b]))  # noqa: E731
        train_flops = 3 * 2 * macs  # forward + backward (2x forward) per example
        row = {
            "model": name,
            "dataset": data.name,
            "steps": steps,
            "rounds": rounds,
            "batch_size": BATCH,
            "macs_per_example": macs,
            "samples_per_s": best,
            "runs": runs,
            "fit_over_plain": paired("fit", "plain"),
            "fit_over_plain_best": best["fit"] / best["plain"],
            "fast_over_fp32": paired("fit_fast", "fit"),
            "fast_over_fp32_best": best["fit_fast"] / best["fit"],
            "mfu_fp32": train_flops * best["fit"] / (peak32 * 1e9),
            "mfu_fast": train_flops * best["fit_fast"] / (fast_peak * 1e9),
        }
        if not native and not args.quick:
            row["bf16_autocast_forced_samples_per_s"] = forced_bf16(init, data, bf16_steps)
        rows.append(row)

    overhead = loop_overhead(5 if args.quick else 15)
    for r in rows:
        r["overhead_fraction"] = overhead["overhead_us"] * 1e-6 / (BATCH / r["samples_per_s"]["plain"])

    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native,
        "fast_mode": fast_mode,
        "quick": args.quick,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        "gemm_peak_gflops": {"fp32": peak32, "fp32_n": n32, "bf16": peak16, "bf16_n": n16},
        "results": rows,
        "loop_overhead": overhead,
        "seconds": time.perf_counter() - t_start,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{out['cpu_capability']}; 1-min load average {load_before:.2f} before, "
          f"{out['load_avg_1min'][1]:.2f} after")
    print(f"GEMM peak: fp32 {peak32:.1f} GFLOP/s ({n32}x{n32}), bf16 {peak16:.2f} GFLOP/s ({n16}x{n16})")
    print(f"fast = {fast_mode}")
    print()
    head = (f"{'model':<9} {'steps':>5} {'rounds':>6} {'MMAC/ex':>8} {'plain/s':>9} {'fit/s':>9} "
            f"{'fit/plain':>9} {'fast/s':>9} {'fast/fp32':>9} {'MFU fp32':>8} {'MFU fast':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        s = r["samples_per_s"]
        print(f"{r['model']:<9} {r['steps']:>5} {r['rounds']:>6} {r['macs_per_example'] / 1e6:>8.2f} "
              f"{s['plain']:>9.1f} {s['fit']:>9.1f} {r['fit_over_plain']:>9.3f} {s['fit_fast']:>9.1f} "
              f"{r['fast_over_fp32']:>8.2f}x {r['mfu_fp32']:>8.1%} {r['mfu_fast']:>8.1%}")
    print()
    print("samples/s per round (plain | fit | fit fast); table: best-round samples/s, "
          "median of per-round ratios")
    for r in rows:
        fmt = lambda v: " ".join(f"{x:.0f}" for x in v)  # noqa: E731
        print(f"  {r['model']:<9} {fmt(r['runs']['plain'])} | {fmt(r['runs']['fit'])} | "
              f"{fmt(r['runs']['fit_fast'])}")
        print(f"  {'':<9} best/best: fit/plain {r['fit_over_plain_best']:.3f}, "
              f"fast/fp32 {r['fast_over_fp32_best']:.2f}x")
    print()
    print(f"fit's own per-step overhead (8->10 linear model, best of rounds): plain loop "
          f"{overhead['plain_us']:.0f} us/step, fit {overhead['fit_us']:.0f} us/step, overhead "
          f"{overhead['overhead_us']:.0f} us/step = "
          + ", ".join(f"{r['overhead_fraction']:.2%} of a {r['model']} step" for r in rows))
    forced = [r for r in rows if "bf16_autocast_forced_samples_per_s" in r]
    if forced:
        print()
        print("bf16 autocast forced on (emulated bf16 on this CPU; why fast skips it):")
        for r in forced:
            v = r["bf16_autocast_forced_samples_per_s"]
            print(f"  {r['model']:<9} {v:9.1f} samples/s = {v / r['samples_per_s']['fit']:.2f}x fit fp32")
    print()
    print("goals: fit/plain >= 0.95; fast/fp32 >= 1.8x on resnet20. "
          "MFU = 3 x 2 x MACs x samples/s / GEMM peak (fp32 peak, or bf16 peak when fast uses bf16).")
    print(f"total {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
