"""How faithfully a compressed or exported model reproduces its parent, from logits alone.

:func:`fidelity_report` takes the logits of two or more models on the same examples and the
true labels, and returns one JSON-ready dict:

* ``pairs``: for each pair of models (in the order given), every metric of
  :func:`compresslab.measure.function.compare_logits` (``disagreement`` left out: it is
  1 - agreement) as ``{"value", "ci_low", "ci_high"}``. ``value`` is the function.py number;
  the CI is a seeded percentile bootstrap over the examples. Every metric but kappa is a mean
  of per-example values (:func:`per_example`), resampled by :func:`compresslab.measure.stats.summarize`;
  kappa is recomputed on the same resampled example sets. ``cka`` holds CKA per feature point
  when the caller measured it, else None (an ONNX graph has no feature points).
* ``models``: accuracy with its CI, and accuracy per class (recall: correct / support).
* ``disagreements``: every example on which the models do not all predict the same class:
  its index, true label and each model's prediction.

:func:`retrain_band` judges each model against a reference (the parent) by the agreement of
independent retrains (same spec, other seed) with that reference.
"""
from __future__ import annotations

import numpy as np
import torch

from compresslab.errors import UserError
from compresslab.measure.function import compare_logits
from compresslab.measure.pairwise import _pair_block
from compresslab.measure.stats import _CHUNK_ELEMENTS, _check_confidence, _percentile_ci, summarize

#: Metrics reported per pair, in display order.
METRICS = ("agreement", "kappa", "js_divergence", "kl_ab", "kl_ba", "activation_distance", "output_cosine")


def per_example(a, b) -> dict[str, np.ndarray]:
    """Each mean metric of :func:`compare_logits` for every example (all but kappa): their
    means over the examples are the function.py values (up to float rounding)."""
    a, b = (torch.as_tensor(np.asarray(v), dtype=torch.float64) for v in (a, b))
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise UserError(f"logits must have the same shape (N, K) with N >= 1, got {tuple(a.shape)} and {tuple(b.shape)}")
    lp = torch.log_softmax(torch.stack([a, b]), 2)
    p = lp.exp()
    block = {k: v[0, 0].numpy() for k, v in _pair_block(lp, p, slice(0, 1), slice(1, 2), {"js", "kl", "dist"}).items()}
    norms = torch.linalg.vector_norm(p, dim=2)
    cosine = ((p[0] * p[1]).sum(1) / (norms[0] * norms[1])).clamp(0.0, 1.0)
    return {"agreement": (a.argmax(1) == b.argmax(1)).double().numpy(), "js_divergence": block["js"],
            "kl_ab": block["kl_rc"], "kl_ba": block["kl_cr"], "activation_distance": block["dist"],
            "output_cosine": cosine.numpy()}


def _kappa_boot(la: np.ndarray, lb: np.ndarray, k: int, n_boot: int, seed: int) -> np.ndarray:
    """Cohen's kappa on ``n_boot`` resamples of the examples: the same index sets that
    :func:`summarize` draws with this ``seed`` (same generator, same chunks)."""
    n = la.size
    rows = max(1, _CHUNK_ELEMENTS // n)
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        m = min(rows, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        a, b = la[idx], lb[idx]
        p_o = (a == b).mean(1)
        offset = (k * np.arange(m))[:, None]
        pa = np.bincount((a + offset).ravel(), minlength=m * k).reshape(m, k) / n
        pb = np.bincount((b + offset).ravel(), minlength=m * k).reshape(m, k) / n
        p_e = (pa * pb).sum(1)
        undefined = p_e >= 1.0
        kappa = (p_o - p_e) / np.where(undefined, 1.0, 1.0 - p_e)
        out[start:start + m] = np.where(undefined, (p_o == 1.0).astype(float), kappa)
    return out


def _ci(value: float, low: float, high: float) -> dict:
    """A point value with its interval, widened by rounding only so that it contains the value."""
    return {"value": float(value), "ci_low": float(min(low, value)), "ci_high": float(max(high, value))}


def _boot_mean(values: np.ndarray, value: float, n_boot: int, seed: int, confidence: float) -> dict:
    s = summarize(values, confidence=confidence, n_boot=n_boot, seed=seed)
    return _ci(value, s["ci_low"], s["ci_high"])


def per_class_accuracy(logits, labels, num_classes: int) -> list[dict]:
    """``[{"class", "support", "correct", "accuracy"}]`` for each class; accuracy (recall) is
    None for a class with no example."""
    pred, y = np.asarray(logits).argmax(1), np.asarray(labels)
    support = np.bincount(y, minlength=num_classes)
    correct = np.bincount(y[pred == y], minlength=num_classes)
    return [{"class": c, "support": int(support[c]), "correct": int(correct[c]),
             "accuracy": float(correct[c] / support[c]) if support[c] else None} for c in range(num_classes)]


def fidelity_report(logits: dict[str, np.ndarray], labels, *, cka: dict[tuple[str, str], dict] | None = None,
                    n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Side-by-side fidelity of the models in ``logits`` (name -> (N, K) array, the reference
    first) on N examples with true ``labels``; see the module docstring for the keys.

    ``cka`` maps a pair ``(a, b)`` to ``{feature point: CKA}`` where it was measured.
    """
    names = list(logits)
    if len(names) < 2:
        raise UserError("fidelity compares at least two models")
    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in logits.items()}
    y = np.asarray(labels, dtype=np.int64)
    shapes = {name: a.shape for name, a in arrays.items()}
    n, k = arrays[names[0]].shape if arrays[names[0]].ndim == 2 else (0, 0)
    if n == 0 or any(s != (n, k) for s in shapes.values()) or y.shape != (n,):
        raise UserError(f"fidelity needs every model's logits on the same examples and classes and one label "
                        f"per example; got logits {shapes} and labels {y.shape}")
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise UserError("a model produced NaN or infinite logits; check the checkpoint")
    _check_confidence(confidence, n_boot)
    num_classes = max(k, int(y.max()) + 1)
    preds = {name: a.argmax(1) for name, a in arrays.items()}
    cka = cka or {}

    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            point = compare_logits(arrays[a], arrays[b])
            values = per_example(arrays[a], arrays[b])
            metrics = {m: _boot_mean(values[m], point[m], n_boot, seed, confidence) for m in values}
            lo, hi = _percentile_ci(_kappa_boot(preds[a], preds[b], k, n_boot, seed), point["kappa"], confidence)
            metrics["kappa"] = _ci(point["kappa"], lo, hi)
            pairs.append({"a": a, "b": b, "disagreeing": int((preds[a] != preds[b]).sum()),
                          "metrics": {m: metrics[m] for m in METRICS}, "cka": cka.get((a, b))})

    models = {}
    for name in names:
        right = (preds[name] == y).astype(np.float64)
        models[name] = {"accuracy": _boot_mean(right, float(right.mean()), n_boot, seed, confidence),
                        "per_class": per_class_accuracy(arrays[name], y, num_classes)}

    stacked = np.stack([preds[name] for name in names])
    where = np.flatnonzero((stacked != stacked[0]).any(0))
    disagreements = [{"index": int(i), "label": int(y[i]), "predictions": {name: int(preds[name][i]) for name in names}}
                     for i in where]
    return {"models": models, "names": names, "examples": int(n), "classes": int(num_classes), "pairs": pairs,
            "disagreements": disagreements, "bootstrap": {"n_boot": int(n_boot), "confidence": float(confidence),
                                                          "seed": int(seed), "over": "examples"}}


def retrain_band(reference: np.ndarray, retrains: dict[str, np.ndarray], report: dict) -> dict:
    """The agreement (and JS divergence) of independent retrains with the reference model,
    and for each other model of ``report`` (a :func:`fidelity_report` whose first model is
    the reference) whether it is as close to the reference as a retrain.

    A model is ``within`` the band when its agreement with the reference is at least the lowest
    retrain's; ``overlaps`` when only its CI's upper end reaches it (too few examples to tell);
    else ``outside``. The verdict also gives the JS divergence against the retrains' (the
    status rests on agreement alone).
    """
    if not retrains:
        raise UserError("retrain_band needs at least one retrain's logits")
    rows = []
    for name, logits in retrains.items():
        m = compare_logits(reference, logits)
        rows.append({"checkpoint": name, "agreement": m["agreement"], "js_divergence": m["js_divergence"]})
    agree = [r["agreement"] for r in rows]
    js = [r["js_divergence"] for r in rows]
    low = min(agree)
    judged = {}
    ref = report["names"][0]
    for pair in report["pairs"]:
        if pair["a"] != ref:
            continue
        a, j = pair["metrics"]["agreement"], pair["metrics"]["js_divergence"]
        status = "within" if a["value"] >= low else "overlaps" if a["ci_high"] >= low else "outside"
        text = {"within": "as close to the parent as an independent retrain",
                "overlaps": "a little further from the parent than an independent retrain, within its CI",
                "outside": "further from the parent than an independent retrain"}[status]
        judged[pair["b"]] = {"status": status, "verdict": (
            f"{pair['b']}: {text}: agreement {100 * a['value']:.2f}% [{100 * a['ci_low']:.2f}, "
            f"{100 * a['ci_high']:.2f}] vs retrains {100 * low:.2f}-{100 * max(agree):.2f}%; "
            f"JS {j['value']:.3g} vs {min(js):.3g}-{max(js):.3g} nats")}
    return {"retrains": rows, "agreement": {"low": low, "high": max(agree)},
            "js_divergence": {"low": min(js), "high": max(js)}, "judged": judged}
