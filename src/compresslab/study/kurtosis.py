"""Kurtosis study: does weight kurtosis predict how far a network can be pruned?

Mason-Williams & Dahlqvist (ICLR 2024) claim the kurtosis of a network's weights
(K², the kurtosis of the per-tensor kurtoses) predicts its prunability. This study
checks the claim across several trained models (architectures × seeds):

* every parent (model, seed) is trained once; its train step is built by the same
  spec builder as every study's (:mod:`compresslab.steps.specs`), so parents are
  shared with other studies in the same run store;
* every parent is pruned (global L1, scope ``all``) at each sparsity of a grid and
  fine-tuned briefly; its *measured prunability* is the largest sparsity whose
  fine-tuned test accuracy is at least the parent's minus ``tolerance``;
* K², p* and the safe amount are read off the parent's weights
  (:func:`compresslab.measure.weights.prunability`), and Spearman rank correlations
  relate each of them to the measured prunability across parents.

Outputs go to ``runs/studies/<name>-<hash12>/``: ``results.json`` and ``report.html``.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from compresslab.console import console, echo, table
from compresslab.errors import UserError
from compresslab.measure.weights import prunability
from compresslab.report.kurtosis import write_kurtosis_report
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps.specs import data_spec, finetune_recipe, prune_spec, train_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions
from compresslab.train.recipe import MAX_EPOCHS, Recipe, Seed

#: Parent statistics correlated with the measured prunability.
STATISTICS = ("kurtosis_of_kurtoses", "p_star", "safe_amount")


class KurtosisSpec(RunOptions):
    """A kurtosis study: models × seeds as parents, a sparsity grid per parent."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["kurtosis"]
    name: str = "kurtosis"
    data: str = "mnist1d"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: Seed = Field(0, description="data seed (train/val split)")
    models: list[ModelSpec] = Field(min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1], min_length=1,
                             description="each model is trained from each of these seeds")
    recipe: Recipe = Field(default_factory=Recipe)
    sparsities: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], min_length=1)
    finetune_epochs: int = Field(1, ge=0, le=MAX_EPOCHS)
    finetune_lr: float | None = Field(None, gt=0, description="default: the study recipe's lr / 10")
    tolerance: float = Field(0.01, ge=0, lt=1, description="accuracy drop allowed (0.01 = 1 point)")

    @field_validator("sparsities")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if any(not 0 < s < 1 for s in v):
            raise ValueError("each sparsity must be in (0, 1)")
        return sorted(set(v))

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @model_validator(mode="after")
    def _enough_parents(self) -> KurtosisSpec:
        if len(self.models) * len(self.seeds) < 2:
            raise ValueError("models × seeds must give at least 2 parents to correlate (3+ for p-values)")
        return self


def load_kurtosis_spec(path: str | Path | None = None) -> KurtosisSpec:
    """Load a kurtosis spec from a YAML file (default: the ``kurtosis`` preset)."""
    from compresslab.study.spec import load_spec

    spec = load_spec(path, preset=None if path is not None else "kurtosis")
    if not isinstance(spec, KurtosisSpec):
        raise UserError(f"{path}: not a kurtosis study (add 'kind: kurtosis')")
    return spec


# -- steps ------------------------------------------------------------------------------------


def expand_kurtosis(spec: KurtosisSpec) -> list[Entry]:
    """Every parent (model × seed), then each parent's prune children, one per sparsity.

    Step specs come from the same builders as the plain study's, so identical parents
    and prune children hash to the same store directories.
    """
    data = data_spec(spec.data, spec.val_fraction, spec.seed)
    recipe = spec.recipe.model_dump()
    ft = finetune_recipe(recipe, epochs=spec.finetune_epochs, lr=spec.finetune_lr or spec.recipe.lr / 10,
                         batch_size=spec.recipe.batch_size)
    parents, children = [], []
    for i, m in enumerate(spec.models):
        model = m.model_dump()
        for seed in spec.seeds:
            name = f"m{i}-{m.name}-seed{seed}"
            parent = Step("train", train_spec(data, model, recipe, seed), label=name)
            parents.append(Entry(name, "parent", "train", parent, {"model": model, "seed": seed}))
            children += [Entry(f"{name}-p{s:g}", "child", "prune",
                               Step("prune", prune_spec(data, s, ft, seed), parents={"parent": parent},
                                    label=f"{name}-p{s:g}"), {"parent": name})
                         for s in spec.sparsities]
    return parents + children


# -- analysis ---------------------------------------------------------------------------------


def measured_prunability(sweep: list[tuple[float, float]], parent_accuracy: float, tolerance: float) -> float:
    """Largest sparsity whose accuracy is ≥ ``parent_accuracy - tolerance`` (0 if none)."""
    ok = [s for s, acc in sweep if acc is not None and acc >= parent_accuracy - tolerance - 1e-12]
    return max(ok, default=0.0)


def spearman(x: list[float], y: list[float]) -> dict:
    """``{"spearman": r, "p_value": p}``; both None when undefined (n < 3, constant input)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"spearman": None, "p_value": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r, p = spearmanr(x, y)
    return {"spearman": _finite(r), "p_value": _finite(p)}


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _note(parents: list[dict], correlations: dict) -> str:
    n = len(parents)
    parts = [(f"Spearman rank correlation across {n} parents between measured prunability "
              "(largest grid sparsity within tolerance of the parent's test accuracy) and each statistic.")]
    if n < 3:
        parts.append("Fewer than 3 parents: correlations are undefined (None).")
    elif len({p["measured_prunability"] for p in parents}) < 2:
        parts.append("Measured prunability is the same for every parent: correlations are undefined (None); "
                     "use a finer sparsity grid or a tighter tolerance.")
    else:
        undefined = [k for k, v in correlations.items() if v["spearman"] is None]
        if undefined:
            parts.append(f"Undefined (constant statistic): {', '.join(undefined)}.")
    if 3 <= n < 10:
        parts.append("With under 10 parents, p-values are rough.")
    return " ".join(parts)


def collect(spec: KurtosisSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    """Per parent: accuracy, K², p*, the safe amount and the measured prunability; the
    Spearman correlations of each statistic with the measured prunability."""
    rows = []
    for parent in (e for e in entries if e.role == "parent"):
        pdir = store.path(parent.step)
        accuracy = read_json(pdir / "metrics.json")["accuracy"]["test"]
        report = prunability(load_checkpoint(pdir, apply_transforms=False)[0])
        sweep = [[c.step.spec["amount"], read_json(store.path(c.step) / "metrics.json")["accuracy"]["test"]]
                 for c in entries if c.info.get("parent") == parent.name]
        rows.append({
            "name": parent.name, "model": parent.info["model"], "seed": parent.info["seed"], "step": pdir.name,
            "accuracy": accuracy,
            **{k: float(report[k]) for k in STATISTICS},
            "measured_prunability": measured_prunability(sweep, accuracy, spec.tolerance),
            "sweep": sweep,
        })
    measured = [r["measured_prunability"] for r in rows]
    correlations = {k: spearman(measured, [r[k] for r in rows]) for k in STATISTICS}
    return {"parents": rows, "correlations": correlations, "tolerance": spec.tolerance,
            "note": _note(rows, correlations)}


def print_results(results: dict, out: Path) -> None:
    t = table(f"study {results['study']}: does kurtosis predict prunability?",
              ["parent", "acc %", "K²", "p*", "safe", "measured"])
    for p in results["parents"]:
        t.add_row(p["name"], f"{100 * p['accuracy']:.2f}", f"{p['kurtosis_of_kurtoses']:.3g}", f"{p['p_star']:.2f}",
                  f"{p['safe_amount']:.2f}", f"{p['measured_prunability']:.2f}")
    console().print(t)
    for k, c in results["correlations"].items():
        r = "undefined" if c["spearman"] is None else f"{c['spearman']:+.3f} (p={c['p_value']:.3g})"
        echo(f"Spearman(measured prunability, {k}) = {r}")
    echo(results["note"], f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


register_study_kind("kurtosis", spec=KurtosisSpec, expand=expand_kurtosis, collect=collect,
                    report=write_kurtosis_report, print=print_results)
