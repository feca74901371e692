"""Pareto fronts, non-dominated ranks and hypervolumes; every objective is **minimised**
(negate a metric to maximise it).

:func:`hypervolume` is exact in any dimension: a 2-D sweep over the points sorted by the
first objective, and beyond 2-D slicing along the last objective (the HSO scheme: the volume
is the sum over slabs between consecutive values of the last objective of the slab's
thickness times the (d-1)-dimensional hypervolume of the points below it). That costs about
``n^(d-1)`` and suits the tens of trials and 2 to 4 objectives of a search.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_mask(points: Sequence[Point]) -> list[bool]:
    """True for each point no other point dominates (duplicates of a front point are all on it)."""
    return [not any(dominates(q, p) for q in points) for p in points]


def nondominated_ranks(points: Sequence[Point]) -> list[int]:
    """Rank 0 for the front, 1 for the front of the rest, and so on (NSGA-II's sorting)."""
    ranks = [-1] * len(points)
    left = list(range(len(points)))
    rank = 0
    while left:
        front = [i for i in left if not any(dominates(points[j], points[i]) for j in left)]
        for i in front:
            ranks[i] = rank
        left = [i for i in left if ranks[i] < 0]
        rank += 1
    return ranks


def hypervolume(points: Sequence[Point], ref: Point) -> float:
    """The volume dominated by ``points`` and bounded by ``ref`` (points not strictly better
    than ``ref`` in every objective add nothing)."""
    pts = sorted(tuple(map(float, p)) for p in points if all(x < r for x, r in zip(p, ref)))
    if not pts:
        return 0.0
    d = len(ref)
    if d == 1:
        return float(ref[0]) - pts[0][0]
    if d == 2:
        volume, best_y = 0.0, float(ref[1])
        for i, (x, y) in enumerate(pts):  # by x ascending: each point adds the strip up to the next x
            best_y = min(best_y, y)
            next_x = pts[i + 1][0] if i + 1 < len(pts) else float(ref[0])
            volume += (next_x - x) * (float(ref[1]) - best_y)
        return volume
    pts.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        top = pts[i + 1][-1] if i + 1 < len(pts) else float(ref[-1])
        if top > p[-1]:
            volume += (top - p[-1]) * hypervolume([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return volume


def normaliser(points: Sequence[Point], log: Sequence[bool]):
    """A map of points into [0, 1] per objective (min to max over ``points``; ``log``:
    through log10 first, for costs that span orders of magnitude). The reference point of a
    normalised hypervolume is then 1.1 in every objective."""
    cols = [[math.log10(max(p[k], 1e-300)) if log[k] else p[k] for p in points] for k in range(len(log))]
    lo = [min(c) for c in cols]
    span = [(max(c) - min(c)) or 1.0 for c in cols]

    def scale(p: Point) -> tuple[float, ...]:
        return tuple(((math.log10(max(v, 1e-300)) if log[k] else v) - lo[k]) / span[k] for k, v in enumerate(p))

    return scale


def hypervolume_trace(points: Sequence[Point], log: Sequence[bool]) -> list[float]:
    """The normalised hypervolume (:func:`normaliser`, reference 1.1) of the first 1, 2, ...
    points: how the search's front grew, trial by trial."""
    if not points:
        return []
    scale = normaliser(points, log)
    scaled = [scale(p) for p in points]
    ref = [1.1] * len(log)
    return [hypervolume(scaled[: i + 1], ref) for i in range(len(scaled))]
