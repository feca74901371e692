"""The plain study (no ``kind``): one parent, its children, and the controls.

The parent is trained; each child is made from it (distilled, pruned, quantised, or
pruned then quantised); the controls are the parent's architecture retrained from other
seeds (the *independent* baseline) and each KD student's architecture trained from
scratch. Every model is measured against the parent: accuracy, cost, latency (side by
side at collect time) and every output metric. A failed child does not stop the study:
the report lists it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from compresslab.console import console, echo, short, table
from compresslab.measure import compare_logits, latency
from compresslab.report.html import write_report
from compresslab.runs.store import RunStore, Step, canonical_json, read_json
from compresslab.steps import data_of
from compresslab.steps.common import load_model
from compresslab.steps.specs import data_spec, distill_spec, finetune_recipe, prune_spec, quantize_spec, train_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import Child, DistillChild, ModelSpec, PruneChild, QuantizeChild, RunOptions, Strict, check_children
from compresslab.train.recipe import Recipe, Seed


class Controls(Strict):
    seeds: list[Seed] = Field(default_factory=lambda: [1, 2], description="parent retrained from these seeds")
    student_from_scratch: bool = Field(True, description="train each KD student's architecture with CE only")


class StudySpec(Strict, RunOptions):
    kind: Literal["study"] = Field("study", exclude=True)
    name: str = "study"
    data: str = "mnist1d"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: Seed = 0
    parent: ModelSpec
    recipe: Recipe = Field(default_factory=Recipe)
    children: list[Child] = Field(default_factory=list)
    controls: Controls = Field(default_factory=Controls)
    latency: bool = True
    split: Literal["val", "test"] = "test"


def expand(spec: StudySpec, data_seed: int | None = None) -> list[Entry]:
    """The study's models in dependency order (parents before children). The data split
    uses ``data_seed`` (default: ``spec.seed``, which also seeds every model)."""
    data = data_spec(spec.data, spec.val_fraction, spec.seed if data_seed is None else data_seed)
    recipe = spec.recipe.model_dump()
    parent_model = spec.parent.model_dump()
    parent = Step("train", train_spec(data, parent_model, recipe, spec.seed), label="parent")
    entries = [Entry("parent", "parent", "train", parent)]
    scratch: dict[str, Step] = {}
    built: dict[str, Step] = {}
    for c in spec.children:
        if isinstance(c, DistillChild):
            student = c.student.model_dump()
            student_recipe = (c.recipe or spec.recipe).model_dump()
            step = Step("distill", distill_spec(data, student, student_recipe, spec.seed, temperature=c.temperature,
                                                loss={"kd": c.alpha, "ce": 1 - c.alpha}),
                        parents={"teacher": parent}, label=c.name)
            if spec.controls.student_from_scratch:
                scratch.setdefault(canonical_json(student), Step("train", train_spec(data, student, student_recipe,
                                                                                      spec.seed),
                                                                 label=f"{c.name}-scratch"))
        elif isinstance(c, PruneChild):
            ft = finetune_recipe(recipe, epochs=c.finetune_epochs, lr=c.finetune_lr or spec.recipe.lr / 10,
                                 batch_size=c.finetune_batch_size or spec.recipe.batch_size)
            step = Step("prune", prune_spec(data, c.amount, ft, spec.seed, method=c.criterion, scope=c.scope),
                        parents={"parent": parent}, label=c.name)
        elif isinstance(c, QuantizeChild):
            ft = finetune_recipe(recipe, epochs=c.epochs, lr=spec.recipe.lr / 10)
            source = parent if c.source is None else built[c.source]
            step = Step("quantize", quantize_spec(data, c.scheme, bits=c.bits, act_bits=c.act_bits,
                                                  per_channel=c.per_channel, symmetric=c.symmetric,
                                                  observer=c.observer, percentile=c.percentile,
                                                  calib_batches=c.calib_batches,
                                                  calib_batch_size=c.calib_batch_size, recipe=ft, seed=spec.seed),
                        parents={"parent": source}, label=c.name)
        else:  # pragma: no cover - the spec's discriminated union is exhaustive
            raise AssertionError(c)
        built[c.name] = step
        entries.append(Entry(c.name, "child", c.method, step))
    for s in spec.controls.seeds:
        entries.append(Entry(f"parent-seed{s}", "control", "independent",
                             Step("train", train_spec(data, parent_model, recipe, s), label=f"parent-seed{s}")))
    for step in scratch.values():
        entries.append(Entry(step.label, "control", "scratch", step))
    return entries


def collect(spec: StudySpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    """Accuracy, cost, latency and every function metric against the parent, per model."""
    split = spec.split
    data = data_of(entries[0].step.spec)
    parent_logits = np.load(store.path(entries[0].step) / f"logits_{split}.npy")
    scored = data.split(split)[1] if data.token_level else None  # per token: only labelled tokens count
    models = []
    for e in entries:
        d = store.path(e.step)
        metrics = read_json(d / "metrics.json")
        logits = np.load(d / f"logits_{split}.npy")
        cost = dict(metrics["cost"])
        if spec.latency:
            model = load_model(d)
            cost["latency_ms"] = latency(model, data.input_shape)
        row = {
            "name": e.name, "role": e.role, "method": e.method, "step": d.name,
            "accuracy": metrics["accuracy"][split], "accuracy_val": metrics["accuracy"].get("val"),
            "cost": cost, "function": compare_logits(parent_logits, logits, scored),
            "train_seconds": metrics.get("train_seconds"),
        }
        if "sparsity" in metrics:
            row["sparsity"] = metrics["sparsity"]["global"]
            row["criterion"] = e.step.spec["method"]
            row["param_cosine"] = metrics["param_cosine"]["after_finetuning"]
            if "amount_rule" in metrics:
                row["amount_rule"] = metrics["amount_rule"]
        models.append(row)
    baseline = {}
    independents = [m for m in models if m["method"] == "independent"]
    if independents:
        for key in independents[0]["function"]:
            vals = [m["function"][key] for m in independents]
            baseline[key] = {"mean": float(np.mean(vals)), "min": float(np.min(vals)),
                             "max": float(np.max(vals)), "n": len(vals)}
    return {"split": split, "models": models, "independent_baseline": baseline}


def print_results(results: dict, out: Path) -> None:
    t = table(f"study {results['study']}: {results['split']} split, function metrics against the parent",
              ["model", "role", "acc %", "nonzero", "BOPs", "disagree %", "JS", "ms@256"], left=2)
    for m in results["models"]:
        lat = m["cost"].get("latency_ms", {}).get("batch256")
        t.add_row(m["name"], m["role"], f"{100 * m['accuracy']:.2f}", short(m["cost"]["nonzero_params"]),
                  short(m["cost"]["bops"]), f"{100 * m['function']['disagreement']:.2f}",
                  f"{m['function']['js_divergence']:.4f}", "–" if lat is None else f"{lat:.2f}")
    console().print(t)
    echo(f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


def _check(spec: StudySpec, source: str) -> None:
    check_children(spec.children, source)


register_study_kind("study", spec=StudySpec, expand=expand, collect=collect, report=write_report,
                    print=print_results, check=_check, partial=True)
