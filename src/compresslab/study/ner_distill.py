"""The ``ner-distill`` study: a small NER tagger against its teacher on a synthetic corpus.

After Atuhurra et al. 2024, where GPT-4 wrote and labelled sentences about endangered
species and BERT taggers fine-tuned on the verified set. Here the corpus is the offline
template corpus (``ner-synthetic?sentences=N&seed=S``: the generator's spans are the gold,
:mod:`compresslab.data.ner_synth`), so the study runs anywhere. A teacher tagger (a bigger
``bert``) is trained on the gold set per seed; for each seed a student (a smaller ``bert``)
is fine-tuned on the gold tags alone (CE) and another distilled from that seed's teacher
((1-α)·CE + α·KD per token, T = ``temperature``).

Collected, from the store's cached test logits ``(N, L, C)`` and the dataset's labels
(positions labelled -100 never count):

* entity-level precision, recall and F1 (exact spans, seqeval's default mode) micro,
  macro and per type, as mean and 95% bootstrap CI over seeds;
* token accuracy, and each student's per-token agreement with its teacher;
* params and MACs at the data's sequence length (from ``metrics.json``), and latency
  (ms per forward at batch 1 and 64 on one CPU thread, measured side by side at collect time);
* Welch's t-tests on micro F1: each student against the teacher (two-sided) and KD against
  CE (one-sided, KD greater).
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from compresslab.console import console, echo, table
from compresslab.data.core import IGNORE_INDEX
from compresslab.errors import UserError
from compresslab.measure import latency
from compresslab.measure.entities import entity_scores
from compresslab.measure.function import agreement
from compresslab.measure.stats import summarize, welch_t
from compresslab.report.ner import write_ner_report
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps.common import dataset, load_model
from compresslab.steps.specs import data_spec, distill_spec, train_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions
from compresslab.train.recipe import Recipe, Seed

ROLES = ("teacher", "student-ce", "student-kd")
LATENCY_BATCHES = (1, 64)
LATENCY_THREADS = 1


class NerDistillSpec(RunOptions):
    """A teacher-vs-student NER study (``kind: ner-distill``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ner-distill"]
    name: str = "ner-distill"
    data: str = Field("ner-synthetic?sentences=1800&seed=0", description="token-level text data (BIO tags)")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    teacher: ModelSpec
    student: ModelSpec
    recipe: Recipe = Field(default_factory=Recipe, description="the teacher's (and the students', unless given)")
    student_recipe: Recipe | None = None
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; CE gets 1 - alpha")
    temperature: float = Field(4.0, gt=0)
    latency: bool = True


def expand(spec: NerDistillSpec) -> list[Entry]:
    data = data_spec(spec.data, spec.val_fraction, spec.seeds[0])
    t_recipe = spec.recipe.model_dump()
    s_recipe = (spec.student_recipe or spec.recipe).model_dump()
    student = spec.student.model_dump()
    entries = []
    for seed in spec.seeds:
        teacher = Step("train", train_spec(data, spec.teacher.model_dump(), t_recipe, seed), label=f"teacher-s{seed}")
        entries.append(Entry(f"teacher-s{seed}", "parent", "train", teacher, {"role": "teacher", "seed": seed}))
    for seed in spec.seeds:
        ce = Step("train", train_spec(data, student, s_recipe, seed), label=f"student-ce-s{seed}")
        entries.append(Entry(f"student-ce-s{seed}", "control", "train", ce, {"role": "student-ce", "seed": seed}))
        teacher = next(e.step for e in entries if e.info == {"role": "teacher", "seed": seed})
        kd = Step("distill", distill_spec(data, student, s_recipe, seed, temperature=spec.temperature,
                                          loss={"kd": spec.alpha, "ce": 1 - spec.alpha}),
                  parents={"teacher": teacher}, label=f"student-kd-s{seed}")
        entries.append(Entry(f"student-kd-s{seed}", "child", "distill", kd, {"role": "student-kd", "seed": seed}))
    return entries


def _check(spec: NerDistillSpec, source: str) -> None:
    data = dataset(spec.data, spec.val_fraction, spec.seeds[0])
    text = data.text or {}
    if text.get("level") != "token" or "O" not in (text.get("labels") or []):
        raise UserError(f"{source}: data {spec.data!r} is not BIO-tagged token-level text; use ner-synthetic?... "
                        "or conll:DIR (e.g. the gold/ of `compresslab ner verify`)")


def tag_sequences(ids: np.ndarray, labels: np.ndarray, names: list[str]) -> list[list[str]]:
    """Per sentence, the tag names of ``ids`` ``(N, L)`` at the scored positions (label != -100)."""
    return [[names[int(t)] for t in row[keep]] for row, keep in zip(ids, labels != IGNORE_INDEX)]


def score_logits(logits: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """Entity scores, and token accuracy over scored positions, of token logits ``(N, L, C)``."""
    pred = logits.argmax(-1)
    scores = entity_scores(tag_sequences(labels, labels, names), tag_sequences(pred, labels, names))
    keep = labels != IGNORE_INDEX
    scores["token_accuracy"] = float((pred[keep] == labels[keep]).mean()) if keep.any() else 0.0
    return scores


def _latency(path: Path, input_shape) -> dict:
    """ms per forward at :data:`LATENCY_BATCHES`, on one CPU thread (a tiny model's time on a
    shared machine is otherwise dominated by threads waiting for each other)."""
    model = load_model(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        return latency(model, input_shape, batch_sizes=LATENCY_BATCHES, min_time=0.1)
    finally:
        torch.set_num_threads(threads)


def collect(spec: NerDistillSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    data = dataset(spec.data, spec.val_fraction, spec.seeds[0])
    names = list(data.text["labels"])
    y = data.y_test.cpu().numpy()
    logits = {e.name: np.load(store.path(e.step) / "logits_test.npy") for e in entries}
    teacher_of = {e.info["seed"]: e.name for e in entries if e.info["role"] == "teacher"}
    models = []
    for e in entries:
        s = score_logits(logits[e.name], y, names)
        t = teacher_of.get(e.info["seed"])
        agree = None
        if e.info["role"] != "teacher" and t in logits:
            agree = agreement(torch.from_numpy(logits[e.name]), torch.from_numpy(logits[t]), labels=torch.from_numpy(y))
        cost = read_json(store.path(e.step) / "metrics.json")["cost"]
        models.append({"name": e.name, "role": e.info["role"], "seed": e.info["seed"], "micro": s["micro"],
                       "macro": s["macro"], "per_type": {k: v["f1"] for k, v in s["per_type"].items()},
                       "token_accuracy": s["token_accuracy"], "agreement": agree, "params": cost["params"],
                       "macs": cost.get("macs")})
    lat: dict[str, dict] = {}
    if spec.latency:
        with progress.task("measure: latency") if progress else nullcontext():
            for role in ROLES:  # one model per role, side by side in this process
                e = next((e for e in entries if e.info["role"] == role), None)
                if e is not None:
                    lat[role] = _latency(store.path(e.step), data.input_shape)
    roles = []
    types = sorted({t for m in models for t in m["per_type"]})
    for role in ROLES:
        ms = [m for m in models if m["role"] == role]
        if not ms:
            continue
        agree = [m["agreement"] for m in ms if m["agreement"] is not None]
        roles.append({
            "role": role, "model": (spec.teacher if role == "teacher" else spec.student).model_dump(),
            "params": ms[0]["params"], "macs": ms[0]["macs"], "latency_ms": lat.get(role),
            **{k: summarize([m["micro"][k] for m in ms]) for k in ("precision", "recall", "f1")},
            "macro_f1": summarize([m["macro"]["f1"] for m in ms]),
            "per_type": {t: summarize([m["per_type"].get(t, 0.0) for m in ms]) for t in types},
            "token_accuracy": summarize([m["token_accuracy"] for m in ms]),
            "agreement": summarize(agree) if agree else None})
    tests = []
    f1 = {r["role"]: r["f1"]["values"] for r in roles}
    if len(spec.seeds) >= 2:
        for a, b, alt in (("student-ce", "teacher", "two-sided"), ("student-kd", "teacher", "two-sided"),
                          ("student-kd", "student-ce", "greater")):
            if a in f1 and b in f1:
                w = welch_t(f1[a], f1[b], alt)
                tests.append({"a": a, "b": b, "alternative": alt, "diff": float(np.mean(f1[a]) - np.mean(f1[b])),
                              "t": w["t"], "p": w["p"], "significant": w["p"] < 0.05})
    seq_len = data.text.get("max_len")
    return {"labels": names, "types": types, "sequence_length": seq_len, "alpha": spec.alpha,
            "temperature": spec.temperature, "latency_threads": LATENCY_THREADS, "roles": roles, "models": models, "tests": tests,
            "claims": claims(roles, tests)}


def claims(roles: list[dict], tests: list[dict]) -> list[str]:
    """One line per finding, from the measured numbers."""
    by = {r["role"]: r for r in roles}
    out = []
    t = by.get("teacher")
    for role in ("student-ce", "student-kd"):
        s = by.get(role)
        if not (t and s):
            continue
        speed = ""
        if t.get("latency_ms") and s.get("latency_ms"):
            speed = f", {t['latency_ms']['batch1'] / s['latency_ms']['batch1']:.1f}× faster at batch 1"
        test = next((x for x in tests if x["a"] == role and x["b"] == "teacher"), None)
        p = f" (Welch p = {test['p']:.3g})" if test else ""
        agree = f"; agrees with its teacher on {100 * s['agreement']['mean']:.1f}% of tokens" if s["agreement"] else ""
        out.append(f"{role} ({t['params'] / s['params']:.1f}× fewer params{speed}): entity F1 "
                   f"{100 * s['f1']['mean']:.2f}% against the teacher's {100 * t['f1']['mean']:.2f}%{p}{agree}")
    kd = next((x for x in tests if x["a"] == "student-kd" and x["b"] == "student-ce"), None)
    if kd:
        out.append(f"KD against CE alone: {100 * kd['diff']:+.2f} F1 points (Welch, one-sided, p = {kd['p']:.3g}; "
                   f"{'significant' if kd['significant'] else 'not significant'} at 0.05)")
    return out


def print_results(results: dict, out: Path) -> None:
    t = table(f"study {results['study']}: entity F1 (%) mean [95% CI] over seeds",
              ["model", "params", "MACs", "ms (batch 1)", "micro F1", "macro F1", "token acc %", "agree %"])
    for r in results["roles"]:
        f = r["f1"]
        lat = (r.get("latency_ms") or {}).get("batch1")
        t.add_row(r["role"], f"{r['params']:,}", f"{r['macs']:,}" if r["macs"] else "–",
                  f"{lat:.2f}" if lat else "–", f"{100 * f['mean']:.2f} [{100 * f['ci_low']:.2f}, {100 * f['ci_high']:.2f}]",
                  f"{100 * r['macro_f1']['mean']:.2f}", f"{100 * r['token_accuracy']['mean']:.2f}",
                  f"{100 * r['agreement']['mean']:.1f}" if r["agreement"] else "–")
    console().print(t)
    echo(*results["claims"], f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


register_study_kind("ner-distill", spec=NerDistillSpec, expand=expand, collect=collect, report=write_ner_report,
                    print=print_results, check=_check)
