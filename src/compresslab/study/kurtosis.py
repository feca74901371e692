"""Kurtosis study: does weight kurtosis predict how far a network can be pruned?

Mason-Williams & Dahlqvist (ICLR 2024) claim the kurtosis of a network's weights
(K², the kurtosis of the per-tensor kurtoses) predicts its prunability. This study
checks the claim across several trained models (architectures × seeds):

* every parent (model, seed) is trained once; its train step has the same spec
  layout as :func:`compresslab.study.runner.expand`, so parents are shared with
  other studies in the same run store;
* every parent is pruned (global L1, scope ``all``) at each sparsity of a grid and
  fine-tuned briefly; its *measured prunability* is the largest sparsity whose
  fine-tuned test accuracy is at least the parent's minus ``tolerance``;
* K², p* and the safe amount are read off the parent's weights
  (:func:`compresslab.measure.weights.prunability`), and Spearman rank correlations
  relate each of them to the measured prunability across parents.

Outputs go to ``runs/studies/<name>-<hash12>/``: ``results.json`` and ``report.html``.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import warnings
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from compresslab.errors import UserError
from compresslab.runs.store import RunStore, Step, canonical_json, read_json
from compresslab.study.spec import ModelSpec, validate_spec
from compresslab.train.recipe import MAX_EPOCHS, Recipe, Seed

#: Parent statistics correlated with the measured prunability.
STATISTICS = ("kurtosis_of_kurtoses", "p_star", "safe_amount")


class KurtosisSpec(BaseModel):
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


def parse_kurtosis_spec(raw: object, *, source: str = "kurtosis spec") -> KurtosisSpec:
    """Validate a mapping; problems become a one-line :class:`UserError`."""
    return validate_spec(KurtosisSpec, raw, source)


def load_kurtosis_spec(path: str | Path | None = None) -> KurtosisSpec:
    """Load a kurtosis spec from a YAML file (default: the ``kurtosis`` preset)."""
    from compresslab.study.spec import load_spec

    spec = load_spec(path, preset=None if path is not None else "kurtosis")
    if not isinstance(spec, KurtosisSpec):
        raise UserError(f"{path}: not a kurtosis study (add 'kind: kurtosis')")
    return spec


# -- steps ------------------------------------------------------------------------------------


def expand_kurtosis(spec: KurtosisSpec) -> list[tuple[dict, list[Step]]]:
    """``[(parent entry, [prune step per sparsity])]``, parents in spec order.

    A parent entry is ``{"name", "model", "seed", "step"}`` (``step`` a train
    :class:`Step`). Specs follow :func:`compresslab.study.runner.expand` exactly, so
    identical parents and prune children hash to the same store directories.
    """
    data = {"name": spec.data, "val_fraction": spec.val_fraction, "seed": spec.seed}
    recipe = spec.recipe.model_dump()
    ft = {**recipe, "epochs": spec.finetune_epochs, "lr": spec.finetune_lr or spec.recipe.lr / 10,
          "warmup_epochs": 0, "batch_size": spec.recipe.batch_size}
    out = []
    for i, m in enumerate(spec.models):
        model = m.model_dump()
        for seed in spec.seeds:
            name = f"m{i}-{m.name}-seed{seed}"
            parent = Step("train", {"data": data, "model": model, "recipe": recipe, "seed": seed}, label=name)
            children = [Step("prune", {"data": data, "amount": s, "method": "global-l1", "scope": "all",
                                       "recipe": ft, "seed": seed}, parents={"parent": parent},
                             label=f"{name}-p{s:g}")
                        for s in spec.sparsities]
            out.append(({"name": name, "model": model, "seed": seed, "step": parent}, children))
    return out


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


def run_kurtosis_study(spec: KurtosisSpec, runs: str | Path = "runs", *, progress=None) -> tuple[dict, Path]:
    """Run (or resume) the study; write ``results.json`` and ``report.html``.

    Returns ``(results, out_dir)``. ``results["steps"]`` lists the step labels that
    ran and that were reused from the store.
    """
    from compresslab.measure.weights import prunability
    from compresslab.runs.checkpoint import load_checkpoint

    store = RunStore(runs)
    plan = expand_kurtosis(spec)
    from compresslab.study.runner import Entry, publish, run_steps

    # parents first, then their children
    entries = [Entry(p["step"].label, "parent", "train", p["step"]) for p, _ in plan]
    entries += [Entry(c.label, "child", "prune", c) for _, children in plan for c in children]
    ran = run_steps(entries, store, progress)

    rows = []
    for parent, children in plan:
        pdir = store.path(parent["step"])
        accuracy = read_json(pdir / "metrics.json")["accuracy"]["test"]
        report = prunability(load_checkpoint(pdir, apply_transforms=False)[0])
        sweep = [[c.spec["amount"], read_json(store.path(c) / "metrics.json")["accuracy"]["test"]]
                 for c in children]
        rows.append({
            "name": parent["name"], "model": parent["model"], "seed": parent["seed"], "step": pdir.name,
            "accuracy": accuracy,
            **{k: float(report[k]) for k in STATISTICS},
            "measured_prunability": measured_prunability(sweep, accuracy, spec.tolerance),
            "sweep": sweep,
        })
    measured = [r["measured_prunability"] for r in rows]
    correlations = {k: spearman(measured, [r[k] for r in rows]) for k in STATISTICS}
    results = {
        "study": spec.name,
        "kind": "kurtosis",
        "parents": rows,
        "correlations": correlations,
        "tolerance": spec.tolerance,
        "note": _note(rows, correlations),
    }
    return results, publish(spec, store, results, ran, write_kurtosis_report)


# -- report -----------------------------------------------------------------------------------


def plot_kurtosis(results: dict) -> str:
    """Three panels as a ``data:`` PNG URI: measured prunability vs K², vs safe amount
    (with y = x), and test accuracy against sparsity per parent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["parents"]
    y = [r["measured_prunability"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in ((axes[0], "kurtosis_of_kurtoses", "K² (kurtosis of kurtoses)"),
                           (axes[1], "safe_amount", "safe amount (from weights)")):
        x = [r[key] for r in rows]
        ax.scatter(x, y)
        for xi, yi, r in zip(x, y, rows):
            ax.annotate(r["name"], (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
        c = results["correlations"][key]["spearman"]
        ax.set_title(f"Spearman ρ = {c:.2f}" if c is not None else "Spearman ρ undefined", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel("measured prunability")
    k2 = [r["kurtosis_of_kurtoses"] for r in rows]
    if min(k2) > 0 and max(k2) > 10 * min(k2):
        axes[0].set_xscale("log")
    axes[0].set_ylim(-0.03, 1.03)
    axes[1].set_ylim(-0.03, 1.03)
    axes[1].plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8, label="y = x")
    axes[1].legend(fontsize=7)
    for i, r in enumerate(rows):
        s, acc = zip(*r["sweep"]) if r["sweep"] else ((), ())
        axes[2].plot(s, acc, marker="o", ms=3, color=f"C{i % 10}", label=r["name"])
        axes[2].axhline(r["accuracy"] - results["tolerance"], color=f"C{i % 10}", ls=":", lw=0.6)
    axes[2].set_xlabel("sparsity")
    axes[2].set_ylabel("test accuracy after fine-tuning")
    axes[2].set_title("dotted: parent accuracy − tolerance", fontsize=9)
    axes[2].legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else html.escape(str(v))


def write_kurtosis_report(results: dict, path: str | Path) -> Path:
    """A small self-contained HTML page: correlations, per-parent table, inline figure."""
    path = Path(path)
    corr = "".join(f"<tr><td>{k}</td><td>{_fmt(v['spearman'])}</td><td>{_fmt(v['p_value'])}</td></tr>"
                   for k, v in results["correlations"].items())
    rows = "".join(
        f"<tr><td>{html.escape(r['name'])}</td><td>{html.escape(canonical_json(r['model']))}</td>"
        f"<td>{r['seed']}</td><td>{_fmt(r['accuracy'])}</td><td>{_fmt(r['kurtosis_of_kurtoses'])}</td>"
        f"<td>{_fmt(r['p_star'])}</td><td>{_fmt(r['safe_amount'])}</td>"
        f"<td><b>{_fmt(r['measured_prunability'])}</b></td></tr>" for r in results["parents"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(results['study'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Kurtosis study: {html.escape(results['study'])}</h1>
<p>Does weight kurtosis (Mason-Williams &amp; Dahlqvist, ICLR 2024) predict prunability?
Tolerance: {results['tolerance']:g} accuracy. {html.escape(results['note'])}</p>
<table><tr><th>statistic</th><th>Spearman ρ</th><th>p-value</th></tr>{corr}</table>
<table><tr><th>parent</th><th>model</th><th>seed</th><th>test acc</th><th>K²</th><th>p*</th><th>safe</th>
<th>measured prunability</th></tr>{rows}</table>
<img alt="prunability figure" src="{plot_kurtosis(results)}">
</body></html>
"""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path
