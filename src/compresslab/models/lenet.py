"""LeNet-5 (ReLU + max-pool variant) for 28x28 images, adapting its first fc to other sizes."""

from __future__ import annotations

import torch
import torch.nn as nn

from compresslab.errors import UserError

from .registry import register_model


class LeNet5(nn.Module):
    """conv6@5x5(pad 2)-ReLU-pool2, conv16@5x5-ReLU-pool2, fc120-ReLU, fc84-ReLU, fc."""

    feature_points = {"stage1": "stage1", "stage2": "stage2", "fc1": "classifier.2", "fc2": "classifier.4"}

    def __init__(self, num_classes: int, in_channels: int = 1, height: int = 28, width: int = 28):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stage2(self.stage1(x)))


@register_model("lenet5")
def lenet5(*, num_classes: int, in_channels: int = 1, input_shape: tuple[int, ...] | None = None) -> LeNet5:
    """LeNet-5; 28x28 unless ``input_shape`` = (C, H, W) says otherwise (H, W >= 12)."""
    height = width = 28
    if input_shape is not None:
        if len(input_shape) != 3:
            raise UserError(f"lenet5 takes images (C, H, W), got input_shape {list(input_shape)}; use cnn1d or mlp for 1-D data")
        _, height, width = input_shape
        if min(height, width) < 12:
            raise UserError(f"lenet5 needs images of at least 12x12, got {height}x{width}")
    return LeNet5(num_classes, in_channels, height, width)
