"""Entity-level precision, recall and F1 of BIO-tagged sequences, by exact span match.

An entity is a maximal run of tokens of one type, read from IOB2 tags the lenient way
seqeval's default mode reads them (``seqeval.metrics.f1_score`` without ``mode="strict"``):

* ``B-X`` starts an entity of type X;
* ``I-X`` continues the open entity when it has type X, and otherwise **starts** one
  (``I-X`` after ``O``, after ``B-Y`` or after ``I-Y``);
* ``O`` closes the open entity; an entity open at the sentence end ends there.

A predicted entity counts as correct only when a gold entity has the same type, start and
end in the same sentence. Per type: precision = correct / predicted, recall = correct /
gold, F1 their harmonic mean, each 0 when its denominator is 0 (seqeval's
``zero_division`` default). Micro averages pool the counts of every type; macro averages
are the unweighted means over every type that occurs in the gold *or* the predicted tags
(0 when no type occurs at all, where seqeval's mean of nothing is NaN).
``tests/test_entity_f1.py`` checks all of it against the installed seqeval.
"""
from __future__ import annotations

from collections.abc import Sequence


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` of every entity in one sentence's tags, ``end`` inclusive.

    >>> entities(["B-SPECIES", "I-SPECIES", "O", "I-HABITAT", "B-HABITAT"])
    [('SPECIES', 0, 1), ('HABITAT', 3, 3), ('HABITAT', 4, 4)]
    """
    out: list[tuple[str, int, int]] = []
    open_type, start = None, 0
    for i, tag in enumerate(tags):
        if tag == "O":
            prefix, typ = "O", None
        else:
            prefix, sep, typ = tag.partition("-")
            if prefix not in ("B", "I") or not sep or not typ:
                raise ValueError(f"tag {tag!r} is not O, B-TYPE or I-TYPE")
        continues = prefix == "I" and typ == open_type
        if open_type is not None and not continues:
            out.append((open_type, start, i - 1))
            open_type = None
        if typ is not None and not continues:
            open_type, start = typ, i
    if open_type is not None:
        out.append((open_type, start, len(tags) - 1))
    return out


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _prf(correct: int, predicted: int, gold: int) -> dict:
    p, r = _ratio(correct, predicted), _ratio(correct, gold)
    return {"precision": p, "recall": r, "f1": _ratio(2 * p * r, p + r), "support": gold,
            "predicted": predicted, "correct": correct}


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level scores of predicted tag sequences against gold ones (same sentences,
    same lengths). Returns ``{"per_type": {type: {precision, recall, f1, support,
    predicted, correct}}, "micro": {...}, "macro": {precision, recall, f1}, "sentences": N}``;
    types are sorted by name."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    g_set: set[tuple[int, str, int, int]] = set()
    p_set: set[tuple[int, str, int, int]] = set()
    for k, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {k}: {len(g)} gold tags but {len(p)} predicted")
        g_set.update((k, *e) for e in entities(g))
        p_set.update((k, *e) for e in entities(p))
    types = sorted({e[1] for e in g_set | p_set})
    per_type = {}
    for t in types:
        gt = {e for e in g_set if e[1] == t}
        pt = {e for e in p_set if e[1] == t}
        per_type[t] = _prf(len(gt & pt), len(pt), len(gt))
    micro = _prf(len(g_set & p_set), len(p_set), len(g_set))
    n = len(types)
    macro = {k: (sum(v[k] for v in per_type.values()) / n if n else 0.0) for k in ("precision", "recall", "f1")}
    return {"per_type": per_type, "micro": micro, "macro": macro, "sentences": len(gold)}
