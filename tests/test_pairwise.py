"""All-pairs metric matrices against the per-pair reference functions."""
import numpy as np
import pytest
import torch

from compresslab.errors import UserError
from compresslab.measure.function import compare_logits
from compresslab.measure.pairwise import METRICS, pairwise_metrics, pairwise_to_rows

KEYS = {"agreement": "agreement", "disagreement": "disagreement", "kappa": "kappa",
        "js_divergence": "js_divergence", "activation_distance": "activation_distance",
        "output_cosine": "output_cosine", "kl": "kl_ab"}


def _logits(m=6, n=300, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, k, generator=g, dtype=torch.float64) * 3
    x[1] = x[0]  # an exact duplicate: JS and KL must be exactly 0 for (0, 1)
    x[2, :20] = 50.0 * torch.sign(x[2, :20])  # extreme, near one-hot rows
    return x


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_every_entry_equals_the_pairwise_reference(chunk):
    x = _logits()
    mats = pairwise_metrics(x, chunk=chunk)
    assert set(mats) == set(METRICS)
    for i in range(x.shape[0]):
        for j in range(x.shape[0]):
            ref = compare_logits(x[i], x[j])
            for key, ref_key in KEYS.items():
                assert mats[key][i, j] == pytest.approx(ref[ref_key], rel=1e-9, abs=1e-12), (key, i, j)
    for key in ("js_divergence", "kl", "activation_distance"):
        assert mats[key][0, 1] == 0.0 and np.all(np.diag(mats[key]) == 0.0)
    assert np.allclose(mats["js_divergence"], mats["js_divergence"].T)
    assert not np.allclose(mats["kl"], mats["kl"].T)


def test_small_memory_budget_gives_the_same_numbers():
    x = _logits(m=5, n=500, k=10, seed=3)
    a = pairwise_metrics(x)
    b = pairwise_metrics(x, memory_budget=10_000)
    for key in METRICS:
        assert np.allclose(a[key], b[key], rtol=1e-12, atol=1e-15)


def test_inputs_and_subsets():
    x = _logits(m=3, n=50, k=4)
    as_list = pairwise_metrics([x[i].numpy().astype(np.float32) for i in range(3)], metrics=["agreement", "kl"])
    assert set(as_list) == {"agreement", "kl"}
    assert np.allclose(as_list["agreement"], pairwise_metrics(x)["agreement"])
    with pytest.raises(UserError):
        pairwise_metrics(x, metrics=["vibes"])
    with pytest.raises(UserError):
        pairwise_metrics(torch.randn(3, 10))
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(UserError):
        pairwise_metrics(bad)


def test_rows_for_json():
    x = _logits(m=3, n=40, k=5)
    rows = pairwise_to_rows(pairwise_metrics(x), ["a", "b", "c"])
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    ref = compare_logits(x[0], x[2])
    assert rows[1]["kl_ab"] == pytest.approx(ref["kl_ab"]) and rows[1]["kl_ba"] == pytest.approx(ref["kl_ba"])
    with pytest.raises(UserError):
        pairwise_to_rows(pairwise_metrics(x), ["a", "b"])
