"""The ``data-scores`` step: one scoring of a training split for data pruning.

Spec (see :func:`compresslab.steps.specs.data_scores_spec`): ``data``, ``method`` (one of
:data:`compresslab.compress.data_pruning.METHODS`) and ``seeds``; the trained methods also
``model`` and ``recipe``, and EL2N / GraNd ``score_epochs`` (how far into the recipe's
schedule the networks are scored: Paul et al. 2021 score early, e.g. epoch 20 of 200).

- ``random``: uniform scores from the first seed.
- ``el2n`` / ``grand``: one network per seed, trained ``score_epochs`` epochs of the
  recipe's schedule, scored on the training split; the mean over seeds.
- ``forgetting``: one network per seed trained for the whole recipe while counting
  forgetting events at every presentation; the mean over seeds (never learned in any
  run: ``inf``).

Writes ``scores.npy`` (float64, one score per training example, higher = harder) and
``scores.json`` (method, size, seeds, seconds, summary). One scoring serves every keep
fraction: the students select from it.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from compresslab.compress.data_pruning import (
    ForgettingTracker,
    check_fraction,
    check_method,
    el2n_scores,
    grand_scores,
    random_scores,
    select,
)
from compresslab.errors import UserError
from compresslab.runs.store import Step, write_json
from compresslab.steps.common import build, data_of, finish_model, history, step_device
from compresslab.steps.registry import register_step
from compresslab.train import Recipe, fit

TRAINED = ("el2n", "grand", "forgetting")


def check_scores(step: Step, parents: dict) -> None:
    s = step.spec
    check_method(s["method"])
    if not s.get("seeds"):
        raise UserError("data-scores: give at least one seed")
    if s["method"] in TRAINED:
        recipe = Recipe(**s["recipe"])
        data_of(s)
        if s["method"] != "forgetting" and not 0 < s["score_epochs"] <= recipe.epochs:
            raise UserError(f"data-scores: score_epochs {s['score_epochs']} must be in [1, {recipe.epochs}] "
                            "(the recipe's epochs)")


def _one_seed(s: dict, data, seed: int, device) -> np.ndarray:
    recipe = Recipe(**s["recipe"])
    model = build(s["model"], data, seed).to(device)
    if s["method"] == "forgetting":
        tracker = ForgettingTracker(len(data.y_train))
        fit(model, data, recipe, terms={"forgetting": tracker.term()}, loss={"ce": 1.0, "forgetting": 0.0},
            seed=seed, health=False)
        return tracker.scores()
    steps_per_epoch = math.ceil(len(data.y_train) / recipe.batch_size)
    fit(model, data, recipe, seed=seed, max_steps=s["score_epochs"] * steps_per_epoch, health=False)
    x, y = data.x_train.to(device), data.y_train.to(device)
    return (el2n_scores if s["method"] == "el2n" else grand_scores)(model, x, y)


@register_step("data-scores", check=check_scores)
def run_scores(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    t0 = time.perf_counter()
    device = step_device()
    data = data_of(s, device)
    n = len(data.y_train)
    if s["method"] == "random":
        scores = random_scores(n, s["seeds"][0])
    else:
        runs = []
        for i, seed in enumerate(s["seeds"]):
            runs.append(_one_seed(s, data, seed, device))
            if callback is not None:
                callback({"event": "seed", "done": i + 1, "total": len(s["seeds"])})
        scores = np.mean(runs, axis=0)
    np.save(out / "scores.npy", scores.astype(np.float64))
    finite = scores[np.isfinite(scores)]
    write_json(out / "scores.json", {
        "method": s["method"], "n": n, "seeds": list(s["seeds"]), "seconds": time.perf_counter() - t0,
        "never_learned": int((~np.isfinite(scores)).sum()),
        "summary": {k: float(f(finite)) if finite.size else None
                    for k, f in (("min", np.min), ("median", np.median), ("max", np.max))}})


def load_scores(directory: Path) -> np.ndarray:
    """The ``scores.npy`` of a finished ``data-scores`` step."""
    return np.load(Path(directory) / "scores.npy")


def check_alpha(alpha: float) -> float:
    """``alpha`` (the KD weight) as a float in [0, 1], else a one-line :class:`UserError`."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise UserError(f"alpha {alpha!r}: use a number in [0, 1], e.g. 0.5") from None
    if not 0.0 <= a <= 1.0:
        raise UserError(f"alpha {alpha}: must be in [0, 1] (0 = cross-entropy only, 1 = KD only)")
    return a


def kept_subset(data, scores: np.ndarray, s: dict):
    """``data`` with its training split cut to the examples :func:`select` keeps, and their indices."""
    if len(scores) != len(data.y_train):
        raise UserError(f"scores for {len(scores)} examples, but the training split has {len(data.y_train)}")
    idx = select(scores, s["keep_fraction"], keep=s.get("keep", "hardest"), seed=s["seed"],
                 labels=data.y_train.cpu().numpy() if s.get("class_balanced") else None)
    t = torch.as_tensor(idx, device=data.x_train.device)
    return replace(data, x_train=data.x_train[t], y_train=data.y_train[t]), idx


def check_subset_train(step: Step, parents: dict) -> None:
    s = step.spec
    check_fraction(s["keep_fraction"])
    if check_alpha(s["alpha"]) > 0 and "teacher" not in parents:
        raise UserError("alpha > 0 distils from a teacher: the step needs a teacher parent")
    data_of(s)


@register_step("subset-train", check=check_subset_train)
def run_subset_train(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    """Train ``student`` on the kept subset with (1-α)·CE + α·KD (Ben-Baruch et al. 2024);
    α = 0: cross-entropy alone, no teacher. Evaluated on the full val/test splits."""
    from compresslab.compress.distill import distill
    from compresslab.runs.checkpoint import load_checkpoint

    s = step.spec
    device = step_device()
    data = data_of(s, device)
    sub, idx = kept_subset(data, load_scores(parents["scores"]), s)
    student = build(s["student"], data, s["seed"]).to(device)
    recipe = Recipe(**s["recipe"])
    alpha = float(s["alpha"])
    if alpha > 0:
        teacher = load_checkpoint(parents["teacher"])[0]
        loss = {"kd": alpha, "ce": 1.0 - alpha} if alpha < 1 else {"kd": 1.0}
        result = distill(teacher, student, sub, recipe, loss=loss, temperature=s["temperature"], seed=s["seed"],
                         callback=callback)
    else:
        result = fit(student, sub, recipe, seed=s["seed"], callback=callback)
    finish_model(out, student, data, extra={**history(result), "kept": int(len(idx))}, precision=recipe.precision)
