"""Lottery-ticket report: IMP with rewinding, a random-reinit control and per-round stability.

:func:`run_lottery` runs :func:`compresslab.compress.lottery.imp` on one model and data
set and, per round, the linear-mode-connectivity test of Frankle et al. (ICML 2020):
the round's sparse network is rewound to θ_k, trained twice with different data-order
seeds, and the error barrier between the two is measured. A round is *stable* when that
barrier is at most ``stable_threshold`` (an error fraction: 0.02 = 2 points of error,
the tolerance the paper uses). It writes ``lottery.json`` and ``lottery.png`` into ``out``.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from compresslab.compress.lottery import check_inner_data, imp, rewind
from compresslab.errors import UserError
from compresslab.figures import save_png
from compresslab.runs.store import write_json
from compresslab.steps import build, dataset
from compresslab.train.recipe import Recipe

VAL_FRACTION = 0.1


def _check(rounds: int, rate: float, rewind_epoch: int, recipe: Recipe, lmc_points: int,
           stable_threshold: float, out: Path) -> None:
    """Raise :class:`UserError` for arguments that would fail (or mean nothing) later."""
    if not isinstance(rounds, int) or rounds < 1:
        raise UserError(f"lottery: rounds must be an integer >= 1, got {rounds!r}")
    if not 0.0 < rate < 1.0:
        raise UserError(f"lottery: rate must be in (0, 1), got {rate}")
    if recipe.epochs < 1:
        raise UserError("lottery: the recipe must train for at least 1 epoch")
    if not 0 <= rewind_epoch < recipe.epochs:
        raise UserError(f"lottery: rewind_epoch must be in [0, {recipe.epochs}) for a recipe of "
                        f"{recipe.epochs} epochs, got {rewind_epoch}")
    if lmc_points < 2:
        raise UserError(f"lottery: lmc_points must be >= 2, got {lmc_points}")
    if stable_threshold < 0:
        raise UserError(f"lottery: stable_threshold must be >= 0, got {stable_threshold}")
    if out.exists() and not out.is_dir():
        raise UserError(f"lottery: output {out} is a file; pass a directory")


def run_lottery(model: str, data: str, *, options: dict | None = None, recipe: Recipe, rounds: int = 3,
                rate: float = 0.2, rewind_epoch: int = 0, seed: int = 0, control: bool = True,
                lmc: bool = True, lmc_points: int = 11, stable_threshold: float = 0.02, out: Path,
                callback: Callable[[dict[str, Any]], None] | None = None, inner_data: str | None = None,
                inner_epochs: int | None = None) -> dict[str, Any]:
    """Run IMP on ``model`` (a registry name with ``options``) trained on ``data``; report it.

    ``rounds`` prunes of ``rate`` of the remaining weights each (round 0 is dense), rewinding
    to the weights after epoch ``rewind_epoch`` (0 = the initialisation). With ``control``
    every pruned round's mask is also trained from a random re-initialisation. With ``lmc``
    every round's mask, applied to θ_k, is trained with seeds ``seed + 1`` and ``seed + 2``
    for ``recipe.epochs - rewind_epoch`` epochs (as IMP retrains) and the test-error
    barrier on ``lmc_points`` interpolation points is recorded; ``stable`` is
    ``barrier <= stable_threshold`` (error fraction; default 0.02, i.e. 2 points).

    ``callback`` receives every IMP event (see :func:`imp`) and ``{"event": "lmc", "round",
    "barrier", "stable"}`` after each round's LMC test.

    ``inner_data`` (a data name, e.g. ``distilled:DIR``): distilled pruning, the search loop
    trains on that set for ``inner_epochs`` (default ``recipe.epochs``) epochs per round and
    each round's ticket is trained on ``data`` (see :func:`imp`). With or without it,
    ``costs`` holds per round ``seconds``, ``points_real`` and ``points_inner`` (``ImpResult.costs``).

    Writes ``out/lottery.json`` (the returned dict) and ``out/lottery.png``; ``out`` is
    created. Bad arguments raise :class:`UserError` before any data is loaded or trained.
    """
    from compresslab.measure.landscape import lmc_pair

    out = Path(out)
    _check(rounds, rate, rewind_epoch, recipe, lmc_points, stable_threshold, out)
    if inner_epochs is not None and inner_epochs < 1:
        raise UserError(f"lottery: inner_epochs must be >= 1, got {inner_epochs}")
    start = time.perf_counter()

    ds = dataset(data, VAL_FRACTION, seed)
    inner = None
    if inner_data is not None:
        inner = dataset(inner_data, VAL_FRACTION, seed)
        check_inner_data(ds, inner, rewind_epoch)
    net = build({"name": model, "options": options or {}}, ds, seed)
    out.mkdir(parents=True, exist_ok=True)

    masks_by_round: dict[int, dict[str, torch.Tensor]] = {}

    def collect(event: dict[str, Any]) -> None:
        if event.get("event") == "round-start" and event.get("phase") == "ticket":
            masks_by_round[event["round"]] = {n: m.detach().clone() for n, m in event["masks"].items()}
        if callback is not None:
            callback(event)

    result = imp(net, ds, recipe, rounds=rounds, rate=rate, rewind_epoch=rewind_epoch, seed=seed,
                 random_reinit_control=control, callback=collect, inner_data=inner,
                 inner_recipe=None if inner_epochs is None else recipe.model_copy(update={"epochs": inner_epochs}))

    retrain = recipe.model_copy(update={"epochs": recipe.epochs - rewind_epoch})
    records = []
    for rec in result.records:
        r = rec["round"]
        row = {"round": r, "sparsity": rec["sparsity"], "val_acc": rec["val_acc"], "test_acc": rec["test_acc"],
               "control_test_acc": rec.get("control_test_acc") if control else None,
               "barrier": None, "stable": None}
        if lmc:
            start_net = copy.deepcopy(net)
            rewind(start_net, result.rewind_state, masks_by_round[r])
            pair = lmc_pair(start_net, ds, retrain, seeds=(seed + 1, seed + 2), mask=masks_by_round[r],
                            points=lmc_points, split="test")
            row["barrier"] = float(pair["barrier"])
            row["stable"] = bool(row["barrier"] <= stable_threshold)
            if callback is not None:
                callback({"event": "lmc", "round": r, "barrier": row["barrier"], "stable": row["stable"]})
        records.append(row)

    report = {"model": model, "options": options or {}, "data": data, "seed": seed,
              "recipe": recipe.model_dump(), "rounds": rounds, "rate": rate, "rewind_epoch": rewind_epoch,
              "control": control, "lmc": lmc, "inner_data": inner_data,
              "inner_epochs": (inner_epochs or recipe.epochs) if inner_data else None, "lmc_points": lmc_points if lmc else None,
              "stable_threshold": stable_threshold, "records": records, "costs": result.costs,
              "seconds": time.perf_counter() - start}
    write_json(out / "lottery.json", report)
    plot_lottery(report, out / "lottery.png")
    return report


def plot_lottery(report: dict[str, Any], path: Path) -> Path:
    """PNG of a :func:`run_lottery` report, written atomically (temp file + ``os.replace``).

    Left: test accuracy against sparsity (%) for the ticket (with LMC: filled markers = stable
    rounds, hollow = unstable) and the random-reinit control. Right (when LMC ran):
    the error barrier per round with the stability threshold.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = report["records"]
    has_lmc = any(r["barrier"] is not None for r in recs)
    fig = Figure(figsize=(9 if has_lmc else 5, 3.6), dpi=100)
    FigureCanvasAgg(fig)

    ax = fig.add_subplot(1, 2 if has_lmc else 1, 1)
    xs = [100 * r["sparsity"] for r in recs]
    ax.plot(xs, [100 * r["test_acc"] for r in recs], color="C0", label="ticket (rewound)")
    for x, r in zip(xs, recs):
        ax.plot([x], [100 * r["test_acc"]], marker="o", ms=6, color="C0",
                markerfacecolor="C0" if r["stable"] or not has_lmc else "white")
    ctrl = [(x, 100 * r["control_test_acc"]) for x, r in zip(xs, recs) if r["control_test_acc"] is not None]
    if ctrl:
        ax.plot(*zip(*ctrl), marker="s", ms=5, color="C1", linestyle="--", label="random reinit")
    ax.set_xlabel("sparsity of the pruned set (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report['model']} on {report['data']}: IMP, rewind to epoch {report['rewind_epoch']}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="filled = stable" if has_lmc else None, title_fontsize=7)

    if has_lmc:
        ax2 = fig.add_subplot(1, 2, 2)
        rounds = [r["round"] for r in recs if r["barrier"] is not None]
        barriers = [100 * r["barrier"] for r in recs if r["barrier"] is not None]
        ax2.bar(rounds, barriers, color=["C2" if r["stable"] else "C3" for r in recs if r["barrier"] is not None])
        ax2.axhline(100 * report["stable_threshold"], color="k", linestyle=":", label="stability threshold")
        ax2.set_xticks(rounds)
        ax2.set_xlabel("IMP round")
        ax2.set_ylabel("test-error barrier (points)")
        ax2.set_title("linear mode connectivity from θ_k", fontsize=9)
        ax2.grid(alpha=0.3, axis="y")
        ax2.legend(fontsize=8)
    fig.tight_layout()

    return save_png(fig, path)
