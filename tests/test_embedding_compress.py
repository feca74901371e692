"""Embedding compression primitives: packed codes, the quantisation grid, QAT fake-quant,
slicing, low rank / PCA, dimension pruning and compression ratios from stored bytes."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from torch import nn

from compresslab.compress import embedding as E
from compresslab.errors import UserError


def one_line_error(fn, match: str) -> str:
    with pytest.raises(UserError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("n", [0, 1, 9])
def test_pack_unpack_round_trip_at_exact_size(bits, n):
    d = 13
    g = torch.Generator().manual_seed(bits * 100 + n)
    codes = torch.randint(0, 2**bits, (n, d), generator=g)
    if n:
        codes[0, 0], codes[-1, -1] = 0, 2**bits - 1  # both ends of the grid
    buf = E.pack(codes, bits)
    row = -(-d * bits // 8)
    assert E.bytes_per_embedding(d, bits) == row
    assert buf.dtype == np.uint8 and buf.shape == (n, row) and buf.nbytes == n * row
    assert torch.equal(E.unpack(buf, bits, n, d), codes)
    assert torch.equal(E.unpack(buf.tobytes(), bits, n, d), codes)
    for i in range(n):  # each embedding is addressable on its own
        assert torch.equal(E.unpack(buf[i], bits, 1, d), codes[i:i + 1])


def test_pack_layout_and_bad_inputs():
    assert E.pack(np.array([[1, 2, 3]]), 2).tolist() == [[0b111001]]  # 01, 10, 11 least significant first
    one_line_error(lambda: E.pack(np.array([[4]]), 2), "0..3")
    one_line_error(lambda: E.pack(np.array([[-1]]), 2), "0..3")
    one_line_error(lambda: E.unpack(bytes(5), 4, 2, 3), "does not hold")


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("per_dim", [True, False])
def test_error_is_at_most_half_a_step_and_out_of_range_clips(bits, per_dim):
    g = torch.Generator().manual_seed(bits)
    parent = torch.randn(500, 7, generator=g) * torch.tensor([0.1, 1, 3, 10, 0.5, 2, 50])
    q = E.EmbeddingQuantizer.fit(parent, bits, per_dim=per_dim)
    x = q.lo + torch.rand(300, 7, generator=g) * (q.hi - q.lo)
    codes = q.encode(x)
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() <= 2**bits - 1
    err = (q.decode(codes) - x).abs()
    assert (err <= q.step / 2 * (1 + 1e-4) + 1e-6 * x.abs()).all()
    outside = torch.stack([q.lo - 1 - q.hi.abs(), q.hi + 1 + q.lo.abs()]).reshape(2, -1).expand(2, 7)
    c = q.encode(outside)
    assert (c[0] == 0).all() and (c[1] == 2**bits - 1).all()
    assert torch.allclose(q.decode(c), torch.stack([q.lo, q.hi]).reshape(2, -1).expand(2, 7), rtol=1e-5, atol=1e-6)
    assert q.param_bytes == (2 * 7 * 4 if per_dim else 2 * 4)


def test_percentile_range_clips_the_tails():
    parent = torch.arange(1001.0).unsqueeze(1)  # 0..1000
    q = E.EmbeddingQuantizer.fit(parent, 8, percentile=99)
    assert torch.allclose(q.lo, torch.tensor([10.0])) and torch.allclose(q.hi, torch.tensor([990.0]))
    assert torch.equal(q.encode(torch.tensor([[0.0], [1000.0]])).flatten(), torch.tensor([0, 255]))


def test_one_bit_thresholds_at_the_midpoint_and_decodes_to_plus_minus_half_range():
    q = E.EmbeddingQuantizer.fit(torch.tensor([[-1.0, 0.0], [3.0, 2.0]]), 1)  # mid (1, 1), half range (2, 1)
    x = torch.tensor([[0.9, 1.1], [1.5, -5.0], [1.0, 1.0]])  # last row: exactly at the midpoint -> 0
    codes = q.encode(x)
    assert codes.tolist() == [[0, 1], [1, 0], [0, 0]]
    assert q.decode(codes).tolist() == [[-1.0, 2.0], [3.0, 0.0], [-1.0, 0.0]]


def test_fake_quant_embedding_ste_ema_and_eval_matches_codes():
    g = torch.Generator().manual_seed(0)
    fq = E.FakeQuantEmbedding(3, momentum=0.5).train()
    x = torch.randn(64, 5, generator=g, requires_grad=True)
    fq(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # first batch sets the range: all inside, straight through
    assert torch.equal(fq.lo, x.detach().amin(0)) and torch.equal(fq.hi, x.detach().amax(0))
    lo0 = fq.lo.clone()
    y = torch.randn(64, 5, generator=g)
    y[0, 0] = -100.0
    y.requires_grad_(True)
    fq(y).sum().backward()
    assert torch.allclose(fq.lo, lo0.lerp(y.detach().amin(0), 0.5))
    assert y.grad[0, 0] == 0 and y.grad[1:, 1:].sum() > 0  # clipped element: no gradient

    fq.eval()
    z = torch.randn(100, 5, generator=g) * 3
    q = fq.quantizer()
    assert torch.equal(fq(z), q.decode(q.encode(z)))
    assert len(q.decode(q.encode(z)).unique()) <= 8 * 5

    fresh = E.FakeQuantEmbedding(3)
    fresh.load_state_dict(fq.state_dict())
    assert torch.equal(fresh.eval()(z), fq(z))
    one_line_error(lambda: E.FakeQuantEmbedding(3).eval()(z), "no range yet")
    one_line_error(lambda: fq(torch.randn(3, 4)), "do not match the quantiser's D=5")
    one_line_error(lambda: fq.train()(torch.randn(3, 4)), "do not match the quantiser's D=5")
    fq.eval()
    assert torch.equal(E.FakeQuantEmbedding(3).calibrate(z).eval()(z), E.EmbeddingQuantizer.fit(z, 3).decode(
        E.EmbeddingQuantizer.fit(z, 3).encode(z)))


@pytest.mark.parametrize("bits", [0, 17, -1, True, 4.0])
def test_bits_outside_1_to_16_are_a_one_line_user_error(bits):
    x = torch.zeros(2, 3)
    for make in (lambda: E.EmbeddingQuantizer.fit(x, bits), lambda: E.FakeQuantEmbedding(bits),
                 lambda: E.pack(x.long(), bits), lambda: E.unpack(b"", bits, 0, 3)):
        one_line_error(make, "bits must be 1-16")


def test_pca_matches_sklearn_and_error_falls_with_k():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10)) + rng.normal(size=10)
    t = torch.from_numpy(x)
    mean, comps = E.pca_fit(t, 4)
    ref = PCA(4).fit(x)
    assert np.allclose(mean.numpy(), ref.mean_)
    signs = np.sign((comps.numpy() * ref.components_).sum(1, keepdims=True))
    assert np.allclose(comps.numpy(), signs * ref.components_, atol=1e-8)
    assert np.allclose(E.pca_project(t, mean, comps).numpy(), ref.transform(x) * signs.T, atol=1e-8)
    errors = []
    for k in range(1, 11):
        m, c = E.pca_fit(t, k)
        errors.append(float((E.pca_reconstruct(E.pca_project(t, m, c), m, c) - t).pow(2).mean()))
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-20
    one_line_error(lambda: E.pca_fit(t, 11), "k <= min")


def test_importance_keep_top_and_pruned_layer_equals_sliced_output():
    x = torch.randn(200, 6) * torch.tensor([1.0, 5, 0.1, 3, 2, 0.5]) + 1
    assert torch.allclose(E.dimension_importance(x), torch.from_numpy(np.var(x.numpy(), 0)))
    assert torch.allclose(E.dimension_importance(x, "l2"), x.norm(dim=0) / 200**0.5)
    keep = E.keep_top(E.dimension_importance(x), 3)
    assert keep.tolist() == [1, 3, 4]
    one_line_error(lambda: E.dimension_importance(x, "entropy"), "variance or l2")
    one_line_error(lambda: E.keep_top(torch.ones(3), 4), "keep k=4")
    for bias in (True, False):
        full = nn.Linear(8, 6, bias=bias)
        small = E.prune_dimensions(full, keep)
        inp = torch.randn(10, 8)
        assert small.out_features == 3 and torch.equal(small(inp), full(inp)[:, keep])
        one_line_error(lambda: E.prune_dimensions(full, torch.tensor([1, 1])), "distinct")
        one_line_error(lambda: E.prune_dimensions(full, torch.tensor([6])), "distinct")


def test_compression_ratios_from_stored_bytes():
    n = 10
    parent = torch.randn(n, 128)  # float32: 512 bytes per embedding
    assert E.stored_bytes_per_embedding(parent, n) == 512
    for d, bits, ratio in [(32, 1, 128), (64, 4, 16)]:
        q = E.EmbeddingQuantizer.fit(parent[:, :d], bits)
        store = E.pack(q.encode(parent[:, :d]), bits)
        assert E.stored_bytes_per_embedding(store, n) == E.bytes_per_embedding(d, bits)
        assert E.stored_bytes(parent) / E.stored_bytes(store) == ratio
        assert E.stored_bytes(parent.numpy().tobytes()) / E.stored_bytes(store.tobytes()) == ratio
    one_line_error(lambda: E.stored_bytes_per_embedding(store, 0), "at least one")
