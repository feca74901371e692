"""Distillation step time against the student's plain CE step time.

Usage: python benchmarks/kd_step_time.py [--quick] [--json]

For each (student, teacher) pair, trains the same student from the same initial
weights for the same number of ``fit`` steps with:

- ``ce``: cross-entropy only (the baseline);
- ``kd cached``: Hinton KD, the teacher's training-set logits computed once
  (``distill`` does this whenever there is no augmentation); goal ≤ 1.1x ``ce``;
- ``kd+at cached``: KD plus attention transfer with cached teacher attention maps;
- ``kd live``: KD with a teacher forward every step (what augmentation forces).

Step time = the training loop's own time (the per-epoch ``seconds`` of ``fit``'s
history, which exclude set-up such as filling the teacher cache) ÷ steps; the one-off
teacher pass that fills the cache is timed separately and printed. Variants are
interleaved in rounds (rotating order) after a warm-up; ratios are medians of
per-round ratios.

Pairs: cnn1d width 64 → width 16 on MNIST-1D-shaped data (the kd-functional preset),
and resnet56 → resnet20 on random 1x28x28 data.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

from compresslab.compress.distill import distill, teacher_attention_maps
from compresslab.data.core import Dataset
from compresslab.models import create_model
from compresslab.train import Recipe, evaluate_logits, fit


def _data(shape: tuple[int, ...], n: int, k: int = 10) -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randn(n, *shape, generator=g)
    return Dataset("bench", x, y, x[:64], y[:64], x[:64], y[:64], num_classes=k)


def _pairs(quick: bool):
    yield ("cnn1d-64 -> cnn1d-16", (1, 40), 3600,
           ("cnn1d", {"width": 64}), ("cnn1d", {"width": 16}), 128, 56 if quick else 168)
    yield ("resnet56 -> resnet20", (1, 28, 28), 1024,
           ("resnet56", {}), ("resnet20", {}), 64, 4 if quick else 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rounds = 3 if args.quick else 7
    load0 = os.getloadavg()[0]
    results = []
    for label, shape, n, (t_name, t_opt), (s_name, s_opt), bs, steps in _pairs(args.quick):
        data = _data(shape, n)
        kw = {"num_classes": 10, "in_channels": shape[0], "input_shape": shape}
        torch.manual_seed(1)
        teacher = create_model(t_name, **kw, **t_opt).eval()
        torch.manual_seed(2)
        student0 = create_model(s_name, **kw, **s_opt)
        epochs = -(-steps * bs // n)
        recipe = Recipe(epochs=epochs, batch_size=bs, lr=0.05)

        def once_cache():
            t0 = time.perf_counter()
            evaluate_logits(teacher, data.x_train)
            return time.perf_counter() - t0

        def once_cache_at():
            t0 = time.perf_counter()
            evaluate_logits(teacher, data.x_train)
            teacher_attention_maps(teacher, data.x_train, ["stage1", "stage2", "stage3"])
            return time.perf_counter() - t0

        variants = {
            "ce": (lambda s: fit(s, data, recipe, max_steps=steps), lambda: 0.0),
            "kd cached": (lambda s: distill(teacher, s, data, recipe, cache_teacher=True, max_steps=steps),
                          once_cache),
            "kd+at cached": (lambda s: distill(teacher, s, data, recipe, loss={"ce": 0.1, "kd": 0.9, "at": 1000},
                                               at_points=["stage1", "stage2", "stage3"], cache_teacher=True,
                                               max_steps=steps), once_cache_at),
            "kd live": (lambda s: distill(teacher, s, data, recipe, cache_teacher=False, max_steps=steps),
                        lambda: 0.0),
        }
        names = list(variants)
        per_round: dict[str, list[float]] = {k: [] for k in names}
        setup: dict[str, float] = {}
        for r in range(rounds + 1):  # round 0 warms up
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                run, one_off = variants[name]
                student = copy.deepcopy(student0)
                result = run(student)
                loop = sum(h["seconds"] for h in result.history)
                cache = one_off()
                if r:
                    per_round[name].append(loop / result.steps * 1e3)
                    setup[name] = min(setup.get(name, cache), cache)
        ratios = {k: statistics.median(a / b for a, b in zip(per_round[k], per_round["ce"])) for k in names}
        row = {"pair": label, "steps": steps, "batch_size": bs, "rounds": rounds,
               "ms_per_step": {k: min(v) for k, v in per_round.items()}, "ratio_vs_ce": ratios,
               "one_off_teacher_pass_s": {k: setup[k] for k in names if setup[k] > 0}}
        results.append(row)
    load1 = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"results": results, "load": [load0, load1]}, indent=2))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 1-min load {load0:.2f} before, "
          f"{load1:.2f} after")
    print(f"{'pair':24} {'variant':14} {'ms/step (best)':>15} {'x ce (median)':>14} {'one-off teacher pass':>21}")
    for row in results:
        for k in row["ms_per_step"]:
            once = row["one_off_teacher_pass_s"].get(k)
            print(f"{row['pair']:24} {k:14} {row['ms_per_step'][k]:15.2f} {row['ratio_vs_ce'][k]:13.2f}x "
                  f"{'' if once is None else f'{once:.2f} s':>21}")
    ok = all(r["ratio_vs_ce"]["kd cached"] <= 1.1 for r in results)
    print(f"goal: kd cached ≤ 1.1x ce step time: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
