"""Lottery tickets: iterative magnitude pruning (IMP) with weight rewinding.

Frankle & Carbin, "The Lottery Ticket Hypothesis" (ICLR 2019), with rewinding to an
early epoch k as in Frankle et al., "Linear Mode Connectivity and the Lottery Ticket
Hypothesis" (ICML 2020):

1. train the dense network, saving its weights θ_k after epoch k (k = 0: the initialisation);
2. prune a fraction ``rate`` of the remaining weights, globally by magnitude;
3. rewind the surviving weights to θ_k (pruned ones stay 0) and train again; repeat 2-3.

The random-reinitialisation control trains each round's mask from a fresh random
initialisation instead of θ_k.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compresslab.compress.prune import apply_masks, global_magnitude_masks, prunable_parameters, sparsity_report
from compresslab.data.core import Dataset
from compresslab.errors import UserError
from compresslab.train.fit import accuracy, fit
from compresslab.train.recipe import Recipe


@dataclass
class ImpResult:
    """What :func:`imp` did.

    ``records``: one dict per round (round 0 is the dense network) with ``round``,
    ``sparsity`` (global, over the pruned parameter set), ``pruned``, ``total``,
    ``val_acc``, ``test_acc``, ``train_loss`` (last epoch), and with the control
    ``control_val_acc`` / ``control_test_acc`` (``None`` in round 0).
    ``masks``: the keep-masks of the final round. ``rewind_state``: θ_k.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    rewind_state: dict[str, torch.Tensor] = field(default_factory=dict)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def rewind(model: nn.Module, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Load ``state`` (parameters and buffers) into ``model`` and zero the pruned entries."""
    model.load_state_dict(state)
    apply_masks(model, masks)


def _forward(callback, **extra):
    if callback is None:
        return None
    return lambda event: callback({**event, **extra})


def _evaluate(model: nn.Module, data: Dataset) -> tuple[float, float]:
    return accuracy(model, data.x_val, data.y_val), accuracy(model, data.x_test, data.y_test)


def imp(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    *,
    rounds: int,
    rate: float = 0.2,
    rewind_epoch: int = 0,
    scope: str = "all",
    seed: int = 0,
    random_reinit_control: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> ImpResult:
    """Iterative magnitude pruning with rewinding to epoch ``rewind_epoch``; ``model``'s current
    weights are the initialisation θ_0.

    Round 0 trains the dense model for ``recipe.epochs`` (one uninterrupted ``fit``; θ_k is
    copied at the end of epoch k). Each of the ``rounds`` following rounds prunes
    ``round(rate * kept)`` of the still-kept entries of :func:`prunable_parameters`
    (``scope``) by global magnitude, rewinds to θ_k and trains ``recipe.epochs - k`` epochs
    with the mask re-applied after every step (``fit`` restarts the lr schedule over those
    epochs; it cannot resume mid-schedule). After r prunes the sparsity is about
    ``1 - (1 - rate) ** r``. Every ``fit`` uses ``seed``, so the run is deterministic.

    ``random_reinit_control``: in each round r >= 1, also train the same mask from a fresh
    initialisation (``build_from_config(model_config(model))`` under seed ``seed + r``)
    and record its accuracy; the model must come from ``create_model``.

    ``callback(event)`` gets every ``fit`` event with ``round`` and ``phase`` (``"ticket"``
    or ``"control"``) added, and ``{"event": "round-start", "round", "phase", "model",
    "masks"}`` just before each round trains (the model already rewound and masked).

    ``model`` is trained in place: it ends as the final round's trained sparse ticket.
    """
    if rounds < 0:
        raise UserError(f"imp: rounds must be >= 0, got {rounds}")
    if not 0.0 < rate < 1.0:
        raise UserError(f"imp: rate must be in (0, 1), got {rate}")
    if not 0 <= rewind_epoch < max(recipe.epochs, 1):
        raise UserError(f"imp: rewind_epoch must be in [0, {recipe.epochs}) for a recipe of "
                        f"{recipe.epochs} epochs, got {rewind_epoch}")
    if random_reinit_control:
        from compresslab.models import build_from_config, model_config

        config = model_config(model)  # fail before training if the model cannot be rebuilt

    params = prunable_parameters(model, scope=scope)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    retrain = recipe.model_copy(update={"epochs": recipe.epochs - rewind_epoch})
    result = ImpResult()

    # Round 0: the dense run; θ_k is snapshotted inside the same fit.
    state = _snapshot(model) if rewind_epoch == 0 else None
    if callback is not None:
        callback({"event": "round-start", "round": 0, "phase": "ticket", "model": model, "masks": masks})

    def dense_callback(event: dict[str, Any]) -> None:
        nonlocal state
        if event["event"] == "epoch" and event["epoch"] == rewind_epoch:
            state = _snapshot(model)
        if callback is not None:
            callback({**event, "round": 0, "phase": "ticket"})

    fitted = fit(model, data, recipe, seed=seed, callback=dense_callback)
    if state is None:  # recipe stopped early (cannot happen with rewind_epoch < epochs)
        raise UserError(f"imp: training stopped before epoch {rewind_epoch}; nothing to rewind to")
    result.rewind_state = state

    for r in range(rounds + 1):
        if r > 0:
            masks = global_magnitude_masks(prunable_parameters(model, scope=scope), rate, masks)
            rewind(model, state, masks)
            if callback is not None:
                callback({"event": "round-start", "round": r, "phase": "ticket", "model": model, "masks": masks})
            fitted = fit(model, data, retrain, seed=seed, callback=_forward(callback, round=r, phase="ticket"),
                         after_step=lambda m: apply_masks(m, masks))
        report = sparsity_report(model, masks)
        val_acc, test_acc = _evaluate(model, data)
        record = {"round": r, "sparsity": report["global"], "pruned": report["pruned"], "total": report["total"],
                  "val_acc": val_acc, "test_acc": test_acc,
                  "train_loss": fitted.history[-1]["loss"] if fitted.history else float("nan")}
        if random_reinit_control:
            record["control_val_acc"] = record["control_test_acc"] = None
            if r > 0:
                torch.manual_seed(seed + r)
                control = build_from_config(config)
                apply_masks(control, masks)
                if callback is not None:
                    callback({"event": "round-start", "round": r, "phase": "control", "model": control,
                              "masks": masks})
                fit(control, data, retrain, seed=seed, callback=_forward(callback, round=r, phase="control"),
                    after_step=lambda m: apply_masks(m, masks))
                record["control_val_acc"], record["control_test_acc"] = _evaluate(control, data)
        result.records.append(record)

    result.masks = {n: m.clone() for n, m in masks.items()}
    return result
