"""Entity-level precision/recall/F1 (compresslab.measure.entities) against seqeval's default
mode and hand-worked cases: B/I inconsistencies, entities at the sentence end, no predictions."""
from __future__ import annotations

import random
import warnings

import pytest

from compresslab.measure.entities import entities, entity_scores

seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval is a test extra (pip install seqeval)")
from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support  # noqa: E402


def reference(gold, pred) -> dict:
    """seqeval's micro/macro precision, recall, F1 and per-type F1 (default, lenient mode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {}
        for avg in ("micro", "macro"):
            p, r, f, _ = precision_recall_fscore_support(gold, pred, average=avg, zero_division=0)
            out[avg] = (p, r, f)
        report = seqeval.classification_report(gold, pred, output_dict=True, zero_division=0)
    out["per_type"] = {k: v["f1-score"] for k, v in report.items() if "avg" not in k}
    return out


def check(gold, pred):
    ours, ref = entity_scores(gold, pred), reference(gold, pred)
    for avg in ("micro", "macro"):
        got = tuple(ours[avg][k] for k in ("precision", "recall", "f1"))
        if avg == "macro" and not ours["per_type"]:  # no entity anywhere: seqeval's mean of nothing is NaN, ours 0
            assert all(v != v for v in ref[avg]) and got == (0.0, 0.0, 0.0)
            continue
        assert got == pytest.approx(ref[avg], abs=1e-12), (avg, gold, pred)
    assert {t: v["f1"] for t, v in ours["per_type"].items()} == pytest.approx(ref["per_type"])
    return ours


@pytest.mark.parametrize("tags, expected", [
    (["B-A", "I-A", "O", "B-B"], [("A", 0, 1), ("B", 3, 3)]),            # end of sentence
    (["O", "I-A", "I-A", "O"], [("A", 1, 2)]),                             # I-X after O starts an entity
    (["B-A", "I-B", "I-B"], [("A", 0, 0), ("B", 1, 2)]),                   # I-X after B-Y starts one
    (["B-A", "B-A", "I-A"], [("A", 0, 0), ("A", 1, 2)]),                   # B-X after B-X: two entities
    (["I-A", "I-B", "I-A"], [("A", 0, 0), ("B", 1, 1), ("A", 2, 2)]),     # type switches inside I runs
    (["O", "O"], []),
    ([], []),
    (["B-SPECIES", "I-SPECIES"], [("SPECIES", 0, 1)]),                     # runs to the last token
])
def test_entities_hand_worked_and_as_seqeval(tags, expected):
    assert entities(tags) == expected
    assert entities(tags) == [tuple(e) for e in get_entities(tags)]


def test_hand_worked_scores():
    gold = [["B-SPECIES", "I-SPECIES", "O", "B-HABITAT", "I-HABITAT"], ["O", "B-FEEDING"]]
    # species exact; habitat cut short (wrong end); feeding missed; one spurious species
    pred = [["B-SPECIES", "I-SPECIES", "O", "B-HABITAT", "O"], ["B-SPECIES", "O"]]
    s = check(gold, pred)
    assert s["micro"]["correct"] == 1 and s["micro"]["predicted"] == 3 and s["micro"]["support"] == 3
    assert s["micro"]["precision"] == pytest.approx(1 / 3) and s["micro"]["recall"] == pytest.approx(1 / 3)
    sp = s["per_type"]["SPECIES"]
    assert (sp["precision"], sp["recall"], sp["f1"]) == (0.5, 1.0, pytest.approx(2 / 3))
    assert s["per_type"]["FEEDING"]["f1"] == 0.0 and s["per_type"]["HABITAT"]["f1"] == 0.0
    assert s["macro"]["f1"] == pytest.approx((2 / 3) / 3)


def test_b_i_inconsistencies_against_seqeval():
    gold = [["B-A", "I-A", "I-A", "O"], ["B-B", "I-B", "O", "B-A"]]
    check(gold, [["O", "I-A", "I-A", "O"], ["B-B", "I-B", "O", "B-A"]])     # I-A after O: wrong start
    check(gold, [["B-A", "I-B", "I-A", "O"], ["I-B", "I-B", "O", "I-A"]])   # I-B after B-A; I-start = B
    s = check([["O", "I-A", "I-A"]], [["O", "B-A", "I-A"]])                  # lenient: the same entity
    assert s["micro"]["f1"] == 1.0


def test_entity_at_sentence_end_does_not_join_the_next_sentence():
    gold = [["O", "B-A"], ["I-A", "O"]]
    s = check(gold, [["O", "B-A"], ["I-A", "O"]])
    assert s["micro"]["support"] == 2 and s["micro"]["f1"] == 1.0


def test_empty_predictions_and_empty_gold():
    s = check([["B-A", "O"], ["O", "B-B"]], [["O", "O"], ["O", "O"]])
    assert s["micro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "predicted": 0, "correct": 0}
    s = check([["O", "O"]], [["B-A", "O"]])                                 # a type only in the predictions
    assert s["per_type"]["A"]["support"] == 0 and s["macro"]["f1"] == 0.0
    s = entity_scores([["O"]], [["O"]])
    assert s["per_type"] == {} and s["micro"]["f1"] == 0.0 and s["macro"]["f1"] == 0.0


def test_randomised_against_seqeval():
    rng = random.Random(0)
    tags = ["O", "O", "O", "B-A", "I-A", "B-B", "I-B", "B-C", "I-C"]
    for _ in range(300):
        n = rng.randint(1, 6)
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 9))] for _ in range(n)]
        # predictions: gold with some tags flipped, so there are hits and misses
        pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in s] for s in gold]
        check(gold, pred)


def test_bad_input():
    with pytest.raises(ValueError, match="E-A"):
        entities(["E-A"])
    with pytest.raises(ValueError, match="sentence 0"):
        entity_scores([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="2 gold sentences"):
        entity_scores([["O"], ["O"]], [["O"]])
