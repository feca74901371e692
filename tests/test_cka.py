"""Linear CKA: streaming accumulator vs an n x n reference, invariances, bias, two-model CKA."""

import math

import pytest
import torch
from torch import nn

from compresslab.errors import UserError
from compresslab.measure.cka import LinearCKA, cka_between, linear_cka
from compresslab.models import create_model

F64 = torch.float64


# ---- n x n reference, written straight from the formulas --------------------------------


def ref_hsic_biased(k, l):
    n = k.shape[0]
    h = torch.eye(n, dtype=F64) - torch.ones(n, n, dtype=F64) / n
    return torch.trace(k @ h @ l @ h)


def ref_hsic_unbiased(k, l):
    n = k.shape[0]
    kt, lt = k.clone(), l.clone()
    kt.fill_diagonal_(0)
    lt.fill_diagonal_(0)
    one = torch.ones(n, dtype=F64)
    value = (
        torch.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return value / (n * (n - 3))


def ref_cka(x, y):
    k, l = x @ x.T, y @ y.T
    out = {}
    for key, hsic in (("biased", ref_hsic_biased), ("unbiased", ref_hsic_unbiased)):
        out[key] = float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))
    return out


def related_pair(n=157, dx=12, dy=9, seed=0):
    """X with a non-zero mean and Y partly a linear function of X."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=F64) * 2.0 + 5.0
    y = x @ torch.randn(dx, dy, generator=g, dtype=F64) + 3.0 * torch.randn(n, dy, generator=g, dtype=F64) - 7.0
    return x, y


def stream(x, y, mode, sizes=(1, 30, 7, 64, 55), n_hint=None):
    acc = LinearCKA(mode=mode, n_hint=n_hint)
    start = 0
    for b in sizes:
        acc.update(x[start : start + b], y[start : start + b])
        start += b
    assert start == x.shape[0]
    return acc


def close(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(1.0, abs(b))


# ---- accumulator ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["feature", "gram"])
def test_streaming_matches_gram_reference(mode):
    x, y = related_pair()
    acc = stream(x, y, mode)
    assert acc.mode == mode and acc.dims == [12, 9]
    res, ref = acc.result(), ref_cka(x, y)
    assert res["n"] == 157
    assert 0.1 < ref["unbiased"] < ref["biased"] < 0.99  # a non-trivial case
    assert close(res["biased"], ref["biased"])
    assert close(res["unbiased"], ref["unbiased"])
    # The HSIC_u terms themselves (not just their ratio) match the n x n formula.
    k, l = x @ x.T, y @ y.T
    _, (uxy, uxx, uyy), _ = acc._stats()
    for got, want in ((uxy, ref_hsic_unbiased(k, l)), (uxx, ref_hsic_unbiased(k, k)), (uyy, ref_hsic_unbiased(l, l))):
        assert close(got, float(want))


def test_feature_and_gram_modes_agree():
    x, y = related_pair(n=90, dx=20, dy=6, seed=3)
    sizes = (40, 40, 10)
    a, b = stream(x, y, "feature", sizes).result(), stream(x, y, "gram", sizes).result()
    assert close(a["biased"], b["biased"]) and close(a["unbiased"], b["unbiased"])


def test_self_similarity_is_one():
    x, _ = related_pair()
    for mode in ("feature", "gram"):
        res = stream(x, x, mode).result()
        assert res["biased"] == pytest.approx(1.0, abs=1e-12)
        assert res["unbiased"] == pytest.approx(1.0, abs=1e-12)


def test_invariance_to_orthogonal_transform_and_scale():
    x, y = related_pair(n=200, dx=10, dy=10, seed=1)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(2), dtype=F64))
    for unbiased in (False, True):
        assert linear_cka(x, x @ q, unbiased=unbiased) == pytest.approx(1.0, abs=1e-10)
        for c in (3.7, 1e-3):
            assert linear_cka(x, c * x, unbiased=unbiased) == pytest.approx(1.0, abs=1e-10)
            base = linear_cka(x, y, unbiased=unbiased)
            assert base < 0.99
            assert linear_cka(x, (y @ q) * c, unbiased=unbiased) == pytest.approx(base, rel=1e-9)


def test_unbiased_is_near_zero_for_independent_features():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(2000, 50, generator=g, dtype=F64), torch.randn(2000, 50, generator=g, dtype=F64)
    assert abs(linear_cka(x, y, unbiased=True)) < 0.05


def test_biased_estimator_is_inflated_when_d_is_large():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(500, 200, generator=g, dtype=F64), torch.randn(500, 200, generator=g, dtype=F64)
    biased, unbiased = linear_cka(x, y), linear_cka(x, y, unbiased=True)
    assert abs(unbiased) < 0.05
    assert biased > unbiased + 0.15  # about d / (n + d) = 0.29


def test_half_shared_columns_gives_value_strictly_between_0_and_1():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(400, 20, generator=g, dtype=F64)
    y = x.clone()
    y[:, 10:] = torch.randn(400, 10, generator=g, dtype=F64)
    for unbiased in (False, True):
        value = linear_cka(x, y, unbiased=unbiased)
        assert 0.3 < value < 0.7  # about half of the signal is shared


def test_constant_features_and_small_n_give_none():
    x = torch.randn(50, 4, dtype=F64)
    const = torch.full((50, 3), 0.1, dtype=F64)
    for mode in ("feature", "gram"):
        res = stream(x, const, mode, sizes=(17, 33)).result()
        assert res["biased"] is None and res["unbiased"] is None
    acc = LinearCKA(mode="feature")
    acc.update(x[:3], x[:3] * 2)
    res = acc.result()
    assert res["unbiased"] is None and res["biased"] == pytest.approx(1.0)


def test_auto_mode_rule():
    def mode_for(d, n_hint):
        acc = LinearCKA(n_hint=n_hint)
        acc.update(torch.randn(5, d), torch.randn(5, 3))
        return acc.mode

    assert mode_for(100, 100) == "feature"
    assert mode_for(101, 100) == "gram"
    assert mode_for(2000, None) == "feature"
    assert mode_for(2001, None) == "gram"


def test_bad_inputs_raise_user_error():
    with pytest.raises(UserError):
        LinearCKA(mode="dense")
    acc = LinearCKA()
    with pytest.raises(UserError):
        acc.result()
    with pytest.raises(UserError):
        acc.update(torch.randn(4, 3), torch.randn(5, 3))
    acc.update(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(UserError):
        acc.update(torch.randn(4, 3), torch.randn(4, 5))


def _stored_elements(obj):
    """Elements of every tensor reachable from ``obj``'s attributes (through lists, tuples, dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, (list, tuple)):
        return sum(_stored_elements(v) for v in obj)
    if isinstance(obj, dict):
        return sum(_stored_elements(v) for v in obj.values())
    if hasattr(obj, "__dict__"):
        return _stored_elements(vars(obj))
    return 0


def test_feature_mode_memory_is_independent_of_n():
    d = 8
    acc = LinearCKA(mode="feature")
    acc.update(torch.randn(100, d), torch.randn(100, d))
    after_one = _stored_elements(acc)
    for _ in range(9):
        acc.update(torch.randn(100, d), torch.randn(100, d))
    assert acc.n == 1000
    assert _stored_elements(acc) == after_one <= 3 * d * d + 10 * d
    # Gram mode, by contrast, keeps every example (the counter does see per-example storage).
    gram = LinearCKA(mode="gram")
    for _ in range(10):
        gram.update(torch.randn(100, d), torch.randn(100, d))
    assert _stored_elements(gram) == 2 * 1000 * d


# ---- between two models -----------------------------------------------------------------


def _cnn(width, seed):
    torch.manual_seed(seed)
    return create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=width)


@pytest.fixture(scope="module")
def models_and_x():
    x = torch.randn(300, 1, 40, generator=torch.Generator().manual_seed(7))
    return _cnn(16, 0), _cnn(32, 1), x


def test_cka_between_two_models(models_and_x):
    a, b, x = models_and_x
    res = cka_between(a, b, x, batch_size=100)
    assert list(res) == ["stage1", "stage2", "stage3", "hidden"]
    for r in res.values():
        assert r["n"] == 300
        assert -0.1 <= r["unbiased"] <= 1.0 and 0.0 <= r["biased"] <= 1.0
        assert r["cka"] == r["unbiased"]
    assert res["stage1"]["dims"] == [16 * 20, 32 * 20] and res["stage1"]["mode"] == "gram"  # 640 > 300
    assert res["stage3"]["dims"] == [16 * 5, 32 * 5] and res["stage3"]["mode"] == "feature"
    # Independent of the batch size.
    whole = cka_between(a, b, x, batch_size=300, unbiased=False)
    for name in res:
        assert whole[name]["unbiased"] == pytest.approx(res[name]["unbiased"], abs=1e-9)
        assert whole[name]["biased"] == pytest.approx(res[name]["biased"], abs=1e-9)
        assert whole[name]["cka"] == whole[name]["biased"]


def test_model_against_itself_is_one(models_and_x):
    a, _, x = models_and_x
    res = cka_between(a, a, x, batch_size=128)
    for r in res.values():
        assert r["biased"] == pytest.approx(1.0, abs=1e-9)
        assert r["unbiased"] == pytest.approx(1.0, abs=1e-9)
    # A copy (a different object) gives the same.
    twin = _cnn(16, 0)
    twin.load_state_dict(a.state_dict())
    assert cka_between(a, twin, x, points=["stage2"])["stage2"]["unbiased"] == pytest.approx(1.0, abs=1e-9)


def test_pairs_with_different_names(models_and_x):
    a, b, x = models_and_x
    res = cka_between(a, b, x, pairs=[("stage3", "stage2")])
    assert list(res) == ["stage3~stage2"]
    assert res["stage3~stage2"]["dims"] == [16 * 5, 32 * 10]


def test_training_flags_restored_and_bn_not_updated(models_and_x):
    _, b, x = models_and_x
    a = _cnn(16, 2)
    a.train()
    a.stages[1].eval()  # a mixed state must survive too
    b.eval()
    bn_before = a.stages[0][1].running_mean.clone()
    cka_between(a, b, x)
    assert a.training and a.stages[0].training and not a.stages[1].training
    assert not b.training and not any(m.training for m in b.modules())
    assert torch.equal(a.stages[0][1].running_mean, bn_before)  # ran in eval mode


def test_no_common_points_raises(models_and_x):
    a, _, x = models_and_x
    seq = nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
    seq.feature_points = {"flat": "0"}
    with pytest.raises(UserError, match=r"flat.*stage1|stage1.*flat"):
        cka_between(a, seq, x)
    assert math.isfinite(cka_between(a, seq, x, pairs=[("hidden", "flat")])["hidden~flat"]["biased"])
