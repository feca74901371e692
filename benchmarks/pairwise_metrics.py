"""All output metrics for all pairs of M models: vectorised matrices against a per-pair loop.

Usage: python benchmarks/pairwise_metrics.py [--models 20] [--examples 10000] [--classes 10]

Goal (issue 3): 20 models x 10,000 examples x 10 classes, every output metric for every
pair, in under 1 second. ``pairwise_metrics`` is timed (best of 5 after a warm-up)
against calling ``function.compare_logits`` on each of the M(M-1)/2 unordered pairs
(it returns KL in both directions), in the same process on the same seeded logits.
The largest difference between the two results is printed too.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from compresslab.measure.function import compare_logits
from compresslab.measure.pairwise import pairwise_metrics

KEYS = {"agreement": "agreement", "disagreement": "disagreement", "kappa": "kappa",
        "js_divergence": "js_divergence", "activation_distance": "activation_distance",
        "output_cosine": "output_cosine", "kl": "kl_ab"}


def naive(x: torch.Tensor) -> dict[str, np.ndarray]:
    m = x.shape[0]
    out = {k: np.zeros((m, m)) for k in KEYS}
    for i in range(m):
        for j in range(i + 1, m):
            r = compare_logits(x[i], x[j])
            for key, ref in KEYS.items():
                out[key][i, j] = r[ref]
                out[key][j, i] = r["kl_ba"] if key == "kl" else r[ref]
    for key in ("agreement", "output_cosine"):
        np.fill_diagonal(out[key], 1.0)
    np.fill_diagonal(out["kappa"], 1.0)
    return out


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    load0 = os.getloadavg()[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.models, args.examples, args.classes, generator=g) * 3
    pairwise_metrics(x)  # warm-up
    t_vec = best(lambda: pairwise_metrics(x), args.repeats)
    t_naive = best(lambda: naive(x), max(1, args.repeats // 2))
    a, b = pairwise_metrics(x), naive(x)
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in KEYS)
    pairs = args.models * (args.models - 1) // 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 1-min load {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print(f"{args.models} models x {args.examples} examples x {args.classes} classes = {pairs} pairs, "
          f"{len(KEYS)} metrics (kl both directions)")
    print(f"pairwise_metrics      {t_vec:8.3f} s  (best of {args.repeats})")
    print(f"compare_logits loop   {t_naive:8.3f} s  (best of {max(1, args.repeats // 2)})")
    print(f"speed-up              {t_naive / t_vec:8.1f}x   max |difference| {diff:.1e}")
    print(f"goal: all pairs in < 1 s: {'met' if t_vec < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
