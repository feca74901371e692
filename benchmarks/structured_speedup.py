"""Does channel pruning make models faster on CPU? MAC ratio (ideal) vs measured latency.

Usage: OMP_NUM_THREADS=1 flock /tmp/bench.lock python benchmarks/structured_speedup.py [--threads 1] [--amounts 0.3 0.5 0.7]

For ResNet-20 and WRN-16-2 on 3x32x32 inputs, prune a copy of the model with
``structured_prune`` (uniform magnitude ranking) at each amount and print, in
one process: parameters and MACs before/after, the MAC ratio after/before
(its inverse is the ideal speed-up), and the measured latency
(``compresslab.measure.latency``, batch 1 and 256) before/after with the
measured speed-up and measured/ideal. The unpruned model is re-timed next to
every pruned copy so each row compares two back-to-back measurements. Other
processes slow everything down: check the load average it prints.
"""
from __future__ import annotations

import argparse
import copy
import os

import torch

from compresslab.compress.structured import structured_prune
from compresslab.measure.cost import latency
from compresslab.models import create_model

SHAPE = (3, 32, 32)
MODELS = ("resnet20", "wrn-16-2")
BATCHES = (1, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds timed per batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average {_load()}")
    print("latency: median ms per forward pass, eval mode, inference_mode; "
          "ideal speed-up = MACs before / MACs after\n")
    head = (f"{'model':9} {'amount':>6} {'params':>17} {'MACs/example':>21} {'MAC ratio':>9} {'ideal':>6} | "
            + " | ".join(f"{'b' + str(b) + ' ms before->after':>23} {'speed-up':>8} {'meas/ideal':>10}"
                         for b in BATCHES))
    print(head)
    print("-" * len(head))
    for name in MODELS:
        base = create_model(name, num_classes=10, in_channels=3, input_shape=SHAPE)
        for amount in args.amounts:
            pruned = copy.deepcopy(base)
            r = structured_prune(pruned, SHAPE, amount=amount)
            ideal = r["macs_before"] / r["macs_after"]
            t_base = latency(base, SHAPE, batch_sizes=BATCHES, min_time=args.min_time)
            t_pruned = latency(pruned, SHAPE, batch_sizes=BATCHES, min_time=args.min_time)
            cells = []
            for b in BATCHES:
                before, after = t_base[f"batch{b}"], t_pruned[f"batch{b}"]
                cells.append(f"{before:10.2f} -> {after:9.2f} {before / after:7.2f}x {before / after / ideal:10.2f}")
            print(f"{name:9} {amount:6.2f} {r['params_before']:>8,}->{r['params_after']:<8,} "
                  f"{r['macs_before']:>10,}->{r['macs_after']:<10,} {r['mac_ratio']:9.3f} {ideal:5.2f}x | "
                  + " | ".join(cells))
        print(f"  ({name}: {len(r['protected'])} layers protected, e.g. "
              f"{', '.join(list(r['protected'])[:3])})")
    print(f"\nload average at the end {_load()}")


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
