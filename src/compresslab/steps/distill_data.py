"""The ``distill-data`` step: a synthetic (or selected) training set, and training on it.

``distill-data`` (no parents) runs :func:`compresslab.compress.dataset_distill.distill_dataset`
on the train split of its ``data`` and writes

* ``distilled.npz``: ``x`` float32 ``(N, C, *spatial)`` in the source's standardised input
  space, ``y`` int64, N = ipc x num_classes (class-major);
* ``distilled.json``: ``{"format": "compresslab-distilled/1", "data", "method", "ipc",
  "input_shape", "num_classes", "seconds", "train_points_seen", "final_loss", "spec"}``.

``load_dataset("distilled:DIR")`` reads it back (:mod:`compresslab.data.distilled`).

``train-distilled`` trains a model on the synthetic set of its ``distilled`` parent (as
``train --data distilled:DIR`` does) with the spec of :func:`~compresslab.steps.specs.train_spec`.
Its data is the parent *role*, not the parent's path, so a study's evaluation steps hash the
same wherever the run store sits; a ``train`` step given ``distilled:DIR`` names the absolute
directory, so its hash moves with the store.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from compresslab.compress.dataset_distill import check_ipc, distill_dataset
from compresslab.data import load_dataset
from compresslab.data.distilled import FORMAT
from compresslab.errors import UserError
from compresslab.runs.store import Step, write_json
from compresslab.steps.common import build, data_of, data_seed, finish_model, history, step_device
from compresslab.steps.registry import register_step
from compresslab.train import Recipe, fit


def check_distill_data(step: Step, parents: dict) -> None:
    s = step.spec
    data = data_of(s)
    if data.task != "classification" or len(data.input_shape) != 3:
        raise UserError(f"distill-data needs an image classification dataset (C, H, W); {s['data']['name']} "
                        f"has inputs {data.input_shape}")
    check_ipc(data.y_train, s["ipc"], data.num_classes)
    if "model" in s:
        net = build(s["model"], data, s["seed"])  # the model must fit the data
        if s["method"] in ("dm", "herding") and not hasattr(net, "embed"):
            raise UserError(f"--method {s['method']} compares embeddings: the model needs an embed() method "
                            f"(e.g. --model convnet), and {s['model']['name']} has none")


@register_step("distill-data", check=check_distill_data)
def run_distill_data(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    data = data_of(s, step_device())
    keys = ("init", "iterations", "lr_img", "batch_real", "dsa", "herding_epochs")
    t0 = time.perf_counter()
    result = distill_dataset(data, method=s["method"], ipc=s["ipc"], model=s.get("model"), seed=s["seed"],
                             callback=callback, **{k: s[k] for k in keys if k in s})
    seconds = time.perf_counter() - t0
    np.savez(out / "distilled.npz", x=result.x.numpy().astype(np.float32), y=result.y.numpy().astype(np.int64))
    write_json(out / "distilled.json", {
        "format": FORMAT, "data": s["data"], "method": s["method"], "ipc": s["ipc"],
        "input_shape": list(data.input_shape), "num_classes": data.num_classes, "seconds": seconds,
        "train_points_seen": result.train_points_seen,
        "final_loss": result.losses[-1] if result.losses else None, "losses": result.losses, "spec": s})


def distilled_parent(parents: dict):
    """The ``distilled`` parent's set as a dataset; ``None`` while that parent has not run (a
    study's preflight passes the parent :class:`Step`)."""
    parent = parents["distilled"]
    return None if isinstance(parent, Step) else load_dataset(f"distilled:{parent}")


def check_train_distilled(step: Step, parents: dict) -> None:
    if "distilled" not in parents:
        raise UserError("a train-distilled step needs a 'distilled' parent (a distill-data step)")
    data = distilled_parent(parents)
    if data is not None:
        build(step.spec["model"], data, step.spec["seed"])


@register_step("train-distilled", check=check_train_distilled)
def run_train_distilled(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    dev = step_device()
    data = distilled_parent(parents).to(dev)
    model = build(s["model"], data, s["seed"]).to(dev)
    recipe = Recipe(**s["recipe"])
    result = fit(model, data, recipe, loss=s.get("loss"), seed=data_seed(s), callback=callback)
    finish_model(out, model, data, extra=history(result), precision=recipe.precision)
