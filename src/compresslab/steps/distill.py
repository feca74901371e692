"""The ``distill`` step: a student trained from a teacher with named loss terms.

The teacher is the ``teacher`` parent (a checkpoint), or ``spec["teacher"]`` built inside
the step: ``{"kind": "untrained", "model", "seed"}`` or a noise teacher
``{"kind": "uniform-noise", "low", "high", "seed"}`` / ``{"kind": "gaussian-noise", "sigma", "seed"}``.
"""
from __future__ import annotations

from pathlib import Path

from compresslab.compress.distill import NOISE_KINDS, distill, noise_logits, validate_distill
from compresslab.data import Dataset
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.runs.store import Step
from compresslab.steps.common import build, data_of, data_seed, finish_model, history, parent_model, step_device, wd_scales
from compresslab.steps.registry import register_step
from compresslab.train import Recipe


def make_teacher(s: dict, data: Dataset, parents: dict):
    """The distillation teacher of a step spec (see the module docstring)."""
    t = s.get("teacher")
    if t is None:
        return load_checkpoint(parents["teacher"])[0]
    if t["kind"] == "untrained":
        return build(t["model"], data, t["seed"]).eval()
    if t["kind"] in NOISE_KINDS:
        params = {k: v for k, v in t.items() if k in ("low", "high", "sigma", "seed")}
        return noise_logits(t["kind"], data.x_train.shape[0], data.num_classes, **params,
                            tokens=data.y_train.shape[1] if data.token_level else None)
    raise ValueError(f"unknown teacher kind {t['kind']!r}")


def check_distill(step: Step, parents: dict) -> None:
    s = step.spec
    data = data_of(s)
    teacher = parent_model(parents["teacher"], data) if s.get("teacher") is None else make_teacher(s, data, parents)
    if teacher is not None:
        validate_distill(teacher, build(s["student"], data, s["seed"]), data, loss=s["loss"],
                         temperature=s["temperature"], at_points=s.get("at_points"),
                         hint_points=s.get("hint_points"))


@register_step("distill", check=check_distill)
def run_distill(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    dev = step_device()
    data = data_of(s, dev)
    teacher = make_teacher(s, data, parents)
    student = build(s["student"], data, s["seed"]).to(dev)
    recipe = Recipe(**s["recipe"])
    result = distill(teacher, student, data, recipe, loss=s["loss"],
                     temperature=s["temperature"], at_points=s.get("at_points"), hint_points=s.get("hint_points"),
                     seed=s["seed"], data_seed=data_seed(s), callback=callback, weight_decay_scale=wd_scales(s, student))
    finish_model(out, student, data, extra=history(result), precision=recipe.precision)
