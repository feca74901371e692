"""Small 1-D conv net for MNIST-1D (input (N, 1, 40))."""

from __future__ import annotations

import torch
import torch.nn as nn

from compresslab.errors import UserError

from .registry import register_model
from .resnet import kaiming_init


class CNN1d(nn.Module):
    """``depth`` stages of Conv1d(stride 2)-BN-ReLU, flatten, optional hidden Linear+ReLU, Linear.

    The hidden Linear holds most of the parameters and about a fifth of the
    multiply-adds by default, so Linear-only compression (e.g. dynamic int8) matters.
    """

    def __init__(self, num_classes: int, in_channels: int, length: int, width: int, depth: int, kernel_size: int, hidden: int):
        super().__init__()
        stages, c_in = [], in_channels
        for _ in range(depth):
            stages.append(
                nn.Sequential(
                    nn.Conv1d(c_in, width, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
                    nn.BatchNorm1d(width),
                    nn.ReLU(),
                )
            )
            c_in = width
            length = (length + 2 * (kernel_size // 2) - kernel_size) // 2 + 1
        self.stages = nn.Sequential(*stages)
        self.flatten = nn.Flatten()
        flat = width * length
        self.hidden = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.fc = nn.Linear(hidden or flat, num_classes)
        self.feature_points = {f"stage{i + 1}": f"stages.{i}" for i in range(depth)}
        if hidden:
            self.feature_points["hidden"] = "hidden"
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(self.stages(x))))


@register_model("cnn1d")
def cnn1d(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_shape: tuple[int, ...] | None = None,
    width: int = 32,
    depth: int = 3,
    kernel_size: int = 5,
    hidden: int = 128,
) -> CNN1d:
    """1-D CNN; input length from ``input_shape`` (C, L), default 40. ``hidden=0`` drops the hidden Linear."""
    length = 40
    if input_shape is not None:
        if len(input_shape) != 2:
            raise UserError(f"cnn1d takes 1-D signals (C, L), got input_shape {list(input_shape)}")
        length = input_shape[1]
    if width < 1 or depth < 1 or kernel_size < 1 or hidden < 0:
        raise UserError(
            f"cnn1d needs width, depth, kernel_size >= 1 and hidden >= 0, got {width}, {depth}, {kernel_size}, {hidden}"
        )
    return CNN1d(num_classes, in_channels, length, width, depth, kernel_size, hidden)
