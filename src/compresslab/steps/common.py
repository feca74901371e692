"""What every step kind shares: the dataset cache, model building, and how a model step ends.

Every model step ends the same way (:func:`finish_model`): checkpoint, cached logits
per split, and ``metrics.json`` (accuracy per split, cost, training history).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from compresslab.data import Dataset, load_dataset
from compresslab.errors import UserError
from compresslab.measure import cost_report
from compresslab.models import create_model
from compresslab.runs.checkpoint import load_checkpoint, save_checkpoint
from compresslab.runs.store import Step, write_json
from compresslab.train import evaluate_logits

EVAL_SPLITS = ("val", "test")


@functools.lru_cache(maxsize=4)
def dataset(name: str, val_fraction: float, seed: int) -> Dataset:
    return load_dataset(name, val_fraction=val_fraction, seed=seed)


def data_of(spec: dict) -> Dataset:
    """The dataset a step spec names in its ``data`` block."""
    d = spec["data"]
    return dataset(d["name"], d["val_fraction"], d["seed"])


def build(model_spec: dict, data: Dataset, seed: int) -> torch.nn.Module:
    """``{"name", "options"}`` built for ``data``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return create_model(model_spec["name"], num_classes=data.num_classes, in_channels=data.in_channels,
                        input_shape=data.input_shape, **model_spec["options"])


def parent_model(parent, data: Dataset) -> torch.nn.Module | None:
    """A step's parent as a float model, for checks: a checkpoint directory, or a train
    :class:`Step` that has not run yet (its architecture, untrained: the shapes a check
    needs); None when neither is at hand."""
    if isinstance(parent, Step):
        return build(parent.spec["model"], data, parent.spec["seed"]) if parent.kind == "train" else None
    return load_checkpoint(parent, apply_transforms=False)[0]


def checkpoint_logits(checkpoint: Path, data: Dataset, split: str) -> torch.Tensor:
    """The logits of a checkpoint on one split; a :class:`UserError` when it does not fit the data."""
    model, cfg = load_checkpoint(checkpoint)
    m = cfg["model"]
    if m["num_classes"] != data.num_classes or m["in_channels"] != data.in_channels:
        raise UserError(f"{checkpoint} was built for {m['in_channels']} input channels and {m['num_classes']} "
                        f"classes; dataset {data.name} has {data.in_channels} and {data.num_classes}")
    x, _ = data.split(split)
    try:
        return evaluate_logits(model, x)
    except RuntimeError as e:
        raise UserError(f"{checkpoint} cannot run on {data.name} inputs of shape {tuple(x.shape[1:])}: "
                        f"{str(e).splitlines()[0]}") from None


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


def history(result) -> dict:
    """The ``metrics.json`` entries of a :class:`~compresslab.train.FitResult`."""
    return {"train_seconds": result.seconds, "history": result.history}


def wd_scales(s: dict, model) -> dict[str, float] | None:
    """With ``scale_substitute_wd`` in the step spec: weight decay of structured pointwise
    substitutes scaled by their compression ratio (Gray et al. 2019)."""
    if not s.get("scale_substitute_wd"):
        return None
    from compresslab.models.linear_subs import weight_decay_scales

    return weight_decay_scales(model)
