"""Measurement steps: what a study compares per model, run as steps so they run in parallel.

* ``adversarial`` (parent ``reference``): adversarial examples of one split crafted once on
  the reference model (:func:`compresslab.measure.adversarial.craft`). Spec: ``data``,
  ``split``, ``attack``, ``eps``, ``steps``, ``seed``. Writes ``adversarial.npy`` (the
  examples, in input order) and ``adversarial.json``.
* ``similarity`` (parents ``reference``, ``model`` and optionally ``adversarial``): one
  model against the reference on the split: linear CKA at the feature points (``cka_points``;
  ``None``: the points both share, none measured when the reference has no feature points)
  and, with the ``adversarial`` parent, the transfer of its examples
  (:func:`compresslab.measure.adversarial.transfer`). Writes ``similarity.json``:
  ``{"cka_points": {point: {"unbiased", "biased"}}, "adversarial": {...} | None}``.

A study's collector reads these files instead of measuring every model in one process
after the last step (``kd-functional``): with ``--workers`` or Ray, each model's
measurement starts as soon as the model is trained.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compresslab.errors import UserError
from compresslab.measure.adversarial import ATTACKS, craft, transfer
from compresslab.measure.cka import cka_between
from compresslab.models import feature_points
from compresslab.runs.store import Step, read_json, write_json
from compresslab.steps.common import data_of, load_model
from compresslab.steps.registry import register_step


def _split(spec: dict):
    x, y = data_of(spec).split(spec["split"])
    if len(y) == 0:
        raise UserError(f"the {spec['split']} split is empty: nothing to measure on")
    return x, y


def check_adversarial(step: Step, parents: dict) -> None:
    s = step.spec
    if s["attack"] not in ATTACKS:
        raise UserError(f"unknown attack {s['attack']!r}; use one of {', '.join(ATTACKS)}")
    if not s["eps"] > 0 or s["steps"] < 1:
        raise UserError(f"adversarial: eps must be > 0 and steps >= 1 (got eps {s['eps']}, steps {s['steps']})")


@register_step("adversarial", check=check_adversarial)
def run_adversarial(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    x, y = _split(s)
    reference = load_model(parents["reference"])
    x_adv = craft(reference, x, y, attack=s["attack"], eps=s["eps"], steps=s["steps"], seed=s["seed"])
    np.save(out / "adversarial.npy", x_adv.cpu().numpy())
    write_json(out / "adversarial.json", {"split": s["split"], "n": int(x_adv.shape[0]), "attack": s["attack"],
                                          "eps": s["eps"], "steps": s["steps"]})


def check_similarity(step: Step, parents: dict) -> None:
    missing = {"reference", "model"} - set(parents)
    if missing:
        raise UserError(f"similarity step: needs the parents {sorted(missing)}")


@register_step("similarity", check=check_similarity)
def run_similarity(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    x, y = _split(s)
    reference, model = load_model(parents["reference"]), load_model(parents["model"])
    points = s.get("cka_points")
    cka = {}
    if points is not None or feature_points(reference):
        cka = {k: {"unbiased": v["unbiased"], "biased": v["biased"]}
               for k, v in cka_between(reference, model, x, points=points).items()}
    adversarial = None
    if "adversarial" in parents:
        x_adv = torch.from_numpy(np.load(parents["adversarial"] / "adversarial.npy")).to(x.device)
        if read_json(parents["adversarial"] / "adversarial.json")["split"] != s["split"] or x_adv.shape != x.shape:
            raise UserError(f"similarity step: the adversarial examples in {parents['adversarial'].name} are not of "
                            f"the {s['split']} split")
        adversarial = transfer(reference, model, x, x_adv, y)
    write_json(out / "similarity.json", {"split": s["split"], "cka_points": cka, "adversarial": adversarial})
