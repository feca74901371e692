"""The ``blockswap`` step: choose a block mix for a parameter budget by Fisher potential at
initialisation (Turner et al., ICLR 2020), then train it with attention transfer from the
``teacher`` parent.

One step does both, because the student's architecture is the search's result. The step
writes ``candidates.csv`` (every sampled candidate with its score) next to the student's
checkpoint, and ``metrics.json`` records the search under ``blockswap``.
"""
from __future__ import annotations

import math
from pathlib import Path

from compresslab.compress.distill import distill
from compresslab.compress.search import block_table, minibatch, sample_candidates, search, write_csv, wrn_geometry
from compresslab.runs.checkpoint import load_checkpoint, read_model_json
from compresslab.runs.store import Step
from compresslab.steps.common import build, data_of, finish_model, history, step_device
from compresslab.steps.registry import register_step
from compresslab.train import Recipe


def _teacher_name(parent) -> str:
    return parent.spec["model"]["name"] if isinstance(parent, Step) else read_model_json(parent)["model"]["name"]


def check_blockswap(step: Step, parents: dict) -> None:
    """A WRN teacher, known blocks, and a budget some block mix can meet (sampling is cheap)."""
    s = step.spec
    data = data_of(s)
    depth, widen, dim = wrn_geometry(_teacher_name(parents["teacher"]))
    table = block_table(depth, widen, s["blocks"], dim=dim, in_channels=data.in_channels,
                        num_classes=data.num_classes)
    sample_candidates(table, 1, s["budget"], seed=s["seed"], max_draws=200 * s["samples"])  # the search's allowance


@register_step("blockswap", check=check_blockswap)
def run_blockswap(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    dev = step_device()
    data = data_of(s, dev)
    name = _teacher_name(parents["teacher"])
    depth, widen, dim = wrn_geometry(name)
    x, y = minibatch(data.x_train, data.y_train, s["batch"], s["seed"])
    found = search(depth, widen, s["blocks"], s["budget"], x, y, samples=s["samples"], dim=dim,
                   in_channels=data.in_channels, num_classes=data.num_classes, seed=s["seed"], device=dev)
    write_csv(found, out / "candidates.csv")
    teacher = load_checkpoint(parents["teacher"])[0]
    student = build({"name": name, "options": {"block": found["best"]}}, data, s["seed"]).to(dev)
    recipe = Recipe(**s["recipe"])
    result = distill(teacher, student, data, recipe, loss={"ce": 1.0, "at": s["beta"]}, at_points=s["at_points"],
                     seed=s["seed"], callback=callback)
    search_record = {k: found[k] for k in ("budget", "best", "best_score", "best_params", "draws", "seconds")}
    search_record["candidates"] = len(found["candidates"])
    search_record["best_score"] = found["best_score"] if math.isfinite(found["best_score"]) else None
    finish_model(out, student, data, extra={**history(result), "blockswap": search_record},
                 precision=recipe.precision)
