"""Per-layer sensitivity and mixed-precision bit assignment.

**Sensitivity**: quantise one conv/linear layer at a time (fake-quant weights at each width,
optionally its input too), or magnitude-prune one layer at a time within that layer, with
every other layer left at fp32 and dense, and measure on one split how far the model moves:

* classification: the accuracy drop from the parent, the agreement of the argmax labels
  and the mean JS divergence of the softmax outputs (``drift`` = JS, in nats);
* regression (``bragg:synthetic``): the increase of the mean centre error (pixels) and the
  MSE between parent and child outputs (``drift`` = output MSE).

Each layer also gets its BOPs at every width (``measure.cost.layer_costs``: the BOPs
formula there, weights at ``b`` bits, inputs at ``act_bits`` or 32) and its share of the
fp32 model's BOPs.

**Assignment**: one width per layer so that the total cost (BOPs, or weight bytes) fits a
budget and the summed per-layer drift, an additive model of the whole network's drift,
is smallest. :func:`assign_greedy` starts every layer at its widest option and repeatedly
narrows the layer whose next width costs the least drift per unit of cost saved, until the
budget holds; :func:`assign_exact` solves the multiple-choice knapsack by dynamic
programming over Pareto frontiers, so its summed drift is the optimum of that model.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from compresslab.compress.prune import layer_magnitude_masks
from compresslab.compress.quantize import attach_fake_quant, calibrate, check_bits, layer_type
from compresslab.data import Dataset
from compresslab.errors import UserError
from compresslab.measure.cost import layer_costs
from compresslab.measure.function import accuracy, agreement, compare_outputs, js_divergence, mean_distance
from compresslab.train import evaluate_logits

DEFAULT_BITS = (8, 6, 4, 3, 2)
OBJECTIVES = ("drift", "drop")
COSTS = ("bops", "bytes")


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the layers fake-quant can take (conv and linear), in module order."""
    return {n: m for n, m in model.named_modules() if layer_type(m)}


def quantize_one(model: nn.Module, name: str, bits: int, *, act_bits: int | None = None, per_channel: bool = False,
                 symmetric: bool = True, calib: list[torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` with layer ``name`` alone fake-quantised to ``bits`` (and its input
    to ``act_bits``, ranges calibrated on ``calib``); every other layer is untouched."""
    child = copy.deepcopy(model)
    attach_fake_quant(child, {"layers": {name: bits}}, act_bits={"layers": {name: act_bits}} if act_bits else None,
                      per_channel=per_channel, symmetric=symmetric)
    if act_bits:
        if not calib:
            raise UserError("activation bits need calibration batches")
        calibrate(child, calib)
    return child.eval()


def prune_one(model: nn.Module, name: str, sparsity: float) -> nn.Module:
    """A copy of ``model`` whose layer ``name`` lost the ``sparsity`` fraction of its weights
    with the smallest magnitude; every other layer is untouched."""
    child = copy.deepcopy(model)
    w = child.get_submodule(name).weight
    mask = layer_magnitude_masks({name: w}, sparsity)[name]
    with torch.no_grad():
        w.mul_(mask)
    return child.eval()


def effect(logits: torch.Tensor, parent: torch.Tensor, y: torch.Tensor, task: str) -> dict:
    """How far ``logits`` moved from the ``parent``'s on targets ``y``: ``score`` (accuracy, or the
    mean centre error for regression), ``drop`` (accuracy lost, or error added: larger is
    worse either way) and ``drift`` (JS divergence, or output MSE), plus ``agreement`` and
    ``js_divergence`` (classification) or ``mse`` (regression)."""
    if task == "regression":
        score, base = mean_distance(logits, y), mean_distance(parent, y)
        mse = compare_outputs(parent, logits)["mse"]
        return {"score": score, "drop": score - base, "drift": mse, "mse": mse}
    score, base = accuracy(logits, y), accuracy(parent, y)
    js = js_divergence(parent, logits)
    return {"score": score, "drop": base - score, "drift": js, "agreement": agreement(parent, logits),
            "js_divergence": js}


def _check_sparsity(s: float) -> float:
    if not 0.0 < s < 1.0:
        raise UserError(f"sparsity {s}: must be between 0 and 1 (exclusive), e.g. 0.5")
    return float(s)


def layer_sensitivity(model: nn.Module, data: Dataset, *, bits: Sequence[int] = DEFAULT_BITS,
                      sparsities: Sequence[float] = (), act_bits: int | None = None, split: str = "val",
                      per_channel: bool = False, symmetric: bool = True, calib: list[torch.Tensor] | None = None,
                      tick: Callable[[], None] | None = None) -> dict:
    """The sensitivity table of float ``model`` on ``data``'s ``split`` (see the module doc).

    Returns ``task``, ``split``, ``score`` (the metric's name), ``parent_score``, ``bits``,
    ``sparsities``, ``act_bits``, ``layers`` (one dict per layer: ``name``, ``type``, ``params``
    (weight elements), ``bops_fp32``, ``bops_share``, ``bops`` and ``bytes`` ``{bits: ...}`` at
    each width, ``quant`` ``{bits: effect}``, ``prune`` ``{sparsity: effect}``) and
    ``total_bops_fp32``. ``tick`` is called after every measured child."""
    bits = sorted({check_bits(int(b), "--bits") for b in bits}, reverse=True)
    sparsities = sorted({_check_sparsity(s) for s in sparsities})
    if not bits:
        raise UserError("--bits: give at least one width, e.g. 8,6,4,3,2")
    if act_bits is not None:
        check_bits(act_bits, "--act-bits")
    x, y = data.split(split)
    if len(y) == 0:
        raise UserError(f"the {split} split of {data.name} is empty; choose another --split")
    model = model.eval()
    parent = evaluate_logits(model, x).cpu()
    y = y.cpu()
    layers = quant_layers(model)
    shape = data.input_shape
    fp32 = {r["name"]: r for r in layer_costs(model, shape)}
    at = {b: {r["name"]: r["bops"] for r in layer_costs(model, shape, weight_bits=b, act_bits=act_bits or 32)}
          for b in bits}
    total = sum(r["bops"] for r in fp32.values())
    rows = []
    for name, m in layers.items():
        if name not in fp32:
            continue  # a layer the forward pass never calls costs nothing and changes nothing
        n = m.weight.numel()
        row = {"name": name, "type": layer_type(m), "params": n, "bops_fp32": fp32[name]["bops"],
               "bops_share": fp32[name]["bops"] / total, "bops": {b: at[b][name] for b in bits},
               "bytes": {b: n * b / 8 for b in bits}, "quant": {}, "prune": {}}
        for b in bits:
            child = quantize_one(model, name, b, act_bits=act_bits, per_channel=per_channel, symmetric=symmetric,
                                 calib=calib)
            row["quant"][b] = effect(evaluate_logits(child, x).cpu(), parent, y, data.task)
            if tick:
                tick()
        for s in sparsities:
            row["prune"][s] = effect(evaluate_logits(prune_one(model, name, s), x).cpu(), parent, y, data.task)
            if tick:
                tick()
        rows.append(row)
    score = "centre_error_px" if data.task == "regression" else "accuracy"
    base = mean_distance(parent, y) if data.task == "regression" else accuracy(parent, y)
    return {"task": data.task, "split": split, "score": score, "parent_score": base, "bits": bits,
            "sparsities": sparsities, "act_bits": act_bits, "per_channel": per_channel, "symmetric": symmetric,
            "layers": rows, "total_bops_fp32": total}


# -- assignment ----------------------------------------------------------------------------------


def options(table: dict, *, cost: str = "bops", objective: str = "drift") -> dict[str, list[tuple[int, float, float]]]:
    """``{layer: [(bits, cost, loss), ...]}`` widest first, from a :func:`layer_sensitivity`
    table (JSON-loaded or not: width keys may be strings)."""
    if cost not in COSTS:
        raise UserError(f"cost {cost!r}: use {' or '.join(COSTS)}")
    if objective not in OBJECTIVES:
        raise UserError(f"objective {objective!r}: use {' or '.join(OBJECTIVES)}")
    out = {}
    for row in table["layers"]:
        costs = {int(b): float(c) for b, c in row[cost].items()}
        quant = {int(b): e for b, e in row["quant"].items()}
        out[row["name"]] = [(b, costs[b], float(quant[b][objective])) for b in sorted(costs, reverse=True)]
    if not out:
        raise UserError("the sensitivity table has no layers")
    return out


def totals(opts: dict, assignment: dict[str, int]) -> tuple[float, float]:
    """``(cost, loss)`` summed over the layers of ``assignment``."""
    pick = {layer: {b: (c, loss) for b, c, loss in choices} for layer, choices in opts.items()}
    cost = sum(pick[layer][b][0] for layer, b in assignment.items())
    return cost, sum(pick[layer][b][1] for layer, b in assignment.items())


def check_budget(opts: dict, budget: float, unit: str = "BOPs") -> None:
    """A one-line :class:`UserError` when even every layer at its narrowest width costs more."""
    floor = sum(min(c for _, c, _ in choices) for choices in opts.values())
    if not budget > 0 or floor > budget:
        raise UserError(f"budget {budget:,.0f} {unit} is below the smallest network ({floor:,.0f} {unit} with every "
                        "layer at its lowest bits); raise the budget or add a lower width to --bits")


def assign_greedy(opts: dict, budget: float) -> dict[str, int]:
    """Start at every layer's widest option; while over ``budget``, narrow the layer whose next
    width adds the least loss per unit of cost saved."""
    check_budget(opts, budget)
    at = {layer: 0 for layer in opts}
    cost = sum(choices[0][1] for choices in opts.values())
    while cost > budget:
        best, best_rate = None, None
        for layer, i in at.items():
            choices = opts[layer]
            if i + 1 >= len(choices):
                continue
            saved = choices[i][1] - choices[i + 1][1]
            rate = (choices[i + 1][2] - choices[i][2]) / saved if saved > 0 else float("inf")
            if best_rate is None or rate < best_rate:
                best, best_rate = layer, rate
        cost -= opts[best][at[best]][1] - opts[best][at[best] + 1][1]
        at[best] += 1
    return {layer: opts[layer][i][0] for layer, i in at.items()}


def assign_exact(opts: dict, budget: float) -> dict[str, int]:
    """The assignment of least summed loss within ``budget`` (the multiple-choice knapsack),
    by dynamic programming over the Pareto frontier: after each layer keep only the partial
    assignments that no other beats on both cost and loss. Adding the same layer's option to
    two partials keeps their order, so a dominated partial never completes an optimum; costs
    are exact floats, nothing is discretised."""
    check_budget(opts, budget)
    front: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    for choices in opts.values():
        cand = sorted(((c + dc, loss + dl, picks + (b,)) for c, loss, picks in front for b, dc, dl in choices
                       if c + dc <= budget), key=lambda t: (t[0], t[1]))
        front, best = [], float("inf")
        for t in cand:
            if t[1] < best:
                front.append(t)
                best = t[1]
    _, _, picks = min(front, key=lambda t: (t[1], t[0]))
    return dict(zip(opts, picks))


ASSIGNERS = {"greedy": assign_greedy, "exact": assign_exact}
