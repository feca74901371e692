"""BlockSwap search time on WRN-40-2 shapes (CIFAR-sized 3x32x32 inputs), on the CPU or a GPU.

Usage: python benchmarks/blockswap_search.py [--samples 1000] [--batch 128] [--budget-fraction 0.4] [--device cuda]

Times the three phases of ``compress.search.search`` separately: sampling candidates
within ±2.5% of the budget (closed-form counts, no networks built), and per candidate
building the network at random init plus one forward/backward on the minibatch for its
Fisher potential. Prints the per-candidate cost and the total (measured, or extrapolated
from the measured candidates when ``--samples`` is smaller than ``--target``). With
``--device cuda`` candidates are built on the CPU (the same weights everywhere) and scored on
the GPU; the goal there is 1,000 candidates in under a minute.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from compresslab.compress.search import block_table, sample_candidates, search, table_params
from compresslab.device import resolve

BLOCKS = ["Conv", "ConvB2", "ConvB4", "G4B2", "G8B2", "G16B2", "A2B2", "A4B2", "DConv", "DConvB2", "DConvB4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000, help="candidates actually scored")
    ap.add_argument("--target", type=int, default=1000, help="candidates to report the total for")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--budget-fraction", type=float, default=0.4, help="budget as a fraction of WRN-40-2's params")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where candidates are scored")
    args = ap.parse_args()
    device = resolve(args.device)
    torch.set_num_threads(2)
    load0 = os.getloadavg()[0]
    table = block_table(40, 2, BLOCKS, dim=2, in_channels=3, num_classes=10)
    plain = table_params(table, ["Conv"] * len(table["costs"]))
    budget = args.budget_fraction * plain
    t0 = time.perf_counter()
    _, draws = sample_candidates(table, args.target, budget, seed=0)
    t_sample = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    r = search(40, 2, BLOCKS, budget, x, y, samples=args.samples, dim=2, in_channels=3, num_classes=10, seed=0,
               device=device)
    per = r["seconds"]["scoring"] / len(r["candidates"])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; 1-min load {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print(f"WRN-40-2 ({plain:,} params), budget {budget:,.0f} (±2.5%), {len(BLOCKS)} block types, "
          f"minibatch {args.batch}x3x32x32")
    print(f"sampling {args.target} candidates: {t_sample:.3f} s ({draws:,} draws, no network built)")
    print(f"scoring: {len(r['candidates'])} candidates in {r['seconds']['scoring']:.1f} s = {per:.2f} s each "
          "(build at random init + one forward/backward)")
    total = t_sample + per * args.target
    how = "measured" if len(r["candidates"]) >= args.target else f"extrapolated from {len(r['candidates'])}"
    print(f"search time for {args.target} candidates: {total / 60:.1f} min ({how})")
    print(f"best of the scored: {'-'.join(r['best'])} ({r['best_params']:,} params)")


if __name__ == "__main__":
    main()
