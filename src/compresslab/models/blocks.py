"""Cheap drop-in replacements for a 3x3 convolution (Moonshine, Crowley et al. 2018).

Each block maps ``(C_in -> C_out, stride)`` like a bias-free 3x3 convolution, in 1-D or
2-D. Convolutions are bias-free; "BN, ReLU" inside a block is BatchNorm then ReLU; the
block's own output has no BN (the surrounding residual block supplies it). With
``mid = C_out / b``:

========== ==================================================================================
``Conv``    3x3 C_in→C_out (stride)
``ConvB{b}`` 1x1 C_in→mid, BN, ReLU; 3x3 mid→mid (stride), BN, ReLU; 1x1 mid→C_out
``G{g}B{b}`` as ConvB{b}, the 3x3 grouped with mid/g groups (g channels per group)
``A{a}B{b}`` as ConvB{b}, the 3x3 grouped with a groups
``DConv``    depthwise 3x3 (groups C_in, stride), BN, ReLU; 1x1 C_in→C_out
``DConvG{g}`` as DConv, the 3x3 with C_in/g groups
``DConvA{a}`` as DConv, the 3x3 with a groups
``DConvB{b}`` 1x1 C_in→mid, BN, ReLU; depthwise 3x3 (stride), BN, ReLU; 1x1 mid→C_out
========== ==================================================================================

b, g and a range over {2, 4, 8, 16}. :func:`block_params` gives each block's parameter
count in closed form (used by the BlockSwap sampler instead of building networks).

A DConv-family block may replace its final pointwise (1x1) map, the one after the
depthwise conv, with a structured substitute (:mod:`compresslab.models.linear_subs`):
``DConv+lowrank8`` (rank 8), ``DConvB2+acdc4`` (4 ACDC layers), ``DConv+shuffle4`` (4
groups), ``DConv+hashed0.25`` (HashedNet budget 0.25).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from compresslab.errors import UserError

from .linear_subs import KINDS, check_setting, make_pointwise, pointwise_params
from .resnet import nd_layers

FACTORS = (2, 4, 8, 16)
_PATTERN = re.compile(r"^(?:(?P<conv>Conv)|ConvB(?P<cb>\d+)|G(?P<g>\d+)B(?P<gb>\d+)|A(?P<a>\d+)B(?P<ab>\d+)"
                      r"|DConv(?:G(?P<dg>\d+)|A(?P<da>\d+)|B(?P<db>\d+))?)$")


@dataclass(frozen=True)
class BlockSpec:
    """A parsed block name: ``bottleneck`` b (1 = none), the 3x3's grouping rule, depthwise-first or not."""

    name: str
    bottleneck: int = 1
    depthwise: bool = False  # DConv family: the 3x3 runs on the input (or mid) channels before the 1x1
    per_group: int | None = None  # g: channels per group
    groups: int | None = None  # a: number of groups
    pointwise: tuple[str, float] | None = None  # structured substitute for the final 1x1


_SUB = re.compile(r"^(?P<kind>lowrank|acdc|shuffle|hashed)(?P<value>\d+(?:\.\d+)?)$")


def parse_block(name: str) -> BlockSpec:
    """``"G8B2"`` -> BlockSpec; UserError for unknown names or factors outside {2, 4, 8, 16}."""
    base, plus, sub = str(name).partition("+")
    if plus:
        spec = parse_block(base)
        m = _SUB.match(sub)
        if not spec.depthwise or not m:
            raise UserError(f"block {name!r}: a pointwise substitute follows a DConv-family block, written "
                            "BASE+KINDVALUE, e.g. DConv+lowrank8, DConvB2+acdc4, DConv+shuffle4, DConv+hashed0.25")
        value = float(m["value"]) if m["kind"] == "hashed" else int(float(m["value"]))
        check_setting(m["kind"], {KINDS[m["kind"]]: value})
        return BlockSpec(str(name), spec.bottleneck, spec.depthwise, spec.per_group, spec.groups, (m["kind"], value))
    m = _PATTERN.match(str(name))
    if not m:
        raise UserError(f"unknown block {name!r}; use Conv, ConvB{{b}}, G{{g}}B{{b}}, A{{a}}B{{b}}, DConv, "
                        "DConvG{g}, DConvA{a} or DConvB{b} with b, g, a in 2, 4, 8, 16 (e.g. G8B2)")
    d = {k: int(v) for k, v in m.groupdict().items() if v is not None and k != "conv"}
    if any(v not in FACTORS for v in d.values()):
        raise UserError(f"block {name!r}: b, g and a must be one of {', '.join(map(str, FACTORS))}")
    if m["conv"]:
        return BlockSpec(name)
    if "cb" in d:
        return BlockSpec(name, bottleneck=d["cb"])
    if "g" in d:
        return BlockSpec(name, bottleneck=d["gb"], per_group=d["g"])
    if "a" in d:
        return BlockSpec(name, bottleneck=d["ab"], groups=d["a"])
    if "db" in d:
        return BlockSpec(name, bottleneck=d["db"], depthwise=True, per_group=1)
    return BlockSpec(name, depthwise=True, per_group=d.get("dg", 1) if "da" not in d else None, groups=d.get("da"))


def _groups(spec: BlockSpec, channels: int, where: str) -> int:
    """Number of groups of the block's 3x3 over ``channels`` channels (checked)."""
    if spec.per_group is None and spec.groups is None:
        return 1
    groups = spec.groups if spec.groups is not None else channels // spec.per_group
    if groups < 1 or channels % groups or (spec.per_group and channels % spec.per_group):
        raise UserError(f"block {spec.name} cannot split {channels} channels {where} into "
                        f"{'groups of ' + str(spec.per_group) if spec.per_group else str(spec.groups) + ' groups'}; "
                        "choose a smaller factor for this width")
    return groups


def _mid(spec: BlockSpec, c_out: int) -> int:
    if c_out % spec.bottleneck:
        raise UserError(f"block {spec.name}: C_out={c_out} is not divisible by the bottleneck factor {spec.bottleneck}")
    return c_out // spec.bottleneck


def make_block(name: str, c_in: int, c_out: int, stride: int, dim: int) -> nn.Module:
    """The block ``name`` as a module replacing a 3x3 conv ``c_in -> c_out`` with ``stride``."""
    spec = parse_block(name)
    Conv, BN, _ = nd_layers(dim)

    def conv3(c, c2, groups, s):
        return Conv(c, c2, 3, stride=s, padding=1, groups=groups, bias=False)

    def bn_relu(c):
        return [BN(c), nn.ReLU()]

    if spec.name == "Conv":
        return conv3(c_in, c_out, 1, stride)
    def pointwise(c, c2):
        if spec.pointwise is None:
            return Conv(c, c2, 1, bias=False)
        kind, value = spec.pointwise
        return make_pointwise(kind, c, c2, **{KINDS[kind]: value})

    if spec.depthwise and spec.bottleneck == 1:  # DConv, DConvG{g}, DConvA{a}
        g = _groups(spec, c_in, "(input)")
        return nn.Sequential(conv3(c_in, c_in, g, stride), *bn_relu(c_in), pointwise(c_in, c_out))
    mid = _mid(spec, c_out)
    g = _groups(spec, mid, "(bottleneck)")
    return nn.Sequential(Conv(c_in, mid, 1, bias=False), *bn_relu(mid), conv3(mid, mid, g, stride), *bn_relu(mid),
                         pointwise(mid, c_out))


def block_params(name: str, c_in: int, c_out: int, dim: int) -> int:
    """Closed-form parameter count of :func:`make_block` (BN: weight and bias per channel)."""
    spec = parse_block(name)
    k = 3 ** dim

    def pointwise(c, c2):
        if spec.pointwise is None:
            return c * c2
        kind, value = spec.pointwise
        return pointwise_params(kind, c, c2, **{KINDS[kind]: value})

    if spec.name == "Conv":
        return c_in * c_out * k
    if spec.depthwise and spec.bottleneck == 1:
        g = _groups(spec, c_in, "(input)")
        return c_in * (c_in // g) * k + 2 * c_in + pointwise(c_in, c_out)
    mid = _mid(spec, c_out)
    g = _groups(spec, mid, "(bottleneck)")
    return c_in * mid + 2 * mid + mid * (mid // g) * k + 2 * mid + pointwise(mid, c_out)


def all_blocks() -> list[str]:
    """Every block name: Conv, ConvB*, G*B*, A*B*, DConv, DConvG*, DConvA*, DConvB*."""
    names = ["Conv", *(f"ConvB{b}" for b in FACTORS)]
    names += [f"G{g}B{b}" for g in FACTORS for b in FACTORS] + [f"A{a}B{b}" for a in FACTORS for b in FACTORS]
    names += ["DConv", *(f"DConvG{g}" for g in FACTORS), *(f"DConvA{a}" for a in FACTORS),
              *(f"DConvB{b}" for b in FACTORS)]
    return names
