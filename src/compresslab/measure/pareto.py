"""``pareto_front``: the indices on the front, with a sense per objective, ordered (moonshine's
table, local search). Dominance itself is :mod:`compresslab.codesign.pareto`'s (all minimised)."""
from __future__ import annotations

from collections.abc import Sequence

from compresslab.codesign.pareto import pareto_mask
from compresslab.errors import UserError

SENSES = {"min": 1.0, "max": -1.0}


def pareto_front(points: Sequence[Sequence[float]], senses: Sequence[str] = ("min", "min")) -> list[int]:
    """Indices of the points no other point dominates, ordered by the first objective (then
    the next ones, in the sense each is optimised). ``senses`` says per coordinate whether
    it is minimised (``"min"``) or maximised (``"max"``). Of several identical points only
    the first is kept."""
    try:
        sign = [SENSES[s] for s in senses]
    except KeyError:
        raise UserError(f"senses {list(senses)}: each must be 'min' or 'max'") from None
    keys = []
    for p in points:
        if len(p) != len(sign):
            raise UserError(f"point {tuple(p)} has {len(p)} coordinates; senses name {len(sign)}")
        keys.append(tuple(s * float(v) for s, v in zip(sign, p)))
    on = pareto_mask(keys)
    return sorted((i for i, k in enumerate(keys) if on[i] and k not in keys[:i]), key=lambda i: keys[i])
