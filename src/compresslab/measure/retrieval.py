"""Retrieval (re-identification) with embeddings: rank a gallery for each query and score the ranking.

Embeddings are (N, D) tensors or arrays of the same examples' features. Every measure computes
in float64 torch on the CPU (:func:`search_latency` alone keeps the embeddings' dtype and device).

* :func:`distances` - the (Q, G) matrix of query-to-gallery distances. ``"euclidean"`` is
  ``||q - g||``, computed as ``sqrt(max(0, |q|^2 + |g|^2 - 2 q.g))``: exact for small integer-valued
  (e.g. quantised) embeddings, so their equal distances tie exactly, and otherwise off by
  rounding of order 1e-8 |q| only for near-identical points. ``"cosine"`` is
  ``1 - q.g / (|q| |g|)``, in [0, 2] (a zero vector is an error).
* :func:`evaluate` - the Market-1501 protocol, mAP and CMC (definitions there).
* :func:`bootstrap` - percentile-bootstrap 95% CIs over queries for mAP and each CMC rank.
* :func:`distance_rank_correlation`, :func:`neighbour_overlap`, :func:`embedding_cka` and
  :func:`geometry` - does a child (compressed) model keep its parent's embedding geometry?
* :func:`search_latency` - wall-clock time of exact search (distance matrix + top-k).

Invalid input raises a one-line :class:`~compresslab.errors.UserError`.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from scipy import stats as _sps

from compresslab.errors import UserError
from compresslab.measure.cka import linear_cka
from compresslab.measure.stats import summarize

METRICS = ("euclidean", "cosine")
_CHUNK_ELEMENTS = 1 << 21  # distance-matrix elements held per chunk of rows (16 MB of float64)
_CI_KEYS = ("mean", "ci_low", "ci_high", "std", "n")


# --------------------------------------------------------------------------- helpers


def _matrix(x, what: str, dtype: torch.dtype | None = torch.float64, device="cpu") -> torch.Tensor:
    """``x`` as a finite (N, D) real tensor with N, D >= 1 (``dtype=None``: keep a float dtype, else float32)."""
    try:
        t = torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{what} must be a numeric array of shape (N, D), got {type(x).__name__}") from None
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise UserError(f"{what} must have shape (N, D) with N, D >= 1, got {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise UserError(f"{what} must be real numbers, got {t.dtype}")
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() else torch.float32
    t = t.to(device=device if device is not None else t.device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise UserError(f"{what} contains NaN or inf values")
    return t


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")


def _prepare(x: torch.Tensor, metric: str, what: str) -> torch.Tensor:
    """Rows scaled to unit length for ``"cosine"``; unchanged for ``"euclidean"``."""
    if metric == "euclidean":
        return x
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    zero = torch.nonzero(norms[:, 0] == 0).flatten()
    if zero.numel():
        raise UserError(f"cosine distance is undefined for a zero vector: {what} row {int(zero[0])} is all zeros")
    return x / norms


def _dist(q: torch.Tensor, g: torch.Tensor, metric: str, g_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Distances between prepared rows (see :func:`_prepare`), shape (len(q), len(g)).

    ``g_sq``: the squared norms of ``g``'s rows, if already known (euclidean only).
    """
    if metric == "cosine":
        return torch.addmm(torch.ones((), dtype=q.dtype, device=q.device), q, g.T, alpha=-1.0).clamp_(0.0, 2.0)
    g_sq = (g * g).sum(1) if g_sq is None else g_sq
    d2 = torch.addmm(g_sq, q, g.T, alpha=-2.0).add_((q * q).sum(1, keepdim=True))
    return d2.clamp_min_(0.0).sqrt_()


def _relevant_ranks(d: torch.Tensor, rel_row: torch.Tensor, rel_col: torch.Tensor, ex_row: torch.Tensor,
                    ex_col: torch.Tensor, junk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks after exclusion of each row's relevant items, as a stable sort of ``d``'s rows would give.

    ``d`` is (c, G); gallery item ``rel_col[t]`` is relevant to row ``rel_row[t]`` (columns
    ascending within a row); ``(ex_row, ex_col)`` and the columns where ``junk`` (G,) is True
    are excluded. Returns ``rank`` (c, max(R, 1)) int64 whose row i holds, in ranking order, the ranks
    of its ``n_rel[i]`` relevant items (the rest is padding), and ``n_rel`` (c,).

    Without sorting all G distances: rank items by (distance, index); give every item g the
    number pos(g) of the row's relevant items ranked before it, so the m-th relevant item
    (0-based) has pos m and its rank is the number of kept items with pos <= m.
    """
    c, n_g = d.shape
    n_rel = torch.bincount(rel_row, minlength=c)
    width = int(n_rel.max()) if rel_row.numel() else 0
    if width == 0:
        return torch.ones(c, 1, dtype=torch.int64), n_rel
    vals = d[rel_row, rel_col]
    o = torch.sort(vals, stable=True).indices
    o = o[torch.sort(rel_row[o], stable=True).indices]  # by row, then distance, then index
    rel_row, rel_col, vals = rel_row[o], rel_col[o], vals[o]
    slot = torch.arange(o.numel()) - (torch.cumsum(n_rel, 0) - n_rel)[rel_row]
    r = torch.full((c, width), torch.inf, dtype=d.dtype)
    r[rel_row, slot] = vals
    pos = torch.searchsorted(r, d)  # relevant items strictly closer than each item
    tie_row, tie_col = torch.nonzero(r.gather(1, pos.clamp_max(width - 1)) == d, as_tuple=True)
    if tie_row.numel():
        # At equal distance the lower index ranks first. Key each relevant item by (row, first slot
        # holding its distance, index), flattened into one increasing array (padding ends each row),
        # and count the keys below each tied item's (row, pos, index).
        span, block = n_g + 1, (width + 1) * (n_g + 1)
        key = (torch.arange(c)[:, None] * block + width * span).repeat(1, width)
        key[rel_row, slot] = rel_row * block + torch.searchsorted(r, r)[rel_row, slot] * span + rel_col
        below = torch.searchsorted(key.flatten(), tie_row * block + pos[tie_row, tie_col] * span + tie_col)
        pos[tie_row, tie_col] = below - tie_row * width
    bins = width + 2  # pos is at most width; excluded items go to bin width + 1
    ex_pos = pos[ex_row, ex_col]
    pos.masked_fill_(junk, width + 1).add_(torch.arange(c)[:, None] * bins)  # one bin range per row
    counts = torch.bincount(pos.flatten(), minlength=c * bins)
    counts -= torch.bincount(ex_row * bins + ex_pos, minlength=c * bins)
    return counts.view(c, bins).cumsum(1)[:, :width], n_rel


def _query_gallery(query, gallery, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_metric(metric)
    q, g = _matrix(query, "query"), _matrix(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise UserError(f"query and gallery embeddings must have the same size D, got {q.shape[1]} and {g.shape[1]}")
    return _prepare(q, metric, "query"), _prepare(g, metric, "gallery")


def _labels(x, n: int, what: str, against: str) -> torch.Tensor:
    """``x`` as an int64 tensor of shape (n,)."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if a.shape != (n,):
        raise UserError(f"{what} must have shape ({n},) to match {against}, got {a.shape}")
    if a.dtype.kind not in "iu":
        raise UserError(f"{what} must be integers, got dtype {a.dtype}")
    return torch.from_numpy(a.astype(np.int64))


# --------------------------------------------------------------------------- retrieval


def distances(query, gallery, metric: str = "euclidean") -> torch.Tensor:
    """float64 (Q, G) matrix of distances from each query row to each gallery row (see the module docstring)."""
    q, g = _query_gallery(query, gallery, metric)
    return _dist(q, g, metric)


def evaluate(query, q_ids, q_cams, gallery, g_ids, g_cams, *, metric: str = "euclidean",
             ranks=(1, 5, 10), chunk: int | None = None) -> dict:
    """mAP and CMC of ranking ``gallery`` by distance to each query (Market-1501 protocol).

    For each query the gallery is sorted by increasing distance; equal distances keep gallery
    order (a stable sort), so ties are broken by gallery index. Then:

    * **excluded** ("junk") gallery items are removed from the ranking: those with a negative
      id (Market-1501 marks junk images -1; its distractors, id 0, stay as ordinary
      non-matches) and, when cameras are given, those with the query's id AND camera;
    * **relevant** items are the remaining ones with the query's id (so another camera);
    * a query with no relevant item (a negative id has none) is dropped and counted in
      ``n_queries_excluded``.

    With ranks counted 1, 2, ... after exclusion, a valid query's average precision is
    ``AP = (1/R) sum over its R relevant items of (relevant items at or above it) / (its rank)``
    and its ``first_hit`` is the 0-based rank of its first relevant item. ``mAP`` is the mean
    AP and CMC at rank r is the fraction of valid queries with ``first_hit < r``.
    ``q_cams``/``g_cams`` must be both given or both None (no same-camera exclusion).
    ``chunk`` queries are ranked at once (default: about 2M distances per chunk), so memory is
    O(chunk x G); each rank is found by searching a query's distances among its relevant items'
    distances (no full sort of the gallery), and equals the stable-sort rank defined above.

    Returns ``{"mAP", "cmc": {"rank<r>": float}, "ranks", "n_queries" (valid),
    "n_queries_excluded", "metric", "ap" (float64 numpy, per valid query), "first_hit"
    (int64 numpy), "query_index" (int64 numpy, each valid query's row in ``query``)}``.
    UserError if no query is valid.
    """
    q, g = _query_gallery(query, gallery, metric)
    n_q, n_g = q.shape[0], g.shape[0]
    qi = _labels(q_ids, n_q, "q_ids", "query")
    gi = _labels(g_ids, n_g, "g_ids", "gallery")
    if (q_cams is None) != (g_cams is None):
        raise UserError("give both q_cams and g_cams, or neither (no same-camera exclusion)")
    cams = q_cams is not None
    if cams:
        qc, gc = _labels(q_cams, n_q, "q_cams", "query"), _labels(g_cams, n_g, "g_cams", "gallery")
    ranks = [ranks] if isinstance(ranks, (int, np.integer)) else list(ranks)
    if not ranks or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in ranks):
        raise UserError(f"ranks must be positive integers, got {ranks}")
    ranks = sorted({int(r) for r in ranks})
    if chunk is not None and chunk < 1:
        raise UserError(f"chunk must be a positive number of queries, got {chunk}")
    rows = chunk or max(1, _CHUNK_ELEMENTS // n_g)
    by_id = torch.argsort(gi, stable=True)  # gallery items grouped by id, in index order
    sorted_ids, junk_g = gi[by_id], gi < 0
    g_sq = (g * g).sum(1) if metric == "euclidean" else None
    aps, firsts, valid = [], [], []
    for s in range(0, n_q, rows):
        ids = qi[s : s + rows]
        # every (query, gallery item) pair with the same id >= 0, gallery index ascending per query
        lo = torch.searchsorted(sorted_ids, ids)
        count = torch.where(ids >= 0, torch.searchsorted(sorted_ids, ids, right=True) - lo, 0)
        row = torch.repeat_interleave(torch.arange(ids.numel()), count)
        col = by_id[torch.repeat_interleave(lo - (torch.cumsum(count, 0) - count), count) + torch.arange(row.numel())]
        same_cam = qc[s : s + rows][row] == gc[col] if cams else torch.zeros_like(row, dtype=torch.bool)
        rank, n_rel = _relevant_ranks(_dist(q[s : s + rows], g, metric, g_sq), row[~same_cam], col[~same_cam],
                                      row[same_cam], col[same_cam], junk_g)
        ok = n_rel > 0
        m = torch.arange(1, rank.shape[1] + 1, dtype=torch.float64)
        prec = torch.where(m <= n_rel[:, None], m / rank.clamp_min(1), 0.0)  # precision at each relevant item
        aps.append(prec.sum(1)[ok] / n_rel[ok])
        firsts.append(rank[ok, 0] - 1)
        valid.append(torch.nonzero(ok).flatten() + s)
    ap = torch.cat(aps).numpy()
    first = torch.cat(firsts).to(torch.int64).numpy()
    if ap.size == 0:
        raise UserError("no query has a relevant gallery item (same id, another camera, id >= 0); check the ids and cams")
    return {
        "mAP": float(ap.mean()),
        "cmc": {f"rank{r}": float((first < r).mean()) for r in ranks},
        "ranks": ranks,
        "n_queries": int(ap.size),
        "n_queries_excluded": int(n_q - ap.size),
        "metric": metric,
        "ap": ap,
        "first_hit": first,
        "query_index": torch.cat(valid).numpy(),
    }


def bootstrap(result: dict, *, seed: int = 0, n_boot: int = 10_000, confidence: float = 0.95) -> dict:
    """Percentile-bootstrap CIs over queries for an :func:`evaluate` result.

    :func:`compresslab.measure.stats.summarize` of the per-query AP (for mAP) and of the
    per-query hit indicator ``first_hit < r`` (for CMC at rank r). Every quantity uses the same
    ``seed``, hence the same resampled query sets. Returns ``{"mAP": ci, "cmc": {"rank<r>": ci},
    "n_boot", "confidence", "seed"}`` with each ci ``{"mean", "ci_low", "ci_high", "std", "n"}``.
    """
    try:
        ap, first, ranks = np.asarray(result["ap"]), np.asarray(result["first_hit"]), list(result["ranks"])
    except (KeyError, TypeError):
        raise UserError("bootstrap needs the dict returned by retrieval.evaluate (keys ap, first_hit, ranks)") from None

    def ci(values: np.ndarray) -> dict:
        s = summarize(values, confidence=confidence, n_boot=n_boot, seed=seed)
        return {key: s[key] for key in _CI_KEYS}

    return {
        "mAP": ci(ap),
        "cmc": {f"rank{r}": ci((first < r).astype(np.float64)) for r in ranks},
        "n_boot": int(n_boot),
        "confidence": float(confidence),
        "seed": int(seed),
    }


# --------------------------------------------------------------------------- geometry


def _parent_child(parent, child) -> tuple[torch.Tensor, torch.Tensor]:
    p, c = _matrix(parent, "parent"), _matrix(child, "child")
    if p.shape[0] != c.shape[0]:
        raise UserError(f"parent and child must embed the same examples, got {p.shape[0]} and {c.shape[0]} rows")
    if p.shape[0] < 3:
        raise UserError(f"geometry needs at least 3 examples, got {p.shape[0]}")
    return p, c


def _pair_distances(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, metric: str) -> torch.Tensor:
    """Distance between rows i[t] and j[t] of prepared ``x``, for each t, computed directly."""
    out = torch.empty(i.numel(), dtype=torch.float64)
    step = max(1, _CHUNK_ELEMENTS // x.shape[1])
    for s in range(0, i.numel(), step):
        a, b = x[i[s : s + step]], x[j[s : s + step]]
        if metric == "euclidean":
            out[s : s + step] = torch.linalg.vector_norm(a - b, dim=1)
        else:
            out[s : s + step] = (1.0 - (a * b).sum(1)).clamp_(0.0, 2.0)
    return out


def distance_rank_correlation(parent, child, *, metric: str = "euclidean", max_pairs: int = 500_000,
                              seed: int = 0) -> float | None:
    """Spearman correlation between parent and child distances over pairs of examples i < j.

    Uses all N(N-1)/2 pairs when there are at most ``max_pairs``, otherwise ``max_pairs`` pairs
    drawn uniformly with replacement (numpy Generator seeded with ``seed``). Ties get average
    ranks. None when either side's distances are all equal (the correlation is undefined).
    """
    _check_metric(metric)
    p, c = _parent_child(parent, child)
    if max_pairs < 1:
        raise UserError(f"max_pairs must be a positive integer, got {max_pairs}")
    n = p.shape[0]
    if n * (n - 1) // 2 <= max_pairs:
        i, j = torch.triu_indices(n, n, offset=1)
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, size=max_pairs)
        b = rng.integers(0, n - 1, size=max_pairs)
        b = b + (b >= a)  # uniform over the other n - 1 examples
        i, j = torch.from_numpy(np.minimum(a, b)), torch.from_numpy(np.maximum(a, b))
    dp = _pair_distances(_prepare(p, metric, "parent"), i, j, metric).numpy()
    dc = _pair_distances(_prepare(c, metric, "child"), i, j, metric).numpy()
    if np.ptp(dp) == 0 or np.ptp(dc) == 0:
        return None
    return float(np.clip(_sps.spearmanr(dp, dc)[0], -1.0, 1.0))


def _knn(x: torch.Tensor, k: int, metric: str) -> torch.Tensor:
    """(N, k) indices of each row's k nearest other rows; ties broken by index (stable sort)."""
    n = x.shape[0]
    out = torch.empty(n, k, dtype=torch.int64)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for s in range(0, n, rows):
        d = _dist(x[s : s + rows], x, metric)
        r = torch.arange(d.shape[0])
        d[r, r + s] = torch.inf  # never its own neighbour
        out[s : s + rows] = torch.sort(d, dim=1, stable=True).indices[:, :k]
    return out


def neighbour_overlap(parent, child, *, k: int = 10, metric: str = "euclidean") -> float:
    """Mean over examples i of ``|kNN_parent(i) ∩ kNN_child(i)| / k``, in [0, 1].

    kNN(i) are the k examples nearest to i other than i itself (equal distances broken by
    index); needs 1 <= k < N.
    """
    _check_metric(metric)
    p, c = _parent_child(parent, child)
    n = p.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise UserError(f"k must be an integer with 1 <= k < N = {n} examples, got {k}")
    a = _knn(_prepare(p, metric, "parent"), int(k), metric)
    b = _knn(_prepare(c, metric, "child"), int(k), metric)
    both = torch.cat([a, b], 1).sort(1).values  # each side's indices are distinct: repeats = shared
    shared = (both[:, 1:] == both[:, :-1]).sum(1)
    return float(shared.double().mean() / k)


def embedding_cka(parent, child, *, unbiased: bool = False) -> float | None:
    """Linear CKA between the two embeddings (:func:`compresslab.measure.cka.linear_cka`).

    Biased by default; None when undefined (a constant side).
    """
    p, c = _parent_child(parent, child)
    return linear_cka(p, c, unbiased=unbiased)


def geometry(parent, child, *, metric: str = "euclidean", k: int = 10, seed: int = 0,
             max_pairs: int = 500_000) -> dict:
    """All geometry similarities of a child's embeddings to its parent's, on the same examples.

    Returns ``{"rank_correlation"`` (:func:`distance_rank_correlation`), ``"neighbour_overlap"``
    (:func:`neighbour_overlap`), ``"cka"`` (biased :func:`embedding_cka`), ``"n", "k", "metric"}``.
    """
    p, c = _parent_child(parent, child)
    return {
        "rank_correlation": distance_rank_correlation(p, c, metric=metric, max_pairs=max_pairs, seed=seed),
        "neighbour_overlap": neighbour_overlap(p, c, k=k, metric=metric),
        "cka": embedding_cka(p, c),
        "n": int(p.shape[0]),
        "k": int(k),
        "metric": metric,
    }


# --------------------------------------------------------------------------- latency


def search_latency(gallery, queries, *, k: int = 10, metric: str = "euclidean", repeats: int = 10,
                   warmup: int = 2) -> dict:
    """Wall-clock time of exact search of ``queries`` (one batch) in ``gallery``.

    One search is: normalise the queries (cosine only; the gallery is normalised once,
    untimed, like an index), the full (Q, N) distance matrix, and the k smallest per row
    (``torch.topk``). Runs in the embeddings' own float dtype (float32 for non-float input),
    on the gallery's device (CUDA synchronised around each call). After ``warmup`` untimed
    searches, ``repeats`` are timed. Returns ``{"ms_per_query"`` (median batch time / Q),
    ``"ms_per_batch"`` (median), ``"gallery_size", "n_queries", "dim", "k", "metric",
    "repeats", "dtype", "device"}``.
    """
    _check_metric(metric)
    g = _matrix(gallery, "gallery", dtype=None, device=None)
    q = _matrix(queries, "queries", dtype=g.dtype, device=g.device)
    if q.shape[1] != g.shape[1]:
        raise UserError(f"queries and gallery embeddings must have the same size D, got {q.shape[1]} and {g.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= g.shape[0]:
        raise UserError(f"k must be an integer with 1 <= k <= gallery size {g.shape[0]}, got {k}")
    if repeats < 1 or warmup < 0:
        raise UserError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    g = _prepare(g, metric, "gallery")
    _prepare(q, metric, "queries")  # reject zero query rows before timing
    cuda = g.device.type == "cuda"

    def search() -> float:
        if cuda:
            torch.cuda.synchronize(g.device)
        start = time.perf_counter()
        _dist(_prepare(q, metric, "queries"), g, metric).topk(int(k), dim=1, largest=False)
        if cuda:
            torch.cuda.synchronize(g.device)
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(warmup):
            search()
        ms = 1000.0 * statistics.median([search() for _ in range(repeats)])
    return {
        "ms_per_query": ms / q.shape[0],
        "ms_per_batch": ms,
        "gallery_size": int(g.shape[0]),
        "n_queries": int(q.shape[0]),
        "dim": int(g.shape[1]),
        "k": int(k),
        "metric": metric,
        "repeats": int(repeats),
        "dtype": str(g.dtype).replace("torch.", ""),
        "device": str(g.device),
    }
