"""Tests for compresslab.measure.retrieval: Market-1501 mAP/CMC, bootstrap CIs, embedding geometry, search latency."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from compresslab.errors import UserError
from compresslab.measure import retrieval as R

# --------------------------------------------------------------------------- a toy worked by hand

# 1-D embeddings on a line, so every distance is an exact small integer.
TOY_GALLERY = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
TOY_G_IDS = np.array([1, 3, 1, 2, 4])
TOY_G_CAMS = np.array([0, 1, 1, 0, 2])
TOY_QUERY = np.array([[0.0], [4.0], [3.0]])  # A, B, C
TOY_Q_IDS = np.array([1, 2, 1])
TOY_Q_CAMS = np.array([0, 0, 2])


def test_toy_map_and_cmc_by_hand():
    r = R.evaluate(TOY_QUERY, TOY_Q_IDS, TOY_Q_CAMS, TOY_GALLERY, TOY_G_IDS, TOY_G_CAMS, ranks=(1, 2, 5))
    # A (x=0, id 1, cam 0): distances 1..5, order g0 g1 g2 g3 g4. g0 has id 1 AND cam 0 -> excluded,
    #   although it is the nearest. Kept ranking: g1 (id 3), g2 (id 1, cam 1: relevant), g3, g4.
    #   One relevant item, at rank 2: AP = (1/2) / 1 = 0.5; first hit at 0-based rank 1.
    # B (x=4, id 2, cam 0): its only id-2 item g3 is also cam 0 -> excluded: no relevant item, B is dropped.
    # C (x=3, id 1, cam 2): distances g0 2, g1 1, g2 0, g3 1, g4 2. Stable order: g2, g1, g3, g0, g4
    #   (g1/g3 tie at 1 and g0/g4 tie at 2, each broken by gallery index). Nothing excluded (g4 has id 4).
    #   Relevant: g2 (id 1, cam 1) at rank 1 and g0 (id 1, cam 0) at rank 4:
    #   AP = (1/1 + 2/4) / 2 = 0.75; first hit at rank 0. (g4 before g0 would give (1 + 2/5) / 2 = 0.7.)
    # mAP = (0.5 + 0.75) / 2 = 0.625; CMC@1 = 1/2 (only C), CMC@2 = CMC@5 = 2/2.
    assert r["ap"].tolist() == [0.5, 0.75]
    assert r["first_hit"].tolist() == [1, 0]
    assert r["query_index"].tolist() == [0, 2]
    assert r["mAP"] == pytest.approx(0.625, abs=1e-15)
    assert r["cmc"] == {"rank1": 0.5, "rank2": 1.0, "rank5": 1.0}
    assert (r["n_queries"], r["n_queries_excluded"]) == (2, 1)


def test_toy_without_cameras_keeps_same_camera_matches():
    r = R.evaluate(TOY_QUERY, TOY_Q_IDS, None, TOY_GALLERY, TOY_G_IDS, None, ranks=(1,))
    # A: g0 (id 1) at rank 1 and g2 (id 1) at rank 3: AP = (1/1 + 2/3) / 2 = 5/6.
    # B: g3 (id 2) at distance 0, rank 1: AP = 1.  C: unchanged, 0.75.
    assert r["ap"] == pytest.approx([5 / 6, 1.0, 0.75], abs=1e-15)
    assert r["first_hit"].tolist() == [0, 0, 0]
    assert (r["n_queries"], r["n_queries_excluded"], r["cmc"]["rank1"]) == (3, 0, 1.0)


def test_negative_gallery_ids_are_junk_and_negative_queries_are_dropped():
    gallery = np.array([[1.0], [2.0], [3.0]])
    # query 0 (id 5): g0 is junk (-1) even at rank 1; g1 (id 7) is a miss; g2 (id 5) is at rank 2 -> AP 1/2.
    # query 1 (id -1): its "matches" are junk, so it has no relevant item and is dropped.
    r = R.evaluate([[0.0], [0.0]], [5, -1], [0, 0], gallery, [-1, 7, 5], [1, 1, 1], ranks=(1, 2))
    assert r["ap"].tolist() == [0.5]
    assert r["first_hit"].tolist() == [1]
    assert (r["n_queries"], r["n_queries_excluded"]) == (1, 1)
    assert r["cmc"] == {"rank1": 0.0, "rank2": 1.0}


def test_equal_distances_rank_lower_gallery_index_first():
    # Both gallery items are at distance 1; the relevant one (id 1) ranks first only if its index is lower.
    assert R.evaluate([[0.0]], [1], None, [[1.0], [-1.0]], [1, 2], None)["ap"].tolist() == [1.0]
    assert R.evaluate([[0.0]], [1], None, [[1.0], [-1.0]], [2, 1], None)["ap"].tolist() == [0.5]


# --------------------------------------------------------------------------- brute-force reference


def _reference(query, q_ids, q_cams, gallery, g_ids, g_cams, metric):
    """Loop over queries: sort, drop excluded items explicitly, AP as the mean precision at each hit."""
    aps, firsts, excluded = [], [], 0
    for i in range(len(query)):
        if metric == "euclidean":
            d = np.sqrt(((gallery - query[i]) ** 2).sum(1))
        else:
            d = 1.0 - gallery @ query[i] / (np.linalg.norm(gallery, axis=1) * np.linalg.norm(query[i]))
        ranked = []  # is-relevant flag of each kept item, in ranking order
        for j in np.argsort(d, kind="stable"):
            if g_ids[j] < 0:
                continue
            if q_cams is not None and g_ids[j] == q_ids[i] and g_cams[j] == q_cams[i]:
                continue
            ranked.append(g_ids[j] == q_ids[i])
        hits = [k for k, relevant in enumerate(ranked) if relevant]  # 0-based ranks of relevant items
        if not hits:
            excluded += 1
            continue
        aps.append(np.mean([(n + 1) / (k + 1) for n, k in enumerate(hits)]))
        firsts.append(hits[0])
    return np.array(aps), np.array(firsts), excluded


def _random_problem(seed, q=30, g=200, dim=8, n_ids=15, n_cams=4, integer=False):
    rng = np.random.default_rng(seed)
    if integer:  # few distinct values: many exact distance ties
        query, gallery = rng.integers(-1, 2, (q, dim)).astype(float), rng.integers(-1, 2, (g, dim)).astype(float)
    else:
        query, gallery = rng.standard_normal((q, dim)), rng.standard_normal((g, dim))
    q_ids = rng.integers(-1, n_ids, q)
    g_ids = rng.integers(-1, n_ids, g)
    return query, q_ids, rng.integers(0, n_cams, q), gallery, g_ids, rng.integers(0, n_cams, g)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed, cams, chunk", [(0, True, None), (1, True, 7), (2, False, 1), (3, True, 30)])
def test_matches_brute_force(metric, seed, cams, chunk):
    query, q_ids, q_cams, gallery, g_ids, g_cams = _random_problem(seed)
    if not cams:
        q_cams = g_cams = None
    ap, first, excluded = _reference(query, q_ids, q_cams, gallery, g_ids, g_cams, metric)
    assert excluded > 0 and len(ap) > 10  # the case is not degenerate
    r = R.evaluate(query, q_ids, q_cams, gallery, g_ids, g_cams, metric=metric, ranks=(1, 3, 10), chunk=chunk)
    np.testing.assert_allclose(r["ap"], ap, rtol=0, atol=1e-12)
    assert r["first_hit"].tolist() == first.tolist()
    assert r["mAP"] == pytest.approx(ap.mean(), abs=1e-12)
    assert r["cmc"] == {f"rank{k}": pytest.approx((first < k).mean(), abs=1e-12) for k in (1, 3, 10)}
    assert (r["n_queries"], r["n_queries_excluded"]) == (len(ap), excluded)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_with_many_ties(seed):
    query, q_ids, q_cams, gallery, g_ids, g_cams = _random_problem(seed, dim=3, integer=True)
    d = R.distances(query, gallery).numpy()
    assert np.mean([len(np.unique(row)) for row in d]) < 20  # 200 items share a handful of distances
    ap, first, excluded = _reference(query, q_ids, q_cams, gallery, g_ids, g_cams, "euclidean")
    r = R.evaluate(query, q_ids, q_cams, gallery, g_ids, g_cams, chunk=4)
    np.testing.assert_allclose(r["ap"], ap, rtol=0, atol=1e-12)
    assert r["first_hit"].tolist() == first.tolist()
    assert r["n_queries_excluded"] == excluded


def test_ap_matches_sklearn_on_one_query():
    rng = np.random.default_rng(5)
    query, gallery = rng.standard_normal((1, 6)), rng.standard_normal((60, 6))
    g_ids = rng.integers(0, 4, 60)
    d = R.distances(query, gallery).numpy()[0]
    assert len(np.unique(d)) == 60  # no ties
    r = R.evaluate(query, [2], None, gallery, g_ids, None)
    assert r["ap"][0] == pytest.approx(average_precision_score(g_ids == 2, -d), abs=1e-12)


def test_distances_match_scipy():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((7, 5)) + 3.0, rng.standard_normal((11, 5))
    for metric in R.METRICS:
        d = R.distances(q, g, metric=metric)
        assert d.dtype == torch.float64 and d.shape == (7, 11)
        np.testing.assert_allclose(d.numpy(), cdist(q, g, metric=metric), rtol=0, atol=1e-12)


def test_cosine_and_euclidean_agree_on_unit_vectors():
    query, q_ids, q_cams, gallery, g_ids, g_cams = _random_problem(4, q=40, g=300)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    e = R.evaluate(query, q_ids, q_cams, gallery, g_ids, g_cams, metric="euclidean")
    c = R.evaluate(query, q_ids, q_cams, gallery, g_ids, g_cams, metric="cosine")
    assert e["first_hit"].tolist() == c["first_hit"].tolist()
    np.testing.assert_allclose(e["ap"], c["ap"], rtol=0, atol=1e-12)
    # on raw (not normalised) embeddings the two metrics rank differently
    raw = _random_problem(4, q=40, g=300)
    assert not np.allclose(R.evaluate(*raw, metric="euclidean")["ap"], R.evaluate(*raw, metric="cosine")["ap"])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_cis_cover_the_point_estimates():
    r = R.evaluate(*_random_problem(0, q=60), ranks=(1, 5))
    b = R.bootstrap(r, seed=3, n_boot=300)
    assert set(b["cmc"]) == {"rank1", "rank5"}
    assert b["mAP"]["mean"] == pytest.approx(r["mAP"], abs=1e-12) and b["mAP"]["n"] == r["n_queries"]
    for key, ci in [("mAP", b["mAP"])] + list(b["cmc"].items()):
        point = r["mAP"] if key == "mAP" else r["cmc"][key]
        assert ci["ci_low"] <= point <= ci["ci_high"] and ci["ci_low"] < ci["ci_high"]
    assert b["cmc"]["rank1"]["mean"] == pytest.approx(r["cmc"]["rank1"], abs=1e-12)
    assert R.bootstrap(r, seed=3, n_boot=300) == b  # seeded
    assert R.bootstrap(r, seed=4, n_boot=300)["mAP"]["ci_low"] != b["mAP"]["ci_low"]
    with pytest.raises(UserError):
        R.bootstrap({"mAP": 0.5})


# --------------------------------------------------------------------------- geometry


def _embeddings(seed=0, n=80, dim=6):
    return np.random.default_rng(seed).standard_normal((n, dim))


def _rotation(dim, seed=1):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def test_geometry_of_identical_and_rotated_embeddings_is_perfect():
    x = _embeddings()
    same = R.geometry(x, x.copy(), k=5)
    assert same["rank_correlation"] == pytest.approx(1.0, abs=1e-12)
    assert same["neighbour_overlap"] == 1.0
    assert same["cka"] == pytest.approx(1.0, abs=1e-12)
    assert (same["n"], same["k"], same["metric"]) == (80, 5, "euclidean")
    rotated = R.geometry(x, x @ _rotation(6), k=5)
    assert rotated["rank_correlation"] == pytest.approx(1.0, abs=1e-12)
    assert rotated["neighbour_overlap"] == 1.0
    assert rotated["cka"] == pytest.approx(1.0, abs=1e-12)


def test_geometry_drops_with_noise():
    x = _embeddings()
    rng = np.random.default_rng(9)
    small = R.geometry(x, x + 0.3 * rng.standard_normal(x.shape), k=5)
    large = R.geometry(x, x + 1.5 * rng.standard_normal(x.shape), k=5)
    for key in ("rank_correlation", "neighbour_overlap", "cka"):
        assert large[key] < small[key] < 1.0


def test_rank_correlation_matches_scipy_and_samples_pairs():
    x = _embeddings(n=40)
    y = x + 0.5 * _embeddings(seed=2, n=40)
    for metric in R.METRICS:
        expected = spearmanr(pdist(x, metric), pdist(y, metric))[0]
        assert R.distance_rank_correlation(x, y, metric=metric) == pytest.approx(expected, abs=1e-12)
    sampled = R.distance_rank_correlation(x, y, max_pairs=300, seed=1)
    assert sampled == R.distance_rank_correlation(x, y, max_pairs=300, seed=1)
    assert sampled != R.distance_rank_correlation(x, y, max_pairs=300, seed=2)
    assert sampled == pytest.approx(spearmanr(pdist(x), pdist(y))[0], abs=0.1)


def _overlap_reference(x, y, k, metric):
    dx, dy = cdist(x, x, metric), cdist(y, y, metric)
    total = 0.0
    for i in range(len(x)):
        nx = [j for j in np.argsort(dx[i], kind="stable") if j != i][:k]
        ny = [j for j in np.argsort(dy[i], kind="stable") if j != i][:k]
        total += len(set(nx) & set(ny)) / k
    return total / len(x)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_neighbour_overlap_matches_brute_force(metric):
    x = _embeddings(n=30, dim=4)
    y = x + 0.4 * _embeddings(seed=3, n=30, dim=4)
    for k in (1, 3, 10, 29):
        expected = _overlap_reference(x, y, k, metric)
        assert R.neighbour_overlap(x, y, k=k, metric=metric) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < _overlap_reference(x, y, 3, metric) < 1.0


def test_embedding_cka_allows_different_widths():
    x = _embeddings(n=50, dim=8)
    assert R.embedding_cka(x, 2.0 * x[:, :3]) < 1.0
    assert R.embedding_cka(x, np.hstack([x, np.zeros((50, 2))])) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------- latency


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_search_latency_runs(metric):
    rng = np.random.default_rng(0)
    out = R.search_latency(rng.standard_normal((500, 16)).astype(np.float32),
                           rng.standard_normal((20, 16)).astype(np.float32), k=5, metric=metric, repeats=3)
    assert out["ms_per_query"] > 0 and out["ms_per_batch"] > 0
    assert (out["gallery_size"], out["n_queries"], out["dim"], out["k"], out["dtype"]) == (500, 20, 16, 5, "float32")


# --------------------------------------------------------------------------- bad input


def _one_line_error(fn, *args, **kwargs):
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value) and str(info.value)


def test_bad_input_is_a_one_line_user_error():
    query, q_ids, q_cams, gallery, g_ids, g_cams = _random_problem(0, q=5, g=12)
    x = _embeddings(n=10, dim=3)
    cases = [
        (R.evaluate, (query, q_ids[:-1], q_cams, gallery, g_ids, g_cams), {}),  # mismatched lengths
        (R.evaluate, (query, q_ids, q_cams, gallery, g_ids, g_cams[:3]), {}),
        (R.evaluate, (query[0], q_ids[:1], None, gallery, g_ids, None), {}),  # 1-D query
        (R.evaluate, (query[:, :2], q_ids, q_cams, gallery, g_ids, g_cams), {}),  # D differs
        (R.evaluate, (query, q_ids, q_cams, gallery, g_ids, None), {}),  # one side's cameras only
        (R.evaluate, (query, q_ids + 0.5, q_cams, gallery, g_ids, g_cams), {}),  # non-integer ids
        (R.evaluate, (query, q_ids, q_cams, gallery, g_ids, g_cams), {"metric": "manhattan"}),
        (R.evaluate, (query, q_ids, q_cams, gallery, g_ids, g_cams), {"ranks": (0, 5)}),
        (R.evaluate, (query, q_ids + 100, q_cams, gallery, g_ids, g_cams), {}),  # no valid query
        (R.distances, (np.zeros((2, 3)), np.ones((4, 3))), {"metric": "cosine"}),  # zero vector
        (R.distances, (np.full((2, 3), np.nan), np.ones((4, 3))), {}),
        (R.distances, (np.ones((2, 3, 1)), np.ones((4, 3))), {}),
        (R.neighbour_overlap, (x, x), {"k": 10}),  # k >= n
        (R.neighbour_overlap, (x, x), {"k": 0}),
        (R.neighbour_overlap, (x, x[:9]), {}),  # mismatched rows
        (R.geometry, (x, x), {"metric": "dot"}),
        (R.distance_rank_correlation, (x, x), {"max_pairs": 0}),
        (R.embedding_cka, (x[:, 0], x), {}),  # 1-D
        (R.search_latency, (x, x), {"k": 11}),
        (R.search_latency, (x, x[:, :2]), {}),
    ]
    for fn, args, kwargs in cases:
        _one_line_error(fn, *args, **kwargs)
