"""The ``prune`` step: unstructured masks (``global-l1``, ``layer-l1``, ``random``) kept
through fine-tuning, or structured channel pruning (``channel``) through Torch-Pruning."""
from __future__ import annotations

import copy
from pathlib import Path

from compresslab.compress.prune import (
    METHODS,
    apply_masks,
    prunable_parameters,
    prune,
    resolve_amount,
    sparsity_report,
)
from compresslab.data import Dataset
from compresslab.errors import UserError
from compresslab.measure.weights import param_cosine
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.runs.store import Step
from compresslab.steps.common import data_of, finish_model, history, parent_model, step_device
from compresslab.steps.registry import register_step
from compresslab.train import Recipe, fit


def _taylor_batch(s: dict, data: Dataset, n: int = 128):
    return (data.x_train[:n], data.y_train[:n]) if s["importance"] == "taylor" else None


def check_prune(step: Step, parents: dict) -> None:
    s = step.spec
    data = data_of(s)
    model = parent_model(parents["parent"], data)
    if model is None:
        return
    if s.get("method") == "channel":
        from compresslab.compress.structured import structured_prune

        structured_prune(model, data.input_shape, amount=s["amount"], importance=s["importance"],
                         global_pruning=s["global_channels"], data=_taylor_batch(s, data, 2),
                         round_to=s.get("round_to"))  # a dry run
    elif s.get("method", "global-l1") not in METHODS:
        raise UserError(f"pruning method {s['method']!r}: use one of {', '.join((*METHODS, 'channel'))}")
    elif not prunable_parameters(model, scope=s["scope"]):
        raise UserError(f"the model has no parameters to prune in scope {s['scope']!r}")


@register_step("prune", check=check_prune)
def run_prune(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    dev = step_device()
    data = data_of(s, dev)
    parent, _ = load_checkpoint(parents["parent"], apply_transforms=False)
    parent.to(dev)  # the prunability sort and the masks run on the device too
    model = copy.deepcopy(parent)
    if s.get("method") == "channel":
        return _run_channel_prune(s, model, data, out, callback)
    amount, rule = resolve_amount(s["amount"], model, s["scope"])
    masks = prune(model, amount, method=s.get("method", "global-l1"), scope=s["scope"], seed=s["seed"])
    cos_pruned = param_cosine(parent, model, scope=s["scope"])
    recipe = Recipe(**s["recipe"])
    result = fit(model, data, recipe, seed=s["seed"], callback=callback, after_step=lambda m: apply_masks(m, masks))
    sparsity = sparsity_report(model, masks)
    extra = {**history(result), "amount": amount,
             "sparsity": sparsity,  # global, pruned, total and per_tensor
             "param_cosine": {"after_pruning": cos_pruned,
                              "after_finetuning": param_cosine(parent, model, scope=s["scope"])}}
    if rule:
        extra["amount_rule"] = {"rule": s["amount"], **rule}
    finish_model(out, model, data, extra=extra, precision=recipe.precision)


def _run_channel_prune(s: dict, model, data: Dataset, out: Path, callback) -> None:
    """Structured (channel) pruning through Torch-Pruning, then plain fine-tuning."""
    from compresslab.compress.structured import structured_prune

    report = structured_prune(model, data.input_shape, amount=s["amount"], importance=s["importance"],
                              global_pruning=s["global_channels"], data=_taylor_batch(s, data),
                              round_to=s.get("round_to"))
    recipe = Recipe(**s["recipe"])
    result = fit(model, data, recipe, seed=s["seed"], callback=callback)
    keep = ("params_before", "params_after", "macs_before", "macs_after", "mac_ratio", "param_ratio", "protected")
    finish_model(out, model, data, extra={**history(result), "amount": s["amount"],
                                          "structured": {k: report[k] for k in keep}}, precision=recipe.precision)
