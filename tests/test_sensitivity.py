"""Per-layer sensitivity and mixed precision: one layer changed at a time, per-layer bits
through a checkpoint and the BOPs formula, greedy and exact assignment against brute force,
and the command line."""
import itertools
import json
import math
import random

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from compresslab.api import quantize_checkpoint, train_model
from compresslab.cli import main
from compresslab.compress import quantize as q
from compresslab.compress import sensitivity as sens
from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.steps import dataset
from compresslab.train import evaluate_logits


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    runs = tmp_path_factory.mktemp("sruns")
    r = train_model("mlp", "digits", options={"widths": [32]}, runs=runs,
                    overrides={"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 4, "batch_size": 64})
    return r["checkpoint"], runs


def test_per_layer_bits_leave_the_old_specs_alone():
    assert q.per_type(4, "b") == {"conv": 4, "linear": 4}
    assert q.per_type({"linear": 6}, "b") == {"linear": 6}
    assert q.per_type({"linear": 6, "layers": {"fc": 3}}, "b") == {"linear": 6, "layers": {"fc": 3}}
    with pytest.raises(UserError, match="layers"):
        q.per_type({"layers": {"fc": 1}}, "b")
    with pytest.raises(UserError, match="not conv/linear layers"):
        q.attach_fake_quant(create_model("mlp", num_classes=3, in_channels=1, input_shape=(1, 8), widths=[4]),
                            {"layers": {"nope": 4}})


def test_a_layer_quantised_or_pruned_alone_changes_only_its_weights():
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=5, in_channels=1, input_shape=(1, 16), widths=[12, 8])
    names = list(sens.quant_layers(model))
    assert len(names) == 3
    for name in names:
        for child, quantised in ((sens.quantize_one(model, name, 2), True), (sens.prune_one(model, name, 0.5), False)):
            for other in names:
                before, after = model.get_submodule(other), child.get_submodule(other)
                assert torch.equal(before.weight, after.weight) != (other == name)  # bitwise, others untouched
                assert parametrize.is_parametrized(after, "weight") == (quantised and other == name)
            if not quantised:
                assert float((child.get_submodule(name).weight == 0).double().mean()) == pytest.approx(0.5, abs=0.01)


def test_two_bits_hurt_each_layer_more_than_eight(parent):
    ckpt, _ = parent
    model = load_checkpoint(ckpt, apply_transforms=False)[0]
    data = dataset("digits", 0.1, 0)
    t = sens.layer_sensitivity(model, data, bits=(8, 2), sparsities=(0.9,))
    assert [r["name"] for r in t["layers"]] == ["hidden.0.0", "fc"]
    assert sum(r["bops_share"] for r in t["layers"]) == pytest.approx(1.0)
    for r in t["layers"]:
        assert r["quant"][2]["drift"] > r["quant"][8]["drift"] >= 0
        assert r["quant"][2]["drop"] > r["quant"][8]["drop"]
        assert r["quant"][2]["agreement"] < r["quant"][8]["agreement"] <= 1
        assert r["bops"][2] < r["bops"][8] < r["bops_fp32"]
        assert 0 < r["prune"][0.9]["drift"]


def test_per_layer_bits_round_trip_and_bops_by_the_formula(parent):
    ckpt, runs = parent
    r = quantize_checkpoint(ckpt, "digits", scheme="fake", bits={"layers": {"hidden.0.0": 3}}, runs=runs)
    model, cfg = load_checkpoint(r["checkpoint"])
    assert cfg["transforms"][0]["weight_bits"] == {"layers": {"hidden.0.0": 3}}
    x, _ = dataset("digits", 0.1, 0).split("test")
    assert np.array_equal(evaluate_logits(model, x).numpy(), np.load(f"{r['checkpoint']}/logits_test.npy"))
    assert parametrize.is_parametrized(model.get_submodule("hidden.0.0"), "weight")
    assert not parametrize.is_parametrized(model.get_submodule("fc"), "weight")
    assert model.get_submodule("hidden.0.0").parametrizations.weight[0].bits == 3

    def bops(m, n, s, bw, ba):  # the formula of measure.cost.layer_costs
        return m * n * ((1 - s) * ba * bw + ba + bw + math.log2(n))

    float_model = load_checkpoint(ckpt, apply_transforms=False)[0]
    s0 = float((float_model.get_submodule("hidden.0.0").weight == 0).double().mean())
    s1 = float((float_model.get_submodule("fc").weight == 0).double().mean())
    want = bops(32, 64, s0, 3, 32) + bops(10, 32, s1, 32, 32)
    assert r["cost"]["bops"] == pytest.approx(want)
    assert r["parent_cost"]["bops"] == pytest.approx(bops(32, 64, s0, 32, 32) + bops(10, 32, s1, 32, 32))


def random_options(rng, layers=4, widths=(8, 6, 4, 3, 2)):
    opts = {}
    for i in range(layers):
        size = rng.uniform(10, 1000)
        loss = sorted(rng.uniform(0, 1) for _ in widths)  # narrower costs more loss (not required)
        if rng.random() < 0.3:
            loss[1], loss[2] = loss[2], loss[1]  # and sometimes not monotone
        opts[f"l{i}"] = [(b, size * b, loss[j]) for j, b in enumerate(widths)]
    return opts


@pytest.mark.parametrize("seed", range(12))
def test_exact_is_optimal_and_greedy_is_within_budget(seed):
    rng = random.Random(seed)
    opts = random_options(rng)
    widest = sum(c[0][1] for c in opts.values())
    budget = widest * rng.uniform(0.3, 0.9)
    feasible = [dict(zip(opts, pick)) for pick in itertools.product(*[[b for b, _, _ in c] for c in opts.values()])]
    feasible = [a for a in feasible if sens.totals(opts, a)[0] <= budget]
    best = min(sens.totals(opts, a)[1] for a in feasible)
    exact, greedy = sens.assign_exact(opts, budget), sens.assign_greedy(opts, budget)
    assert sens.totals(opts, exact)[0] <= budget and sens.totals(opts, exact)[1] == pytest.approx(best)
    assert sens.totals(opts, greedy)[0] <= budget and sens.totals(opts, greedy)[1] >= best - 1e-12


def test_a_budget_below_the_smallest_network_is_refused():
    opts = random_options(random.Random(0))
    floor = sum(min(c for _, c, _ in choices) for choices in opts.values())
    for assign in (sens.assign_exact, sens.assign_greedy):
        with pytest.raises(UserError, match="below the smallest network"):
            assign(opts, floor * 0.99)
        assert sens.totals(opts, assign(opts, floor))[0] <= floor


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_assign_and_errors(capsys, parent, tmp_path):
    ckpt, runs = parent
    code, out, err = run(capsys, "sensitivity", ckpt, "--data", "digits", "--bits", "8,4,2", "--sparsities", "0.5",
                         "--budget-ratio", "0.6", "--method", "both", "--assign", "--out", tmp_path / "s",
                         "--runs", runs, "--quiet", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert {"checkpoint", "checkpoint_sha256", "data", "table", "assignment", "quantized", "json"} <= set(r)
    assert {"task", "split", "score", "parent_score", "bits", "sparsities", "layers", "total_bops_fp32"} <= set(
        r["table"])
    assert {"name", "type", "params", "bops_fp32", "bops_share", "bops", "bytes", "quant", "prune"} <= set(
        r["table"]["layers"][0])
    a = r["assignment"]
    assert set(a["assignments"]) == {"exact", "greedy"} and a["budget"] == pytest.approx(0.6 * a["widest"])
    assert a["assignments"]["exact"]["cost"] <= a["budget"]
    assert r["quantized"]["cost"]["bops"] == pytest.approx(a["assignments"]["exact"]["cost"])  # as assigned
    saved = tmp_path / "s" / "sensitivity.json"
    assert json.loads(saved.read_text())["table"]["bits"] == [8, 4, 2]

    code, out, err = run(capsys, "sensitivity", ckpt, "--data", "digits", "--table", saved, "--budget-bops", "1",
                         "--runs", runs, "--quiet")
    assert code == 2 and "below the smallest network" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "sensitivity", ckpt, "--data", "digits", "--assign", "--runs", runs, "--quiet")
    assert code == 2 and "needs a budget" in err
