"""BraggNN (Liu et al., "BraggNN: fast X-ray Bragg peak analysis using deep learning", IUCrJ
2022): a small CNN with a non-local (self-attention) block that regresses a peak's centre
from an 11x11 patch; the baseline of the neural-architecture-codesign papers.

Layers, as the authors' public code defines its default model: conv 3x3 (no padding) to 64
channels, a non-local block on those 64 channels (embedded Gaussian, 32 inner channels,
residual), LeakyReLU(0.01), conv 3x3 to 32, LeakyReLU, conv 3x3 to 8, LeakyReLU, flatten
(8x5x5 = 200 on 11x11 inputs), dense 16-8-4-2 each with LeakyReLU, and a linear output
(2 coordinates). Weights are Xavier-uniform, biases zero. 33,172 parameters on 11x11 patches
(the same count as the reference implementation's ``BraggNN(imgsz=11, fcsz=(16, 8, 4, 2))``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from compresslab.errors import UserError

from .registry import register_model


class NonLocalBlock(nn.Module):
    """Self-attention over the H·W positions (Wang et al. 2018, embedded Gaussian):
    ``x + out(softmax(θ(x)ᵀ φ(x)) applied to g(x))`` with 1x1 convolutions θ, φ, g to
    ``channels // 2`` and ``out`` back to ``channels``."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 2)
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        query, key, value = (f(x).flatten(2) for f in (self.theta, self.phi, self.g))  # (n, inner, h·w)
        weights = torch.softmax(query.transpose(1, 2) @ key, dim=-1)  # (n, h·w, h·w): row i attends over j
        mixed = value @ weights.transpose(1, 2)  # (n, inner, h·w)
        return x + self.out(mixed.reshape(n, -1, h, w))


class BraggNN(nn.Module):
    """conv → non-local block → LeakyReLU → (conv → LeakyReLU)·k → dense (LeakyReLU) → linear."""

    feature_points = {"attention": "attention", "features": "features", "dense": "dense"}

    def __init__(self, outputs: int, in_channels: int, height: int, width: int, channels: list[int],
                 dense: list[int], slope: float = 0.01):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3)
        self.attention = NonLocalBlock(channels[0])
        layers: list[nn.Module] = [nn.LeakyReLU(slope)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3), nn.LeakyReLU(slope)]
        self.features = nn.Sequential(*layers)
        shrink = 2 * len(channels)
        width_in = channels[-1] * (height - shrink) * (width - shrink)
        fcs: list[nn.Module] = [nn.Flatten()]
        for units in dense:
            fcs += [nn.Linear(width_in, units), nn.LeakyReLU(slope)]
            width_in = units
        self.dense = nn.Sequential(*fcs)
        self.head = nn.Linear(width_in, outputs)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(self.features(self.attention(self.conv1(x)))))


@register_model("braggnn")
def braggnn(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_shape: tuple[int, ...] | None = None,
    channels: list[int] = [64, 32, 8],  # noqa: B006 - never mutated; shown in the option list
    dense: list[int] = [16, 8, 4, 2],  # noqa: B006
) -> BraggNN:
    """BraggNN on ``(C, H, W)`` patches (default 1x11x11); ``num_classes`` is the number of
    outputs (2: the centre). ``channels``: the 3x3 convolutions' widths (the non-local block
    follows the first); ``dense``: the hidden dense widths. E.g. ``-o dense=[64,32,16,8]``."""
    height = width = 11
    if input_shape is not None:
        if len(input_shape) != 3:
            raise UserError(f"braggnn takes image patches (C, H, W), got input_shape {list(input_shape)}")
        _, height, width = input_shape
    if not channels or any(c < 1 for c in channels) or any(d < 1 for d in dense):
        raise UserError(f"braggnn: channels and dense widths must be positive (at least one conv), "
                        f"got channels={list(channels)} dense={list(dense)}")
    if min(height, width) <= 2 * len(channels):
        raise UserError(f"braggnn with {len(channels)} unpadded 3x3 convs needs patches larger than "
                        f"{2 * len(channels)}x{2 * len(channels)}, got {height}x{width}; use fewer channels entries")
    return BraggNN(num_classes, in_channels, height, width, list(channels), list(dense))
