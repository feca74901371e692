"""Lottery tickets (IMP with rewinding) and linear mode connectivity, on a tiny blob problem."""
import copy
import importlib.util
import pathlib

import pytest
import torch
from torch import nn

from compresslab.compress.lottery import ImpResult, imp
from compresslab.compress.prune import prunable_parameters
from compresslab.data.core import Dataset
from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.train.fit import fit
from compresslab.train.recipe import Recipe

# measure/__init__.py is edited elsewhere: load landscape.py by its path
_spec = importlib.util.spec_from_file_location(
    "compresslab_landscape", pathlib.Path(__file__).parents[1] / "src/compresslab/measure/landscape.py")
landscape = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(landscape)

RECIPE = Recipe(optimizer="adam", lr=0.03, weight_decay=0.0, epochs=2, batch_size=32)


def _blobs(seed=0, classes=4, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    centers = scale * torch.randn(classes, 1, 16, generator=g)

    def split(n):
        y = torch.arange(n) % classes
        return centers[y] + torch.randn(n, 1, 16, generator=g), y

    (xt, yt), (xv, yv), (xs, ys) = split(256), split(64), split(64)
    return Dataset("blobs", xt, yt, xv, yv, xs, ys, classes)


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("cnn1d", num_classes=4, in_channels=1, input_shape=(1, 16), width=4, depth=2, hidden=8)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def data():
    return _blobs()


# -- lottery tickets -------------------------------------------------------------------------

@pytest.mark.parametrize("rewind_epoch", [0, 1])
def test_imp_rewinds_exactly_to_theta_k(data, rewind_epoch):
    model = _model()
    init = _state(model)
    starts = []

    def callback(event):
        if event["event"] == "round-start":
            starts.append((event["round"], _state(event["model"]), {n: m.clone() for n, m in event["masks"].items()}))

    res = imp(model, data, RECIPE, rounds=2, rate=0.3, rewind_epoch=rewind_epoch, seed=5, callback=callback)
    assert isinstance(res, ImpResult) and [r for r, _, _ in starts] == [0, 1, 2]

    if rewind_epoch == 0:
        expected = init
    else:  # θ_1 is what one epoch of the same (seeded) run gives
        ref = _model()
        fit(ref, data, RECIPE, seed=5, max_steps=rewind_epoch * 8)  # 256 / 32 = 8 steps per epoch
        expected = _state(ref)
    assert all(torch.equal(res.rewind_state[k], v) for k, v in expected.items())

    for r, state, masks in starts[1:]:
        for k, v in state.items():
            if k in masks:  # pruned parameter: θ_k on the kept entries, exact zeros elsewhere
                m = masks[k]
                assert torch.equal(v[m], expected[k][m]), (r, k)
                assert torch.all(v[~m] == 0), (r, k)
            else:  # buffers (BN statistics) rewind too
                assert torch.equal(v, expected[k]), (r, k)
    # masks are nested: pruned entries never come back
    for (_, _, prev), (_, _, cur) in zip(starts[1:], starts[2:]):
        assert all(torch.all(prev[n] | ~cur[n]) for n in cur)


def test_imp_sparsity_schedule_and_records(data):
    model = _model()
    rate, rounds = 0.3, 3
    res = imp(model, data, RECIPE, rounds=rounds, rate=rate, seed=1)
    total = sum(p.numel() for p in prunable_parameters(model).values())
    kept = total
    assert [rec["round"] for rec in res.records] == list(range(rounds + 1))
    for r, rec in enumerate(res.records):
        assert rec["pruned"] == total - kept and rec["total"] == total
        assert rec["sparsity"] == pytest.approx(1 - (1 - rate) ** r, abs=2 / total)
        assert 0.0 <= rec["val_acc"] <= 1.0 and 0.0 <= rec["test_acc"] <= 1.0
        kept -= round(rate * kept)
    assert res.records[0]["val_acc"] > 0.6  # the blobs are learnable (chance: 0.25)
    final = res.masks
    assert sum(int((~m).sum()) for m in final.values()) == res.records[-1]["pruned"]
    params = dict(model.named_parameters())  # the model ends as the trained final ticket
    assert all(torch.all(params[n][~m] == 0) for n, m in final.items())


def test_imp_is_deterministic(data):
    a = imp(_model(), data, RECIPE, rounds=1, rate=0.5, seed=2)
    b = imp(_model(), data, RECIPE, rounds=1, rate=0.5, seed=2)
    assert a.records == b.records
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)


def test_imp_random_reinit_control(data):
    model = _model()
    seen = {}

    def callback(event):
        if event["event"] == "round-start" and event["round"] == 1:
            seen[event["phase"]] = (_state(event["model"]), {n: m.clone() for n, m in event["masks"].items()})

    res = imp(model, data, RECIPE, rounds=1, rate=0.5, seed=0, random_reinit_control=True, callback=callback)
    assert res.records[0]["control_val_acc"] is None
    assert 0.0 <= res.records[1]["control_val_acc"] <= 1.0 and 0.0 <= res.records[1]["control_test_acc"] <= 1.0
    (ticket, tmasks), (control, cmasks) = seen["ticket"], seen["control"]
    assert all(torch.equal(tmasks[n], cmasks[n]) for n in tmasks)  # same mask
    w = "hidden.0.weight"
    assert torch.all(control[w][~cmasks[w]] == 0)
    assert not torch.equal(control[w][cmasks[w]], ticket[w][tmasks[w]])  # other weights


def test_imp_bad_arguments_are_user_errors(data):
    with pytest.raises(UserError, match="rate"):
        imp(_model(), data, RECIPE, rounds=1, rate=1.0)
    with pytest.raises(UserError, match="rewind_epoch"):
        imp(_model(), data, RECIPE, rounds=1, rewind_epoch=2)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    with pytest.raises(UserError, match="create_model"):
        imp(plain, data, RECIPE, rounds=1, random_reinit_control=True)


# -- linear mode connectivity ----------------------------------------------------------------

def test_interpolate_endpoints_are_exact_and_ints_come_from_a():
    a, b = _model(0), _model(1)
    with torch.no_grad():
        b.stages[0][1].num_batches_tracked.fill_(7)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(v, sa[k]) for k, v in landscape.interpolate_state(sa, sb, 0.0).items())
    assert all(torch.equal(v, sb[k]) for k, v in landscape.interpolate_state(sa, sb, 1.0).items()
               if v.is_floating_point())
    mid = landscape.interpolate_state(sa, sb, 0.5)
    assert torch.allclose(mid["fc.weight"], (sa["fc.weight"] + sb["fc.weight"]) / 2)
    assert mid["stages.0.1.num_batches_tracked"].item() == 0
    with pytest.raises(UserError):
        landscape.interpolate_state(sa, {k: v for k, v in sb.items() if k != "fc.bias"}, 0.5)


def test_recompute_bn_matches_direct_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 3, 3), nn.BatchNorm1d(3), nn.ReLU())
    bn = net[1]
    bn.running_mean.fill_(5.0)  # stale statistics to be replaced
    x = torch.randn(40, 1, 16)
    with torch.no_grad():
        h = net[0](x)  # the BN layer's input
    mean, var = h.mean((0, 2)), h.var((0, 2), unbiased=True)
    for batch_size in (40, 20):  # one batch, or equal batches (mean of batch means = mean)
        net.train()
        out = landscape.recompute_bn(net, x, batch_size=batch_size)
        assert out is net and not net.training and bn.momentum == 0.1
        assert torch.allclose(bn.running_mean, mean, atol=1e-6)
        if batch_size == 40:
            assert torch.allclose(bn.running_var, var, atol=1e-6)
        assert bn.num_batches_tracked.item() == 40 // batch_size


def test_error_barrier_of_identical_models_is_zero(data):
    model = _model()
    fit(model, data, RECIPE, seed=0, max_steps=4)
    res = landscape.error_barrier(model, copy.deepcopy(model), data)
    assert len(res["alpha"]) == len(res["error"]) == len(res["loss"]) == 11
    assert res["alpha"][0] == 0.0 and res["alpha"][-1] == 1.0
    assert res["barrier"] == 0.0 and abs(res["loss_barrier"]) < 1e-12
    assert len(set(res["error"])) == 1


def test_lmc_pair_runs_and_plots(data, tmp_path):
    init = _model()
    before = _state(init)
    from compresslab.compress.prune import global_magnitude_masks

    mask = global_magnitude_masks(prunable_parameters(init), 0.5)
    res = landscape.lmc_pair(init, data, RECIPE, seeds=(1, 2), mask=mask)
    assert len(res["alpha"]) == len(res["error"]) == 11 and res["seeds"] == [1, 2]
    assert isinstance(res["barrier"], float) and res["barrier"] >= 0.0
    assert all(torch.equal(v, before[k]) for k, v in init.state_dict().items())  # init untouched
    png = landscape.plot_barrier(res, tmp_path / "sub" / "barrier.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["barrier.png"]
