"""The ``moonshine`` study: a family of cheap-convolution students of one WRN teacher.

Moonshine (Crowley, Gray & Storkey, NeurIPS 2018): the student is the teacher's own
architecture with both 3x3 convolutions of every basic block replaced by a cheap block
(:mod:`compresslab.models.blocks`), trained with the teacher's hyperparameters. For each
block in ``blocks`` and each training ``mode``:

- ``scratch``: cross-entropy only;
- ``at``: CE + attention transfer from the teacher (β on each group output);
- ``at+kd``: CE + AT + Hinton KD (``kd.alpha``, ``kd.temperature``).

Each student reports params, MACs, bytes, measured latency (every model side by side at
collect time), test error and every output metric against the teacher; the report plots
params against error with the Pareto frontier marked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from compresslab.console import console, echo, short, table
from compresslab.errors import UserError
from compresslab.measure import compare_logits, cost_report, latency
from compresslab.measure.pareto import pareto_front
from compresslab.report.moonshine import write_moonshine_report
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps import data_of
from compresslab.steps.common import load_model
from compresslab.steps.specs import data_spec, distill_spec, train_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions
from compresslab.train.recipe import Recipe, Seed

MODES = ("scratch", "at", "at+kd")


class KD(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.9, ge=0, le=1)
    temperature: float = Field(4.0, gt=0)


class MoonshineSpec(RunOptions):
    """A Moonshine study (``kind: moonshine``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["moonshine"]
    name: str = "moonshine"
    data: str = "mnist1d"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: Seed = 0
    teacher: ModelSpec = Field(description="a WRN (wrn-D-K or wrn1d-D-K) with the standard Conv blocks")
    recipe: Recipe = Field(default_factory=Recipe, description="teacher and students alike")
    blocks: list[str] = Field(min_length=1)
    modes: list[Literal[MODES]] = Field(default_factory=lambda: ["scratch", "at"], min_length=1)
    beta: float = Field(1000.0, gt=0, description="attention-transfer weight")
    at_points: list[str] = Field(default_factory=lambda: ["group1", "group2", "group3"])
    kd: KD = Field(default_factory=KD)
    scale_substitute_wd: bool = Field(False, description="scale weight decay on structured pointwise "
                                      "substitutes by their compression ratio")
    latency: bool = True
    split: Literal["val", "test"] = "test"

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: list[str]) -> list[str]:
        from compresslab.models.blocks import parse_block

        for name in v:
            try:
                parse_block(name)
            except UserError as e:
                raise ValueError(str(e)) from None
        if len(set(v)) != len(v):
            raise ValueError("blocks must be distinct")
        return v

    @field_validator("teacher")
    @classmethod
    def _wrn(cls, v: ModelSpec) -> ModelSpec:
        if not v.name.startswith(("wrn-", "wrn1d-")):
            raise ValueError(f"the teacher must be a Wide ResNet (wrn-D-K or wrn1d-D-K), got {v.name!r}")
        if v.options.get("block", "Conv") != "Conv":
            raise ValueError("the teacher uses the standard Conv blocks; put cheap blocks under 'blocks'")
        return v


def mode_loss(mode: str, beta: float, kd: KD) -> dict[str, float]:
    """The loss weights of a training mode."""
    if mode == "at":
        return {"ce": 1.0, "at": beta}
    if mode == "at+kd":
        return {"kd": kd.alpha, "ce": 1.0 - kd.alpha, "at": beta}
    return {"ce": 1.0}


def expand_moonshine(spec: MoonshineSpec) -> list[Entry]:
    """The teacher's train step, then one student per block × mode (``info``: block, mode)."""
    data = data_spec(spec.data, spec.val_fraction, spec.seed)
    recipe = spec.recipe.model_dump()
    teacher = Step("train", train_spec(data, spec.teacher.model_dump(), recipe, spec.seed), label="teacher")
    entries = [Entry("teacher", "parent", "train", teacher, {"block": "Conv", "mode": "teacher"})]
    for block in spec.blocks:
        # the Conv student has exactly the teacher's spec: its scratch run is the teacher's step
        options = dict(spec.teacher.options) if block == "Conv" else {**spec.teacher.options, "block": block}
        model = {"name": spec.teacher.name, "options": options}
        wd = spec.scale_substitute_wd and "+" in block  # only then: other steps keep their hashes
        for mode in spec.modes:
            name = f"{block}-{mode}"
            if mode == "scratch":
                step = Step("train", train_spec(data, model, recipe, spec.seed, scale_substitute_wd=wd), label=name)
            else:
                step = Step("distill", distill_spec(data, model, recipe, spec.seed, temperature=spec.kd.temperature,
                                                    loss=mode_loss(mode, spec.beta, spec.kd),
                                                    at_points=spec.at_points, scale_substitute_wd=wd),
                            parents={"teacher": teacher}, label=name)
            entries.append(Entry(name, "child", step.kind, step, {"block": block, "mode": mode}))
    return entries


def collect(spec: MoonshineSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    """Per model: params, MACs, bytes (recounted from the model), latency (side by side),
    error and every output metric against the teacher; students on the Pareto front marked."""
    data = data_of(entries[0].step.spec)
    t_logits = np.load(store.path(entries[0].step) / f"logits_{spec.split}.npy")
    rows = []
    for e in entries:
        d = store.path(e.step)
        metrics = read_json(d / "metrics.json")
        model = load_model(d)
        cost = cost_report(model, data.input_shape)  # recounted: not the step's cached numbers
        if spec.latency:
            cost["latency_ms"] = latency(model, data.input_shape)
        acc = metrics["accuracy"][spec.split]
        rows.append({"name": e.name, "block": e.info["block"], "mode": e.info["mode"], "step": d.name,
                     "accuracy": acc, "error": 1.0 - acc, "cost": cost,
                     "function": compare_logits(t_logits, np.load(d / f"logits_{spec.split}.npy")),
                     "train_seconds": metrics.get("train_seconds")})
    front = pareto_front([(r["cost"]["params"], r["error"]) for r in rows[1:]])
    for i, r in enumerate(rows[1:]):
        r["pareto"] = i in front
    return {"split": spec.split, "teacher": rows[0], "students": rows[1:]}


def print_results(results: dict, out: Path) -> None:
    t = table(f"study {results['study']}: cheap-convolution students, {results['split']} split",
              ["block", "mode", "params", "MACs", "ms@256", "error %", "pareto", "agree %"], left=2)
    for r in [results["teacher"], *sorted(results["students"], key=lambda r: r["cost"]["params"])]:
        lat = (r["cost"].get("latency_ms") or {}).get("batch256")
        t.add_row(r["block"], r["mode"], short(r["cost"]["params"]), short(r["cost"]["macs"]),
                  "–" if lat is None else f"{lat:.2f}", f"{100 * r['error']:.2f}", "*" if r.get("pareto") else "",
                  f"{100 * r['function']['agreement']:.2f}")
    console().print(t)
    echo(f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


register_study_kind("moonshine", spec=MoonshineSpec, expand=expand_moonshine, collect=collect,
                    report=write_moonshine_report, print=print_results)
