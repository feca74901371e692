"""The ``lottery`` step: iterative magnitude pruning, real or distilled, with its stability.

Runs :func:`compresslab.compress.lottery.imp` (rewinding to the initialisation θ_0) on the
train split of ``data``. With a ``distilled`` parent (a ``distill-data`` step; the parent
*role*, so the hash does not depend on where the store sits) or a spec ``inner_data`` name,
the search loop trains on that synthetic set (distilled pruning, McDermott & Cummings 2023)
and each round's mask, applied to θ_0, is trained once on the real data.

Measured inside the step, on the real data, for the final round's mask:

* the linear-mode-connectivity barrier (Frankle et al., ICML 2020): θ_0 with the mask
  trained twice, under data-order seeds s+1 and s+2, and the largest rise of test error on
  the straight line between them above the line joining the end points
  (:func:`compresslab.measure.landscape.lmc_pair`); with ``lmc_dense`` the same for the
  dense θ_0;
* the Hutchinson estimate tr(H) ≈ (1/S) Σ v_sᵀ H v_s (Rademacher v, kept coordinates only)
  of the final real-trained ticket on the first ``hessian_examples`` training examples
  (:func:`compresslab.measure.sharpness.hessian_trace`);
* with ``landscape_points``: the train loss of the final ticket along one filter-normalised
  random direction d (Li et al., NeurIPS 2018; zero on pruned weights), f(a) at θ + a·d for
  a in [-1, 1] (:func:`compresslab.measure.landscape.loss_landscape`), and its summary.

Writes ``lottery.json`` (``records``, ``costs``, ``barrier``, ``hessian``, ``landscape``, ``seconds``),
``masks.safetensors`` (the final keep-masks, uint8), ``theta0.safetensors`` (θ_0) and
``ticket.safetensors`` (the final ticket trained on the real data).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from compresslab.compress.lottery import check_inner_data, imp, rewind
from compresslab.data import load_dataset
from compresslab.errors import UserError
from compresslab.runs.store import Step, write_json
from compresslab.steps.common import build, data_of, step_device
from compresslab.steps.distill_data import distilled_parent
from compresslab.steps.registry import register_step
from compresslab.train import Recipe


def _inner(step: Step, parents: dict):
    """The inner (distilled) set: the ``distilled`` parent's, the spec's ``inner_data``, or
    ``None`` (real IMP; also while the parent has not run yet)."""
    if "distilled" in parents:
        return distilled_parent(parents)
    name = step.spec.get("inner_data")
    return None if name is None else load_dataset(name)


def check_lottery(step: Step, parents: dict) -> None:
    s = step.spec
    if not 0.0 < s["rate"] < 1.0:
        raise UserError(f"lottery: rate must be in (0, 1), got {s['rate']}")
    data = data_of(s)
    build(s["model"], data, s["seed"])  # the model must fit the data
    inner = _inner(step, parents)
    if inner is not None:
        check_inner_data(data, inner, 0)


@register_step("lottery", check=check_lottery)
def run_lottery_step(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    from compresslab.measure.landscape import filter_normalised_direction, landscape_summary, lmc_pair, loss_landscape
    from compresslab.measure.sharpness import hessian_trace

    s = step.spec
    dev = step_device()
    data = data_of(s, dev)
    inner = _inner(step, parents)
    inner = None if inner is None else inner.to(dev)
    net = build(s["model"], data, s["seed"]).to(dev)
    recipe = Recipe(**s["recipe"])
    inner_recipe = recipe.model_copy(update={"epochs": s["inner_epochs"]}) if "inner_epochs" in s else None
    t0 = time.perf_counter()
    result = imp(net, data, recipe, rounds=s["rounds"], rate=s["rate"], seed=s["seed"],
                 random_reinit_control=s.get("control", False), callback=callback, inner_data=inner,
                 inner_recipe=inner_recipe)
    imp_seconds = time.perf_counter() - t0

    seeds = (s["seed"] + 1, s["seed"] + 2)
    barrier = {}
    start = copy.deepcopy(net)
    rewind(start, result.rewind_state, result.masks)
    pair = lmc_pair(start, data, recipe, seeds=seeds, mask=result.masks, points=s["lmc_points"], split="test")
    barrier["final"] = float(pair["barrier"])
    if s.get("lmc_dense"):
        start.load_state_dict(result.rewind_state)
        barrier["dense"] = float(lmc_pair(start, data, recipe, seeds=seeds, points=s["lmc_points"],
                                          split="test")["barrier"])
    n = min(s["hessian_examples"], len(data.y_train))
    h = hessian_trace(net, data.x_train[:n], data.y_train[:n], samples=s["hessian_samples"], seed=s["seed"],
                      mask=result.masks)
    landscape = None
    if s.get("landscape_points"):
        dirs = [filter_normalised_direction(net, seed=s["seed"] + i, mask=result.masks)
                for i in range(s.get("landscape_dims", 1))]
        scan = loss_landscape(net, data, dirs, points=s["landscape_points"], split="train", max_examples=n)
        landscape = {"coords": scan["coords"], "loss": scan["loss"], "error": scan["error"], "dims": len(dirs),
                     "summary": landscape_summary(scan)}
    save_file({k: m.to(torch.uint8).contiguous().cpu() for k, m in result.masks.items()},
              str(out / "masks.safetensors"))
    save_file({k: v.contiguous().cpu() for k, v in result.rewind_state.items()}, str(out / "theta0.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(out / "ticket.safetensors"))
    write_json(out / "lottery.json", {
        "records": result.records, "costs": result.costs, "barrier": barrier, "lmc_seeds": list(seeds),
        "hessian": {"trace": float(h["trace"]), "stderr": float(h["stderr"]), "samples": s["hessian_samples"],
                    "examples": n, "params": int(h["params"])}, "landscape": landscape,
        "inner": None if inner is None else {"name": inner.name, "examples": len(inner.y_train)},
        "imp_seconds": imp_seconds, "seconds": time.perf_counter() - t0, "spec": s})
