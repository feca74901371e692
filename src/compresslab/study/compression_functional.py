"""The ``compression-functional`` study: which compressions keep the parent's function?

Mason-Williams & Dahlqvist ("Neural Network Compression: The Functional Perspective",
ICLR 2024 workshop) report that quantised and pruned children stay functionally close
to their parent, while KD students are about as far from it as independently trained
models. This study checks that on the user's model and data, with replicates:

* for each seed ``s`` in ``seeds``: a parent trained at ``s``, every child built from
  that parent (KD students, pruned, quantised, pruned-then-quantised; the children
  of :class:`compresslab.study.spec.StudySpec`), the parent architecture retrained at
  ``1000 + s`` (the *independent* baseline) and each KD student's architecture trained
  with CE only (*scratch*);
* every model against its own replicate's parent on the ``split``: agreement, JS
  divergence, activation distance, output cosine (and the rest of ``compare_logits``)
  and linear CKA at the feature points both share;
* per model: accuracy, params, bytes, BOPs, latency (first replicate, side by side)
  and the compression ratio = parent's nonzero weight bits / the model's;
* per model and metric, mean and 95% bootstrap CI over replicates, and a one-sided
  test (Welch + exact permutation, Holm across the whole family) of "more similar to
  the parent than an independent retrain";
* ``retrain_controls``: the parent's architecture retrained with the replicate parent's
  initialisation and another data order (``siddo``), or the other way round (``disdo``);
* per model, agreement split by the parent's correctness (does compression copy the
  parent's mistakes?) and the asymmetry of that transfer against the retrain control
  (``siddo`` when run, else ``independent``), paired by replicate, Holm across models.

Outputs: ``runs/studies/<name>-<hash12>/results.json``, ``report.html`` and
``fidelity.png`` (fidelity against compression ratio, one series per family, the
independent baseline as a band).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator

from compresslab.console import console, echo, short, table
from compresslab.errors import UserError
from compresslab.measure import compare_logits, latency, stats
from compresslab.measure.cka import cache_features, cka_against_cached
from compresslab.measure.inheritance import asymmetry_family, split_by_correctness
from compresslab.models import feature_points
from compresslab.report.compression import write_cf_report
from compresslab.runs.store import RunStore, Step, canonical_json, read_json
from compresslab.scratch import Scratch
from compresslab.steps import data_of
from compresslab.steps.common import load_model
from compresslab.study import plain
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import Child, ModelSpec, RunOptions, check_children
from compresslab.train.recipe import Recipe, Seed

OTHER_SEED = 1000  # the independent retrain of replicate s is trained at OTHER_SEED + s
#: Baselines, never tested themselves: retrains of the parent and students from scratch.
CONTROLS = ("independent", "scratch", "siddo", "disdo")
#: Similarity metrics and whether larger means "closer to the parent".
METRICS = {"agreement": True, "kappa": True, "js_divergence": False, "activation_distance": False,
           "output_cosine": True, "cka": True}


class CompressionFunctionalSpec(RunOptions):
    """A compression-functional study (``kind: compression-functional``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["compression-functional"]
    name: str = "compression-functional"
    data: str = "mnist1d"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    data_seed: Seed = Field(0, description="seed of the validation split, the same for every replicate")
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=2,
                             description="one replicate per seed: its parent, children and controls")
    parent: ModelSpec
    recipe: Recipe = Field(default_factory=Recipe)
    children: list[Child] = Field(min_length=1)
    student_from_scratch: bool = Field(True, description="control: each KD student's architecture with CE only")
    retrain_controls: list[Literal["siddo", "disdo"]] = Field(
        default_factory=list, description="retrains of the parent's architecture: siddo keeps its initialisation "
        "(another data order), disdo its data order (another initialisation)")
    metrics: list[Literal[tuple(METRICS)]] = Field(
        default_factory=lambda: ["agreement", "js_divergence", "cka"],
        min_length=1, description="metrics tested against the independent baseline (all are reported)")
    cka_points: list[str] | None = Field(None, description="default: the feature points parent and model share")
    latency: bool = True
    split: Literal["val", "test"] = "test"
    alpha: float = Field(0.05, gt=0, lt=1)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        if any(s >= OTHER_SEED for s in v):
            raise ValueError(f"seeds must be below {OTHER_SEED} (independent retrains use {OTHER_SEED} + seed)")
        return v


def _check(spec: CompressionFunctionalSpec, source: str) -> None:
    check_children(spec.children, source)


def family(entry, children: dict) -> str:
    if entry.method in CONTROLS:
        return entry.method
    if entry.method == "quantize" and children[entry.name].source is not None:
        return "pruning+quantization"
    return {"distill": "distillation", "prune": "pruning", "quantize": "quantization"}.get(entry.method, entry.method)


def replicates(spec: CompressionFunctionalSpec) -> dict[int, list[Entry]]:
    """``{seed: entries}``: each replicate is the plain study of its parent (:func:`plain.expand`)."""
    out = {}
    for s in spec.seeds:
        sub = plain.StudySpec(name=spec.name, data=spec.data, val_fraction=spec.val_fraction, seed=s,
                              parent=spec.parent, recipe=spec.recipe, children=spec.children, split=spec.split,
                              latency=False, controls=plain.Controls(seeds=[OTHER_SEED + s],
                                                                     student_from_scratch=spec.student_from_scratch))
        entries = plain.expand(sub, data_seed=spec.data_seed)
        for e in entries:
            if e.method == "independent":
                e.name = "independent"
            e.info["seed"] = s
        parent = entries[0].step
        for control in dict.fromkeys(spec.retrain_controls):
            init, order = (s, OTHER_SEED + s) if control == "siddo" else (OTHER_SEED + s, s)
            step = Step("train", {**parent.spec, "seed": init, "data_seed": order}, label=control)
            entries.append(Entry(control, "control", control, step, {"seed": s}))
        out[s] = entries
    return out


def expand(spec: CompressionFunctionalSpec) -> list[Entry]:
    """Every replicate's entries, renamed ``<model>@s<seed>`` (``info``: the model's own name)."""
    return [Entry(f"{e.name}@s{s}", e.role, e.method, e.step, {**e.info, "model": e.name})
            for s, entries in replicates(spec).items() for e in entries]


def measure(spec: CompressionFunctionalSpec, store: RunStore, reps: dict[int, list], progress=None) -> list[dict]:
    """One row per (model, replicate): accuracy, cost, every metric against that replicate's parent."""
    children = {c.name: c for c in spec.children}
    rows = []
    first = spec.seeds[0]
    with progress.task("measure: function metrics, CKA, latency") if progress else nullcontext(), \
            Scratch() as cache:
        for seed, entries in reps.items():
            data = data_of(entries[0].step.spec)
            x, y = data.split(spec.split)
            if len(x) < 4:
                raise UserError(f"the {spec.split} split has {len(x)} examples; the metrics need more "
                                "(use split: test or a larger val_fraction)")
            parent_dir = store.path(entries[0].step)
            parent_logits = np.load(parent_dir / f"logits_{spec.split}.npy")
            parent_model = load_model(parent_dir)
            # the parent's activations, computed once per replicate, kept as RAM-backed memmaps
            parent_features = cache_features(parent_model, x, spec.cka_points, cache, prefix=f"parent-s{seed}") \
                if spec.cka_points is not None or feature_points(parent_model) else None  # None: no CKA
            parent_bits = read_json(parent_dir / "metrics.json")["cost"]["nonzero_bytes"]
            scratch = {canonical_json(e.step.spec["model"]): e.name for e in entries if e.method == "scratch"}
            for e in entries:
                d = store.path(e.step)
                metrics = read_json(d / "metrics.json")
                cost = dict(metrics["cost"])
                model = load_model(d)
                if spec.latency and seed == first:
                    cost["latency_ms"] = latency(model, data.input_shape)
                fam = "parent" if e.role == "parent" else family(e, children)
                row = {"name": e.name, "family": fam, "seed": seed, "step": d.name,
                       "accuracy": metrics["accuracy"][spec.split], "cost": cost,
                       "compression_ratio": parent_bits / max(1, cost["nonzero_bytes"]),
                       "function": compare_logits(parent_logits, logits := np.load(d / f"logits_{spec.split}.npy"),
                                                   y if data.token_level else None)}
                if e.role != "parent":
                    row["by_correctness"] = split_by_correctness(parent_logits, logits, y.cpu().numpy())
                if e.method == "distill" and spec.student_from_scratch:
                    row["scratch_control"] = scratch[canonical_json(e.step.spec["student"])]
                if "sparsity" in metrics:
                    row["sparsity"] = metrics["sparsity"]["global"]
                if "quantization" in metrics:
                    row["quantization"] = metrics["quantization"]
                if e.role != "parent":
                    row["cka_points"] = {} if parent_features is None else \
                        _cka(parent_features, model, x, spec.cka_points)
                    vals = [v for v in row["cka_points"].values() if v is not None]
                    row["function"]["cka"] = float(np.mean(vals)) if vals else None
                rows.append(row)
    return rows


def _cka(parent_features: dict, model, x, points) -> dict[str, float | None]:
    """Unbiased linear CKA against the parent's cached activations per shared feature point;
    empty when the model exposes none (a torch int8 graph), None where a point's CKA is undefined."""
    try:
        res = cka_against_cached(parent_features, model, x, points=points)
    except UserError:
        if points is not None:
            raise
        return {}
    except (RuntimeError, NotImplementedError):  # quantised tensors at a feature point
        return {}
    return {k: v["unbiased"] for k, v in res.items()}


def analyse(spec: CompressionFunctionalSpec, rows: list[dict]) -> dict:
    """Per-model summaries over replicates, the tests against the independent baseline,
    and one headline per family."""
    names = list(dict.fromkeys(r["name"] for r in rows))
    by_name = {n: [r for r in rows if r["name"] == n] for n in names}

    undefined: dict[str, int] = {}

    def vals(group, metric):
        """The defined values (a metric can be undefined, e.g. kappa when both models predict one class)."""
        out = []
        for r in group:
            v = r["accuracy"] if metric == "accuracy" else r["function"].get(metric)
            if v is not None and math.isfinite(v):
                out.append(v)
            elif v is not None:
                undefined[metric] = undefined.get(metric, 0) + 1
        return out

    summaries = {}
    for n, group in by_name.items():
        summ = {"family": group[0]["family"], "n": len(group),
                "compression_ratio": float(np.mean([r["compression_ratio"] for r in group])),
                "cost": next((r["cost"] for r in group if "latency_ms" in r["cost"]), group[0]["cost"])}
        for metric in ("accuracy", *METRICS):
            v = vals(group, metric)
            summ[metric] = stats.summarize(v, seed=spec.seeds[0]) if v and (metric == "accuracy" or n != "parent") \
                else None
        summaries[n] = summ

    notes = [f"{metric}: {n} undefined (NaN) values left out" for metric, n in undefined.items()]
    if not any(r.get("cka_points") for r in rows):
        notes.append("CKA not measured: the parent exposes no feature points (name some with cka_points)")
    comparisons = []
    for n, group in by_name.items():
        if n == "parent" or group[0]["family"] in ("independent", "siddo", "disdo"):
            continue
        # every model against the independent retrain; a KD student also against its
        # architecture trained from scratch (the paper's control for distillation)
        for control in ("independent", group[0].get("scratch_control")):
            if control is None:
                continue
            for metric in spec.metrics:
                a, b = vals(group, metric), vals(by_name[control], metric)
                if len(a) < 2 or len(b) < 2:
                    notes.append(f"{metric}: {n} vs {control} not tested (fewer than 2 defined values)")
                    continue
                comparisons.append({"a": a, "b": b, "higher_is_better": METRICS[metric], "metric": metric,
                                    "label_a": n, "label_b": control, "family": group[0]["family"],
                                    "claim": "closer to the parent", "noun": "models", "unit": "replicates"})
    tests = stats.compare_many(comparisons, alpha=spec.alpha, design_note=False) if comparisons else []
    if tests and stats.permutation_floor(tests) >= spec.alpha:
        notes.append(f"With {len(spec.seeds)} replicates and {len(tests)} tests the exact permutation test cannot "
                     f"reach p<{spec.alpha:g} after Holm (smallest reachable: {stats.permutation_floor(tests):.2g}); "
                     "significance rests on Welch's test. More seeds let the permutation test confirm it.")
    inherited = inheritance(spec, by_name, notes)
    return {"summaries": summaries, "tests": tests, "notes": notes, **inherited,
            "headline": headline(tests, spec.metrics) + [a["verdict_line"] for a in inherited["asymmetry"].values()]}


def inheritance(spec: CompressionFunctionalSpec, by_name: dict[str, list[dict]], notes: list[str]) -> dict:
    """Per model: agreement with its parent on the examples the parent gets right and wrong
    (mean and CI over replicates), and the asymmetry of that transfer against the retrain
    control (``siddo`` if run, else ``independent``), paired by replicate, Holm across models."""
    keys = ("agree_right", "agree_wrong", "other_wrong_given_wrong", "same_error_given_both_wrong")
    correctness = {}
    for n, group in by_name.items():
        if n != "parent":
            correctness[n] = {k: stats.summarize(v, seed=spec.seeds[0]) if (v := [
                r["by_correctness"][k] for r in group if r["by_correctness"][k] is not None]) else None for k in keys}
    control = "siddo" if "siddo" in by_name else "independent"
    ctrl = {r["seed"]: r["by_correctness"] for r in by_name.get(control, [])}
    pairs = {n: [(r["by_correctness"], ctrl[r["seed"]]) for r in group if r["seed"] in ctrl]
             for n, group in by_name.items() if n != "parent" and group[0]["family"] not in CONTROLS}
    found, more = asymmetry_family(pairs, control=control, alpha=spec.alpha, seed=spec.seeds[0], unit="replicates")
    notes += more
    return {"correctness": correctness, "control": control, "asymmetry": found}


def headline(tests: list[dict], metrics: list[str]) -> list[str]:
    """Per family and control: how many of its models are significantly closer to the
    parent than the control, on each tested metric."""
    lines = []
    for fam, control in dict.fromkeys((t["family"], "scratch" if t["label_b"] != "independent" else "independent")
                                      for t in tests):
        ts = [t for t in tests if t["family"] == fam and (t["label_b"] == "independent") == (control == "independent")]
        parts = []
        for m in metrics:
            sig = [t for t in ts if t["metric"] == m]
            if sig:
                parts.append(f"{m} {sum(t['significant'] for t in sig)}/{len(sig)}")
        what = "an independent retrain" if control == "independent" else "the same architecture trained from scratch"
        lines.append(f"{fam}: models significantly closer to the parent than {what}: {', '.join(parts)}")
    return lines


def collect(spec: CompressionFunctionalSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    reps: dict[int, list[Entry]] = {}
    for e in entries:
        reps.setdefault(e.info["seed"], []).append(Entry(e.info["model"], e.role, e.method, e.step, e.info))
    rows = measure(spec, store, reps, progress)
    return {"split": spec.split, "models": rows, **analyse(spec, rows)}


def write_report(results: dict, path: Path) -> Path:
    """``report.html``, and ``fidelity.png`` beside it."""
    return write_cf_report(results, path)


def print_results(results: dict, out: Path) -> None:
    n = len(results["spec"]["seeds"])
    t = table(f"study {results['study']}: every model against its parent, {results['split']} split, "
              f"mean [95% CI] over {n} replicates",
              ["model", "family", "ratio", "BOPs", "ms@256", "acc %", "agree %", "JS", "CKA", "agree vs indep."],
              left=2)
    sig = {}
    for test in results["tests"]:
        if test["metric"] == "agreement" and test["label_b"] == "independent":
            sig[test["label_a"]] = "closer" if test["significant"] else ("farther" if test["diff"] < 0 else "n.s.")

    def cell(s, pct=False, d=3):
        if not s:
            return "–"
        k, d = (100, 1) if pct else (1, d)
        return f"{k * s['mean']:.{d}f} [{k * s['ci_low']:.{d}f},{k * s['ci_high']:.{d}f}]"

    for name, s in results["summaries"].items():
        lat = (s["cost"].get("latency_ms") or {}).get("batch256")
        t.add_row(name, s["family"], f"{s['compression_ratio']:.1f}", short(s["cost"]["bops"]),
                  "–" if lat is None else f"{lat:.2f}", cell(s["accuracy"], True), cell(s["agreement"], True),
                  cell(s["js_divergence"], d=4), cell(s["cka"], d=2), sig.get(name, ""))
    console(200).print(t)
    echo(*results["headline"], f"plot: {out / 'fidelity.png'}", f"report: {out / 'report.html'}",
         f"results: {out / 'results.json'}")


register_study_kind("compression-functional", spec=CompressionFunctionalSpec, expand=expand, collect=collect,
                    report=write_report, print=print_results, check=_check)
