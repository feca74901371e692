"""Structured efficient pointwise substitutes: shapes, closed-form counts, DCT vs scipy, budgets."""
import pytest
import scipy.fft
import torch

from compresslab.errors import UserError
from compresslab.models.linear_subs import (
    ACDC,
    channel_shuffle,
    compression_ratio,
    dct_matrix,
    fit_budget,
    make_pointwise,
    pointwise_params,
    weight_decay_scales,
)

SETTINGS = [("conv", {}), ("lowrank", {"rank": 3}), ("acdc", {"layers": 2}), ("shuffle", {"groups": 4}),
            ("hashed", {"budget": 0.25})]


@pytest.mark.parametrize("kind, hp", SETTINGS)
@pytest.mark.parametrize("c_in, c_out", [(8, 16), (16, 8), (12, 12)])
def test_shapes_and_closed_form_counts(kind, hp, c_in, c_out):
    m = make_pointwise(kind, c_in, c_out, **hp)
    assert sum(p.numel() for p in m.parameters()) == pointwise_params(kind, c_in, c_out, **hp)
    for shape in [(5, c_in), (5, c_in, 7), (5, c_in, 4, 3)]:
        assert m(torch.randn(shape)).shape == (5, c_out, *shape[2:])


def _matrix(m, c_in):
    """The effective C_out x C_in matrix, by feeding the identity."""
    return m(torch.eye(c_in)).T


def test_lowrank_rank():
    m = make_pointwise("lowrank", 10, 12, rank=1)
    assert torch.linalg.matrix_rank(_matrix(m, 10).detach()) == 1
    full = make_pointwise("lowrank", 6, 5, rank=5)
    target = torch.randn(5, 6)
    opt = torch.optim.Adam(full.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss = (_matrix(full, 6) - target).pow(2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


def test_dct_matches_scipy_and_is_orthonormal():
    x = torch.randn(16, dtype=torch.float64)
    c = dct_matrix(16)
    assert torch.allclose(c @ x, torch.from_numpy(scipy.fft.dct(x.numpy(), type=2, norm="ortho")), atol=1e-10)
    assert torch.allclose(c.T @ x, torch.from_numpy(scipy.fft.idct(x.numpy(), type=2, norm="ortho")), atol=1e-10)
    assert torch.allclose(c @ c.T, torch.eye(16, dtype=torch.float64), atol=1e-12)


def test_acdc_identity_permutation_buffers_and_determinism():
    m = ACDC(8, 8, layers=2)
    with torch.no_grad():
        m.a.fill_(1.0)
        m.d.fill_(1.0)
    m.perm.copy_(torch.arange(8).expand(2, 8))
    x = torch.randn(3, 8, 5)
    assert torch.allclose(m(x), x, atol=1e-5)
    assert "perm" not in dict(m.named_parameters()) and "perm" in dict(m.named_buffers())
    assert torch.equal(ACDC(8, 8, 2, seed=1).perm, ACDC(8, 8, 2, seed=1).perm)
    assert ACDC(4, 10, 1)(torch.randn(2, 4)).shape == (2, 10) and ACDC(10, 4, 1)(torch.randn(2, 10)).shape == (2, 4)


def test_channel_shuffle_by_hand_and_divisibility():
    x = torch.arange(4.0).view(1, 4)
    assert channel_shuffle(x, 2).tolist() == [[0.0, 2.0, 1.0, 3.0]]
    y = channel_shuffle(torch.arange(12.0).view(1, 12, 1), 3).flatten()
    assert sorted(y.tolist()) == list(range(12))
    with pytest.raises(UserError, match="groups must divide"):
        make_pointwise("shuffle", 10, 8, groups=4)


def test_hashed_shares_weights_and_gets_gradients():
    m = make_pointwise("hashed", 8, 8, budget=0.1)  # K = 6 shared weights
    w = m.matrix().detach()
    assert len(set(w.abs().flatten().tolist())) <= 6
    m(torch.randn(2, 8)).sum().backward()
    assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    assert pointwise_params("hashed", 8, 8, budget=1.0) == 64


def test_fit_budget_is_tight():
    layers = [(32, 64), (64, 64), (64, 128)]
    for kind in ("lowrank", "acdc"):
        r = fit_budget(kind, layers, 6000)
        (name, v), = r["hp"].items()
        assert r["params"] <= 6000
        assert sum(pointwise_params(kind, a, b, **{name: v + 1}) for a, b in layers) > 6000
    shuffle = fit_budget("shuffle", layers, 10_000)
    assert shuffle["params"] <= 10_000 and shuffle["hp"]["groups"] in (1, 2, 4, 8, 16, 32)
    hashed = fit_budget("hashed", layers, 5000, fixed_params=1000)
    assert 4900 <= hashed["params"] <= 5000
    with pytest.raises(UserError, match="smallest setting"):
        fit_budget("lowrank", layers, 10)
    assert compression_ratio(make_pointwise("lowrank", 64, 64, rank=8)) == pytest.approx(0.25)
    assert compression_ratio(make_pointwise("acdc", 16, 32, layers=2)) == pytest.approx(2 * 32 * 2 / (16 * 32))


@pytest.mark.parametrize("kind, hp, message", [("fft", {}, "unknown pointwise kind"),
                                               ("lowrank", {}, "exactly one setting"),
                                               ("lowrank", {"rank": 0}, "integer >= 1"),
                                               ("hashed", {"budget": 1.5}, r"in \(0, 1\]")])
def test_bad_settings(kind, hp, message):
    with pytest.raises(UserError, match=message):
        make_pointwise(kind, 4, 4, **hp)


def test_cost_counts_structured_maps():
    from compresslab.measure import count_macs

    net = torch.nn.Sequential(make_pointwise("conv", 8, 16))
    assert count_macs(net, (8, 5)) == 8 * 16 * 5
    assert count_macs(torch.nn.Sequential(make_pointwise("lowrank", 8, 16, rank=2)), (8, 5)) == (8 * 2 + 2 * 16) * 5
    assert count_macs(torch.nn.Sequential(make_pointwise("shuffle", 8, 16, groups=4)), (8, 3)) == (32 + 64) * 3
    assert count_macs(torch.nn.Sequential(make_pointwise("hashed", 8, 16, budget=0.1)), (8, 3)) == 8 * 16 * 3
    assert count_macs(torch.nn.Sequential(make_pointwise("acdc", 8, 16, layers=3)), (8,)) == 3 * (2 * 256 + 32)


def test_weight_decay_scaling_reaches_the_optimizer():
    from compresslab.data import Dataset
    from compresslab.models import create_model
    from compresslab.train import Recipe, fit

    net = create_model("wrn1d-10-1", num_classes=4, in_channels=1, input_shape=(1, 40), block="DConv+shuffle4")
    scales = weight_decay_scales(net)
    assert scales and all(0 < v < 1 for v in scales.values())
    assert all(".conv" in k and ("first" in k or "second" in k) for k in scales)
    seen = {}
    real = torch.optim.SGD

    class Spy(real):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            seen["groups"] = [(g["weight_decay"], len(g["params"])) for g in self.param_groups]

    x, y = torch.randn(32, 1, 40), torch.randint(0, 4, (32,))
    torch.optim.SGD = Spy
    try:
        fit(net, Dataset("toy", x, y, x, y, x, y, num_classes=4), Recipe(epochs=1, weight_decay=1e-3),
            weight_decay_scale=scales)
    finally:
        torch.optim.SGD = real
    expected: dict[float, int] = {}
    for r in scales.values():  # one group per distinct ratio (16->16 and 16->32 maps differ)
        expected[round(1e-3 * r, 12)] = expected.get(round(1e-3 * r, 12), 0) + 1
    expected[1e-3] = len(list(net.parameters())) - len(scales)
    assert {round(wd, 12): n for wd, n in seen["groups"]} == expected and len(expected) > 2
