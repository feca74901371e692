"""Step functions: each builds one model into a fresh directory of the run store.

Every model step ends the same way (:func:`finish_model`): checkpoint, cached logits
per split, and ``metrics.json`` (accuracy per split, cost, training history).
A step is a pure function of its spec and its parents' outputs.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import torch

from compresslab.data import Dataset, load_dataset
from compresslab.measure import cost_report
from compresslab.models import create_model
from compresslab.runs.checkpoint import load_checkpoint, save_checkpoint
from compresslab.runs.store import Step, write_json
from compresslab.train import Recipe, evaluate_logits, fit

EVAL_SPLITS = ("val", "test")


@functools.lru_cache(maxsize=4)
def dataset(name: str, val_fraction: float, seed: int) -> Dataset:
    return load_dataset(name, val_fraction=val_fraction, seed=seed)


def data_of(spec: dict) -> Dataset:
    d = spec["data"]
    return dataset(d["name"], d["val_fraction"], d["seed"])


def build(model_spec: dict, data: Dataset, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(model_spec["name"], num_classes=data.num_classes, in_channels=data.in_channels,
                        input_shape=data.input_shape, **model_spec["options"])


def finish_model(out: Path, model: torch.nn.Module, data: Dataset, *, transforms=(), layer_bits=None,
                 extra: dict | None = None) -> None:
    """Save ``model`` (float) + transforms, cache eval logits, write ``metrics.json``.

    Latency is not measured here: it describes the machine at report time, so the
    study measures every model side by side when it collects results.
    """
    from compresslab.compress import apply_transform

    save_checkpoint(out, model, transforms=list(transforms))
    runtime = model.eval()
    for t in transforms:
        runtime = apply_transform(runtime, t)
    metrics: dict = {"accuracy": {}}
    for split in EVAL_SPLITS:
        x, y = data.split(split)
        logits = evaluate_logits(runtime, x)
        np.save(out / f"logits_{split}.npy", logits.numpy().astype(np.float32))
        metrics["accuracy"][split] = float((logits.argmax(1) == y).float().mean()) if len(y) else None
    metrics["cost"] = cost_report(model, data.input_shape, layer_bits=layer_bits or None)
    metrics.update(extra or {})
    write_json(out / "metrics.json", metrics)


def _history(result) -> dict:
    return {"train_seconds": result.seconds, "history": result.history}


def _wd_scales(s: dict, model) -> dict[str, float] | None:
    """With ``scale_substitute_wd`` in the step spec: weight decay of structured pointwise
    substitutes scaled by their compression ratio (Gray et al. 2019)."""
    if not s.get("scale_substitute_wd"):
        return None
    from compresslab.models.linear_subs import weight_decay_scales

    return weight_decay_scales(model)


def run_train(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    data = data_of(s)
    model = build(s["model"], data, s["seed"])
    result = fit(model, data, Recipe(**s["recipe"]), loss=s.get("loss"), seed=s["seed"], callback=callback,
                 weight_decay_scale=_wd_scales(s, model))
    finish_model(out, model, data, extra=_history(result))


def make_teacher(s: dict, data: Dataset, parents: dict[str, Path]):
    """The distillation teacher of a step spec: a checkpoint (``parents["teacher"]``), or
    ``s["teacher"]`` = ``{"kind": "untrained", "model", "seed"}`` or a noise teacher
    ``{"kind": "uniform-noise", "low", "high", "seed"}`` / ``{"kind": "gaussian-noise", "sigma", "seed"}``."""
    from compresslab.compress.distill import NOISE_KINDS, noise_logits

    t = s.get("teacher")
    if t is None:
        return load_checkpoint(parents["teacher"])[0]
    if t["kind"] == "untrained":
        return build(t["model"], data, t["seed"]).eval()
    if t["kind"] in NOISE_KINDS:
        params = {k: v for k, v in t.items() if k in ("low", "high", "sigma", "seed")}
        return noise_logits(t["kind"], data.x_train.shape[0], data.num_classes, **params)
    raise ValueError(f"unknown teacher kind {t['kind']!r}")


def run_distill(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    from compresslab.compress.distill import distill

    s = step.spec
    data = data_of(s)
    teacher = make_teacher(s, data, parents)
    student = build(s["student"], data, s["seed"])
    result = distill(teacher, student, data, Recipe(**s["recipe"]), loss=s["loss"],
                     temperature=s["temperature"], at_points=s.get("at_points"), hint_points=s.get("hint_points"),
                     seed=s["seed"], callback=callback, weight_decay_scale=_wd_scales(s, student))
    finish_model(out, student, data, extra=_history(result))


def resolve_amount(amount, model, scope: str) -> tuple[float, dict | None]:
    """A number, or ``"p_star"`` / ``"safe"`` read off the parent's weights (data-free)."""
    if not isinstance(amount, str):
        return float(amount), None
    from compresslab.measure.weights import prunability

    report = prunability(model, scope=scope)
    key = {"p_star": "p_star", "safe": "safe_amount"}[amount]
    return report[key], {k: report[k] for k in ("p_star", "safe_amount", "kurtosis_of_kurtoses")}


def run_prune(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    from compresslab.compress.prune import apply_masks, prune, sparsity_report
    from compresslab.measure.weights import param_cosine

    s = step.spec
    data = data_of(s)
    parent, _ = load_checkpoint(parents["parent"], apply_transforms=False)
    model = copy.deepcopy(parent)
    if s.get("method") == "channel":
        return _run_channel_prune(s, model, data, out, callback)
    amount, rule = resolve_amount(s["amount"], model, s["scope"])
    masks = prune(model, amount, method=s.get("method", "global-l1"), scope=s["scope"], seed=s["seed"])
    cos_pruned = param_cosine(parent, model, scope=s["scope"])
    result = fit(model, data, Recipe(**s["recipe"]), seed=s["seed"], callback=callback,
                 after_step=lambda m: apply_masks(m, masks))
    sparsity = sparsity_report(model, masks)
    extra = {**_history(result), "amount": amount,
             "sparsity": sparsity,  # global, pruned, total and per_tensor
             "param_cosine": {"after_pruning": cos_pruned,
                              "after_finetuning": param_cosine(parent, model, scope=s["scope"])}}
    if rule:
        extra["amount_rule"] = {"rule": s["amount"], **rule}
    finish_model(out, model, data, extra=extra)


def _run_channel_prune(s: dict, model, data: Dataset, out: Path, callback) -> None:
    """Structured (channel) pruning through Torch-Pruning, then plain fine-tuning."""
    from compresslab.compress.structured import structured_prune

    batch = (data.x_train[:128], data.y_train[:128]) if s["importance"] == "taylor" else None
    report = structured_prune(model, data.input_shape, amount=s["amount"], importance=s["importance"],
                              global_pruning=s["global_channels"], data=batch)
    result = fit(model, data, Recipe(**s["recipe"]), seed=s["seed"], callback=callback)
    keep = ("params_before", "params_after", "macs_before", "macs_after", "mac_ratio", "param_ratio", "protected")
    finish_model(out, model, data, extra={**_history(result), "amount": s["amount"],
                                          "structured": {k: report[k] for k in keep}})


def run_quantize(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    from compresslab.compress.quantize import DYNAMIC_INT8, quantized_layer_bits

    s = step.spec
    data = data_of(s)
    model, cfg = load_checkpoint(parents["parent"], apply_transforms=False)
    transforms = [*cfg["transforms"], DYNAMIC_INT8]
    finish_model(out, model, data, transforms=transforms,
                 layer_bits=quantized_layer_bits(model, transforms))


RUNNERS = {"train": run_train, "distill": run_distill, "prune": run_prune, "quantize": run_quantize}
