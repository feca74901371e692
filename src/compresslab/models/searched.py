"""``searched``: the network of one architecture drawn from a codesign search space
(:mod:`compresslab.codesign.space`), so every member of a search's Pareto front is a plain
model spec ``{"name": "searched", "options": {...}}`` that ``create_model`` rebuilds.

* ``family: mlp`` -- flatten, then per entry of ``layers`` (``{width, act, norm}``)
  Linear -> BatchNorm1d (``norm: batch``) -> activation, then a Linear output.
* ``family: cnn`` -- per entry of ``blocks`` (``{channels, kernel, act, norm, skip, pool}``)
  a convolution with same padding -> BatchNorm -> activation, plus the block's input when
  ``skip`` (through a 1x1 convolution when the widths differ), then 2x max/avg pooling
  (``pool``; skipped once the feature map is smaller than 2); then flatten, the dense
  ``head`` widths with ``head_act``, and a Linear output. 1-D inputs ``(C, L)`` get
  Conv1d, images ``(C, H, W)`` Conv2d.

A block written without some keys takes the space's defaults (kernel 3, relu, no norm, no
skip, no pooling), e.g. ``-o family=cnn -o "blocks=[{channels: 8}]"``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from compresslab.codesign.space import _BLOCK_KEYS, _VALUES, ACTS
from compresslab.errors import UserError

from .registry import register_model


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "gelu": nn.GELU, "silu": nn.SiLU,
            "tanh": nn.Tanh}[name]()


def _units(family: str, units: list[dict]) -> list[dict]:
    """Each block (layer) with the defaults filled in, checked against the space's rules."""
    _, kind, defaults = _BLOCK_KEYS[family]
    out = []
    for i, unit in enumerate(units):
        if not isinstance(unit, dict):
            raise UserError(f"searched: {kind} {i} must be a mapping like {{width: 16}}, got {unit!r}")
        extra = [k for k in unit if k not in defaults]
        if extra:
            raise UserError(f"searched: {kind} {i} has unknown key {extra[0]!r}; known: {', '.join(defaults)}")
        full = {}
        for key, default in defaults.items():
            if key not in unit and default is None:
                raise UserError(f"searched: {kind} {i} needs {key!r}")
            value = unit.get(key, default[0] if default else None)
            test, hint = _VALUES[key]
            if not test(value):
                raise UserError(f"searched: {kind} {i}: {key}={value!r} is not allowed; use {hint}")
            full[key] = value
        out.append(full)
    return out


class ConvBlock(nn.Module):
    """conv -> [norm] -> act [+ input, projected when widths differ] -> [pool]. Absent parts
    are no modules at all (no ``Identity``), so hls4ml sees only the layers that compute."""

    def __init__(self, dims: int, c_in: int, spec: dict, size: list[int]):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv = conv(c_in, spec["channels"], spec["kernel"], padding=spec["kernel"] // 2)
        if spec["norm"] == "batch":
            self.norm = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(spec["channels"])
        self.act = activation(spec["act"])
        self.skip = spec["skip"]
        if self.skip and c_in != spec["channels"]:
            self.proj = conv(c_in, spec["channels"], 1)
        pools = {"max": (nn.MaxPool1d, nn.MaxPool2d), "avg": (nn.AvgPool1d, nn.AvgPool2d)}
        if spec["pool"] != "none" and min(size) >= 2:
            self.pool = pools[spec["pool"]][dims - 1](2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if hasattr(self, "norm"):
            y = self.norm(y)
        y = self.act(y)
        if self.skip:
            y = y + (self.proj(x) if hasattr(self, "proj") else x)
        return self.pool(y) if hasattr(self, "pool") else y


class SearchedNet(nn.Module):
    """``flatten`` first (MLP) or after the conv blocks (CNN), then the dense head and ``fc``."""

    def __init__(self, body: list[nn.Module], width_in: int, head: list[int], head_act: str, outputs: int,
                 flatten_first: bool):
        super().__init__()
        self.flatten_first = flatten_first
        self.flatten = nn.Flatten()
        self.body = nn.Sequential(*body)
        dense: list[nn.Module] = []
        for w in head:
            dense += [nn.Linear(width_in, w), activation(head_act)]
            width_in = w
        self.head = nn.Sequential(*dense)
        self.fc = nn.Linear(width_in, outputs)
        self.feature_points = {f"block{i + 1}": f"body.{i}" for i in range(len(body))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten_first:
            return self.fc(self.head(self.body(self.flatten(x))))
        return self.fc(self.head(self.flatten(self.body(x))))


@register_model("searched")
def searched(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_shape: tuple[int, ...] | None = None,
    family: str = "mlp",
    layers: list[dict] = [{"width": 32}],  # noqa: B006 - never mutated; shown in the option list
    blocks: list[dict] = [{"channels": 8}],  # noqa: B006
    head: list[int] = [],  # noqa: B006
    head_act: str = "relu",
) -> SearchedNet:
    """A network from a search space's architecture dict: ``family`` mlp (``layers``) or cnn
    (``blocks``, ``head``, ``head_act``); see the module docs for the keys of a block."""
    if input_shape is None:
        raise UserError("searched needs input_shape (one example's shape) to size its layers")
    if family not in _BLOCK_KEYS:
        raise UserError(f"searched: family {family!r}; use mlp or cnn")
    if head_act not in ACTS or not all(isinstance(w, int) and w > 0 for w in head):
        raise UserError(f"searched: head widths must be positive and head_act one of {', '.join(ACTS)}")
    if family == "mlp":
        body: list[nn.Module] = []
        width = math.prod(input_shape)
        for spec in _units("mlp", layers):
            norm = [nn.BatchNorm1d(spec["width"])] if spec["norm"] == "batch" else []
            body.append(nn.Sequential(nn.Linear(width, spec["width"]), *norm, activation(spec["act"])))
            width = spec["width"]
        return SearchedNet(body, width, list(head), head_act, num_classes, flatten_first=True)
    if len(input_shape) not in (2, 3):
        raise UserError(f"searched cnn takes (C, L) or (C, H, W) inputs, got input_shape {list(input_shape)}")
    c, size = input_shape[0], list(input_shape[1:])
    body = []
    for spec in _units("cnn", blocks):
        block = ConvBlock(len(size), c, spec, size)
        if hasattr(block, "pool"):
            size = [s // 2 for s in size]
        body.append(block)
        c = spec["channels"]
    return SearchedNet(body, c * math.prod(size), list(head), head_act, num_classes, flatten_first=False)
