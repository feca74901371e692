"""Expand a study spec into steps, run them through the store, collect results."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compresslab.errors import StudyIncomplete
from compresslab.runs.executor import execute
from compresslab.measure import compare_logits, latency
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.runs.store import RunStore, Step, canonical_json, read_json
from compresslab.study.spec import DistillChild, PruneChild, QuantizeChild, StudySpec
from compresslab.study.steps import data_of, quantize_spec


@dataclass
class Entry:
    """One model of the study: its name, role and the step that builds it."""

    name: str
    role: str  # "parent" | "child" | "control"
    method: str  # "train" | "distill" | "prune" | "quantize" | "independent" | "scratch"
    step: Step


def expand(spec: StudySpec, data_seed: int | None = None) -> list[Entry]:
    """The study's models in dependency order (parents before children). The data split
    uses ``data_seed`` (default: ``spec.seed``, which also seeds every model)."""
    data = {"name": spec.data, "val_fraction": spec.val_fraction, "seed": spec.seed if data_seed is None else data_seed}
    recipe = spec.recipe.model_dump()

    def train(model: dict, seed: int, label: str) -> Step:
        return Step("train", {"data": data, "model": model, "recipe": recipe, "seed": seed}, label=label)

    parent_model = spec.parent.model_dump()
    parent = train(parent_model, spec.seed, "parent")
    entries = [Entry("parent", "parent", "train", parent)]
    scratch: dict[str, Step] = {}
    built: dict[str, Step] = {}
    for c in spec.children:
        if isinstance(c, DistillChild):
            student = c.student.model_dump()
            step = Step("distill", {
                "data": data, "student": student, "seed": spec.seed, "temperature": c.temperature,
                "recipe": (c.recipe or spec.recipe).model_dump(), "loss": {"kd": c.alpha, "ce": 1 - c.alpha},
            }, parents={"teacher": parent}, label=c.name)
            if spec.controls.student_from_scratch:
                key = canonical_json(student)
                scratch.setdefault(key, Step("train", {"data": data, "model": student, "seed": spec.seed,
                                                       "recipe": (c.recipe or spec.recipe).model_dump()},
                                             label=f"{c.name}-scratch"))
        elif isinstance(c, PruneChild):
            ft = {**recipe, "epochs": c.finetune_epochs, "lr": c.finetune_lr or spec.recipe.lr / 10,
                  "warmup_epochs": 0, "batch_size": c.finetune_batch_size or spec.recipe.batch_size}
            step = Step("prune", {"data": data, "amount": c.amount, "method": c.criterion, "scope": c.scope,
                                  "recipe": ft, "seed": spec.seed}, parents={"parent": parent}, label=c.name)
        elif isinstance(c, QuantizeChild):
            ft = {**recipe, "epochs": c.epochs, "lr": spec.recipe.lr / 10, "warmup_epochs": 0}
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
        entries.append(Entry(f"parent-seed{s}", "control", "independent", train(parent_model, s, f"parent-seed{s}")))
    for step in scratch.values():
        entries.append(Entry(step.label, "control", "scratch", step))
    return entries


def run_steps(entries: list[Entry], store: RunStore, progress=None) -> dict[str, bool]:
    """Run every entry's step (parents first) with the current executor; returns
    ``{name: ran}`` (False = reused). Raises :class:`StudyIncomplete` after everything
    that could run has run if any step failed."""
    ran, failed = execute(entries, store, progress)
    if failed:
        raise StudyIncomplete(failed)
    return ran


def collect(spec: StudySpec, entries: list[Entry], store: RunStore, *, with_latency: bool) -> dict:
    """Accuracy, cost, latency and every function metric against the parent, per model
    (``entries`` that finished)."""
    split = spec.split
    data = data_of(entries[0].step.spec)
    parent_logits = np.load(store.path(entries[0].step) / f"logits_{split}.npy")
    models = []
    for e in entries:
        d = store.path(e.step)
        metrics = read_json(d / "metrics.json")
        logits = np.load(d / f"logits_{split}.npy")
        cost = dict(metrics["cost"])
        if with_latency:
            model, _ = load_checkpoint(d)
            cost["latency_ms"] = latency(model, data.input_shape)
        row = {
            "name": e.name, "role": e.role, "method": e.method, "step": d.name,
            "accuracy": metrics["accuracy"][split], "accuracy_val": metrics["accuracy"].get("val"),
            "cost": cost, "function": compare_logits(parent_logits, logits),
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
    return {
        "study": spec.name,
        "split": split,
        "data": {"name": data.name, "sizes": data.sizes(), "num_classes": data.num_classes,
                 "input_shape": list(data.input_shape), "notes": data.notes},
        "num_threads": torch.get_num_threads(),
        "models": models,
        "independent_baseline": baseline,
    }


def study_dir(spec, runs: str | Path) -> Path:
    """``runs/studies/<name>-<hash12>``, the hash over the whole spec (any study kind)."""
    import hashlib

    h = hashlib.sha256(canonical_json(spec.model_dump(mode="json")).encode()).hexdigest()[:12]
    return Path(runs) / "studies" / f"{spec.name}-{h}"


def publish(spec, store: RunStore, results: dict, ran: dict[str, bool], report, t0: float | None = None) -> Path:
    """Add the spec, the steps run / reused (and wall seconds since ``t0``) to ``results``;
    write ``results.json`` and ``report(results, path)`` as ``report.html``. Returns the directory."""
    from compresslab.runs.store import write_json

    results["spec"] = spec.model_dump(mode="json")
    results["steps"] = {"ran": sorted(k for k, v in ran.items() if v),
                        "reused": sorted(k for k, v in ran.items() if not v)}
    if t0 is not None:
        results["seconds"] = time.perf_counter() - t0
    out = study_dir(spec, store.root)
    out.mkdir(parents=True, exist_ok=True)
    results["store"] = store.location
    write_json(out / "results.json", results)
    report(results, out / "report.html")
    if store.remote:  # shared stores get the study's outputs too
        store.upload_dir(out, f"studies/{out.name}")
    return out


def run_study(spec: StudySpec, runs: str | Path = "runs", *, progress=None) -> tuple[dict, Path]:
    """Run (or resume) a study; write ``results.json`` and ``report.html``. Returns (results, out dir)."""
    from compresslab.report import write_report

    t0 = time.perf_counter()
    store = RunStore(runs)
    entries = expand(spec)
    ran, failed = execute(entries, store, progress)
    if "parent" in failed:
        raise StudyIncomplete(failed)
    results = collect(spec, [e for e in entries if e.name not in failed], store, with_latency=spec.latency)
    results["failed"] = failed  # the report lists them; the CLI exits with code 3
    return results, publish(spec, store, results, ran, write_report, t0)
