"""ConvNet-D: the reference network of the dataset-condensation papers.

Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching" (ICLR 2021) and Zhao &
Bilen, "Dataset Condensation with Distribution Matching" (WACV 2023) learn and evaluate
synthetic sets with the same small network: ``depth`` blocks of

    conv 3x3 (``width`` filters, padding 1) -> norm -> ReLU -> average pool 2x2

and one linear classifier on the flattened features. Their "instance norm" is
``GroupNorm(width, width, affine=True)`` (one group per channel), which does not depend on
the batch, so a synthetic batch of one image per class normalises the same as a real one.

As in their code, a single-channel input gets padding 3 on the first conv, so a 28x28 MNIST
image is treated as 32x32 and both MNIST and CIFAR end on 4x4 features after three blocks.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from compresslab.errors import UserError

from .registry import register_model

NORMS = ("instance", "batch", "none")


def _norm(kind: str, width: int) -> list[nn.Module]:
    if kind == "instance":
        return [nn.GroupNorm(width, width, affine=True)]
    if kind == "batch":
        return [nn.BatchNorm2d(width)]
    return []


class ConvNet(nn.Module):
    """``depth`` x (conv3x3 -> norm -> ReLU -> avgpool2) -> flatten -> linear.

    :meth:`embed` returns the flattened features before the classifier (what distribution
    matching compares).
    """

    feature_points = {"features": "features"}

    def __init__(self, num_classes: int, in_channels: int, height: int, width_px: int, *,
                 width: int = 128, depth: int = 3, norm: str = "instance"):
        super().__init__()
        layers: list[nn.Module] = []
        c, h, w = in_channels, height, width_px
        for d in range(depth):
            pad = 3 if in_channels == 1 and d == 0 else 1  # as the authors' code: 28x28 -> 32x32
            layers += [nn.Conv2d(c, width, 3, padding=pad), *_norm(norm, width), nn.ReLU(), nn.AvgPool2d(2)]
            c, h, w = width, (h + 2 * pad - 2) // 2, (w + 2 * pad - 2) // 2
            if min(h, w) < 1:
                raise UserError(f"convnet: a {height}x{width_px} input is too small for depth {depth}; "
                                "lower -o depth")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model("convnet")
def convnet(*, num_classes: int, in_channels: int = 1, input_shape: tuple[int, ...] | None = None,
            width: int = 128, depth: int = 3, norm: str = "instance") -> ConvNet:
    """ConvNet-``depth`` of the dataset-condensation papers (default: ConvNet-3, 128 filters,
    instance norm); images (C, H, W), 28x28 unless ``input_shape`` says otherwise.
    ``norm``: ``instance`` (GroupNorm with one group per channel), ``batch`` or ``none``."""
    if norm not in NORMS:
        raise UserError(f"convnet: norm {norm!r}: use one of {', '.join(NORMS)}")
    if width < 1 or depth < 1:
        raise UserError(f"convnet: width and depth must be >= 1, got width={width}, depth={depth}")
    height = width_px = 28
    if input_shape is not None:
        if len(input_shape) != 3:
            raise UserError(f"convnet takes images (C, H, W), got input_shape {list(input_shape)}; "
                            "use cnn1d or mlp for 1-D data")
        _, height, width_px = input_shape
    return ConvNet(num_classes, in_channels, height, width_px, width=width, depth=depth, norm=norm)
