"""Named feature points and capturing their outputs with forward hooks.

A feature point maps a name (``"stage1"``, ``"pool"``) to a module path usable
with ``model.get_submodule(path)``; the feature is that module's output. Models
never compute features in ``forward``: ``capture_features`` hooks them instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn as nn

from compresslab.errors import UserError


def feature_points(model: nn.Module) -> dict[str, str]:
    """The model's feature points ``{name: module path}``.

    Uses ``model.feature_points`` when present; else a timm model's ``feature_info``
    (its stages, each named by its module path); else a Hugging Face model's transformer
    layers (:func:`transformer_blocks`); otherwise every top-level child except the last
    (usually the classifier), each named by its path.
    """
    points = getattr(model, "feature_points", None)
    if isinstance(points, dict):
        return dict(points)
    timm_points = _feature_info_points(model)
    if timm_points:
        return timm_points
    if hasattr(model, "config") and hasattr(model, "base_model_prefix"):  # a transformers PreTrainedModel
        blocks = transformer_blocks(model)
        if blocks:
            return blocks
    children = [name for name, _ in model.named_children()]
    return {name: name for name in children[:-1]}


def _feature_info_points(model: nn.Module) -> dict[str, str]:
    """``{path: path}`` for every module a timm model lists in ``feature_info`` (dicts or a
    ``FeatureInfo`` with a ``"module"`` entry each) that exists in the model; else empty."""
    info = getattr(model, "feature_info", None)
    if info is None or isinstance(info, (str, bytes)):
        return {}
    try:
        paths = [entry["module"] for entry in info]
    except (TypeError, KeyError, IndexError):
        return {}
    known = dict(model.named_modules())
    return {p: p for p in paths if isinstance(p, str) and p in known}


def transformer_blocks(model: nn.Module) -> dict[str, str]:
    """A transformer's layers as feature points: the first ``nn.ModuleList`` named
    ``layer``, ``layers``, ``h`` or ``blocks`` (a BERT's ``bert.encoder.layer``), its blocks
    named ``layer0``, ``layer1``, ...; empty when there is none."""
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and path.rsplit(".", 1)[-1] in (
                "layer", "layers", "h", "blocks"):
            return {f"layer{i}": f"{path}.{i}" for i in range(len(module))}
    return {}


@contextmanager
def capture_features(model: nn.Module, names: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Hook the named features; yields a dict filled on each forward pass.

    ``names`` defaults to all feature points; a name may also be any module path
    of the model. The stored outputs are not detached (gradients flow through
    them, e.g. for distillation); a module run several times keeps its last
    output; a module returning a tuple gives its first item. Hooks are removed when the context exits.

    >>> with capture_features(model, ["stage1"]) as feats:
    ...     logits = model(x)
    >>> feats["stage1"].shape
    """
    points = feature_points(model)
    names = list(points) if names is None else list(names)
    paths: dict[str, str] = {}
    for name in names:
        path = points.get(name, name)
        try:
            model.get_submodule(path)
        except AttributeError:
            known = ", ".join(points) or "none"
            raise UserError(f"unknown feature {name!r}; this model's feature points are: {known}") from None
        paths[name] = path

    features: dict[str, Any] = {}
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            # a tuple (a Hugging Face layer in older transformers: (hidden_states, attentions))
            # gives its first item, the layer's output
            features[name] = output[0] if isinstance(output, tuple) and output else output

        return hook

    try:
        for name, path in paths.items():
            handles.append(model.get_submodule(path).register_forward_hook(hook_for(name)))
        yield features
    finally:
        for handle in handles:
            handle.remove()
