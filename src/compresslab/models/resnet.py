"""CIFAR ResNets (He et al. 2016, sec. 4.2): 6n+2 layers with option-A shortcuts.

Also holds the small helpers that make the conv families dimension-generic.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compresslab.errors import UserError

from .registry import register_model, register_pattern

_LAYERS = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.AdaptiveAvgPool3d),
}


def nd_layers(dim: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """(Conv, BatchNorm, AdaptiveAvgPool) classes for ``dim`` spatial dimensions."""
    if dim not in _LAYERS:
        raise UserError(f"dim must be 1, 2 or 3, got {dim!r}")
    return _LAYERS[dim]


def resolve_dim(dim: int | None, input_shape: tuple[int, ...] | None, default: int, model: str) -> int:
    """Spatial dimensionality: ``dim`` if given, else from ``input_shape``, else ``default``."""
    if input_shape is not None:
        from_shape = len(input_shape) - 1
        if dim is not None and dim != from_shape:
            raise UserError(
                f"{model}: dim={dim} but input_shape {list(input_shape)} has {from_shape} spatial dims; make them agree"
            )
        dim = from_shape
    dim = default if dim is None else dim
    nd_layers(dim)  # validates
    return dim


def kaiming_init(model: nn.Module) -> None:
    """He-normal convs, unit/zero BatchNorm, zero Linear bias."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by ``stride`` and zero-pad the new channels."""

    def __init__(self, c_in: int, c_out: int, stride: int, dim: int):
        super().__init__()
        self.extra, self.stride, self.dim = c_out - c_in, stride, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[(Ellipsis,) + (slice(None, None, self.stride),) * self.dim]
        if self.extra:
            half = self.extra // 2
            x = F.pad(x, (0, 0) * self.dim + (half, self.extra - half))
        return x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, dim: int):
        super().__init__()
        Conv, BN, _ = nd_layers(dim)
        self.conv1 = Conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BN(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = Conv(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = BN(c_out)
        self.shortcut = ShortcutA(c_in, c_out, stride, dim) if (stride != 1 or c_in != c_out) else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: stem, three stages of n blocks (16/32/64 ch), pool, fc."""

    feature_points = {"stem": "stem", "stage1": "stage1", "stage2": "stage2", "stage3": "stage3", "pool": "pool"}

    def __init__(self, n: int, num_classes: int, in_channels: int, dim: int = 2):
        super().__init__()
        Conv, BN, Pool = nd_layers(dim)
        self.stem = nn.Sequential(Conv(in_channels, 16, 3, padding=1, bias=False), BN(16), nn.ReLU())
        stages, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, dim) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.Sequential(Pool(1), nn.Flatten())
        self.fc = nn.Linear(64, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(self.pool(x))


@register_pattern(r"resnet(?P<depth>\d+)", "resnetN (N=6n+2)")
def resnet(
    *,
    depth: int,
    num_classes: int,
    in_channels: int = 3,
    input_shape: tuple[int, ...] | None = None,
    dim: int | None = None,
) -> CifarResNet:
    """CIFAR ResNet of ``depth`` = 6n+2 layers; ``dim`` (1/2/3) defaults to input_shape's, else 2."""
    if depth < 8 or (depth - 2) % 6:
        raise UserError(f"resnet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
    dim = resolve_dim(dim, input_shape, 2, f"resnet{depth}")
    return CifarResNet((depth - 2) // 6, num_classes, in_channels, dim)


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", depth=_depth)(resnet)
