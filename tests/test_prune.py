"""Unstructured pruning criteria (global-l1, layer-l1, random), iterative masks, permanence."""
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from compresslab.compress.prune import (
    METHODS,
    apply_masks,
    global_magnitude_masks,
    layer_magnitude_masks,
    make_permanent,
    masks_from_zeros,
    prunable_parameters,
    prune,
    prune_global,
    random_masks,
    sparsity_report,
)
from compresslab.errors import UserError


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv1d(1, 6, 3), nn.BatchNorm1d(6), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 14, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():  # BN affine params default to exact 1/0: make magnitudes distinct (no ties)
        net[1].weight.normal_()
        net[1].bias.normal_()
    return net


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.75, 1.0])
def test_layer_l1_equals_torch_l1_unstructured_per_tensor(amount):
    model = _net()
    params = prunable_parameters(model)
    masks = layer_magnitude_masks(params, amount)
    for name, p in params.items():
        ref = tprune.L1Unstructured(amount).compute_mask(p.detach(), torch.ones_like(p)).bool()
        assert torch.equal(masks[name], ref), name
        assert int((~masks[name]).sum()) == round(amount * p.numel())
    rep = sparsity_report(model, masks)
    assert rep["per_tensor"] == {n: pytest.approx(round(amount * p.numel()) / p.numel()) for n, p in params.items()}
    assert rep["pruned"] == sum(round(amount * p.numel()) for p in params.values())


def test_random_masks_count_seeding_and_spread():
    params = prunable_parameters(_net())
    total = sum(p.numel() for p in params.values())
    a = random_masks(params, 0.6, seed=3)
    assert sum(int((~m).sum()) for m in a.values()) == round(0.6 * total)
    assert all(torch.equal(a[n], m) for n, m in random_masks(params, 0.6, seed=3).items())
    assert not all(torch.equal(a[n], m) for n, m in random_masks(params, 0.6, seed=4).items())
    big = "4.weight"  # 1344 entries: its sparsity is close to the global one
    assert abs(1 - a[big].float().mean().item() - 0.6) < 0.05
    assert {n: m.shape for n, m in a.items()} == {n: p.shape for n, p in params.items()}


@pytest.mark.parametrize("method", METHODS)
def test_prune_dispatches_in_place(method):
    model = _net()
    masks = prune(model, 0.5, method=method, scope="weights", seed=1)
    assert set(masks) == {"0.weight", "4.weight", "6.weight"}
    params = dict(model.named_parameters())
    assert all(torch.all(params[n][~m] == 0) for n, m in masks.items())
    rep = sparsity_report(model, masks)
    assert rep["global"] == pytest.approx(0.5, abs=0.01) and set(rep) >= {"global", "per_tensor", "pruned", "total"}


def test_prune_global_is_the_global_l1_shortcut():
    a, b = _net(), _net()
    ma, mb = prune_global(a, 0.4), prune(b, 0.4, method="global-l1")
    assert all(torch.equal(ma[n], mb[n]) for n in ma)


def test_unknown_method_and_bad_amounts_are_user_errors():
    with pytest.raises(UserError, match="global-l1, layer-l1, random"):
        prune(_net(), 0.5, method="l2")
    params = prunable_parameters(_net())
    for fn in (layer_magnitude_masks, random_masks, global_magnitude_masks):
        with pytest.raises(UserError):
            fn(params, -0.1)


def test_iterative_global_pruning_only_among_kept_entries():
    model = _net()
    params = prunable_parameters(model)
    first = global_magnitude_masks(params, 0.5)
    kept = sum(int(m.sum()) for m in first.values())
    with torch.no_grad():  # make pruned entries large: they must neither compete nor regrow
        for n, p in params.items():
            p[~first[n]] = 100.0
    second = global_magnitude_masks(params, 0.3, first)
    assert all(torch.all(first[n] | ~second[n]) for n in first)  # nested
    removed = {n: first[n] & ~second[n] for n in first}
    assert sum(int(m.sum()) for m in removed.values()) == round(0.3 * kept)
    largest_removed = max(params[n].detach()[m].abs().max() for n, m in removed.items() if m.any())
    smallest_kept = min(params[n].detach()[m].abs().min() for n, m in second.items() if m.any())
    assert largest_removed <= smallest_kept
    with pytest.raises(UserError):
        global_magnitude_masks(params, 0.3, {"0.weight": first["0.weight"]})


def test_make_permanent_and_masks_from_zeros_round_trip():
    model = _net()
    masks = prune(model, 0.6, method="layer-l1")
    with torch.no_grad():
        model[4].weight[~masks["4.weight"]] = float("nan")  # apply_masks would keep nan * 0 = nan
    rep = make_permanent(model, masks)
    assert rep == sparsity_report(model, masks)
    params = dict(model.named_parameters())
    assert all(torch.all(params[n][~m] == 0) and not torch.signbit(params[n][~m]).any() for n, m in masks.items())

    reloaded = _net(seed=1)
    reloaded.load_state_dict(model.state_dict())
    recovered = masks_from_zeros(reloaded)
    assert recovered.keys() == masks.keys() and all(torch.equal(recovered[n], masks[n]) for n in masks)
    assert set(masks_from_zeros(reloaded, "weights")) == {"0.weight", "4.weight", "6.weight"}

    # fine-tuning a reloaded checkpoint with the recovered masks keeps it sparse
    opt = torch.optim.SGD(reloaded.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 1, 16), torch.randint(0, 4, (32,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(reloaded(x), y).backward()
        opt.step()
        apply_masks(reloaded, recovered)
    assert sparsity_report(reloaded, masks_from_zeros(reloaded))["pruned"] == rep["pruned"]
