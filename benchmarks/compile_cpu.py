"""torch.compile on the CPU: ``fit`` with ``recipe.compile`` false against true.

Usage: python benchmarks/compile_cpu.py [--quick] [--threads 1 2] [--json]

Two models, each at every thread count (``torch.set_num_threads``), in one process:

- cnn1d as the default study's parent (width 64, hidden 128; AdamW, batch 128) on
  MNIST-1D (3,600 training examples of shape (1, 40));
- resnet20 (SGD, batch 128) on 1,024 random 3x32x32 images.

For each:

1. steady-state images/s of one-epoch ``fit`` calls, eager and compiled, interleaved in
   rounds (each round runs both, in alternating order); the compiled runs reuse one
   model, so they compile nothing (the graph counts printed prove it). Ratio: the median
   of per-round ratios; images/s: the median round.
2. the one-off compile seconds: the first compiled epoch's wall time minus a steady one,
   with an empty inductor cache (``cold``: a fresh machine; ``torch._inductor.utils.fresh_cache``)
   and again after forgetting dynamo's graphs and inductor's in-memory caches with its disk
   cache filled (``warm``: a new process on the same machine). A fresh copy of the model in
   the same process compiles nothing at all.
3. the break-even: training images before the compile time is paid back (``never`` when
   compiled is not faster), and for cnn1d the default study's whole 15-epoch parent step,
   eager against compiled with a cold cache, measured end to end.

Timings are wall clock around whole ``fit`` calls. Other processes on the machine
distort everything: check the load average it prints. Without a working torch.compile
(no C++ compiler) it says why and exits 0.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import time

import torch

from compresslab.data.core import Dataset
from compresslab.errors import UserError
from compresslab.train import Recipe, fit, native_bf16

CNN1D_RECIPE = dict(optimizer="adamw", lr=0.005, weight_decay=0.05, batch_size=128)  # the default study's
RESNET_RECIPE = dict(optimizer="sgd", lr=0.05, batch_size=128)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def timed_fit(model, data: Dataset, recipe: Recipe) -> tuple[float, int]:
    """Wall seconds of one ``fit`` call, and the graphs dynamo compiled during it."""
    g0 = graphs()
    t = time.perf_counter()
    fit(model, data, recipe, health=False)
    return time.perf_counter() - t, graphs() - g0


def forget_compiled() -> None:
    """Forget dynamo's graphs and inductor's in-memory caches; its disk cache stays, as
    for a new process on the same machine."""
    from torch._inductor.utils import clear_caches

    torch._dynamo.reset()
    clear_caches()


def cold_cache():
    """An empty inductor cache directory, in-memory caches cleared (torch's own test helper)."""
    from torch._inductor.utils import fresh_cache

    forget_compiled()
    return fresh_cache()


def bench(name: str, init, data: Dataset, recipe: Recipe, rounds: int, full_epochs: int) -> dict:
    eager = recipe.model_copy(update={"epochs": 1})
    compiled = eager.model_copy(update={"compile": True})
    images = int(data.y_train.shape[0])
    with cold_cache():
        row = bench_cached(name, init, data, eager, compiled, images, rounds)
    if full_epochs:  # a whole short step, end to end: eager vs compiled from an empty cache
        row["step_epochs"] = full_epochs
        with cold_cache():
            row["step_s_compiled"] = timed_fit(copy.deepcopy(init), data,
                                               compiled.model_copy(update={"epochs": full_epochs}))[0]
        row["step_s_eager"] = timed_fit(copy.deepcopy(init), data, eager.model_copy(update={"epochs": full_epochs}))[0]
    return row


def bench_cached(name: str, init, data: Dataset, eager: Recipe, compiled: Recipe, images: int, rounds: int) -> dict:
    fit(copy.deepcopy(init), data, eager, max_steps=2)  # warm-up: allocator, oneDNN primitives
    model_c = copy.deepcopy(init)
    cold, cold_graphs = timed_fit(model_c, data, compiled)
    walls = {"eager": [], "compiled": []}
    steady_graphs = 0
    for r in range(rounds):
        for k in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            if k == "eager":
                walls[k].append(timed_fit(copy.deepcopy(init), data, eager)[0])
            else:
                wall, n = timed_fit(model_c, data, compiled)
                walls[k].append(wall)
                steady_graphs += n
    copy_wall, copy_graphs = timed_fit(copy.deepcopy(init), data, compiled)  # same process, fresh model
    forget_compiled()
    warm, warm_graphs = timed_fit(copy.deepcopy(init), data, compiled)  # inductor cache filled
    steady = {k: statistics.median(v) for k, v in walls.items()}
    rate = {k: images / v for k, v in steady.items()}
    row = {
        "model": name, "threads": torch.get_num_threads(), "images_per_epoch": images,
        "eager_images_per_s": rate["eager"], "compiled_images_per_s": rate["compiled"],
        "compiled_over_eager": statistics.median(e / c for e, c in zip(walls["eager"], walls["compiled"])),
        "compile_s_cold": cold - steady["compiled"], "compile_s_warm": warm - steady["compiled"],
        "compile_s_fresh_copy": copy_wall - steady["compiled"],
        "graphs": {"cold": cold_graphs, "steady": steady_graphs, "fresh_copy": copy_graphs, "warm": warm_graphs},
        "walls": walls,
    }
    gain = 1 / rate["eager"] - 1 / rate["compiled"]  # seconds saved per image
    row["break_even_images"] = row["compile_s_cold"] / gain if gain > 0 else None
    return row


def compile_works() -> str | None:
    """None when torch.compile trains here, else the one-line reason fit gives."""
    x = torch.randn(8, 1, 4)
    y = torch.randint(0, 2, (8,))
    tiny = Dataset("tiny", x, y, x[:0], y[:0], x[:0], y[:0], num_classes=2)
    try:
        fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), tiny,
            Recipe(epochs=1, batch_size=8, compile=True))
    except UserError as e:
        return str(e)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data, one round (smoke run)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()

    from compresslab.data import load_dataset
    from compresslab.models import create_model

    capability = torch.backends.cpu.get_cpu_capability()
    cxx = shutil.which(os.environ.get("CXX", "g++")) or "none found"
    print(f"{cpu_name()}, {os.cpu_count()} cores; CPU capability {capability} "
          f"(AVX-512: {'yes' if 'AVX512' in capability else 'no'}), native bf16: {'yes' if native_bf16() else 'no'}; "
          f"torch {torch.__version__}, C++ compiler {cxx}; 1-min load average {os.getloadavg()[0]:.2f}")
    t_start = time.perf_counter()
    reason = compile_works()  # also pays the process's one-off inductor start-up outside the figures
    if reason:
        print(f"torch.compile does not work here: {reason}; nothing to measure")
        return 0

    mnist1d = load_dataset("mnist1d")
    n_img = 256 if args.quick else 1024
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_img, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_img,), generator=g)
    images = Dataset("random-3x32x32", x, y, x[:0], y[:0], x[:0], y[:0], num_classes=10)
    torch.manual_seed(0)
    cnn1d = create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=64, hidden=128)
    torch.manual_seed(0)
    resnet20 = create_model("resnet20", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    cases = [("cnn1d", cnn1d, mnist1d, Recipe(**CNN1D_RECIPE), 1 if args.quick else 7, 2 if args.quick else 15),
             ("resnet20", resnet20, images, Recipe(**RESNET_RECIPE), 1 if args.quick else 3, 0)]

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, init, data, recipe, rounds, full in cases:
            rows.append(bench(name, init, data, recipe, rounds, full))
            print(f"  done: {name}, {threads} thread(s), load {os.getloadavg()[0]:.2f}", file=sys.stderr)

    print(f"1-min load average after: {os.getloadavg()[0]:.2f}; total {time.perf_counter() - t_start:.0f} s")
    print()
    head = (f"{'threads':>7} {'model':<9} {'eager img/s':>11} {'compiled img/s':>14} {'compiled/eager':>14} "
            f"{'compile s cold':>14} {'compile s warm':>14} {'break-even images':>17}")
    print(head)
    print("-" * len(head))
    for r in rows:
        be = "never" if r["break_even_images"] is None else f"{r['break_even_images']:,.0f}"
        print(f"{r['threads']:>7} {r['model']:<9} {r['eager_images_per_s']:>11,.0f} {r['compiled_images_per_s']:>14,.0f} "
              f"{r['compiled_over_eager']:>13.2f}x {r['compile_s_cold']:>14.1f} {r['compile_s_warm']:>14.1f} {be:>17}")
    print()
    print("graphs compiled (cold epoch / steady epochs / fresh model copy / after dynamo reset), "
          "and seconds per epoch (eager | compiled):")
    for r in rows:
        gr = r["graphs"]
        fmt = lambda v: " ".join(f"{s:.2f}" for s in v)  # noqa: E731
        print(f"  {r['threads']} thr {r['model']:<9} {gr['cold']} / {gr['steady']} / {gr['fresh_copy']} / {gr['warm']};"
              f" fresh copy adds {r['compile_s_fresh_copy']:+.2f} s;  {fmt(r['walls']['eager'])} | "
              f"{fmt(r['walls']['compiled'])}")
    steps = [r for r in rows if "step_epochs" in r]
    if steps:
        print()
        print(f"the default study's parent step end to end (cnn1d, {steps[0]['step_epochs']} epochs; "
              "compiled from an empty cache):")
        for r in steps:
            print(f"  {r['threads']} thread(s): eager {r['step_s_eager']:.1f} s, compiled {r['step_s_compiled']:.1f} s "
                  f"({r['step_s_compiled'] / r['step_s_eager']:.1f}x the time)")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
