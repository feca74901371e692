"""Pre-activation Wide ResNets (Zagoruyko & Komodakis 2016), any dimensionality.

``wrn-D-K`` is the 2-D network (depth D, widen factor K), ``wrn1d-D-K`` the 1-D one.
The two 3x3 convolutions of every basic block come from a factory
``(c_in, c_out, stride, dim) -> module`` chosen per block by the ``block`` option: the
standard ``Conv`` or a cheap Moonshine block (:mod:`compresslab.models.blocks`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn

from compresslab.errors import UserError

from .blocks import make_block, parse_block
from .registry import register_pattern
from .resnet import kaiming_init, nd_layers, resolve_dim

ConvFactory = Callable[[int, int, int, int], nn.Module]


def conv3x3(c_in: int, c_out: int, stride: int, dim: int) -> nn.Module:
    """The standard bias-free 3x3 convolution with padding 1 (the ``Conv`` block)."""
    return make_block("Conv", c_in, c_out, stride, dim)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 plus shortcut.

    The shortcut is a 1x1 conv on the pre-activated input when channels or
    stride change, the identity otherwise.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, dim: int, conv: ConvFactory = conv3x3):
        super().__init__()
        Conv, BN, _ = nd_layers(dim)
        self.bn1 = BN(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = conv(c_in, c_out, stride, dim)
        self.bn2 = BN(c_out)
        self.relu2 = nn.ReLU()
        self.conv2 = conv(c_out, c_out, 1, dim)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = Conv(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    """Stem conv (16), three groups of widths 16K/32K/64K (strides 1,2,2), BN-ReLU, pool, fc."""

    feature_points = {"group1": "group1", "group2": "group2", "group3": "group3", "pool": "pool"}

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int,
        dim: int = 2,
        convs: list[ConvFactory] | None = None,
    ):
        super().__init__()
        n = blocks_per_group(depth)
        convs = convs or [conv3x3] * (3 * n)
        Conv, BN, Pool = nd_layers(dim)
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = Conv(in_channels, 16, 3, padding=1, bias=False)
        groups, c_in = [], 16
        for g, (c_out, stride) in enumerate(zip(widths, (1, 2, 2))):
            blocks = [
                PreActBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, dim, convs[g * n + i])
                for i in range(n)
            ]
            groups.append(nn.Sequential(*blocks))
            c_in = c_out
        self.group1, self.group2, self.group3 = groups
        self.final = nn.Sequential(BN(c_in), nn.ReLU())
        self.pool = nn.Sequential(Pool(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.group3(self.group2(self.group1(self.stem(x))))
        return self.fc(self.pool(self.final(x)))


def blocks_per_group(depth: int) -> int:
    """(depth - 4) / 6 basic blocks per group; UserError if depth is not 6n+4."""
    if depth < 10 or (depth - 4) % 6:
        raise UserError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
    return (depth - 4) // 6


def _block_convs(block: str | list[str], n_blocks: int) -> list[ConvFactory]:
    kinds = [block] * n_blocks if isinstance(block, str) else list(block)
    if len(kinds) != n_blocks:
        raise UserError(f"block lists {len(kinds)} entries but this WRN has {n_blocks} blocks; give one per block or a single string")
    for kind in kinds:
        parse_block(kind)  # a clear error for an unknown name before anything is built
    return [functools.partial(make_block, kind) for kind in kinds]


def _build(depth, widen_factor, num_classes, in_channels, input_shape, dim, block, label) -> WideResNet:
    if widen_factor < 1:
        raise UserError(f"{label}: widen factor must be >= 1, got {widen_factor}")
    n = blocks_per_group(depth)
    dim = resolve_dim(dim, input_shape, 2, label)
    return WideResNet(depth, widen_factor, num_classes, in_channels, dim, _block_convs(block, 3 * n))


@register_pattern(r"wrn-(?P<depth>\d+)-(?P<widen_factor>\d+)", "wrn-D-K")
def wrn(
    *,
    depth: int,
    widen_factor: int,
    num_classes: int,
    in_channels: int = 3,
    input_shape: tuple[int, ...] | None = None,
    dim: int | None = None,
    block: str | list[str] = "Conv",
) -> WideResNet:
    """WRN-depth-widen_factor. ``dim`` (1/2/3) defaults to input_shape's, else 2.

    ``block`` names the block (see :mod:`compresslab.models.blocks`: Conv, ConvB2,
    G8B2, DConv, ...) that replaces *both* 3x3 convolutions of every basic block (one
    string), or of each basic block in order (a list of (depth-4)/6·3 strings). The stem,
    the 1x1 shortcuts and the classifier are unchanged.
    """
    return _build(depth, widen_factor, num_classes, in_channels, input_shape, dim, block, f"wrn-{depth}-{widen_factor}")


@register_pattern(r"wrn1d-(?P<depth>\d+)-(?P<widen_factor>\d+)", "wrn1d-D-K")
def wrn1d(
    *,
    depth: int,
    widen_factor: int,
    num_classes: int,
    in_channels: int = 1,
    input_shape: tuple[int, ...] | None = None,
    block: str | list[str] = "Conv",
) -> WideResNet:
    """1-D WRN (Conv1d/BatchNorm1d), e.g. for MNIST-1D; see ``wrn``."""
    return _build(depth, widen_factor, num_classes, in_channels, input_shape, 1, block, f"wrn1d-{depth}-{widen_factor}")
