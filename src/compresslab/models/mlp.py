"""Multi-layer perceptron on the flattened input."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from compresslab.errors import UserError

from .registry import register_model


class MLP(nn.Module):
    """Flatten, then Linear+ReLU per hidden width, then a Linear classifier."""

    def __init__(self, in_features: int, widths: list[int], num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        layers, width_in = [], in_features
        for width in widths:
            layers.append(nn.Sequential(nn.Linear(width_in, width), nn.ReLU()))
            width_in = width
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width_in, num_classes)
        self.feature_points = {f"hidden{i + 1}": f"hidden.{i}" for i in range(len(widths))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(x)))


@register_model("mlp")
def mlp(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_shape: tuple[int, ...] | None = None,
    widths: list[int] = [256, 256],  # noqa: B006 - never mutated; shown in the option list
) -> MLP:
    """MLP with hidden ``widths``; needs ``input_shape`` to size the first layer."""
    if input_shape is None:
        raise UserError("mlp needs input_shape (one example's shape, e.g. (1, 40)) to size its first layer")
    if any(w < 1 for w in widths):
        raise UserError(f"mlp widths must be positive, got {list(widths)}")
    return MLP(math.prod(input_shape), list(widths), num_classes)
