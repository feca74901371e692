"""Lottery tickets: iterative magnitude pruning (IMP) with weight rewinding.

Frankle & Carbin, "The Lottery Ticket Hypothesis" (ICLR 2019), with rewinding to an
early epoch k as in Frankle et al., "Linear Mode Connectivity and the Lottery Ticket
Hypothesis" (ICML 2020):

1. train the dense network, saving its weights θ_k after epoch k (k = 0: the initialisation);
2. prune a fraction ``rate`` of the remaining weights, globally by magnitude;
3. rewind the surviving weights to θ_k (pruned ones stay 0) and train again; repeat 2-3.

The random-reinitialisation control trains each round's mask from a fresh random
initialisation instead of θ_k.

Distilled pruning (McDermott & Cummings, "Distilled Pruning: Using Synthetic Data to Win the
Lottery", 2023; McDermott & Parhi, "Finding Stable Subnetworks at Initialization with Dataset
Distillation", 2025): with ``inner_data`` the train-prune-rewind loop (dense round included)
trains on a small synthetic set, rewinding to the initialisation; each round's mask, applied
to θ_0, is then trained once on the real data and that network is the round's ticket.
"""
from __future__ import annotations

import copy
import time
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
    ``costs``: one dict per round with ``seconds`` (wall time of the round's ticket and
    inner training, control excluded) and ``points_real`` / ``points_inner`` (training
    examples seen, examples x epochs run, on the real and on the inner set).
    ``masks``: the keep-masks of the final round. ``rewind_state``: θ_k.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    rewind_state: dict[str, torch.Tensor] = field(default_factory=dict)
    costs: list[dict[str, float]] = field(default_factory=list)


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
    inner_data: Dataset | None = None,
    inner_recipe: Recipe | None = None,
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

    ``inner_data`` (distilled pruning): round 0 and the search loop train on
    ``inner_data.x_train`` with ``inner_recipe`` (default ``recipe``): train dense, prune
    ``rate`` by magnitude, rewind to θ_0, train the sparse net on the inner set, prune again
    (the last round skips the inner training, whose only use is the next mask). Each round's
    ticket is a copy of θ_0 with that round's mask trained on ``data`` with ``recipe`` (phase
    ``"ticket"``; the inner loop's events have phase ``"inner"``); its accuracy is the round's.
    Needs ``rewind_epoch == 0`` and an inner set with ``data``'s input shape and classes.
    In ``costs``, ``points_inner`` = len(inner set) x inner epochs run and ``points_real`` =
    len(real train) x epochs of the ticket's real training.

    ``model`` is trained in place: it ends as the final round's trained sparse ticket.
    """
    if rounds < 0:
        raise UserError(f"imp: rounds must be >= 0, got {rounds}")
    if not 0.0 < rate < 1.0:
        raise UserError(f"imp: rate must be in (0, 1), got {rate}")
    if not 0 <= rewind_epoch < max(recipe.epochs, 1):
        raise UserError(f"imp: rewind_epoch must be in [0, {recipe.epochs}) for a recipe of "
                        f"{recipe.epochs} epochs, got {rewind_epoch}")
    if inner_data is not None:
        check_inner_data(data, inner_data, rewind_epoch)
    config = None
    if random_reinit_control:
        from compresslab.models import model_config

        config = model_config(model)  # fail before training if the model cannot be rebuilt
    if inner_data is not None:
        return _imp_inner(model, data, inner_data, recipe, inner_recipe or recipe, rounds=rounds, rate=rate,
                          scope=scope, seed=seed, config=config, callback=callback)

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

    t0 = time.perf_counter()
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
            t0 = time.perf_counter()
            fitted = fit(model, data, retrain, seed=seed, callback=_forward(callback, round=r, phase="ticket"),
                         after_step=lambda m: apply_masks(m, masks))
        result.costs.append({"seconds": time.perf_counter() - t0,
                             "points_real": len(data.y_train) * len(fitted.history), "points_inner": 0})
        result.records.append(_record(r, model, masks, data, fitted,
                                      config if random_reinit_control else None, retrain, seed, callback))

    result.masks = {n: m.clone() for n, m in masks.items()}
    return result


def check_inner_data(data: Dataset, inner: Dataset, rewind_epoch: int) -> None:
    """Raise :class:`UserError` unless ``inner`` can stand in for ``data``'s training split."""
    if inner.input_shape != data.input_shape:
        raise UserError(f"imp: the inner data {inner.name} has inputs {inner.input_shape} but {data.name} has "
                        f"{data.input_shape}; distil the inner set from the same data")
    if inner.num_classes != data.num_classes or inner.task != data.task:
        raise UserError(f"imp: the inner data {inner.name} has {inner.num_classes} classes but {data.name} has "
                        f"{data.num_classes}; distil the inner set from the same data")
    if len(inner.y_train) == 0:
        raise UserError(f"imp: the inner data {inner.name} has no training examples")
    if rewind_epoch != 0:
        raise UserError(f"imp: with inner data the loop rewinds to the initialisation; rewind_epoch must be 0, "
                        f"got {rewind_epoch}")


def _record(r: int, net: nn.Module, masks, data: Dataset, fitted, config: dict | None, recipe: Recipe, seed: int,
            callback) -> dict[str, Any]:
    """Round ``r``'s record of the trained ``net`` (see :class:`ImpResult`); with ``config`` (the
    random-reinit control) a fresh network with the same mask is trained and scored too."""
    report = sparsity_report(net, masks)
    val_acc, test_acc = _evaluate(net, data)
    record = {"round": r, "sparsity": report["global"], "pruned": report["pruned"], "total": report["total"],
              "val_acc": val_acc, "test_acc": test_acc,
              "train_loss": fitted.history[-1]["loss"] if fitted.history else float("nan")}
    if config is not None:
        record["control_val_acc"] = record["control_test_acc"] = None
        if r > 0:
            record["control_val_acc"], record["control_test_acc"] = _train_control(
                config, masks, data, recipe, seed, r, callback)
    return record


def _train_control(config, masks, data, recipe, seed, r, callback) -> tuple[float, float]:
    from compresslab.models import build_from_config

    torch.manual_seed(seed + r)
    control = build_from_config(config)
    apply_masks(control, masks)
    if callback is not None:
        callback({"event": "round-start", "round": r, "phase": "control", "model": control, "masks": masks})
    fit(control, data, recipe, seed=seed, callback=_forward(callback, round=r, phase="control"),
        after_step=lambda m: apply_masks(m, masks))
    return _evaluate(control, data)


def _imp_inner(model: nn.Module, data: Dataset, inner: Dataset, recipe: Recipe, inner_recipe: Recipe, *,
               rounds: int, rate: float, scope: str, seed: int, config: dict | None,
               callback: Callable[[dict[str, Any]], None] | None) -> ImpResult:
    """:func:`imp` with the search loop on ``inner`` (see its docstring); rewinds to θ_0."""
    state = _snapshot(model)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model, scope=scope).items()}
    result = ImpResult(rewind_state=state)
    ticket = model
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        inner_epochs = 0
        if r > 0:  # the mask comes from the inner-trained weights of the previous round
            masks = global_magnitude_masks(prunable_parameters(model, scope=scope), rate, masks)
        if r < rounds:  # the last round's mask is final: no inner training needed
            rewind(model, state, masks)
            if callback is not None:
                callback({"event": "round-start", "round": r, "phase": "inner", "model": model, "masks": masks})
            inner_fit = fit(model, inner, inner_recipe, seed=seed, callback=_forward(callback, round=r, phase="inner"),
                            after_step=lambda m: apply_masks(m, masks))
            inner_epochs = len(inner_fit.history)
        ticket = copy.deepcopy(model)
        rewind(ticket, state, masks)
        if callback is not None:
            callback({"event": "round-start", "round": r, "phase": "ticket", "model": ticket, "masks": masks})
        fitted = fit(ticket, data, recipe, seed=seed, callback=_forward(callback, round=r, phase="ticket"),
                     after_step=lambda m: apply_masks(m, masks))
        result.costs.append({"seconds": time.perf_counter() - t0,
                             "points_real": len(data.y_train) * len(fitted.history),
                             "points_inner": len(inner.y_train) * inner_epochs})
        result.records.append(_record(r, ticket, masks, data, fitted, config, recipe, seed, callback))
    model.load_state_dict(ticket.state_dict())
    result.masks = {n: m.clone() for n, m in masks.items()}
    return result
