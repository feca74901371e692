"""Cosine pruning curve: one sort (``cosine_curve``) vs pruning a copy at every p.

Usage: OMP_NUM_THREADS=1 flock /tmp/bench.lock python benchmarks/prunability_curve.py [--points 101] [--repeats 5]

On WRN-40-2 (2.24M prunable parameters, BatchNorm affine parameters randomised so that
magnitudes are distinct) compare, in one process:

(a) ``cosine_curve(model, points)``: one sort of θ² and a cumulative sum (best of
    ``--repeats`` runs, after a warm-up);
(b) the naive loop: for each p, deepcopy the model, ``prune_global`` and ``param_cosine``
    (one run).

Goal: (a) >= 50x faster than (b), with the same p* and curves equal to ~1e-9.
Other processes on the machine slow both down: check the load average it prints.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch
from torch import nn

from compresslab.compress.prune import prune_global
from compresslab.measure import cosine_curve, flat_params, p_star, param_cosine
from compresslab.models import create_model


def naive_curve(model: nn.Module, points: int) -> tuple[np.ndarray, np.ndarray]:
    """cos(p) by actually pruning a deepcopy at every p."""
    p = np.linspace(0.0, 1.0, points)
    cos = np.empty(points)
    for i, pi in enumerate(p):
        pruned = copy.deepcopy(model)
        prune_global(pruned, float(pi))
        cos[i] = param_cosine(model, pruned)
    return p, cos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=101)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = create_model("wrn-40-2", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
    theta = flat_params(model)
    n, distinct = theta.numel(), torch.unique(theta.abs()).numel()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()}")
    print(f"wrn-40-2: {n:,} prunable parameters ({distinct:,} distinct magnitudes), {args.points} points")

    cosine_curve(model, args.points)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        p_fast, cos_fast = cosine_curve(model, args.points)
        times.append(time.perf_counter() - t0)
    t_fast = min(times)
    print(f"(a) cosine_curve (one sort):   best {t_fast * 1e3:8.1f} ms  "
          f"(runs: {', '.join(f'{t * 1e3:.0f}' for t in times)} ms)")

    t0 = time.perf_counter()
    p_slow, cos_slow = naive_curve(model, args.points)
    t_slow = time.perf_counter() - t0
    print(f"(b) naive deepcopy+prune loop:      {t_slow * 1e3:8.1f} ms  ({t_slow / args.points * 1e3:.0f} ms per point)")

    ratio = t_slow / t_fast
    print(f"speed-up (b)/(a): {ratio:.0f}x  (goal >= 50x: {'PASS' if ratio >= 50 else 'FAIL'})")
    diff = float(np.max(np.abs(cos_fast - cos_slow)))
    ps_fast, ps_slow = p_star(p_fast, cos_fast), p_star(p_slow, cos_slow)
    print(f"max |cos_a - cos_b| = {diff:.2e}")
    print(f"p* (a) = {ps_fast[0]:.2f} (cos {ps_fast[1]:.6f});  p* (b) = {ps_slow[0]:.2f} (cos {ps_slow[1]:.6f});  "
          f"identical p*: {ps_fast[0] == ps_slow[0]}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
