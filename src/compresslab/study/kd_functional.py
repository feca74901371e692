"""The ``kd-functional`` study: does a KD student inherit its teacher's function?

Mason-Williams, Mason-Williams & Sandler ("Knowledge Distillation: The Functional
Perspective", 2024) report that KD students gain accuracy but are barely more
functionally similar to their teacher than independently trained students, and that
noise teachers help too. This study tests that on the user's models and data:

* one reference teacher (the teacher architecture trained at ``seed``);
* for each *condition* (a teacher kind) and each student seed, one student of the
  student architecture:

  ============================  ===========================================================
  ``teacher``                   KD from the reference teacher
  ``teacher-other-seed``        KD from the teacher architecture retrained at seed 1000 + s
  ``uniform-noise``             KD from fixed per-example logits ~ U(low, high)
  ``gaussian-noise``            KD from fixed per-example logits ~ N(0, sigma²)
  ``untrained``                 KD from the teacher architecture at random init (seed 1000 + s)
  ``self``                      KD from the student architecture trained with CE at ``seed``
  ``independent``               no teacher: CE only
  ============================  ===========================================================

* every student is compared with the *reference* teacher on the ``split``: output
  metrics (one pairwise-matrix pass over all models), linear CKA at the shared feature
  points, and the transfer rate of adversarial examples crafted on the teacher;
* per condition and metric: mean, std and a 95% bootstrap CI over seeds; the
  ``teacher`` condition is tested against every other condition on every metric
  (one-sided Welch + exact permutation, Cohen's d, Holm across the whole family),
  and each condition's accuracy against ``independent`` (two-sided, bootstrap CI).

Outputs: ``runs/studies/<name>-<hash12>/results.json`` and ``report.html``.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compresslab.console import console, echo, table
from compresslab.errors import UserError
from compresslab.measure import stats
from compresslab.measure.adversarial import transfer_rate
from compresslab.measure.cka import cache_features, cka_against_cached
from compresslab.measure.pairwise import pairwise_metrics
from compresslab.models import feature_points
from compresslab.report.kd import write_kd_report
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.scratch import Scratch
from compresslab.steps import data_of
from compresslab.steps.common import load_model
from compresslab.steps.specs import data_spec, distill_spec, train_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions
from compresslab.train.losses import list_terms
from compresslab.train.recipe import Recipe, Seed

CONDITIONS = ("teacher", "teacher-other-seed", "uniform-noise", "gaussian-noise", "untrained", "self",
              "independent")
#: Similarity metrics and whether a larger value means "more similar to the teacher".
METRICS = {"agreement": True, "kappa": True, "js_divergence": False, "activation_distance": False,
           "output_cosine": True, "kl": False, "cka": True, "cka_biased": True, "adversarial_transfer": True}
OUTPUT_METRICS = ("agreement", "kappa", "js_divergence", "activation_distance", "output_cosine", "kl")
OTHER_SEED = 1000  # teacher-other-seed / untrained teachers use seed OTHER_SEED + student seed


class Noise(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float = 0.0
    high: float = 1.0
    sigma: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _range(self) -> Noise:
        if not self.high > self.low:
            raise ValueError("noise: high must be > low")
        return self


class Adversarial(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attack: Literal["fgsm", "pgd"] = "fgsm"
    eps: float = Field(0.25, gt=0, description="L-inf radius, in input units")
    steps: int = Field(10, ge=1, description="PGD steps")


class KDFunctionalSpec(RunOptions):
    """A kd-functional study (``kind: kd-functional``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["kd-functional"]
    name: str = "kd-functional"
    data: str = "mnist1d"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: Seed = Field(0, description="data split seed and the reference teacher's seed")
    teacher: ModelSpec
    student: ModelSpec
    recipe: Recipe = Field(default_factory=Recipe, description="the teacher's recipe")
    student_recipe: Recipe | None = Field(None, description="default: the teacher's recipe")
    conditions: list[Literal[CONDITIONS]] = Field(
        default_factory=lambda: ["teacher", "independent", "uniform-noise", "gaussian-noise", "untrained",
                                 "teacher-other-seed"], min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=2,
                             description="student seeds, the same for every condition")
    loss: dict[str, float] = Field(default_factory=lambda: {"kd": 0.9, "ce": 0.1})
    temperature: float = Field(4.0, gt=0)
    at_points: list[str] | dict[str, str] | None = None
    noise: Noise = Field(default_factory=Noise)
    metrics: list[Literal[tuple(METRICS)]] = Field(
        default_factory=lambda: ["agreement", "js_divergence", "activation_distance", "cka",
                                 "adversarial_transfer"], min_length=1,
        description="metrics tested (every output metric is still reported)")
    cka_points: list[str] | None = Field(None, description="default: the feature points both models share")
    adversarial: Adversarial | None = Field(default_factory=Adversarial)
    split: Literal["val", "test"] = "test"
    alpha: float = Field(0.05, gt=0, lt=1)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @field_validator("conditions")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("conditions must be distinct")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> KDFunctionalSpec:
        if not set(self.loss) - {"ce"}:
            raise ValueError("loss: needs a distillation term (kd, at, hint or another registered one), "
                             "e.g. {kd: 0.9, ce: 0.1}")
        unknown = sorted(set(self.loss) - set(list_terms()))
        if unknown:
            raise ValueError(f"loss: unknown terms {unknown}; registered terms: {', '.join(list_terms())}")
        noise = [c for c in self.conditions if c.endswith("-noise")]
        if noise and set(self.loss) & {"at", "hint"}:
            raise ValueError(f"noise teachers ({', '.join(noise)}) have no feature maps: drop at/hint from the "
                             "loss or drop the noise conditions")
        if "adversarial_transfer" in self.metrics and self.adversarial is None:
            raise ValueError("metrics: adversarial_transfer needs the adversarial settings (remove 'adversarial: null')")
        return self


# -- steps ------------------------------------------------------------------------------------


def expand_kd(spec: KDFunctionalSpec) -> list[Entry]:
    """The reference teacher, the other teachers some conditions need (the retrained
    teachers of ``teacher-other-seed``, the ``self`` teacher), then one student per
    condition × seed (``info``: condition, seed). Step specs come from the shared
    builders, so models shared with other studies hash to the same directories."""
    data = data_spec(spec.data, spec.val_fraction, spec.seed)
    recipe = spec.recipe.model_dump()
    s_recipe = (spec.student_recipe or spec.recipe).model_dump()
    teacher_model, student_model = spec.teacher.model_dump(), spec.student.model_dump()
    at_points = spec.at_points if "at" in spec.loss else None

    def train(model: dict, rec: dict, seed: int, label: str) -> Step:
        return Step("train", train_spec(data, model, rec, seed), label=label)

    def distill(seed: int, label: str, parent: Step | None, teacher: dict | None = None) -> Step:
        return Step("distill", distill_spec(data, student_model, s_recipe, seed, loss=spec.loss, teacher=teacher,
                                            temperature=spec.temperature, at_points=at_points),
                    parents={"teacher": parent} if parent else {}, label=label)

    reference = train(teacher_model, recipe, spec.seed, "teacher")
    entries = [Entry("teacher", "parent", "train", reference)]
    self_teacher = None
    if "self" in spec.conditions:
        self_teacher = train(student_model, s_recipe, spec.seed, "self-teacher")
        entries.append(Entry("self-teacher", "control", "train", self_teacher, {"seed": spec.seed}))
    students = []
    for cond in spec.conditions:
        for seed in spec.seeds:
            label = f"{cond}-s{seed}"
            if cond == "teacher":
                step = distill(seed, label, reference)
            elif cond == "teacher-other-seed":
                other = train(teacher_model, recipe, OTHER_SEED + seed, f"teacher-seed{OTHER_SEED + seed}")
                entries.append(Entry(other.label, "control", "train", other, {"seed": OTHER_SEED + seed}))
                step = distill(seed, label, other)
            elif cond == "uniform-noise":
                step = distill(seed, label, None, {"kind": cond, "low": spec.noise.low, "high": spec.noise.high,
                                                   "seed": seed})
            elif cond == "gaussian-noise":
                step = distill(seed, label, None, {"kind": cond, "sigma": spec.noise.sigma, "seed": seed})
            elif cond == "untrained":
                step = distill(seed, label, None, {"kind": "untrained", "model": teacher_model,
                                                   "seed": OTHER_SEED + seed})
            elif cond == "self":
                step = distill(seed, label, self_teacher)
            else:  # independent
                step = train(student_model, s_recipe, seed, label)
            students.append(Entry(label, "child" if cond == "teacher" else "control", step.kind, step,
                                  {"condition": cond, "seed": seed}))
    return entries + students


# -- measurement ------------------------------------------------------------------------------


def measure_students(spec: KDFunctionalSpec, store: RunStore, entries: list[Entry],
                     progress=None) -> tuple[dict, list[dict], dict]:
    """The teacher's row, per-model rows (accuracy + every similarity to the reference
    teacher) and the pairwise output-metric matrices over [teacher, other teachers, students].

    The teacher's activations for CKA are computed once, kept as memory-mapped arrays in a
    RAM-backed :class:`Scratch` until the measurement ends, and compared with every model's."""
    reference = entries[0].step
    data = data_of(reference.spec)
    x, y = data.split(spec.split)
    if len(y) < 4:
        raise UserError(f"the {spec.split} split has {len(y)} examples; CKA and the statistics need more "
                        "(use split: test or a larger val_fraction)")
    teacher = load_model(store.path(reference))
    models = [{"name": e.name, "step": e.step, "condition": e.info.get("condition"),
               "role": "reference" if i == 0 else "student" if "condition" in e.info else "other-teacher"}
              for i, e in enumerate(entries)]
    logits = np.stack([np.load(store.path(m["step"]) / f"logits_{spec.split}.npy") for m in models])
    matrices = pairwise_metrics(logits)
    rows = []
    loaded = {}
    with progress.task("measure: CKA and adversarial transfer") if progress else nullcontext(), Scratch() as scratch:
        teacher_features = cache_features(teacher, x, spec.cka_points, scratch) \
            if spec.cka_points is not None or feature_points(teacher) else None  # None: no CKA
        for i, m in enumerate(models):
            if i == 0:
                continue
            d = store.path(m["step"])
            metrics = read_json(d / "metrics.json")
            row = {"name": m["name"], "role": m["role"], "condition": m.get("condition"),
                   "seed": m["step"].spec["seed"], "step": d.name, "accuracy": metrics["accuracy"][spec.split],
                   "train_seconds": metrics.get("train_seconds"),
                   **{k: float(matrices[k][0, i]) for k in OUTPUT_METRICS}}
            model = load_model(d)
            cka = {} if teacher_features is None else cka_against_cached(teacher_features, model, x, spec.cka_points)
            row["cka_points"] = {k: {"unbiased": v["unbiased"], "biased": v["biased"]} for k, v in cka.items()}
            unb = [v["unbiased"] for v in cka.values() if v["unbiased"] is not None]
            bia = [v["biased"] for v in cka.values() if v["biased"] is not None]
            row["cka"] = float(np.mean(unb)) if unb else None
            row["cka_biased"] = float(np.mean(bia)) if bia else None
            loaded[m["name"]] = model
            rows.append(row)
        if spec.adversarial is not None:
            a = spec.adversarial
            rates = transfer_rate(teacher, loaded, x, y, attack=a.attack, eps=a.eps, steps=a.steps, seed=spec.seed)
            for row in rows:
                r = rates[row["name"]]
                row["adversarial_transfer"] = r["transfer_rate"]
                row["adversarial"] = {k: v for k, v in r.items() if k != "transfer_rate"}
    t_dir = store.path(reference)
    teacher_row = {"name": "teacher", "accuracy": read_json(t_dir / "metrics.json")["accuracy"][spec.split],
                   "step": t_dir.name}
    pairwise = {"names": [m["name"] for m in models], **{k: v.tolist() for k, v in matrices.items()}}
    return teacher_row, rows, pairwise


def analyse(spec: KDFunctionalSpec, rows: list[dict], pairwise: dict) -> dict:
    """Summaries per condition, the tests of ``teacher`` against each other condition, the
    accuracy effects against ``independent``, and each condition's seed-to-seed agreement."""
    students = [r for r in rows if r["role"] == "student"]
    by_cond = {c: [r for r in students if r["condition"] == c] for c in spec.conditions}
    reported = ["accuracy", *[m for m in METRICS if not (m == "adversarial_transfer" and spec.adversarial is None)]]

    def values(group: list[dict], metric: str) -> list[float]:
        """The defined values (kappa is NaN when both models predict one class)."""
        return [r[metric] for r in group if r.get(metric) is not None and math.isfinite(r[metric])]

    def summary(group: list[dict]) -> dict:
        out = {}
        for metric in reported:
            v = values(group, metric)
            out[metric] = stats.summarize(v, seed=spec.seed) if v else None
        return out

    summaries = {c: summary(g) for c, g in by_cond.items()}
    retrained = [r for r in rows if r["role"] == "other-teacher" and r["name"].startswith("teacher-seed")]
    reference_groups = {"teacher retrained": summary(retrained)} if len(retrained) >= 2 else {}

    comparisons = []
    notes = []
    if not any(r.get("cka_points") for r in rows):
        notes.append("CKA not measured: the teacher exposes no feature points (name some with cka_points)")
    if "teacher" in by_cond:
        for metric in spec.metrics:
            a = values(by_cond["teacher"], metric)
            for c in spec.conditions:
                if c == "teacher":
                    continue
                b = values(by_cond[c], metric)
                if len(a) < 2 or len(b) < 2:
                    notes.append(f"{metric}: teacher vs {c} not tested (fewer than 2 defined values)")
                    continue
                comparisons.append({"a": a, "b": b, "higher_is_better": METRICS[metric], "metric": metric,
                                    "label_a": "teacher", "label_b": c, "claim": "more similar to the teacher"})
    else:
        notes.append("no 'teacher' condition: nothing to test against")
    tests = stats.compare_many(comparisons, alpha=spec.alpha, design_note=False) if comparisons else []
    if tests and stats.permutation_floor(tests) >= spec.alpha:
        notes.append(f"With {len(spec.seeds)} seeds per condition and {len(tests)} tests, the exact permutation "
                     f"test cannot reach p<{spec.alpha:g} after Holm (smallest reachable: "
                     f"{stats.permutation_floor(tests):.2g}); significance rests on Welch's test. More seeds, or "
                     "fewer metrics or conditions, let the permutation test confirm it.")

    effects = {}
    if "independent" in by_cond:
        base = values(by_cond["independent"], "accuracy")
        for c in spec.conditions:
            if c != "independent":
                effects[c] = stats.effect(values(by_cond[c], "accuracy"), base, seed=spec.seed)
    else:
        notes.append("no 'independent' condition: accuracy effects not computed")

    index = {n: i for i, n in enumerate(pairwise["names"])}
    within = {}
    for c, group in by_cond.items():
        idx = [index[r["name"]] for r in group]
        pairs = [(i, j) for k, i in enumerate(idx) for j in idx[k + 1:]]
        if pairs:
            within[c] = {m: float(np.mean([pairwise[m][i][j] for i, j in pairs]))
                         for m in ("agreement", "js_divergence")}
    # Does the student's own seed (initialisation, batch order) shape it more than its teacher?
    same_seed = {}
    if "independent" in by_cond:
        ind = {r["seed"]: index[r["name"]] for r in by_cond["independent"]}
        for c, group in by_cond.items():
            if c == "independent":
                continue
            same = [pairwise["agreement"][index[r["name"]]][ind[r["seed"]]] for r in group if r["seed"] in ind]
            other = [pairwise["agreement"][index[r["name"]]][j] for r in group for s, j in ind.items() if s != r["seed"]]
            if same and other:
                same_seed[c] = {"same_seed": float(np.mean(same)), "other_seeds": float(np.mean(other)),
                                "with_teacher": float(np.mean([pairwise["agreement"][0][index[r["name"]]]
                                                               for r in group]))}
    return {"summaries": summaries, "reference_groups": reference_groups, "tests": tests,
            "accuracy_effects": effects, "within_condition": within, "same_seed": same_seed, "notes": notes,
            "headline": headline(tests, spec.alpha)}


def headline(tests: list[dict], alpha: float) -> list[str]:
    """One line per control: on how many metrics KD students beat it, significantly."""
    lines = []
    for control in dict.fromkeys(t["label_b"] for t in tests):
        ts = [t for t in tests if t["label_b"] == control]
        sig = [t["metric"] for t in ts if t["significant"]]
        lines.append(f"teacher vs {control}: KD students are significantly more similar to the teacher on "
                     f"{len(sig)} of {len(ts)} metrics" + (f" ({', '.join(sig)})" if sig else "")
                     + f" (Holm-adjusted, alpha {alpha:g})")
    return lines


def collect(spec: KDFunctionalSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    teacher_row, rows, pairwise = measure_students(spec, store, entries, progress)
    return {"split": spec.split, "teacher": teacher_row, "models": rows, "pairwise": pairwise,
            **analyse(spec, rows, pairwise)}


def print_results(results: dict, out: Path) -> None:
    tested = results["spec"]["metrics"]
    short = {"js_divergence": "JS", "activation_distance": "act.dist", "adversarial_transfer": "adv.transfer %",
             "agreement": "agree %", "output_cosine": "cos", "cka_biased": "cka(biased)"}
    t = table(f"study {results['study']}: students vs the teacher, {results['split']} split, "
              f"mean [95% CI] over {len(results['spec']['seeds'])} seeds",
              ["condition", "acc %", *[short.get(m, m) for m in tested]])

    def cell(s, pct=False):
        if not s:
            return "–"
        k, d = (100, 1) if pct else (1, 3)
        return f"{k * s['mean']:.{d}f} [{k * s['ci_low']:.{d}f},{k * s['ci_high']:.{d}f}]"

    groups = {**results["summaries"], **{f"({k})": v for k, v in results["reference_groups"].items()}}
    for name, summ in groups.items():
        t.add_row(name, cell(summ["accuracy"], True),
                  *[cell(summ.get(m), m in ("agreement", "adversarial_transfer")) for m in tested])
    console(200).print(t)
    echo(f"teacher accuracy: {100 * results['teacher']['accuracy']:.2f}%", *results["headline"])
    for c, f in results["accuracy_effects"].items():
        echo(f"accuracy, {c} vs independent: {100 * f['diff']:+.2f} points "
             f"[{100 * f['ci_low']:+.2f}, {100 * f['ci_high']:+.2f}], p={f['p']:.3g}")
    echo(f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


register_study_kind("kd-functional", spec=KDFunctionalSpec, expand=expand_kd, collect=collect,
                    report=write_kd_report, print=print_results)
