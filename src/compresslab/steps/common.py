"""What every step kind shares: the dataset cache, model building, and how a model step ends.

Every model step ends the same way (:func:`finish_model`): checkpoint, cached logits
per split, and ``metrics.json`` (accuracy per split, or on regression data
``centre_error_px``: the mean Euclidean distance of outputs to targets; cost, training history).
On token-level data the cached logits are ``(N, L, K)`` and accuracy is the fraction of
valid tokens (label not -100) predicted right.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import torch

from compresslab import device as devices
from compresslab.data import Dataset, load_dataset
from compresslab.data.core import valid_tokens
from compresslab.errors import UserError
from compresslab.measure import cost_report
from compresslab.measure.function import mean_distance
from compresslab.models import create_model
from compresslab.models.hf import check_text_model, text_model_options
from compresslab.runs.checkpoint import load_checkpoint, read_model_json, save_checkpoint
from compresslab.runs.store import Step, read_json, write_json
from compresslab.train import Recipe, evaluate_logits
from compresslab.train.fit import auto_stream

EVAL_SPLITS = ("val", "test")
#: The ``metrics.json`` key of a model's score per split, by :attr:`Dataset.task`.
SCORE = {"classification": "accuracy", "regression": "centre_error_px"}


@functools.lru_cache(maxsize=4)
def dataset(name: str, val_fraction: float, seed: int) -> Dataset:
    return load_dataset(name, val_fraction=val_fraction, seed=seed)


@functools.lru_cache(maxsize=2)
def _dataset_on(name: str, val_fraction: float, seed: int, device: str) -> Dataset:
    return dataset(name, val_fraction, seed).to(device)


def data_of(spec: dict, device: torch.device | None = None) -> Dataset:
    """The dataset a step spec names in its ``data`` block; with ``device``, a copy kept
    there (moved once per process, so consecutive steps on a GPU share it), unless its
    training split is too large for the device's free memory: then it stays in host memory
    and training streams it (:func:`compresslab.train.fit.auto_stream`)."""
    d = spec["data"]
    data = dataset(d["name"], d["val_fraction"], d["seed"])
    if device is None or device.type == "cpu" or auto_stream(data.x_train, data.y_train, device):
        return data
    return _dataset_on(d["name"], d["val_fraction"], d["seed"], str(device))


def step_device() -> torch.device:
    """The device the current runtime (:func:`compresslab.device.current`) runs steps on."""
    return devices.current().torch_device


def build(model_spec: dict, data: Dataset, seed: int) -> torch.nn.Module:
    """``{"name", "options"}`` built for ``data``, initialised from ``seed``. On text data the
    model also gets the data's ``vocab_size``, ``pad_id`` and sequence ``head`` when it takes
    them and the spec does not set them, and a model that cannot embed the data's token ids
    is refused (:mod:`compresslab.models.hf`)."""
    torch.manual_seed(seed)
    options = text_model_options(model_spec["name"], data.text, model_spec["options"])
    model = create_model(model_spec["name"], num_classes=data.num_classes, in_channels=data.in_channels,
                         input_shape=data.input_shape, **options)
    check_text_model(model, data.text)
    return model


def data_seed(spec: dict) -> int:
    """The seed of a training step's batch order (and of everything random during training):
    ``data_seed`` when the spec splits it from the initialisation ``seed``, else ``seed``."""
    return spec.get("data_seed", spec["seed"])


def parent_model(parent, data: Dataset) -> torch.nn.Module | None:
    """A step's parent as a float model, for checks: a checkpoint directory, or a train
    :class:`Step` that has not run yet (its architecture, untrained: the shapes a check
    needs); None when neither is at hand."""
    if isinstance(parent, Step):
        return build(parent.spec["model"], data, parent.spec["seed"]) if parent.kind == "train" else None
    return load_checkpoint(parent, apply_transforms=False)[0]


def runnable_device(transforms: list[dict]) -> torch.device:
    """The current runtime's device, or the CPU for torch int8 models (CPU-only kernels)."""
    if any(t["kind"].startswith("quantize-") for t in transforms):
        return torch.device("cpu")
    return step_device()


def load_model(checkpoint: Path) -> torch.nn.Module:
    """A checkpoint ready to run (transforms applied), on :func:`runnable_device`."""
    model, cfg = load_checkpoint(checkpoint)
    return model.to(runnable_device(cfg["transforms"]))


def checkpoint_logits(checkpoint: Path, data: Dataset, split: str) -> torch.Tensor:
    """The logits of a checkpoint on one split (computed on :func:`runnable_device`, returned
    on the CPU); a :class:`UserError` when it does not fit the data."""
    model, cfg = load_checkpoint(checkpoint)
    model.to(runnable_device(cfg["transforms"]))
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
                 extra: dict | None = None, precision: str = "fp32") -> None:
    """Save ``model`` (float, device-free) + transforms, cache eval logits (evaluated where
    the model is), write ``metrics.json`` with ``runtime``: the device, its name, torch and
    CUDA versions, ``precision`` and the determinism flag.

    Latency is not measured here: it describes the machine at report time, so the
    study measures every model side by side when it collects results.
    """
    from compresslab.compress import apply_transform

    save_checkpoint(out, model, transforms=list(transforms))
    runtime = model.eval()
    for t in transforms:
        runtime = apply_transform(runtime, t)
    score = SCORE[data.task]
    metrics: dict = {score: {}}
    for split in EVAL_SPLITS:
        x, y = data.split(split)
        logits = evaluate_logits(runtime, x).cpu()
        np.save(out / f"logits_{split}.npy", logits.numpy().astype(np.float32))
        if not len(y):
            metrics[score][split] = None
        elif data.task == "regression":
            metrics[score][split] = mean_distance(logits, y.cpu())
        else:  # token-level: over the valid tokens
            scored, y = valid_tokens(logits, y.cpu())
            metrics[score][split] = float((scored.argmax(-1) == y).float().mean()) if len(y) else None
    metrics["cost"] = _cost(model, data, layer_bits)
    metrics["runtime"] = devices.record(devices.model_device(model), precision)
    metrics.update(extra or {})
    write_json(out / "metrics.json", metrics)


def _cost(model: torch.nn.Module, data: Dataset, layer_bits) -> dict:
    """:func:`cost_report` at the data's input shape. Token-id inputs that its (float) probe
    input cannot feed get the counts that need no input (``macs`` and ``bops`` None)."""
    try:
        return cost_report(model, data.input_shape, layer_bits=layer_bits or None)
    except (UserError, RuntimeError, TypeError, IndexError):
        if data.x_train.is_floating_point():
            raise
        return cost_report(model, None, layer_bits=layer_bits or None)


def checkpoint_step(checkpoint: Path) -> Step:
    """A checkpoint on disk as a parent step: named by the SHA-256 of its model.json +
    model.safetensors (what a child step depends on)."""
    read_model_json(checkpoint)  # a clear error for a missing or foreign directory
    h = hashlib.sha256()
    for name in ("model.json", "model.safetensors"):
        path = Path(checkpoint) / name
        if not path.is_file():
            raise UserError(f"{path}: file not found; the checkpoint is incomplete")
        h.update(path.read_bytes())
    return Step("checkpoint", {"sha256": h.hexdigest()}, label=str(checkpoint))


def parent_recipe(checkpoint: Path) -> Recipe:
    """The recipe compresslab trained ``checkpoint`` with (from the store's spec.json), else the default."""
    spec_file = Path(checkpoint) / "spec.json"
    base = read_json(spec_file)["spec"].get("recipe") if spec_file.is_file() else None
    return Recipe(**base) if base else Recipe()


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
