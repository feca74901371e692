"""Threads per step: from what size does a training step gain from a second torch thread?

Usage: python benchmarks/thread_threshold.py [--threads 1,2] [--batch 256] [--iters 30] [--json]

For models from tiny to large (the zoo's cnn1d, mlp, lenet5 and resnet20 at several widths,
on mnist1d, digits, MNIST-shaped and CIFAR-shaped random inputs), one process times
``--iters`` training iterations (forward, backward, Adam step) at ``--batch`` with each
thread count, interleaved, median of 3 rounds. The size of a step is its MACs per batch
(forward MACs per example x batch, :func:`compresslab.measure.count_macs`). Prints the
speed-up of every thread count over one thread. ``--workers auto``
(:mod:`compresslab.steps.plan`) gives a step more than one thread only above the size where
this speed-up appears (:data:`compresslab.steps.plan.MACS_PER_THREAD`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from compile_cpu import cpu_name  # the sibling benchmark (this script's directory is on sys.path)

from compresslab.measure import count_macs
from compresslab.models.registry import create_model
from compresslab.train import native_bf16

#: (label, model, options, input shape (C, ...), classes)
MODELS = [
    ("cnn1d w4 (kd student, tiny)", "cnn1d", {"width": 4, "depth": 2, "hidden": 8}, (1, 40), 10),
    ("cnn1d w16 (kd-functional student)", "cnn1d", {"width": 16, "hidden": 32}, (1, 40), 10),
    ("mlp 64x64 (digits)", "mlp", {"widths": [64, 64]}, (1, 8, 8), 10),
    ("cnn1d w64 (kd-functional teacher)", "cnn1d", {"width": 64, "hidden": 128}, (1, 40), 10),
    ("lenet5 x0.25 (MNIST)", "lenet5", {"scale": 0.25}, (1, 28, 28), 10),
    ("cnn1d w128", "cnn1d", {"width": 128, "hidden": 256}, (1, 40), 10),
    ("lenet5 (MNIST)", "lenet5", {}, (1, 28, 28), 10),
    ("resnet20 (CIFAR)", "resnet20", {}, (3, 32, 32), 10),
]


def time_training(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int) -> float:
    """Seconds per iteration of forward, backward and an Adam step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(3):  # warm-up
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(iters):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--batch", type=int, default=256, help="batch size (default 256, the recipes' default)")
    ap.add_argument("--iters", type=int, default=30, help="timed iterations per round (default 30)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    counts = sorted({int(t) for t in args.threads.split(",") if t.strip()})
    cores = len(os.sched_getaffinity(0))
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"{cpu_name()}, {cores} cores; CPU capability {capability}, native bf16: {'yes' if native_bf16() else 'no'}; "
          f"torch {torch.__version__}; 1-min load average {os.getloadavg()[0]:.2f}")
    print(f"training iterations (fwd+bwd+Adam) at batch {args.batch}, median of 3 rounds of {args.iters}\n")
    rows = []
    for label, name, options, shape, classes in MODELS:
        torch.manual_seed(0)
        model = create_model(name, num_classes=classes, in_channels=shape[0], input_shape=shape, **options)
        macs = count_macs(model, shape) * args.batch
        x, y = torch.randn(args.batch, *shape), torch.randint(0, classes, (args.batch,))
        times: dict[int, list[float]] = {t: [] for t in counts}
        for _ in range(3):
            for t in counts:
                torch.set_num_threads(t)
                times[t].append(time_training(model, x, y, args.iters))
        ms = {t: 1000 * statistics.median(v) for t, v in times.items()}
        row = {"model": label, "macs_per_batch": macs, "ms": ms,
               "speedup": {t: ms[counts[0]] / ms[t] for t in counts}}
        rows.append(row)
        print(f"{label:36s} {macs / 1e6:10.1f} MMAC/batch  " + "  ".join(
            f"{t} thr {ms[t]:8.2f} ms ({row['speedup'][t]:.2f}x)" for t in counts), flush=True)
    print(f"\n1-min load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
