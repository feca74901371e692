"""BlockSwap: closed-form parameter table, budget sampling, Fisher potential, search."""
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compresslab.compress.search import (
    block_table,
    build,
    fisher_potential,
    sample_candidates,
    search,
    table_params,
    write_csv,
)
from compresslab.errors import UserError

BLOCKS = ["Conv", "ConvB2", "G4B2", "A2B2", "DConv", "DConvB2", "G16B4"]


@pytest.mark.parametrize("dim, depth, widen, in_ch", [(2, 16, 2, 3), (1, 16, 2, 1), (1, 10, 1, 1)])
def test_table_counts_equal_built_networks(dim, depth, widen, in_ch):
    table = block_table(depth, widen, BLOCKS, dim=dim, in_channels=in_ch)
    rng = np.random.default_rng(0)
    for _ in range(4):
        g = [BLOCKS[rng.choice([j for j, c in enumerate(row) if c is not None])] for row in table["costs"]]
        assert table_params(table, g) == sum(p.numel() for p in build(table, g).parameters())
    # unavailable entries are exactly the combinations the builder refuses (G16B4 on narrow layers)
    from compresslab.models.blocks import make_block

    widths = [16 * widen, 32 * widen, 64 * widen]
    assert any(c is None for row in table["costs"] for c in row)  # G16B4 cannot split the narrow layers
    for i, row in enumerate(table["costs"]):
        for j, c in enumerate(row):
            if c is None:
                with pytest.raises(UserError):
                    c_out = widths[min(2, i // ((depth - 4) // 6))]
                    make_block(BLOCKS[j], c_out, c_out, 1, dim)


def test_sampling_respects_the_budget_and_the_seed():
    table = block_table(16, 2, BLOCKS, dim=1, in_channels=1)
    plain = table_params(table, ["Conv"] * 6)
    budget = 0.5 * plain
    cands, draws = sample_candidates(table, 50, budget, seed=3)
    assert len(cands) == 50 and draws >= 50
    assert all(abs(table_params(table, g) - budget) <= 0.025 * budget for g in cands)
    assert sample_candidates(table, 50, budget, seed=3)[0] == cands
    assert sample_candidates(table, 50, budget, seed=4)[0] != cands
    with pytest.raises(UserError, match="choose a budget in that range"):
        sample_candidates(table, 5, 10 * plain)


def test_fisher_potential_matches_a_hand_computation():
    torch.manual_seed(0)
    table = block_table(10, 1, ["Conv", "DConv"], dim=1, in_channels=1)
    model = build(table, ["DConv", "Conv", "DConv"])
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    result = fisher_potential(model, x, y)
    # by hand: capture each block's conv2 output in a fresh train-mode forward, grad via autograd
    blocks = [model.group1[0], model.group2[0], model.group3[0]]
    outs = []
    hs = [b.conv2.register_forward_hook(lambda m, i, o: outs.append(o)) for b in blocks]
    model.train()
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, outs)
    for h in hs:
        h.remove()
    expected = []
    for a, g in zip(outs, grads):
        total = 0.0
        for c in range(a.shape[1]):
            per_example = [float((a[n, c] * g[n, c]).sum().detach()) for n in range(a.shape[0])]
            total += 0.5 * sum(v * v for v in per_example) / a.shape[0]
        expected.append(total)
    assert result["blocks"] == pytest.approx(expected, rel=1e-5)
    assert result["score"] == pytest.approx(sum(expected), rel=1e-6) and all(v >= 0 for v in expected)
    assert all(p.grad is None for p in model.parameters())


def test_fisher_potential_restores_eval_mode_and_needs_a_wrn():
    table = block_table(10, 1, ["Conv"], dim=1, in_channels=1)
    model = build(table, ["Conv"] * 3).eval()
    fisher_potential(model, torch.randn(8, 1, 40), torch.randint(0, 10, (8,)))
    assert not model.training
    with pytest.raises(UserError, match="Wide ResNet"):
        fisher_potential(nn.Sequential(nn.Flatten(), nn.Linear(40, 10)), torch.randn(4, 1, 40), torch.zeros(4).long())


def test_search_picks_the_best_and_writes_a_ranked_csv(tmp_path):
    x, y = torch.randn(32, 1, 40), torch.randint(0, 10, (32,))
    table = block_table(16, 1, BLOCKS[:6], dim=1, in_channels=1)
    budget = 0.6 * table_params(table, ["Conv"] * 6)
    r = search(16, 1, BLOCKS[:6], budget, x, y, samples=12, dim=1, in_channels=1, seed=1)
    assert len(r["candidates"]) == 12 and r["best_score"] == max(c["score"] for c in r["candidates"])
    again = search(16, 1, BLOCKS[:6], budget, x, y, samples=12, dim=1, in_channels=1, seed=1)
    assert again["best"] == r["best"] and again["best_score"] == r["best_score"]
    rows = list(csv.reader(open(write_csv(r, tmp_path / "c.csv"))))
    assert rows[0] == ["rank", "score", "params", "genotype"] and len(rows) == 13
    assert [float(row[1]) for row in rows[1:]] == sorted((float(row[1]) for row in rows[1:]), reverse=True)
    assert rows[1][3] == "-".join(r["best"])


def test_blockswap_cli(tmp_path, capsys):
    import json

    from compresslab.api import train_model
    from compresslab.cli import main

    runs = tmp_path / "runs"
    teacher = train_model("wrn1d-10-1", "mnist1d", overrides={"epochs": 1, "optimizer": "adam", "lr": 0.01},
                          runs=runs)["checkpoint"]
    args = ["blockswap", teacher, "--data", "mnist1d", "--samples", "10", "--runs", str(runs), "--quiet"]
    assert main([*args, "--budget", "20k", "--validate", "3", "--validate-epochs", "1", "--json",
                 "--csv", str(tmp_path / "c.csv")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_candidates"] == 10 and abs(r["best_params"] - 20_000) <= 500
    assert len(r["validation"]["candidates"]) == 3 and "student" in r
    assert len(list(csv.reader(open(tmp_path / "c.csv")))) == 11
    for bad, message in ((["--budget", "lots"], "--budget"), (["--budget", "5M"], "choose a budget"),
                         (["--budget", "20k", "--block", "Ghost"], "unknown block")):
        assert main([*args, *bad]) == 2
        assert message in capsys.readouterr().err
