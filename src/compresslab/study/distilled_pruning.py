"""Distilled-pruning study: do lottery tickets found with distilled data match real IMP?

Seeds: McDermott & Cummings, "Distilled Pruning: Using Synthetic Data to Win the Lottery"
(2023) and "Linear Mode Connectivity in Sparse Neural Networks" (2023); McDermott & Parhi,
"Finding Stable Subnetworks at Initialization with Dataset Distillation" (2025).

Expansion: one ``distill-data`` step (or an existing ``inner_data`` set), then per seed s two
``lottery`` steps with the same θ_0 (initialisation seed s), data split and recipe:

* real IMP: prune ``rate`` of the kept weights per round by global magnitude, rewind to θ_0,
  retrain on the real data; with the random re-initialisation control and the dense
  initialisation's LMC barrier;
* distilled IMP: the same loop trained on the distilled set (``inner_epochs`` per round),
  each round's mask applied to θ_0 and trained once on the real data.

Collected per round (sparsity ≈ 1 - (1 - rate)^r): test accuracy of the three arms with mean
and 95% bootstrap CI over seeds (:func:`compresslab.measure.stats.summarize`), the search points
(training examples x epochs spent before the round's mask exists), cumulative seconds; per seed
the LMC barrier (dense θ_0, final real mask, final distilled mask) and the Hutchinson trace of
the final tickets. The claims are tested with one-sided Welch tests, Holm-adjusted as one
family (:func:`compresslab.measure.stats.compare_many`):

1. distilled-IMP tickets match real IMP at far fewer search points (real not significantly
   better and within ``tolerance`` at every pruned round);
2. distilled masks are more stable: lower barrier than the dense init and the real masks;
3. distilled masks reach higher sparsities: the highest sparsity within ``tolerance`` of the
   dense accuracy is larger, or the accuracy at the highest sparsity is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from compresslab.console import console, echo, table
from compresslab.measure.stats import compare_many, summarize
from compresslab.report.distilled_pruning import verdicts, write_distilled_pruning_report
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps.specs import data_spec, distill_data_spec, lottery_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions, Strict
from compresslab.train.recipe import Recipe, Seed


class DistillSettings(Strict):
    """The distilled set (see :func:`compresslab.steps.specs.distill_data_spec`)."""

    method: Literal["dm", "dc", "random", "herding"] = "dm"
    ipc: int = Field(10, ge=1)
    seed: Seed = 0
    model: ModelSpec | None = Field(None, description="the network distillation matches with; default: model")
    init: Literal["real", "noise"] | None = None
    iterations: int | None = Field(None, ge=1)
    lr_img: float | None = Field(None, gt=0)
    batch_real: int | None = Field(None, ge=1)
    dsa: bool | None = None


class DistilledPruningSpec(RunOptions):
    """Real IMP against IMP whose search loop trains on a distilled set, over seeds."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["distilled-pruning"]
    name: str = "distilled-pruning"
    data: str = "digits"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: Seed = Field(0, description="data seed (train/val split)")
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name="convnet", options={"width": 16}))
    recipe: Recipe = Field(default_factory=lambda: Recipe(epochs=2), description="every real training")
    distill: DistillSettings = Field(default_factory=DistillSettings)
    inner_data: str | None = Field(None, description="an existing set (distilled:DIR) instead of distilling one")
    rounds: int = Field(3, ge=1)
    rate: float = Field(0.5, gt=0, lt=1, description="fraction of the kept weights pruned per round")
    inner_epochs: int = Field(50, ge=1, description="epochs on the distilled set per search round")
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    tolerance: float = Field(0.01, ge=0, description="accuracy gap (fraction) that still counts as matching")
    lmc_points: int = Field(11, ge=2)
    hessian_samples: int = Field(8, ge=1)
    hessian_examples: int = Field(512, ge=1, description="training examples of the Hessian trace and landscape")
    landscape_points: int = Field(0, ge=0, description="> 0: loss landscape of the first seed's final tickets")
    landscape_dims: int = Field(1, ge=1, le=2, description="1: along one filter-normalised direction; 2: a plane")

    @model_validator(mode="after")
    def _distinct(self) -> DistilledPruningSpec:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self


def expand(spec: DistilledPruningSpec) -> list[Entry]:
    data = data_spec(spec.data, spec.val_fraction, spec.seed)
    model = spec.model.model_dump()
    entries, parents = [], {}
    if spec.inner_data is None:
        d = spec.distill
        settings = d.model_dump(exclude={"method", "ipc", "seed", "model"}, exclude_none=True)
        step = Step("distill-data", distill_data_spec(data, method=d.method, ipc=d.ipc, seed=d.seed,
                                                      model=(d.model or spec.model).model_dump(), **settings),
                    label=f"{d.method}-ipc{d.ipc}")
        entries.append(Entry("distilled-set", "parent", "distill-data", step, {}))
        parents = {"distilled": step}
    common = dict(rounds=spec.rounds, rate=spec.rate, lmc_points=spec.lmc_points,
                  hessian_samples=spec.hessian_samples, hessian_examples=spec.hessian_examples)
    for s in spec.seeds:
        scan = spec.landscape_points if s == spec.seeds[0] else 0
        common["landscape_dims"] = spec.landscape_dims
        real = Step("lottery", lottery_spec(data, model, spec.recipe, s, control=True, lmc_dense=True,
                                            landscape_points=scan, **common), label=f"real-imp-seed{s}")
        dist = Step("lottery", lottery_spec(data, model, spec.recipe, s, inner_epochs=spec.inner_epochs,
                                            inner_data=spec.inner_data, landscape_points=scan, **common),
                    parents=parents, label=f"distilled-imp-seed{s}")
        entries.append(Entry(f"real-imp-seed{s}", "child", "lottery", real, {"arm": "real", "seed": s}))
        entries.append(Entry(f"distilled-imp-seed{s}", "child", "lottery", dist, {"arm": "distilled", "seed": s}))
    return entries


def _max_sparsity(records: list[dict], tolerance: float) -> float:
    """The highest sparsity whose ticket's test accuracy is within ``tolerance`` of round 0's."""
    dense = records[0]["test_acc"]
    return max(r["sparsity"] for r in records if r["test_acc"] >= dense - tolerance)


def collect(spec: DistilledPruningSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    runs = {(e.info["arm"], e.info["seed"]): read_json(store.path(e.step) / "lottery.json")
            for e in entries if e.method == "lottery"}
    seeds = [s for s in spec.seeds if ("real", s) in runs and ("distilled", s) in runs]
    real = [runs["real", s] for s in seeds]
    dist = [runs["distilled", s] for s in seeds]
    rows = []
    for r in range(spec.rounds + 1):
        def acc(runs_, key="test_acc"):
            return [x["records"][r][key] for x in runs_]

        def search(runs_, key):
            return float(np.mean([sum(c[key] for c in x["costs"][:r]) for x in runs_]))

        def secs(runs_):
            return float(np.mean([sum(c["seconds"] for c in x["costs"][:r + 1]) for x in runs_]))

        rows.append({
            "round": r, "sparsity": real[0]["records"][r]["sparsity"],
            "real": summarize(acc(real)), "distilled": summarize(acc(dist)),
            "control": summarize(acc(real, "control_test_acc")) if r > 0 else None,
            "search_points_real": search(real, "points_real"), "search_points_distilled": search(dist, "points_inner"),
            "ticket_points": float(np.mean([x["costs"][r]["points_real"] for x in real])),
            "seconds_real": secs(real), "seconds_distilled": secs(dist)})
    barrier = {"dense": [x["barrier"]["dense"] for x in real], "real": [x["barrier"]["final"] for x in real],
               "distilled": [x["barrier"]["final"] for x in dist]}
    hessian = {"real": [x["hessian"]["trace"] for x in real], "distilled": [x["hessian"]["trace"] for x in dist]}
    max_sp = {"real": [_max_sparsity(x["records"], spec.tolerance) for x in real],
              "distilled": [_max_sparsity(x["records"], spec.tolerance) for x in dist]}
    last = spec.rounds
    cmp = [dict(a=[x["records"][r]["test_acc"] for x in real], b=[x["records"][r]["test_acc"] for x in dist],
                higher_is_better=True, metric=f"test accuracy at round {r}", label_a="real-IMP",
                label_b="distilled-IMP", claim="more accurate", noun="tickets", claim_id=1, round=r)
           for r in range(1, last + 1)]
    cmp += [dict(a=barrier["distilled"], b=barrier["dense"], higher_is_better=False, metric="LMC barrier",
                 label_a="distilled-IMP mask", label_b="dense init", claim="more stable", noun="networks", claim_id=2),
            dict(a=barrier["distilled"], b=barrier["real"], higher_is_better=False, metric="LMC barrier",
                 label_a="distilled-IMP mask", label_b="real-IMP mask", claim="more stable", noun="networks",
                 claim_id=2),
            dict(a=hessian["distilled"], b=hessian["real"], higher_is_better=False, metric="Hessian trace",
                 label_a="distilled-IMP", label_b="real-IMP", claim="flatter", noun="tickets", claim_id=2),
            dict(a=max_sp["distilled"], b=max_sp["real"], higher_is_better=True,
                 metric=f"highest sparsity within {100 * spec.tolerance:g} accuracy points of dense",
                 label_a="distilled-IMP",
                 label_b="real-IMP", claim="sparser", noun="tickets", claim_id=3),
            dict(a=[x["records"][last]["test_acc"] for x in dist], b=[x["records"][last]["test_acc"] for x in real],
                 higher_is_better=True, metric=f"test accuracy at round {last}", label_a="distilled-IMP",
                 label_b="real-IMP", claim="more accurate", noun="tickets", claim_id=3)]
    tests = compare_many(cmp) if len(seeds) >= 2 else []
    d = spec.distill
    results = {"rows": rows, "seeds": seeds, "barrier": {k: summarize(v) for k, v in barrier.items()},
               "hessian": {k: summarize(v) for k, v in hessian.items()},
               "max_sparsity": {k: summarize(v) for k, v in max_sp.items()}, "tests": tests,
               "tolerance": spec.tolerance, "rate": spec.rate, "rounds": spec.rounds,
               "inner_epochs": spec.inner_epochs, "model": spec.model.model_dump(), "epochs": spec.recipe.epochs,
               "inner": dist[0]["inner"] if dist else None,
               "landscape": {"seed": seeds[0], "real": real[0].get("landscape"), "distilled": dist[0].get("landscape")}
               if seeds and real[0].get("landscape") else None,
               "distill": None if spec.inner_data else {"method": d.method, "ipc": d.ipc}}
    results["verdicts"] = verdicts(results)
    return results


def print_results(results: dict, out: Path) -> None:
    def ci(s):
        return "–" if s is None else f"{100 * s['mean']:.2f} [{100 * s['ci_low']:.2f}, {100 * s['ci_high']:.2f}]"

    t = table(f"study {results['study']}: ticket test accuracy % (mean [95% CI] over {len(results['seeds'])} seeds)",
              ["round", "sparsity %", "real-IMP", "distilled-IMP", "random re-init", "search pts real",
               "search pts distilled"])
    for r in results["rows"]:
        t.add_row(str(r["round"]), f"{100 * r['sparsity']:.1f}", ci(r["real"]), ci(r["distilled"]), ci(r["control"]),
                  f"{r['search_points_real']:,.0f}", f"{r['search_points_distilled']:,.0f}")
    console().print(t)
    b = results["barrier"]
    echo(f"LMC barrier (error %): dense {ci(b['dense'])}, real mask {ci(b['real'])}, distilled mask "
         f"{ci(b['distilled'])}")
    for v in results["verdicts"]:
        echo(v["text"])
    echo(f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


register_study_kind("distilled-pruning", spec=DistilledPruningSpec, expand=expand, collect=collect,
                    report=write_distilled_pruning_report, print=print_results)
