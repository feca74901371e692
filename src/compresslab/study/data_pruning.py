"""The ``data-pruning`` study: data pruning with knowledge distillation (Ben-Baruch et al. 2024).

Teachers are trained on the full training split (``teachers``: a capacity sweep, e.g. one
smaller and one larger than the student). Each score method (random, EL2N, GraNd,
forgetting) scores the training split once (a ``data-scores`` step that serves every keep
fraction). For each (method, keep fraction f, α, seed) a student is trained on the kept
subset with (1-α)·CE + α·KD from the main ``teacher`` (``subset-train`` steps; α = 0: CE
alone). At the ``sweep_fractions`` every other teacher distils too, for the teacher-size
effect. Collected: test accuracy mean ± 95% bootstrap CI per cell, the best α per (method, f),
KD (best α > 0) against no KD per (method, f) with Welch's t-test and Holm's correction,
and each student's agreement with its teacher (from the cached ``logits_test.npy``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator

from compresslab.compress.data_pruning import METHODS
from compresslab.console import console, echo, table
from compresslab.measure.function import agreement
from compresslab.measure.stats import holm, summarize, welch_t
from compresslab.report.data_pruning import write_data_pruning_report
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps.specs import data_scores_spec, data_spec, subset_train_spec, train_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions
from compresslab.train.recipe import Recipe, Seed


class DataPruningSpec(RunOptions):
    """A data-pruning-with-KD study (``kind: data-pruning``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["data-pruning"]
    name: str = "data-pruning"
    data: str = "digits"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    student: ModelSpec
    teachers: dict[str, ModelSpec] = Field(min_length=1, description="teachers trained on the full data, by name")
    teacher: str | None = Field(None, description="the teacher of the main grid (default: the first)")
    recipe: Recipe = Field(default_factory=Recipe, description="teachers, scoring networks and students alike")
    methods: list[str] = Field(default_factory=lambda: list(METHODS), min_length=1)
    fractions: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5, 0.7, 1.0], min_length=1)
    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.5, 0.9], min_length=1)
    sweep_fractions: list[float] = Field(default_factory=list, description="fractions where every teacher distils")
    temperature: float = Field(4.0, gt=0)
    keep: Literal["hardest", "easiest"] = "hardest"
    score_model: ModelSpec | None = Field(None, description="the scoring networks (default: the student)")
    score_seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    score_epochs: int | None = Field(None, ge=1, description="el2n/grand: epochs before scoring (default: 1/10)")

    @field_validator("fractions", "sweep_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not 0 < f <= 1]
        if bad:
            raise ValueError(f"keep fraction {bad[0]}: must be in (0, 1], e.g. 0.3")
        return v

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        bad = [a for a in v if not 0 <= a <= 1]
        if bad:
            raise ValueError(f"alpha {bad[0]}: must be in [0, 1] (0 = cross-entropy only)")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in METHODS]
        if bad:
            raise ValueError(f"unknown score method {bad[0]!r}; use one of {', '.join(METHODS)}")
        return v

    @model_validator(mode="after")
    def _teacher(self) -> DataPruningSpec:
        if self.teacher is not None and self.teacher not in self.teachers:
            raise ValueError(f"teacher {self.teacher!r} is not one of the teachers: {', '.join(self.teachers)}")
        return self

    @property
    def main_teacher(self) -> str:
        return self.teacher or next(iter(self.teachers))


def expand(spec: DataPruningSpec) -> list[Entry]:
    data = data_spec(spec.data, spec.val_fraction, spec.seeds[0])
    recipe = spec.recipe.model_dump()
    teachers = {}
    entries = []
    for tname, model in spec.teachers.items():
        teachers[tname] = Step("train", train_spec(data, model.model_dump(), recipe, spec.seeds[0]),
                               label=f"teacher-{tname}")
        entries.append(Entry(f"teacher-{tname}", "parent", "train", teachers[tname], {"teacher": tname}))
    score_model = (spec.score_model or spec.student).model_dump()
    for method in spec.methods:
        s = Step("data-scores", data_scores_spec(data, method, spec.score_seeds, model=score_model, recipe=recipe,
                                                 score_epochs=spec.score_epochs), label=f"scores-{method}")
        entries.append(Entry(f"scores-{method}", "control", "data-scores", s, {"method": method}))
        scores = s
        cells = [(f, a, spec.main_teacher) for f in spec.fractions for a in spec.alphas]
        cells += [(f, a, t) for f in spec.sweep_fractions for a in spec.alphas if a > 0 for t in spec.teachers
                  if t != spec.main_teacher]
        for f, a, t in cells:
            for seed in spec.seeds:
                st = subset_train_spec(data, spec.student.model_dump(), recipe, seed, keep_fraction=f, alpha=a,
                                       temperature=spec.temperature, keep=spec.keep)
                parents = {"scores": scores, **({"teacher": teachers[t]} if a > 0 else {})}
                name = f"{method}-f{f:g}-a{a:g}-{t if a > 0 else 'ce'}-s{seed}"
                entries.append(Entry(name, "child", "subset-train", Step("subset-train", st, parents=parents,
                                                                          label=name),
                                     {"method": method, "f": f, "alpha": a, "teacher": t if a > 0 else None,
                                      "seed": seed}))
    return list({e.name: e for e in entries}.values())


def _acc(store: RunStore, step: Step) -> float:
    return read_json(store.path(step) / "metrics.json")["accuracy"]["test"]


def collect(spec: DataPruningSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    teachers = {e.info["teacher"]: e for e in entries if e.role == "parent"}
    t_logits = {t: np.load(store.path(e.step) / "logits_test.npy") for t, e in teachers.items()}
    main = spec.main_teacher
    cells: dict[tuple, dict] = {}
    for e in entries:
        if e.role != "child":
            continue
        i = e.info
        key = (i["method"], i["f"], i["alpha"], i["teacher"] or main)
        c = cells.setdefault(key, {"method": i["method"], "f": i["f"], "alpha": i["alpha"],
                                   "teacher": i["teacher"], "acc": [], "agreement": []})
        c["acc"].append(_acc(store, e.step))
        logits = np.load(store.path(e.step) / "logits_test.npy")
        c["agreement"].append(agreement(logits, t_logits[i["teacher"] or main]))
    rows = []
    for c in cells.values():
        rows.append({**{k: c[k] for k in ("method", "f", "alpha", "teacher")},
                     "accuracy": summarize(c["acc"]), "agreement": summarize(c["agreement"])})
    grid = [r for r in rows if r["teacher"] in (None, main)]
    best, tests = [], []
    for m in spec.methods:
        for f in spec.fractions:
            here = [r for r in grid if r["method"] == m and r["f"] == f]
            top = max(here, key=lambda r: r["accuracy"]["mean"])
            best.append({"method": m, "f": f, "alpha": top["alpha"], "accuracy": top["accuracy"]})
            ce = next((r for r in here if r["alpha"] == 0), None)
            kd = max((r for r in here if r["alpha"] > 0), key=lambda r: r["accuracy"]["mean"], default=None)
            if ce and kd and len(spec.seeds) >= 2:
                p = welch_t(kd["accuracy"]["values"], ce["accuracy"]["values"], "greater")["p"]
                tests.append({"method": m, "f": f, "alpha": kd["alpha"],
                              "diff": kd["accuracy"]["mean"] - ce["accuracy"]["mean"], "p": p})
    for t, p in zip(tests, holm([t["p"] for t in tests])):
        t["p_holm"] = p
        t["significant"] = p is not None and p < 0.05
    teacher_rows = [{"teacher": t, "params": read_json(store.path(e.step) / "metrics.json")["cost"]["params"],
                     "accuracy": _acc(store, e.step)} for t, e in teachers.items()]
    sweep = [r for r in rows if r["f"] in spec.sweep_fractions and r["alpha"] > 0]
    return {"main_teacher": main, "teachers": teacher_rows, "cells": rows, "best_alpha": best,
            "kd_vs_ce": tests, "teacher_sweep": sweep, "claims": claims(spec, best, tests, grid)}


def claims(spec, best, tests, grid) -> list[str]:
    """One line per claim of the paper, from the measured numbers."""
    out = []
    if tests:
        sig = sum(t["significant"] for t in tests)
        pos = sum(t["diff"] > 0 for t in tests)
        out.append(f"KD improves every method at every fraction: {pos}/{len(tests)} cells higher with KD, "
                   f"{sig}/{len(tests)} significant after Holm (Welch, one-sided, p < 0.05)")
    small = min(spec.fractions)
    if "random" in spec.methods and len(spec.methods) > 1:
        kd: dict[str, float] = {}
        for r in grid:
            if r["f"] == small and r["alpha"] > 0:
                kd[r["method"]] = max(kd.get(r["method"], 0.0), r["accuracy"]["mean"])
        if kd:
            others = max(v for m, v in kd.items() if m != "random")
            out.append(f"with KD random pruning is as good as the scores: at f = {small:g}, random "
                       f"{100 * kd['random']:.2f}% against the best score {100 * others:.2f}% (best α > 0 each)")
    if len(spec.fractions) > 1 and len(spec.alphas) > 1:
        pairs = sorted((b["f"], b["alpha"]) for b in best)
        out.append("best α per f (f ascending, all methods): " + ", ".join(f"{f:g}→{a:g}" for f, a in pairs))
    return out


def print_results(results: dict, out: Path) -> None:
    t = table(f"study {results['study']}: test accuracy (%) mean [95% CI]", ["method", "f", "α", "teacher",
                                                                               "accuracy", "agree %"])
    for r in results["cells"]:
        a = r["accuracy"]
        t.add_row(r["method"], f"{r['f']:g}", f"{r['alpha']:g}", r["teacher"] or "–",
                  f"{100 * a['mean']:.2f} [{100 * a['ci_low']:.2f}, {100 * a['ci_high']:.2f}]",
                  f"{100 * r['agreement']['mean']:.1f}")
    console().print(t)
    echo(*results["claims"], f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


register_study_kind("data-pruning", spec=DataPruningSpec, expand=expand, collect=collect,
                    report=write_data_pruning_report, print=print_results)
