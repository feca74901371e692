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
  ``student-siddo``             no teacher: CE only, the student's initialisation (seed s),
                                another data order (1000 + s): the *SIDDO* control
  ``student-disdo``             no teacher: CE only, another initialisation (1000 + s), the
                                student's data order (s): the *DISDO* control
  ``siddo`` / ``disdo``         the *teacher's* architecture retrained with the reference
                                teacher's initialisation and another data order, or the
                                other way round: how much of the teacher's function its
                                initialisation or its data order fixes (reference bands)
  ============================  ===========================================================

  (Mason-Williams, Mason-Williams & Yannakoudakis, "A Functional Perspective on Knowledge
  Distillation in Neural Networks", 2025, separate the two sources of run-to-run variation
  this way and judge transfer against the SIDDO control.)

* every student is compared with the *reference* teacher on the ``split``: output
  metrics (one pairwise-matrix pass over all models), linear CKA at the shared feature
  points, and the transfer rate of adversarial examples crafted on the teacher (these two
  as run-store steps: one ``adversarial`` step, one ``similarity`` step per model);
* per condition and metric: mean, std and a 95% bootstrap CI over seeds; the
  ``teacher`` condition is tested against every other condition on every metric
  (one-sided Welch + exact permutation, Cohen's d, Holm across the whole family),
  and each condition's accuracy against ``independent`` (two-sided, bootstrap CI);
* agreement split by the teacher's correctness (:mod:`compresslab.measure.inheritance`):
  on the examples the teacher gets right and those it gets wrong, where agreeing means
  inheriting the teacher's error; per condition with a teacher, the *asymmetry* (gain
  over the ``control`` on wrong examples minus the gain on right ones, paired by seed),
  tested one-sided with Holm across conditions;
* ``sweep``: the KD weight α, the temperature and the student's width as study axes,
  each value a further set of students, summarised against the axis with the control's
  band (and, for widths, agreement against the student/teacher parameter ratio, fitted
  on log10 of the ratio).

Outputs: ``runs/studies/<name>-<hash12>/results.json`` and ``report.html``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compresslab.console import console, echo, table
from compresslab.errors import UserError
from compresslab.measure import stats
from compresslab.measure.inheritance import asymmetry_family, split_by_correctness
from compresslab.measure.pairwise import pairwise_metrics
from compresslab.report.kd import write_kd_report
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps import data_of
from compresslab.steps.specs import adversarial_spec, data_spec, distill_spec, similarity_spec, train_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions
from compresslab.train.losses import list_terms
from compresslab.train.recipe import Recipe, Seed

#: Conditions whose students learn from a teacher (real, noise or untrained).
TEACHER_CONDITIONS = ("teacher", "teacher-other-seed", "uniform-noise", "gaussian-noise", "untrained", "self")
#: Students trained without a teacher: the controls transfer is judged against.
STUDENT_CONTROLS = ("independent", "student-siddo", "student-disdo")
#: Retrains of the teacher's architecture, reported as reference bands, never tested.
TEACHER_CONTROLS = ("siddo", "disdo")
CONDITIONS = TEACHER_CONDITIONS + STUDENT_CONTROLS + TEACHER_CONTROLS
#: Similarity metrics and whether a larger value means "more similar to the teacher".
METRICS = {"agreement": True, "kappa": True, "js_divergence": False, "activation_distance": False,
           "output_cosine": True, "kl": False, "cka": True, "cka_biased": True, "adversarial_transfer": True}
OUTPUT_METRICS = ("agreement", "kappa", "js_divergence", "activation_distance", "output_cosine", "kl")
OTHER_SEED = 1000  # teacher-other-seed / untrained teachers / the other half of SIDDO and DISDO use OTHER_SEED + s
#: The correctness-split quantities summarised per condition.
SPLIT_KEYS = ("agree_right", "agree_wrong", "other_wrong_given_wrong", "same_error_given_both_wrong")


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


class Sweep(BaseModel):
    """Study axes: each value of each axis is one more set of students (x seeds), with the
    other settings at the study's own (the *base*, whose students are reused)."""

    model_config = ConfigDict(extra="forbid")
    alpha: list[float] | None = Field(None, min_length=1, description="KD weights α: loss {kd: α, ce: 1 - α}")
    temperature: list[float] | None = Field(None, min_length=1, description="KD temperatures")
    student_widths: list[int | list[int]] | None = Field(
        None, min_length=1, description="values of the student's width option (sizes); teacher and independent "
        "students at each")
    width_option: str | None = Field(None, description="the student option the widths set (default: width or "
                                     "widths, whichever the student's options name)")
    conditions: list[Literal[TEACHER_CONDITIONS]] | None = Field(
        None, min_length=1, description="the conditions swept over alpha and temperature (default: those of teacher, "
        "uniform-noise and gaussian-noise the study runs)")

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v):
        if v is not None and any(not 0 < a < 1 for a in v):
            raise ValueError("each alpha must be in (0, 1): the loss is {kd: alpha, ce: 1 - alpha}")
        return _distinct_values(v, "alpha")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        if v is not None and any(not t > 0 for t in v):
            raise ValueError("each temperature must be > 0")
        return _distinct_values(v, "temperature")

    @field_validator("student_widths")
    @classmethod
    def _widths(cls, v):
        if v is not None and any(w < 1 for x in v for w in (x if isinstance(x, list) else [x])):
            raise ValueError("widths must be positive")
        return _distinct_values(v, "student_widths")


def _distinct_values(v, name: str):
    if v is not None and len({repr(x) for x in v}) != len(v):
        raise ValueError(f"{name}: values must be distinct")
    return v


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
    control: Literal[STUDENT_CONTROLS] | None = Field(
        None, description="the no-teacher students transfer is judged against (the asymmetry of error "
        "transfer, the sweep bands); default: student-siddo when the study runs it, else independent")
    sweep: Sweep | None = None

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
        if self.control is not None and self.control not in self.conditions:
            raise ValueError(f"control: {self.control} is not among the conditions; add it or drop control")
        if self.sweep is not None:
            sw = self.sweep
            if sw.alpha and set(self.loss) - {"kd", "ce"}:
                raise ValueError(f"sweep.alpha sets the loss to {{kd: alpha, ce: 1 - alpha}}, but the loss has "
                                 f"{sorted(set(self.loss) - {'kd', 'ce'})}; drop them or the alpha sweep")
            missing = sorted(set(sw.conditions or []) - set(self.conditions))
            if missing:
                raise ValueError(f"sweep.conditions: {missing} are not among the study's conditions; add them")
            if sw.student_widths and "teacher" not in self.conditions:
                raise ValueError("sweep.student_widths compares KD and independent students at each size: "
                                 "the conditions need teacher")
            if sw.student_widths:
                self.width_option()  # raises when it cannot be told
        return self

    def width_option(self) -> str:
        """The student option that ``sweep.student_widths`` sets."""
        if self.sweep.width_option:
            return self.sweep.width_option
        named = [k for k in ("width", "widths") if k in self.student.options]
        if len(named) != 1:
            raise ValueError("sweep.student_widths: name the student option the widths set with "
                             "sweep.width_option (e.g. width for cnn1d, widths for mlp)")
        return named[0]

    def control_condition(self) -> str | None:
        """The no-teacher condition that transfer is judged against (see ``control``)."""
        if self.control:
            return self.control
        return next((c for c in ("student-siddo", "independent") if c in self.conditions), None)

    def base_alpha(self) -> float | None:
        """α of the study's own loss when it is {kd, ce} (kd's share of the two weights)."""
        if set(self.loss) - {"kd", "ce"} or "kd" not in self.loss:
            return None
        total = self.loss["kd"] + self.loss.get("ce", 0.0)
        return self.loss["kd"] / total if total else None

    def swept_conditions(self) -> list[str]:
        if self.sweep.conditions:
            return list(self.sweep.conditions)
        return [c for c in ("teacher", "uniform-noise", "gaussian-noise") if c in self.conditions]


# -- steps ------------------------------------------------------------------------------------


def expand_kd(spec: KDFunctionalSpec) -> list[Entry]:
    """The reference teacher, the other teachers some conditions need (the retrained
    teachers of ``teacher-other-seed``, the ``self`` teacher), the teacher's SIDDO/DISDO
    retrains, one student per condition × seed (``info``: condition, seed), then the
    students of the sweep's axes (``info`` adds ``sweep``: axis and value), and last the
    measurement steps (:func:`measurements`). Step specs come from the shared builders, so
    models shared with other studies hash to the same directories."""
    data = data_spec(spec.data, spec.val_fraction, spec.seed)
    recipe = spec.recipe.model_dump()
    s_recipe = (spec.student_recipe or spec.recipe).model_dump()
    teacher_model, student_model = spec.teacher.model_dump(), spec.student.model_dump()
    at_points = spec.at_points if "at" in spec.loss else None

    def train(model: dict, rec: dict, seed: int, label: str, data_seed: int | None = None) -> Step:
        return Step("train", train_spec(data, model, rec, seed, data_seed=data_seed), label=label)

    def distill(seed: int, label: str, parent: Step | None, teacher: dict | None, *, loss: dict,
                temperature: float, student: dict) -> Step:
        return Step("distill", distill_spec(data, student, s_recipe, seed, loss=loss, teacher=teacher,
                                            temperature=temperature, at_points=at_points),
                    parents={"teacher": parent} if parent else {}, label=label)

    reference = train(teacher_model, recipe, spec.seed, "teacher")
    entries = [Entry("teacher", "parent", "train", reference)]
    self_teacher = None
    if "self" in spec.conditions:
        self_teacher = train(student_model, s_recipe, spec.seed, "self-teacher")
        entries.append(Entry("self-teacher", "control", "train", self_teacher, {"seed": spec.seed}))
    other_teachers: dict[int, Step] = {}

    def other_teacher(seed: int) -> Step:
        if seed not in other_teachers:
            other = other_teachers[seed] = train(teacher_model, recipe, OTHER_SEED + seed,
                                                 f"teacher-seed{OTHER_SEED + seed}")
            entries.append(Entry(other.label, "control", "train", other, {"seed": OTHER_SEED + seed}))
        return other_teachers[seed]

    def student_step(cond: str, seed: int, label: str, loss: dict | None = None, temperature: float | None = None,
                     student: dict | None = None) -> Step:
        student = student or student_model
        kd = {"loss": loss or spec.loss, "temperature": temperature or spec.temperature, "student": student}
        if cond == "teacher":
            return distill(seed, label, reference, None, **kd)
        if cond == "teacher-other-seed":
            return distill(seed, label, other_teacher(seed), None, **kd)
        if cond == "uniform-noise":
            return distill(seed, label, None, {"kind": cond, "low": spec.noise.low, "high": spec.noise.high,
                                               "seed": seed}, **kd)
        if cond == "gaussian-noise":
            return distill(seed, label, None, {"kind": cond, "sigma": spec.noise.sigma, "seed": seed}, **kd)
        if cond == "untrained":
            return distill(seed, label, None, {"kind": "untrained", "model": teacher_model,
                                               "seed": OTHER_SEED + seed}, **kd)
        if cond == "self":
            return distill(seed, label, self_teacher, None, **kd)
        if cond == "student-siddo":
            return train(student, s_recipe, seed, label, data_seed=OTHER_SEED + seed)
        if cond == "student-disdo":
            return train(student, s_recipe, OTHER_SEED + seed, label, data_seed=seed)
        return train(student, s_recipe, seed, label)  # independent

    students = []
    for cond in spec.conditions:
        for seed in spec.seeds:
            label = f"{cond}-s{seed}"
            if cond in TEACHER_CONTROLS:  # the teacher's architecture: its init or its data order, kept
                init, order = (spec.seed, OTHER_SEED + seed) if cond == "siddo" else (OTHER_SEED + seed, spec.seed)
                step = train(teacher_model, recipe, init, label, data_seed=order)
                entries.append(Entry(label, "control", "train", step, {"condition": cond, "seed": seed}))
                continue
            step = student_step(cond, seed, label)
            students.append(Entry(label, "child" if cond == "teacher" else "control", step.kind, step,
                                  {"condition": cond, "seed": seed}))
    for axis, value, cond, variant in sweep_points(spec):
        for seed in spec.seeds:
            label = f"{cond}-{axis_label(axis, value)}-s{seed}"
            step = student_step(cond, seed, label, **variant)
            students.append(Entry(label, "control", step.kind, step,
                                  {"condition": cond, "seed": seed, "sweep": {"axis": axis, "value": value}}))
    return measurements(spec, data, entries + students)


def measurements(spec: KDFunctionalSpec, data: dict, models: list[Entry]) -> list[Entry]:
    """``models`` followed by the measurement steps (role ``measure``): the adversarial
    examples crafted once on the reference teacher, and per other model one ``similarity``
    step (CKA, adversarial transfer) against it, so that each runs as soon as its model is
    trained (:mod:`compresslab.steps.similarity`)."""
    reference = models[0].step
    out, parents = [], {"reference": reference}
    if spec.adversarial is not None:
        a = spec.adversarial
        attack = Step("adversarial", adversarial_spec(data, spec.split, attack=a.attack, eps=a.eps, steps=a.steps,
                                                      seed=spec.seed), parents={"reference": reference},
                      label="adversarial")
        out.append(Entry("adversarial", "measure", "adversarial", attack))
        parents["adversarial"] = attack
    sim = similarity_spec(data, spec.split, cka_points=spec.cka_points)
    for e in models[1:]:
        step = Step("similarity", sim, parents={**parents, "model": e.step}, label=f"similarity-{e.name}")
        out.append(Entry(f"similarity:{e.name}", "measure", "similarity", step, {"of": e.name}))
    return models + out


def axis_label(axis: str, value) -> str:
    if axis == "student_widths":
        return "w" + ("x".join(map(str, value)) if isinstance(value, list) else str(value))
    return f"{'alpha' if axis == 'alpha' else 'T'}{value:g}"


def sweep_points(spec: KDFunctionalSpec) -> list[tuple[str, object, str, dict]]:
    """``(axis, value, condition, student_step overrides)`` for every swept value other than
    the base (whose students the study runs anyway)."""
    sw = spec.sweep
    if sw is None:
        return []
    points = []
    base_alpha = spec.base_alpha()
    for a in sw.alpha or []:
        if base_alpha is None or not math.isclose(a, base_alpha):
            points += [("alpha", a, c, {"loss": {"kd": a, "ce": round(1.0 - a, 12)}}) for c in spec.swept_conditions()]
    for t in sw.temperature or []:
        if not math.isclose(t, spec.temperature):
            points += [("temperature", t, c, {"temperature": t}) for c in spec.swept_conditions()]
    option = spec.width_option() if sw.student_widths else None
    for w in sw.student_widths or []:
        if spec.student.options.get(option) != w:
            student = {**spec.student.model_dump(), "options": {**spec.student.options, option: w}}
            points += [("student_widths", w, c, {"student": student}) for c in ("teacher", "independent")]
    return points


# -- measurement ------------------------------------------------------------------------------


def measure_students(spec: KDFunctionalSpec, store: RunStore, entries: list[Entry]) -> tuple[dict, list[dict], dict]:
    """The teacher's row, per-model rows (accuracy + every similarity to the reference
    teacher) and the pairwise output-metric matrices over [teacher, other teachers, students].

    Output metrics come from the cached logits, in one pairwise pass; CKA and adversarial
    transfer from each model's ``similarity`` step (:func:`measurements`)."""
    reference = entries[0].step
    data = data_of(reference.spec)
    y = data.split(spec.split)[1]
    if len(y) < 4:
        raise UserError(f"the {spec.split} split has {len(y)} examples; CKA and the statistics need more "
                        "(use split: test or a larger val_fraction)")
    similarity = {e.info["of"]: read_json(store.path(e.step) / "similarity.json")
                  for e in entries if e.method == "similarity"}
    entries = [e for e in entries if e.role != "measure"]

    def role(i: int, e: Entry) -> str:
        """The reference teacher; a student (of a condition other than the teacher's own
        retrains); or another teacher (retrains, the self teacher)."""
        if i == 0:
            return "reference"
        condition = e.info.get("condition")
        return "student" if condition is not None and condition not in TEACHER_CONTROLS else "other-teacher"

    models = [{"name": e.name, "step": e.step, "condition": e.info.get("condition"), "sweep": e.info.get("sweep"),
               "role": role(i, e)} for i, e in enumerate(entries)]
    logits = np.stack([np.load(store.path(m["step"]) / f"logits_{spec.split}.npy") for m in models])
    matrices = pairwise_metrics(logits)
    labels = y.cpu().numpy()
    rows = []
    for i, m in enumerate(models[1:], start=1):
        d = store.path(m["step"])
        metrics = read_json(d / "metrics.json")
        row = {"name": m["name"], "role": m["role"], "condition": m.get("condition"),
               "seed": m["step"].spec["seed"], "data_seed": m["step"].spec.get("data_seed", m["step"].spec["seed"]),
               "step": d.name, "accuracy": metrics["accuracy"][spec.split],
               "train_seconds": metrics.get("train_seconds"), "params": metrics["cost"]["params"],
               **{k: float(matrices[k][0, i]) for k in OUTPUT_METRICS},
               "by_correctness": split_by_correctness(logits[0], logits[i], labels)}
        if m["sweep"]:
            row["sweep"] = m["sweep"]
        sim = similarity[m["name"]]
        row["cka_points"] = sim["cka_points"]
        unb = [v["unbiased"] for v in sim["cka_points"].values() if v["unbiased"] is not None]
        bia = [v["biased"] for v in sim["cka_points"].values() if v["biased"] is not None]
        row["cka"] = float(np.mean(unb)) if unb else None
        row["cka_biased"] = float(np.mean(bia)) if bia else None
        if sim["adversarial"] is not None:
            row["adversarial_transfer"] = sim["adversarial"]["transfer_rate"]
            row["adversarial"] = {k: v for k, v in sim["adversarial"].items() if k != "transfer_rate"}
        rows.append(row)
    t_dir = store.path(reference)
    t_metrics = read_json(t_dir / "metrics.json")
    teacher_row = {"name": "teacher", "accuracy": t_metrics["accuracy"][spec.split], "step": t_dir.name,
                   "params": t_metrics["cost"]["params"]}
    pairwise = {"names": [m["name"] for m in models], **{k: v.tolist() for k, v in matrices.items()}}
    return teacher_row, rows, pairwise


def analyse(spec: KDFunctionalSpec, rows: list[dict], pairwise: dict, teacher: dict | None = None) -> dict:
    """Summaries per condition, the tests of ``teacher`` against each other condition, the
    accuracy effects against ``independent``, and each condition's seed-to-seed agreement."""
    students = [r for r in rows if r["role"] == "student" and not r.get("sweep")]
    by_cond = {c: [r for r in students if r["condition"] == c] for c in spec.conditions if c not in TEACHER_CONTROLS}
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
    for c in TEACHER_CONTROLS:
        group = [r for r in rows if r["condition"] == c]
        if len(group) >= 2:
            reference_groups[f"teacher {c.upper()}"] = summary(group)

    comparisons = []
    notes = []
    if not any(r.get("cka_points") for r in rows):
        notes.append("CKA not measured: the teacher exposes no feature points (name some with cka_points)")
    if "teacher" in by_cond:
        for metric in spec.metrics:
            a = values(by_cond["teacher"], metric)
            for c in by_cond:
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
        for c in by_cond:
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
    groups = {**by_cond, **{f"teacher {c.upper()}": [r for r in rows if r["condition"] == c]
                            for c in TEACHER_CONTROLS}}
    correctness = {name: {k: stats.summarize(v, seed=spec.seed) if (v := [r["by_correctness"][k] for r in g
                                                                      if r["by_correctness"][k] is not None]) else None
                          for k in SPLIT_KEYS} for name, g in groups.items() if g}
    transfer = asymmetries(spec, by_cond, notes)
    return {"summaries": summaries, "reference_groups": reference_groups, "tests": tests,
            "accuracy_effects": effects, "within_condition": within, "same_seed": same_seed, "notes": notes,
            "correctness": correctness, "control": spec.control_condition(), "asymmetry": transfer,
            "sweeps": sweeps(spec, rows, by_cond, (teacher or {}).get("params")),
            "headline": headline(tests, spec.alpha) + [a["verdict_line"] for a in transfer.values()]}


def asymmetries(spec: KDFunctionalSpec, by_cond: dict[str, list[dict]], notes: list[str]) -> dict:
    """Per condition with a teacher: is the teacher's *error* transferred more than its correct
    predictions, relative to the control (paired by seed)? One-sided, Holm across conditions."""
    control = spec.control_condition()
    if control is None or not by_cond.get(control):
        notes.append("asymmetry of error transfer not measured: no no-teacher control (add student-siddo)")
        return {}
    ctrl = {r["seed"]: r["by_correctness"] for r in by_cond[control]}
    pairs = {c: [(r["by_correctness"], ctrl[r["seed"]]) for r in sorted(group, key=lambda r: r["seed"])
                 if r["seed"] in ctrl] for c, group in by_cond.items() if c in TEACHER_CONDITIONS}
    out, more = asymmetry_family(pairs, control=control, alpha=spec.alpha, seed=spec.seed)
    notes += more
    return out


SWEEP_METRICS = ("accuracy", "agreement", "js_divergence", "activation_distance")


def sweeps(spec: KDFunctionalSpec, rows: list[dict], by_cond: dict[str, list[dict]],
           teacher_params: int | None) -> dict:
    """Per axis: each condition's summaries at every value (the base value from the study's
    own students), the control's band, and for widths the student/teacher parameter ratio
    with a least-squares fit of agreement on its log10 per condition."""
    if spec.sweep is None:
        return {}
    control = spec.control_condition()
    band = {m: stats.summarize([r[m] for r in by_cond[control]], seed=spec.seed) for m in SWEEP_METRICS} \
        if control and len(by_cond.get(control, [])) >= 1 else None
    out = {}
    axes = {"alpha": (spec.sweep.alpha, spec.base_alpha()), "temperature": (spec.sweep.temperature, spec.temperature)}
    if spec.sweep.student_widths:
        axes["student_widths"] = (spec.sweep.student_widths, spec.student.options.get(spec.width_option()))
    for axis, (values, base) in axes.items():
        if not values:
            continue
        points = list(values) + ([base] if base is not None and not any(_same(base, v) for v in values) else [])
        if axis != "student_widths":
            points.sort()
        conds = ("teacher", "independent") if axis == "student_widths" else spec.swept_conditions()
        series = {}
        for c in conds:
            line = []
            for v in points:
                group = by_cond.get(c, []) if base is not None and _same(v, base) else [
                    r for r in rows if r.get("sweep") == {"axis": axis, "value": v} and r["condition"] == c]
                if group:
                    line.append({"value": v, "n": len(group), "params": float(np.mean([r["params"] for r in group])),
                                 **{m: stats.summarize([r[m] for r in group], seed=spec.seed) for m in SWEEP_METRICS}})
            if line:
                series[c] = line
        entry = {"values": points, "base": base, "series": series, "band": band, "band_condition": control,
                 "trends": {c: trends(line, axis) for c, line in series.items() if len(line) >= 2}}
        if axis == "student_widths" and teacher_params:
            entry["fits"] = {}
            for c, line in series.items():
                for point in line:
                    point["param_ratio"] = point["params"] / teacher_params
                if len(line) >= 2:
                    xs = np.log10([pt["param_ratio"] for pt in line])
                    ys = [pt["agreement"]["mean"] for pt in line]
                    slope, intercept = np.polyfit(xs, ys, 1)
                    r = float(np.corrcoef(xs, ys)[0, 1]) if len(line) > 2 else None
                    entry["fits"][c] = {"slope": float(slope), "intercept": float(intercept), "r": r}
        out[axis] = entry
    return out


def trends(line: list[dict], axis: str) -> dict:
    """Spearman's rank correlation of each student's accuracy and agreement with the axis
    value (widths: the parameter count), over every student of the line, two-sided p."""
    from scipy.stats import spearmanr

    out = {}
    for metric in ("accuracy", "agreement"):
        xs = [pt["params"] if axis == "student_widths" else pt["value"] for pt in line for _ in pt[metric]["values"]]
        ys = [v for pt in line for v in pt[metric]["values"]]
        rho, p = spearmanr(xs, ys)
        out[metric] = {"rho": None if math.isnan(rho) else float(rho), "p": None if math.isnan(p) else float(p),
                       "n": len(ys)}
    return out


def _same(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    return math.isclose(a, b)


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
    teacher_row, rows, pairwise = measure_students(spec, store, entries)
    return {"split": spec.split, "teacher": teacher_row, "models": rows, "pairwise": pairwise,
            **analyse(spec, rows, pairwise, teacher_row)}


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
    for axis, sw in results.get("sweeps", {}).items():
        for c, line in sw["series"].items():
            trend = sw["trends"].get(c, {}).get("agreement")
            echo(f"sweep {axis}, {c}: agreement " + ", ".join(
                f"{axis_label(axis, pt['value'])} {100 * pt['agreement']['mean']:.1f}%" for pt in line)
                + (f" (Spearman rho {trend['rho']:+.2f}, p={trend['p']:.2g})" if trend and trend["rho"] is not None
                   else ""))
    for c, f in results["accuracy_effects"].items():
        echo(f"accuracy, {c} vs independent: {100 * f['diff']:+.2f} points "
             f"[{100 * f['ci_low']:+.2f}, {100 * f['ci_high']:+.2f}], p={f['p']:.3g}")
    echo(f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


register_study_kind("kd-functional", spec=KDFunctionalSpec, expand=expand_kd, collect=collect,
                    report=write_kd_report, print=print_results)
