"""Dataset-distillation study: do a few learned images per class train better than real ones?

For each method (``dm``, ``dc``, ``random``, ``herding``) and images-per-class value the
study makes a ``distill-data`` step, then trains fresh networks on the set over several seeds
(``train-distilled`` steps, whose data is the distill step as a parent role, so their hashes
do not depend on where the run store sits) and tests them on the source's test split. It
reports test accuracy mean and 95% bootstrap CI per method x ipc
(:func:`compresslab.measure.stats.summarize`), a one-sided Welch test of each method against
``random`` at the same ipc, and the synthetic images.

Sets: ``random`` draws a new subset for each evaluation seed (its CI covers the choice of
images, as the papers' random baseline does); the other methods make one set per entry of
``distill_seeds`` and evaluation seed ``s`` trains on set ``distill_seeds[s % len]``.

Anchor: Zhao, Mopuri & Bilen (ICLR 2021, Table 1) report on MNIST (60k images) 91.7 / 97.4%
for DC at 1 / 10 images per class against 64.9 / 95.1% for random real subsets and
89.2 / 93.7% for herding; Zhao & Bilen (WACV 2023) report 89.7 / 97.5% for DM.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator

from compresslab.console import console, echo, table
from compresslab.measure.stats import summarize, welch_t
from compresslab.report.dataset_distillation import image_grid, write_dataset_distillation_report
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps.specs import data_spec, distill_data_spec, train_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions, Strict
from compresslab.train.recipe import Recipe, Seed

#: Test accuracy (%) the papers report on full MNIST, by method and ipc.
PAPER_MNIST = {"dc": {1: 91.7, 10: 97.4}, "dm": {1: 89.7, 10: 97.5}, "random": {1: 64.9, 10: 95.1},
               "herding": {1: 89.2, 10: 93.7}}


def _eval_recipe() -> Recipe:
    """The authors' evaluation training (SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256, lr x0.1
    at half), with fewer epochs (they train 300, 1000 with augmentation)."""
    return Recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="multistep",
                  milestones=[0.5], gamma=0.1, epochs=300, batch_size=256)


class MethodSpec(Strict):
    """One method and, for ``dm`` / ``dc`` / ``herding``, its settings (absent: the defaults)."""

    method: Literal["dm", "dc", "random", "herding"]
    ipcs: list[int] | None = Field(None, description="default: the study's ipcs")
    init: Literal["real", "noise"] | None = None
    iterations: int | None = Field(None, ge=1)
    lr_img: float | None = Field(None, gt=0)
    batch_real: int | None = Field(None, ge=1)
    dsa: bool | None = None
    herding_epochs: int | None = Field(None, ge=0)


class DatasetDistillationSpec(RunOptions):
    """Methods x images per class, each set evaluated by fresh networks over seeds."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dataset-distillation"]
    name: str = "dataset-distillation"
    data: str = "digits"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: Seed = Field(0, description="data seed (train/val split)")
    ipcs: list[int] = Field(default_factory=lambda: [1, 10], min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name="convnet", options={"width": 32}),
                             description="the network distillation matches with (and herding embeds with)")
    eval_model: ModelSpec | None = Field(None, description="default: model")
    recipe: Recipe = Field(default_factory=_eval_recipe, description="training on each set")
    eval_seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    distill_seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("ipcs")
    @classmethod
    def _ipcs(cls, v: list[int]) -> list[int]:
        if any(i < 1 for i in v):
            raise ValueError("each ipc must be at least 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _unique(self) -> DatasetDistillationSpec:
        names = [m.method for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError("each method may appear once in methods")
        if len(set(self.eval_seeds)) != len(self.eval_seeds):
            raise ValueError("eval_seeds must be distinct")
        return self


def _ipcs(spec: DatasetDistillationSpec, m: MethodSpec) -> list[int]:
    return sorted(set(m.ipcs)) if m.ipcs else spec.ipcs


def expand(spec: DatasetDistillationSpec) -> list[Entry]:
    """A ``distill-data`` step per method x ipc x set seed, then a ``train-distilled`` step per
    evaluation seed on it."""
    data = data_spec(spec.data, spec.val_fraction, spec.seed)
    model = spec.model.model_dump()
    eval_model = (spec.eval_model or spec.model).model_dump()
    recipe = spec.recipe.model_dump()
    sets, evals = [], []
    for m in spec.methods:
        settings = m.model_dump(exclude={"method", "ipcs"}, exclude_none=True)
        for ipc in _ipcs(spec, m):
            made: dict[int, Step] = {}
            for s in spec.eval_seeds:
                set_seed = s if m.method == "random" else spec.distill_seeds[s % len(spec.distill_seeds)]
                if set_seed not in made:
                    name = f"{m.method}-ipc{ipc}-set{set_seed}"
                    made[set_seed] = Step("distill-data", distill_data_spec(data, method=m.method, ipc=ipc,
                                                                            seed=set_seed, model=model, **settings),
                                          label=name)
                    sets.append(Entry(name, "parent", "distill-data", made[set_seed],
                                      {"method": m.method, "ipc": ipc, "set_seed": set_seed}))
                name = f"{m.method}-ipc{ipc}-eval{s}"
                step = Step("train-distilled", train_spec(data, eval_model, recipe, s),
                            parents={"distilled": made[set_seed]}, label=name)
                evals.append(Entry(name, "child", "train-distilled", step,
                                   {"method": m.method, "ipc": ipc, "seed": s, "set": f"{m.method}-ipc{ipc}-set{set_seed}"}))
    return sets + evals


def _test_p(a: list[float], b: list[float]) -> dict | None:
    if len(a) < 2 or len(b) < 2:
        return None
    return welch_t(a, b, alternative="greater")


def collect(spec: DatasetDistillationSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    """Per method x ipc: the test accuracies, their summary, the set's cost; Welch tests against
    ``random``; an image grid of each method's first set per ipc."""
    sets = {e.name: e for e in entries if e.role == "parent"}
    rows = []
    for m in spec.methods:
        for ipc in _ipcs(spec, m):
            evals = [e for e in entries if e.role == "child" and e.info["method"] == m.method and e.info["ipc"] == ipc]
            acc = [read_json(store.path(e.step) / "metrics.json")["accuracy"]["test"] for e in evals]
            used = list(dict.fromkeys(e.info["set"] for e in evals))
            infos = [read_json(store.path(sets[n].step) / "distilled.json") for n in used]
            first = np.load(store.path(sets[used[0]].step) / "distilled.npz")["x"]
            rows.append({
                "method": m.method, "ipc": ipc, "accuracy": acc, "summary": summarize(acc),
                "sets": len(used), "distill_seconds": float(np.mean([i["seconds"] for i in infos])),
                "train_points_seen": int(np.mean([i["train_points_seen"] for i in infos])),
                "final_loss": infos[0].get("final_loss"), "steps": [store.path(sets[n].step).name for n in used],
                "grid": image_grid(first, ipc), "image_shape": list(first.shape[1:]),
                "classes": len(first) // ipc,
                "paper": PAPER_MNIST.get(m.method, {}).get(ipc),
            })
    tests = []
    for ipc in spec.ipcs:
        base = next((r for r in rows if r["method"] == "random" and r["ipc"] == ipc), None)
        for r in rows:
            if base is not None and r["ipc"] == ipc and r["method"] != "random":
                tests.append({"method": r["method"], "ipc": ipc, "vs": "random",
                              "difference": r["summary"]["mean"] - base["summary"]["mean"],
                              "welch": _test_p(r["accuracy"], base["accuracy"])})
    return {"rows": rows, "tests": tests, "eval_seeds": list(spec.eval_seeds), "paper_mnist": PAPER_MNIST,
            "eval_model": (spec.eval_model or spec.model).model_dump(), "model": spec.model.model_dump(),
            "eval_epochs": spec.recipe.epochs}


def print_results(results: dict, out: Path) -> None:
    t = table(f"study {results['study']}: test accuracy of networks trained on each set",
              ["method", "ipc", "acc % (mean)", "95% CI", "n", "paper (MNIST)", "distil s", "real seen"])
    for r in results["rows"]:
        s = r["summary"]
        t.add_row(r["method"], str(r["ipc"]), f"{100 * s['mean']:.2f}",
                  f"{100 * s['ci_low']:.2f}–{100 * s['ci_high']:.2f}", str(s["n"]),
                  "–" if r["paper"] is None else f"{r['paper']:.1f}", f"{r['distill_seconds']:.1f}",
                  f"{r['train_points_seen']:,}")
    console().print(t)
    for c in results["tests"]:
        w = c["welch"]
        p = "n/a (fewer than 2 seeds)" if w is None else f"Welch t = {w['t']:.2f}, one-sided p = {w['p']:.3g}"
        echo(f"{c['method']} vs random at ipc {c['ipc']}: {100 * c['difference']:+.2f} points ({p})")
    echo(f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


register_study_kind("dataset-distillation", spec=DatasetDistillationSpec, expand=expand, collect=collect,
                    report=write_dataset_distillation_report, print=print_results)
