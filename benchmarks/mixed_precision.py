"""Mixed precision (per-layer bits from the sensitivity table) against uniform bits at the
same BOPs, over seeds: PTQ fake-quant, weights only, per tensor, no fine-tuning.

For each seed: train an MLP, measure its sensitivity on the val split, take the BOPs of the
uniform 4-bit (and 3-bit) network as the budget, assign per-layer bits by the exact
knapsack, quantise both, and compare test accuracy. Prints the paired differences with a
bootstrap CI (``measure.stats.summarize``) and a t CI.

    python benchmarks/mixed_precision.py --seeds 5 --runs /tmp/mixed-runs
"""
from __future__ import annotations

import argparse
import json

from scipy import stats as st

from compresslab.api import quantize_checkpoint, train_model
from compresslab.measure.stats import summarize
from compresslab.mixed_precision import assign, sensitivity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--widths", default="64,32")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--bits", default="8,6,5,4,3,2")
    ap.add_argument("--uniform", default="4,3")
    ap.add_argument("--runs", default="/tmp/mixed-runs")
    a = ap.parse_args()
    widths = [int(w) for w in a.widths.split(",")]
    bits = tuple(int(b) for b in a.bits.split(","))
    rows = []
    for seed in range(a.seeds):
        parent = train_model("mlp", a.data, options={"widths": widths}, seed=seed, runs=a.runs, device="cpu",
                             overrides={"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": a.epochs,
                                        "batch_size": 64})
        ckpt = parent["checkpoint"]
        table = sensitivity(ckpt, a.data, bits=bits, seed=seed, runs=a.runs, device="cpu")["table"]
        for u in (int(b) for b in a.uniform.split(",")):
            budget = assign(table, budget=1.0e30, methods=())["uniform"][u]["cost"]
            mixed = assign(table, budget=budget)["assignments"]["exact"]
            uni = quantize_checkpoint(ckpt, a.data, scheme="fake", bits=u, seed=seed, runs=a.runs, device="cpu")
            mix = quantize_checkpoint(ckpt, a.data, scheme="fake", bits={"layers": mixed["bits"]}, seed=seed,
                                      runs=a.runs, device="cpu")
            rows.append({"seed": seed, "uniform_bits": u, "parent": parent["accuracy"]["test"],
                         "uniform": uni["accuracy"]["test"], "mixed": mix["accuracy"]["test"],
                         "bops_uniform": uni["cost"]["bops"], "bops_mixed": mix["cost"]["bops"],
                         "assignment": mixed["bits"]})
            r = rows[-1]
            print(f"seed {seed} uniform {u}: parent {r['parent']:.4f} uniform {r['uniform']:.4f} "
                  f"mixed {r['mixed']:.4f} {r['assignment']} BOPs {r['bops_mixed']:.0f} <= {r['bops_uniform']:.0f}",
                  flush=True)
    print()
    print("| vs uniform | n | mean acc uniform | mean acc mixed | mixed - uniform (pp) | 95% bootstrap CI | "
          "95% t CI | mixed wins |")
    print("|---|---|---|---|---|---|---|---|")
    for u in (int(b) for b in a.uniform.split(",")):
        sel = [r for r in rows if r["uniform_bits"] == u]
        diff = [100 * (r["mixed"] - r["uniform"]) for r in sel]
        s = summarize(diff)
        n = len(diff)
        half = st.t.ppf(0.975, n - 1) * s["std"] / n**0.5 if n > 1 else 0.0
        wins = sum(d > 0 for d in diff)
        print(f"| {u} bits | {n} | {100 * sum(r['uniform'] for r in sel) / n:.2f}% | "
              f"{100 * sum(r['mixed'] for r in sel) / n:.2f}% | {s['mean']:+.2f} | [{s['ci_low']:+.2f}, "
              f"{s['ci_high']:+.2f}] | [{s['mean'] - half:+.2f}, {s['mean'] + half:+.2f}] | {wins}/{n} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
