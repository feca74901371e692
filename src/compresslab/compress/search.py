"""BlockSwap (Turner et al. 2019): choose a mix of cheap blocks for a WRN on a parameter budget.

1. :func:`block_table` counts, in closed form, what each block type costs at each basic-
   block position of a WRN (both 3x3 convs replaced), plus the fixed rest of the network.
2. :func:`sample_candidates` draws genotypes (one block type per position, uniformly)
   and keeps those within ±2.5% of the budget, counting params from the table only.
3. :func:`fisher_potential` scores a candidate at random initialisation on one minibatch:
   for each basic block, with a the output of its second (cheap) conv, i.e. the block's
   output before the residual addition, and g the gradient of the mean cross-entropy with
   respect to a, Δ_c = ½ · mean over examples of (Σ over positions of a·g)², the block
   score is Σ_c Δ_c and the network score the sum over blocks. (g carries the 1/N of the
   mean loss; a global constant that leaves the ranking unchanged.)
4. :func:`search` scores every candidate and returns the best.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.models.blocks import block_params, parse_block
from compresslab.models.wrn import PreActBlock, blocks_per_group


def wrn_name(depth: int, widen_factor: int, dim: int) -> str:
    return f"{'wrn1d' if dim == 1 else 'wrn'}-{depth}-{widen_factor}"


def block_table(depth: int, widen_factor: int, blocks: list[str], *, dim: int = 2, in_channels: int = 3,
                num_classes: int = 10) -> dict:
    """``{"blocks", "costs": [[params or None per block] per position], "fixed", "model"}``.

    ``costs[i][j]`` is what block ``blocks[j]`` adds at basic-block position ``i`` (both its
    3x3 convs), ``None`` where it cannot split that layer's channels; ``fixed`` is every
    other parameter (stem, BNs, shortcuts, classifier), from one all-Conv build.
    """
    if not blocks:
        raise UserError("give at least one block type")
    for name in blocks:
        parse_block(name)  # unknown names fail here, not as "does not fit"
    n = blocks_per_group(depth)
    widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    layout, c_in = [], 16
    for c_out in widths:
        layout += [(c_in, c_out)] + [(c_out, c_out)] * (n - 1)
        c_in = c_out

    def cost(name: str, a: int, b: int) -> int | None:
        try:
            return block_params(name, a, b, dim) + block_params(name, b, b, dim)
        except UserError:
            return None

    costs = [[cost(name, a, b) for name in blocks] for a, b in layout]
    for i, row in enumerate(costs):
        if all(c is None for c in row):
            raise UserError(f"no block in {', '.join(blocks)} fits basic block {i} ({layout[i][0]}->{layout[i][1]} "
                            "channels); add Conv or a block with smaller factors")
    table = {"blocks": list(blocks), "costs": costs, "model": wrn_name(depth, widen_factor, dim), "dim": dim,
             "in_channels": in_channels, "num_classes": num_classes}
    plain = build(table, ["Conv"] * len(layout))
    table["fixed"] = sum(p.numel() for p in plain.parameters()) - sum(cost("Conv", a, b) for a, b in layout)
    return table


#: The block types mixed by default: Moonshine's family (Crowley et al. 2018) as BlockSwap uses it.
DEFAULT_BLOCKS = ["Conv", "ConvB2", "ConvB4", "G4B2", "G8B2", "A2B2", "DConv", "DConvB2", "DConvB4"]


def wrn_geometry(name: str) -> tuple[int, int, int]:
    """``wrn-40-2`` -> ``(40, 2, 2)``, ``wrn1d-16-2`` -> ``(16, 2, 1)``: depth, widen factor, dims."""
    if not name.startswith(("wrn-", "wrn1d-")):
        raise UserError(f"BlockSwap needs a Wide ResNet teacher (wrn-D-K or wrn1d-D-K), got {name!r}")
    depth, widen = (int(v) for v in name.split("-")[1:3])
    return depth, widen, 1 if name.startswith("wrn1d") else 2


def minibatch(x: torch.Tensor, y: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded random minibatch the candidates are scored on."""
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:size].to(x.device)
    return x[idx], y[idx]


def build(table: dict, genotype: list[str]) -> nn.Module:
    """The WRN of ``table`` with one block type per basic block, at random initialisation."""
    kw = {"dim": table["dim"]} if table["dim"] != 1 else {}
    return create_model(table["model"], num_classes=table["num_classes"], in_channels=table["in_channels"],
                        block=list(genotype), **kw)


def table_params(table: dict, genotype: list[str]) -> int:
    """Total parameters of ``genotype`` (one block name per position), from the table."""
    index = {b: j for j, b in enumerate(table["blocks"])}
    total = table["fixed"]
    for i, name in enumerate(genotype):
        c = table["costs"][i][index[name]]
        if c is None:
            raise UserError(f"block {name} does not fit basic block {i}")
        total += c
    return total


def sample_candidates(table: dict, n: int, budget: float, *, tolerance: float = 0.025, seed: int = 0,
                      max_draws: int | None = None) -> tuple[list[list[str]], int]:
    """Up to ``n`` genotypes within ±``tolerance`` of ``budget`` params, and the draws used.

    Each position gets a block drawn uniformly from those that fit it; draws are
    vectorised in chunks and deterministic for ``seed``.
    """
    rng = np.random.default_rng(seed)
    max_draws = max_draws or 200 * n
    avail = [np.array([j for j, c in enumerate(row) if c is not None]) for row in table["costs"]]
    cost = np.array([[c if c is not None else 0 for c in row] for row in table["costs"]], dtype=np.int64)
    lo, hi = budget * (1 - tolerance), budget * (1 + tolerance)
    kept: list[np.ndarray] = []
    draws = 0
    while len(kept) < n and draws < max_draws:
        chunk = min(max(4 * n, 1024), max_draws - draws)
        picks = np.stack([a[rng.integers(0, len(a), chunk)] for a in avail], axis=1)  # (chunk, positions)
        totals = table["fixed"] + cost[np.arange(len(avail)), picks].sum(1)
        ok = np.nonzero((totals >= lo) & (totals <= hi))[0]
        kept.extend(picks[ok[: n - len(kept)]])
        draws += chunk
    if not kept:
        low = table["fixed"] + sum(min(c for c in row if c is not None) for row in table["costs"])
        high = table["fixed"] + sum(max(c for c in row if c is not None) for row in table["costs"])
        raise UserError(f"no candidate within {100 * tolerance:g}% of {budget:,.0f} params in {draws:,} draws; "
                        f"these blocks give {low:,} to {high:,} params: choose a budget in that range")
    return [[table["blocks"][j] for j in g] for g in kept], draws


def fisher_potential(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Fisher potential of ``model`` on one minibatch (train-mode BN, no parameter grads)."""
    blocks = [m for m in model.modules() if isinstance(m, PreActBlock)]
    if not blocks:
        raise UserError("Fisher potential needs a Wide ResNet (residual blocks with a conv2)")
    acts: list[torch.Tensor] = []
    handles = [b.conv2.register_forward_hook(lambda m, i, o: acts.append(o)) for b in blocks]
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, acts)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    scores = []
    for a, g in zip(acts, grads):
        per_channel = (a.detach() * g).flatten(2).sum(2)  # (N, C): Σ over positions
        scores.append(float(0.5 * per_channel.pow(2).mean(0).sum()))
    return {"score": float(sum(scores)), "blocks": scores}


def search(depth: int, widen_factor: int, blocks: list[str], budget: float, x: torch.Tensor, y: torch.Tensor, *,
           samples: int = 1000, dim: int = 2, in_channels: int = 3, num_classes: int = 10, seed: int = 0,
           tolerance: float = 0.025, progress=None, device: torch.device | str = "cpu") -> dict:
    """Sample candidates on the budget, score each at random init on ``(x, y)``, return the best.
    Candidates are initialised on the CPU (the same weights on every device) and scored on ``device``."""
    t0 = time.perf_counter()
    table = block_table(depth, widen_factor, blocks, dim=dim, in_channels=in_channels, num_classes=num_classes)
    genotypes, draws = sample_candidates(table, samples, budget, tolerance=tolerance, seed=seed)
    t1 = time.perf_counter()
    x, y = x.to(device), y.to(device)
    candidates = []
    for i, g in enumerate(genotypes):
        torch.manual_seed(seed * 100_003 + i)
        model = build(table, g).to(device)
        candidates.append({"genotype": g, "params": table_params(table, g),
                           "score": fisher_potential(model, x, y)["score"]})
        if progress is not None:
            progress(i + 1, len(genotypes))
    t2 = time.perf_counter()
    best = max(candidates, key=lambda c: c["score"])
    return {"model": table["model"], "budget": budget, "best": best["genotype"], "best_score": best["score"],
            "best_params": best["params"], "candidates": candidates, "draws": draws,
            "seconds": {"sampling": t1 - t0, "scoring": t2 - t1, "total": t2 - t0}}


def write_csv(result: dict, path: str | Path) -> Path:
    """Candidates ranked by Fisher potential: rank, score, params, genotype (blocks joined by '-')."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    ranked = sorted(result["candidates"], key=lambda c: -c["score"])
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "score", "params", "genotype"])
        for r, c in enumerate(ranked, 1):
            w.writerow([r, f"{c['score']:.6g}", c["params"], "-".join(c["genotype"])])
    os.replace(tmp, path)
    return path
