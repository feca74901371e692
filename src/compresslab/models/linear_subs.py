"""Structured efficient substitutes for a pointwise (1x1, bias-free) map C_in -> C_out.

Gray, Crowley & Storkey ("Separable Layers Enable Structured Efficient Linear
Substitutions", 2019): after a depthwise convolution, the pointwise matrix can be replaced
by a structured linear map. Each module here maps (B, C_in, *spatial) to (B, C_out,
*spatial) for any number of spatial dimensions (including none):

- ``lowrank`` (rank r): 1x1 C_in→r, then 1x1 r→C_out. r·(C_in + C_out) params.
- ``acdc`` (K layers; Moczulski et al. 2016): on N = max(C_in, C_out) channels (inputs
  zero-padded, outputs truncated), K layers, each a fixed random permutation followed by
  the paper's x·A·C·D·C⁻¹: multiply by diagonal A, apply the orthonormal DCT-II C,
  multiply by diagonal D, apply the inverse DCT (C⁻¹ = Cᵀ, the DCT-III). 2·N·K params.
- ``shuffle`` (g groups; ShuffleNet): grouped 1x1 C_in→C_out, channel shuffle, grouped
  1x1 C_out→C_out. (C_in·C_out + C_out²)/g params.
- ``hashed`` (budget s; HashedNets, Chen et al. 2015): a virtual C_out×C_in matrix whose
  entries are a fixed random sign times one of K = max(1, round(s·C_in·C_out)) shared
  weights, chosen by a fixed random hash. K params.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from compresslab.errors import UserError

KINDS = {"conv": None, "lowrank": "rank", "acdc": "layers", "shuffle": "groups", "hashed": "budget"}


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1)


class Pointwise(nn.Module):
    """A plain bias-free 1x1 map over the channel axis (any spatial dims)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.c_out = c_out
        self.weight = nn.Parameter(torch.empty(c_out, c_in))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def matrix(self) -> torch.Tensor:
        return self.weight

    def macs_per_position(self) -> int:
        """Multiply-accumulates per spatial position, for ``measure.cost``."""
        return self.weight.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_first(_channels_last(x) @ self.matrix().T)


class LowRank(nn.Module):
    def __init__(self, c_in: int, c_out: int, rank: int):
        super().__init__()
        self.down, self.up = Pointwise(c_in, rank), Pointwise(rank, c_out)

    def matrix(self) -> torch.Tensor:
        return self.up.weight @ self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix: (C @ x) == scipy.fft.dct(x, type=2, norm="ortho")."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype)


class ACDC(nn.Module):
    """K ACDC layers on N = max(C_in, C_out) channels. Diagonals start at N(1, 0.061²) (the
    ACDC paper's near-identity initialisation); permutations are seeded buffers."""

    def __init__(self, c_in: int, c_out: int, layers: int, seed: int = 0):
        super().__init__()
        n = max(c_in, c_out)
        self.c_in, self.c_out, self.n = c_in, c_out, n
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(1 + 0.061 * torch.randn(layers, n, generator=g))
        self.d = nn.Parameter(1 + 0.061 * torch.randn(layers, n, generator=g))
        self.register_buffer("perm", torch.stack([torch.randperm(n, generator=g) for _ in range(layers)]))
        self.register_buffer("dct", dct_matrix(n, torch.float32))

    def macs_per_position(self) -> int:
        """Per layer: two dense N×N DCT products and two diagonal scalings (as computed here;
        a fast DCT would need O(N log N))."""
        return self.a.shape[0] * (2 * self.n * self.n + 2 * self.n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _channels_last(x)
        if self.c_in < self.n:
            h = torch.nn.functional.pad(h, (0, self.n - self.c_in))
        for k in range(self.a.shape[0]):
            h = h[..., self.perm[k]]
            h = ((h * self.a[k]) @ self.dct.T * self.d[k]) @ self.dct  # x·A·C·D·C⁻¹ (row vectors)
        return _channels_first(h[..., : self.c_out])


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle over the channel axis (dim 1): (g, C/g) -> transpose -> flatten."""
    b, c = x.shape[:2]
    return x.reshape(b, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class GroupedPointwise(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.groups, self.c_out = groups, c_out
        self.weight = nn.Parameter(torch.empty(groups, c_out // groups, c_in // groups))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def macs_per_position(self) -> int:
        return self.weight.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _channels_last(x)
        h = h.reshape(*h.shape[:-1], self.groups, -1)  # (..., g, C_in/g)
        out = torch.einsum("...gi,goi->...go", h, self.weight)
        return _channels_first(out.reshape(*out.shape[:-2], -1))


class ShuffleLinear(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        if c_in % groups or c_out % groups:
            raise UserError(f"shuffle: {groups} groups must divide C_in={c_in} and C_out={c_out}")
        self.groups = groups
        self.first, self.second = GroupedPointwise(c_in, c_out, groups), GroupedPointwise(c_out, c_out, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(channel_shuffle(self.first(x), self.groups))


class HashedLinear(nn.Module):
    def __init__(self, c_in: int, c_out: int, budget: float, seed: int = 0):
        super().__init__()
        k = max(1, round(budget * c_in * c_out))
        self.c_out = c_out
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(k, generator=g) * math.sqrt(2.0 / c_out))
        self.register_buffer("index", torch.randint(0, k, (c_out, c_in), generator=g))
        self.register_buffer("sign", torch.randint(0, 2, (c_out, c_in), generator=g).float() * 2 - 1)

    def matrix(self) -> torch.Tensor:
        return self.weight[self.index] * self.sign

    def macs_per_position(self) -> int:
        """The virtual matrix is dense: C_out·C_in MACs (hashing saves memory, not compute)."""
        return self.index.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_first(_channels_last(x) @ self.matrix().T)


def check_setting(kind: str, hp: dict) -> object:
    """Validate ``kind`` and its one setting; returns the setting's value (None for conv)."""
    if kind not in KINDS:
        raise UserError(f"unknown pointwise kind {kind!r}; use one of {', '.join(KINDS)}")
    name = KINDS[kind]
    if name is None:
        return None
    if set(hp) != {name}:
        raise UserError(f"pointwise {kind} takes exactly one setting, {name}; got {sorted(hp) or 'none'}")
    value = hp[name]
    ok = 0 < value <= 1 if kind == "hashed" else isinstance(value, int) and value >= 1
    if not ok:
        raise UserError(f"pointwise {kind}: {name} must be {'in (0, 1]' if kind == 'hashed' else 'an integer >= 1'}, "
                        f"got {value!r}")
    return value


def make_pointwise(kind: str, c_in: int, c_out: int, **hp) -> nn.Module:
    """A ``kind`` substitute for a bias-free 1x1 map ``c_in -> c_out`` (see the module docstring)."""
    v = check_setting(kind, hp)
    if kind == "conv":
        return Pointwise(c_in, c_out)
    if kind == "lowrank":
        return LowRank(c_in, c_out, v)
    if kind == "acdc":
        return ACDC(c_in, c_out, v)
    if kind == "shuffle":
        return ShuffleLinear(c_in, c_out, v)
    return HashedLinear(c_in, c_out, v)


def pointwise_params(kind: str, c_in: int, c_out: int, **hp) -> int:
    """Closed-form parameter count of :func:`make_pointwise`."""
    v = check_setting(kind, hp)
    if kind == "conv":
        return c_in * c_out
    if kind == "lowrank":
        return v * (c_in + c_out)
    if kind == "acdc":
        return 2 * max(c_in, c_out) * v
    if kind == "shuffle":
        if c_in % v or c_out % v:
            raise UserError(f"shuffle: {v} groups must divide C_in={c_in} and C_out={c_out}")
        return (c_in * c_out + c_out * c_out) // v
    return max(1, round(v * c_in * c_out))


def fit_budget(kind: str, layers: list[tuple[int, int]], target_params: int, fixed_params: int = 0) -> dict:
    """The largest single setting of ``kind`` for every ``(c_in, c_out)`` layer that keeps
    ``fixed_params + Σ pointwise_params`` within ``target_params``.

    Integer settings are scanned (rank up to min(C_in, C_out), ACDC layers up to 64,
    shuffle groups over the common divisors); the hashed budget is bisected in (0, 1].
    """
    def total(value) -> int:
        return fixed_params + sum(pointwise_params(kind, a, b, **{KINDS[kind]: value}) for a, b in layers)

    if kind == "conv" or kind not in KINDS:
        check_setting(kind, {})
        raise UserError("fit_budget needs a structured kind: lowrank, acdc, shuffle or hashed")
    name = KINDS[kind]
    if kind == "hashed":
        lo, hi = 0.0, 1.0
        if total(1.0) <= target_params:
            lo = 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if mid > 0 and total(mid) <= target_params:
                lo = mid
            else:
                hi = mid
        if lo == 0.0:
            raise UserError(f"hashed: even one shared weight per layer needs {total(1e-12):,} params "
                            f"> target {target_params:,}")
        value = lo
    else:
        if kind == "lowrank":
            options = range(1, min(min(a, b) for a, b in layers) + 1)
        elif kind == "acdc":
            options = range(1, 65)
        else:  # shuffle: fewer groups = more params; the order is by parameter count
            divisors = [g for g in range(1, 1 + min(min(a, b) for a, b in layers))
                        if all(a % g == 0 and b % g == 0 for a, b in layers)]
            options = sorted(divisors, reverse=True)
        fitting = [v for v in options if total(v) <= target_params]
        if not fitting:
            smallest = min(total(v) for v in options)
            raise UserError(f"{kind}: the smallest setting needs {smallest:,} params > target {target_params:,}")
        value = max(fitting, key=total)
    return {"kind": kind, "hp": {name: value}, "params": total(value), "target": target_params}


STRUCTURED = (LowRank, ACDC, ShuffleLinear, HashedLinear)


def compression_ratio(module: nn.Module) -> float:
    """Parameters of a structured substitute over those of the dense C_in x C_out map it replaces."""
    if isinstance(module, LowRank):
        c_in, c_out = module.down.weight.shape[1], module.up.c_out
    elif isinstance(module, ShuffleLinear):
        c_in, c_out = module.first.weight.shape[0] * module.first.weight.shape[2], module.second.c_out
    elif isinstance(module, HashedLinear):
        c_out, c_in = module.index.shape
    elif isinstance(module, ACDC):
        c_in, c_out = module.c_in, module.c_out
    else:
        raise TypeError(f"not a structured substitute: {type(module).__name__}")
    return sum(p.numel() for p in module.parameters()) / (c_in * c_out)


def weight_decay_scales(model: nn.Module) -> dict[str, float]:
    """``{parameter name: compression ratio}`` for every parameter of a structured substitute in
    ``model`` (Gray et al. 2019 scale weight decay on substituted parameters by this ratio)."""
    scales = {}
    for name, module in model.named_modules():
        if isinstance(module, STRUCTURED):
            ratio = compression_ratio(module)
            for pname, _ in module.named_parameters():
                scales[f"{name}.{pname}" if name else pname] = ratio
    return scales
