"""The ``train`` step: a model trained from scratch (cross-entropy, or the spec's ``loss``)."""
from __future__ import annotations

from pathlib import Path

from compresslab.runs.store import Step
from compresslab.steps.common import build, data_of, data_seed, finish_model, history, step_device, wd_scales
from compresslab.steps.registry import register_step
from compresslab.train import Recipe, fit


@register_step("train")
def run_train(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    dev = step_device()
    data = data_of(s, dev)
    model = build(s["model"], data, s["seed"]).to(dev)
    recipe = Recipe(**s["recipe"])
    result = fit(model, data, recipe, loss=s.get("loss"), seed=data_seed(s), callback=callback,
                 weight_decay_scale=wd_scales(s, model))
    finish_model(out, model, data, extra=history(result), precision=recipe.precision)
