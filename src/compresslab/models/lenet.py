"""LeNet-5 (ReLU + max-pool variant) for 28x28 images, adapting its first fc to other sizes."""

from __future__ import annotations

import torch
import torch.nn as nn

from compresslab.errors import UserError

from .registry import register_model


class LeNet5(nn.Module):
    """conv6@5x5(pad 2)-ReLU-pool2, conv16@5x5-ReLU-pool2, fc120-ReLU, fc84-ReLU, fc.

    ``scale`` multiplies every channel and unit count (6, 16, 120, 84; at least 1 each),
    e.g. 0.5 for a narrow student with the same feature points.
    """

    feature_points = {"stage1": "stage1", "stage2": "stage2", "fc1": "classifier.2", "fc2": "classifier.4"}

    def __init__(self, num_classes: int, in_channels: int = 1, height: int = 28, width: int = 28,
                 scale: float = 1.0):
        super().__init__()
        c1, c2, f1, f2 = (max(1, round(n * scale)) for n in (6, 16, 120, 84))
        self.stage1 = nn.Sequential(nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2))
        flat = c2 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, f1),
            nn.ReLU(),
            nn.Linear(f1, f2),
            nn.ReLU(),
            nn.Linear(f2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stage2(self.stage1(x)))


@register_model("lenet5")
def lenet5(*, num_classes: int, in_channels: int = 1, input_shape: tuple[int, ...] | None = None,
           scale: float = 1.0) -> LeNet5:
    """LeNet-5; 28x28 unless ``input_shape`` = (C, H, W) says otherwise (H, W >= 12).
    ``scale`` (> 0) multiplies every width: 0.5 gives 3/8/60/42 channels and units."""
    if not scale > 0:
        raise UserError(f"lenet5: scale must be > 0, got {scale}")
    height = width = 28
    if input_shape is not None:
        if len(input_shape) != 3:
            raise UserError(f"lenet5 takes images (C, H, W), got input_shape {list(input_shape)}; use cnn1d or mlp for 1-D data")
        _, height, width = input_shape
        if min(height, width) < 12:
            raise UserError(f"lenet5 needs images of at least 12x12, got {height}x{width}")
    return LeNet5(num_classes, in_channels, height, width, scale)
