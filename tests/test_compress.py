"""Compression primitives of the first slice: global magnitude pruning, KD loss, int8 dynamic PTQ."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as tprune

from compresslab.compress.distill import KDTerm, TeacherSignal, kd_loss
from compresslab.compress.prune import apply_masks, prunable_parameters, prune_global, sparsity_report
from compresslab.compress.quantize import quantize_dynamic_int8
from compresslab.errors import UserError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 8, 3), nn.BatchNorm1d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 38, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("scope", ["all", "weights"])
@pytest.mark.parametrize("amount", [0.1, 0.5, 0.9])
def test_global_l1_mask_equals_torch_prune(scope, amount):
    ours = _net()
    with torch.no_grad():  # BN affine params default to exact 1/0: make magnitudes distinct (no ties)
        ours[1].weight.normal_()
        ours[1].bias.normal_()
    ref = _net()
    ref.load_state_dict(ours.state_dict())
    masks = prune_global(ours, amount, scope=scope)
    params = prunable_parameters(ref, scope=scope)
    modules = dict(ref.named_modules())
    targets = [(modules[n.rsplit(".", 1)[0]], n.rsplit(".", 1)[1]) for n in params]
    tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=amount)
    for (module, pname), name in zip(targets, params):
        torch_mask = getattr(module, pname + "_mask").bool()
        assert torch.equal(masks[name], torch_mask), name
    for n, _ in params.items():
        assert torch.equal(dict(ours.named_parameters())[n], dict(ref.named_parameters())[n + "_orig"] * masks[n])
    rep = sparsity_report(ours, masks)
    assert rep["global"] == pytest.approx(round(amount * rep["total"]) / rep["total"])


def test_scope_all_includes_norm_and_biases():
    names = set(prunable_parameters(_net(), scope="all"))
    assert {"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias", "6.weight", "6.bias"} == names
    assert set(prunable_parameters(_net(), scope="weights")) == {"0.weight", "4.weight", "6.weight"}


def test_bad_amount_and_scope_are_user_errors():
    with pytest.raises(UserError):
        prune_global(_net(), 1.5)
    with pytest.raises(UserError):
        prunable_parameters(_net(), scope="heads")


def test_masks_survive_sgd_momentum_and_weight_decay():
    model = _net()
    masks = prune_global(model, 0.7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(64, 1, 40), torch.randint(0, 10, (64,))
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        apply_masks(model, masks)
        params = dict(model.named_parameters())
        for n, m in masks.items():
            assert torch.all(params[n][~m] == 0)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_matches_direct_formula(T):
    torch.manual_seed(1)
    s, t = torch.randn(16, 10) * 3, torch.randn(16, 10) * 3
    p_t = torch.softmax(t / T, 1)
    p_s = torch.softmax(s / T, 1)
    direct = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(direct.item(), rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_term_reads_cached_logits_by_example_index():
    cached = torch.randn(100, 10)
    term = KDTerm(TeacherSignal(logits=cached), 2.0)

    class Ctx:
        idx = torch.tensor([5, 17, 99])
        logits = torch.randn(3, 10)
        x = None
        y = torch.tensor([1, 2, 3])

    assert term(Ctx).item() == pytest.approx(kd_loss(Ctx.logits, cached[Ctx.idx], 2.0).item())


def test_int8_dynamic_runs_int8_linears_and_stays_close():
    model = _net().eval()
    q = quantize_dynamic_int8(model)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert isinstance(q[4], DynamicLinear) and isinstance(q[6], DynamicLinear)
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert isinstance(model[4], nn.Linear)  # the original is untouched
    x = torch.randn(32, 1, 40)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert not torch.equal(ref, out)  # really quantised
    assert (ref - out).abs().max() < 0.05 * ref.abs().max() + 1e-3
    assert math.isclose((ref.argmax(1) == out.argmax(1)).float().mean().item(), 1.0, abs_tol=0.1)
