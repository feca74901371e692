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

    Uses ``model.feature_points`` when present; otherwise every top-level child
    except the last (usually the classifier), each named by its path.
    """
    points = getattr(model, "feature_points", None)
    if isinstance(points, dict):
        return dict(points)
    children = [name for name, _ in model.named_children()]
    return {name: name for name in children[:-1]}


@contextmanager
def capture_features(model: nn.Module, names: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Hook the named features; yields a dict filled on each forward pass.

    ``names`` defaults to all feature points; a name may also be any module path
    of the model. The stored outputs are not detached (gradients flow through
    them, e.g. for distillation); a module run several times keeps its last
    output. Hooks are removed when the context exits.

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
            features[name] = output

        return hook

    try:
        for name, path in paths.items():
            handles.append(model.get_submodule(path).register_forward_hook(hook_for(name)))
        yield features
    finally:
        for handle in handles:
            handle.remove()
