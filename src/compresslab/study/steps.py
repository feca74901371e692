"""Step functions: each builds one model into a fresh directory of the run store.

Every model step ends the same way (:func:`finish_model`): checkpoint, cached logits
per split, and ``metrics.json`` (accuracy per split, cost, training history).
A step is a pure function of its spec and its parents' outputs.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import torch

from compresslab.data import Dataset, load_dataset
from compresslab.errors import UserError
from compresslab.measure import cost_report
from compresslab.models import create_model
from compresslab.runs.checkpoint import load_checkpoint, save_checkpoint
from compresslab.runs.store import Step, write_json
from compresslab.train import Recipe, evaluate_logits, fit

EVAL_SPLITS = ("val", "test")


@functools.lru_cache(maxsize=4)
def dataset(name: str, val_fraction: float, seed: int) -> Dataset:
    return load_dataset(name, val_fraction=val_fraction, seed=seed)


def data_of(spec: dict) -> Dataset:
    d = spec["data"]
    return dataset(d["name"], d["val_fraction"], d["seed"])


def build(model_spec: dict, data: Dataset, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(model_spec["name"], num_classes=data.num_classes, in_channels=data.in_channels,
                        input_shape=data.input_shape, **model_spec["options"])


def finish_model(out: Path, model: torch.nn.Module, data: Dataset, *, transforms=(), layer_bits=None,
                 extra: dict | None = None) -> None:
    """Save ``model`` (float) + transforms, cache eval logits, write ``metrics.json``.

    Latency is not measured here: it describes the machine at report time, so the
    study measures every model side by side when it collects results.
    """
    from compresslab.compress import apply_transform

    save_checkpoint(out, model, transforms=list(transforms))
    runtime = model.eval()
    for t in transforms:
        runtime = apply_transform(runtime, t)
    metrics: dict = {"accuracy": {}}
    for split in EVAL_SPLITS:
        x, y = data.split(split)
        logits = evaluate_logits(runtime, x)
        np.save(out / f"logits_{split}.npy", logits.numpy().astype(np.float32))
        metrics["accuracy"][split] = float((logits.argmax(1) == y).float().mean()) if len(y) else None
    metrics["cost"] = cost_report(model, data.input_shape, layer_bits=layer_bits or None)
    metrics.update(extra or {})
    write_json(out / "metrics.json", metrics)


def _history(result) -> dict:
    return {"train_seconds": result.seconds, "history": result.history}


def _wd_scales(s: dict, model) -> dict[str, float] | None:
    """With ``scale_substitute_wd`` in the step spec: weight decay of structured pointwise
    substitutes scaled by their compression ratio (Gray et al. 2019)."""
    if not s.get("scale_substitute_wd"):
        return None
    from compresslab.models.linear_subs import weight_decay_scales

    return weight_decay_scales(model)


def run_train(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    data = data_of(s)
    model = build(s["model"], data, s["seed"])
    result = fit(model, data, Recipe(**s["recipe"]), loss=s.get("loss"), seed=s["seed"], callback=callback,
                 weight_decay_scale=_wd_scales(s, model))
    finish_model(out, model, data, extra=_history(result))


def make_teacher(s: dict, data: Dataset, parents: dict[str, Path]):
    """The distillation teacher of a step spec: a checkpoint (``parents["teacher"]``), or
    ``s["teacher"]`` = ``{"kind": "untrained", "model", "seed"}`` or a noise teacher
    ``{"kind": "uniform-noise", "low", "high", "seed"}`` / ``{"kind": "gaussian-noise", "sigma", "seed"}``."""
    from compresslab.compress.distill import NOISE_KINDS, noise_logits

    t = s.get("teacher")
    if t is None:
        return load_checkpoint(parents["teacher"])[0]
    if t["kind"] == "untrained":
        return build(t["model"], data, t["seed"]).eval()
    if t["kind"] in NOISE_KINDS:
        params = {k: v for k, v in t.items() if k in ("low", "high", "sigma", "seed")}
        return noise_logits(t["kind"], data.x_train.shape[0], data.num_classes, **params)
    raise ValueError(f"unknown teacher kind {t['kind']!r}")


def run_distill(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    from compresslab.compress.distill import distill

    s = step.spec
    data = data_of(s)
    teacher = make_teacher(s, data, parents)
    student = build(s["student"], data, s["seed"])
    result = distill(teacher, student, data, Recipe(**s["recipe"]), loss=s["loss"],
                     temperature=s["temperature"], at_points=s.get("at_points"), hint_points=s.get("hint_points"),
                     seed=s["seed"], callback=callback, weight_decay_scale=_wd_scales(s, student))
    finish_model(out, student, data, extra=_history(result))


def resolve_amount(amount, model, scope: str) -> tuple[float, dict | None]:
    """A number, or ``"p_star"`` / ``"safe"`` read off the parent's weights (data-free)."""
    if not isinstance(amount, str):
        return float(amount), None
    from compresslab.measure.weights import prunability

    report = prunability(model, scope=scope)
    key = {"p_star": "p_star", "safe": "safe_amount"}[amount]
    return report[key], {k: report[k] for k in ("p_star", "safe_amount", "kurtosis_of_kurtoses")}


def run_prune(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    from compresslab.compress.prune import apply_masks, prune, sparsity_report
    from compresslab.measure.weights import param_cosine

    s = step.spec
    data = data_of(s)
    parent, _ = load_checkpoint(parents["parent"], apply_transforms=False)
    model = copy.deepcopy(parent)
    if s.get("method") == "channel":
        return _run_channel_prune(s, model, data, out, callback)
    amount, rule = resolve_amount(s["amount"], model, s["scope"])
    masks = prune(model, amount, method=s.get("method", "global-l1"), scope=s["scope"], seed=s["seed"])
    cos_pruned = param_cosine(parent, model, scope=s["scope"])
    result = fit(model, data, Recipe(**s["recipe"]), seed=s["seed"], callback=callback,
                 after_step=lambda m: apply_masks(m, masks))
    sparsity = sparsity_report(model, masks)
    extra = {**_history(result), "amount": amount,
             "sparsity": sparsity,  # global, pruned, total and per_tensor
             "param_cosine": {"after_pruning": cos_pruned,
                              "after_finetuning": param_cosine(parent, model, scope=s["scope"])}}
    if rule:
        extra["amount_rule"] = {"rule": s["amount"], **rule}
    finish_model(out, model, data, extra=extra)


def _run_channel_prune(s: dict, model, data: Dataset, out: Path, callback) -> None:
    """Structured (channel) pruning through Torch-Pruning, then plain fine-tuning."""
    from compresslab.compress.structured import structured_prune

    batch = (data.x_train[:128], data.y_train[:128]) if s["importance"] == "taylor" else None
    report = structured_prune(model, data.input_shape, amount=s["amount"], importance=s["importance"],
                              global_pruning=s["global_channels"], data=batch)
    result = fit(model, data, Recipe(**s["recipe"]), seed=s["seed"], callback=callback)
    keep = ("params_before", "params_after", "macs_before", "macs_after", "mac_ratio", "param_ratio", "protected")
    finish_model(out, model, data, extra={**_history(result), "amount": s["amount"],
                                          "structured": {k: report[k] for k in keep}})


def run_quantize(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    """Quantise the parent: ``scheme`` ptq-dynamic / ptq-static (real int8), ``fake``
    (simulated ``bits``, calibrated activation ranges) or ``qat`` (fake-quant, then
    fine-tuning with ``recipe``; exact zeros of a pruned parent stay zero)."""
    from compresslab.compress import quantize as q
    from compresslab.compress.prune import apply_masks

    s = step.spec
    data = data_of(s)
    model, _ = load_checkpoint(parents["parent"], apply_transforms=False)  # float: api and specs refuse quantised parents
    scheme, extra = s["scheme"], {}
    if scheme == "ptq-dynamic":
        transform = q.DYNAMIC_INT8
    else:
        cal = s["calibration"]
        batches = q.calibration_batches(data.x_train, cal["batches"], cal["batch_size"], s["seed"])
        if scheme == "ptq-static":
            transform = q.calibrate_static_int8(model, batches)
        else:
            opts = {k: s[k] for k in ("per_channel", "symmetric", "observer", "percentile")}
            q.attach_fake_quant(model, s["bits"], act_bits=s.get("act_bits"), **opts)
            if s.get("act_bits"):
                q.calibrate(model, batches)
            if scheme == "qat":
                masks = {n: p != 0 for n, p in model.named_parameters() if bool((p == 0).any())}
                result = fit(model, data, Recipe(**s["recipe"]), seed=s["seed"], callback=callback,
                             after_step=(lambda m: apply_masks(m, masks)) if masks else None)
                extra = _history(result)
            ranges = q.act_ranges(model)
            q.strip_fake_quant(model)
            transform = q.fake_quant_transform(s["bits"], act_bits=s.get("act_bits"), ranges=ranges, **opts)
    finish_model(out, model, data, transforms=[transform], layer_bits=q.quantized_layer_bits(model, [transform]),
                 extra={**extra, "quantization": {"scheme": scheme, **{k: v for k, v in transform.items()
                                                                        if k != "act_ranges"}}})


RUNNERS = {"train": run_train, "distill": run_distill, "prune": run_prune, "quantize": run_quantize}


def _parent_model(parent, data: Dataset) -> torch.nn.Module | None:
    """A step's parent as a float model: a checkpoint directory (``Path``), or a train
    :class:`Step` not run yet (its architecture, untrained: the shapes a check needs); None
    when neither is at hand."""
    if isinstance(parent, Step):
        return build(parent.spec["model"], data, parent.spec["seed"]) if parent.kind == "train" else None
    return load_checkpoint(parent, apply_transforms=False)[0]


def check_distill(step: Step, parents: dict) -> None:
    from compresslab.compress.distill import validate_distill

    s = step.spec
    data = data_of(s)
    if s.get("teacher") is None:
        teacher = _parent_model(parents["teacher"], data)
        if teacher is None:
            return
    else:
        teacher = make_teacher(s, data, parents)
    validate_distill(teacher, build(s["student"], data, s["seed"]), data, loss=s["loss"],
                     temperature=s["temperature"], at_points=s.get("at_points"), hint_points=s.get("hint_points"))


def check_prune(step: Step, parents: dict) -> None:
    from compresslab.compress.prune import METHODS, prunable_parameters

    s = step.spec
    data = data_of(s)
    model = _parent_model(parents["parent"], data)
    if model is None:
        return
    if s.get("method") == "channel":
        from compresslab.compress.structured import structured_prune

        batch = (data.x_train[:2], data.y_train[:2]) if s["importance"] == "taylor" else None
        structured_prune(model, data.input_shape, amount=s["amount"], importance=s["importance"],
                         global_pruning=s["global_channels"], data=batch)  # a dry run on a throwaway copy
        return
    if s.get("method", "global-l1") not in METHODS:
        raise UserError(f"pruning method {s['method']!r}: use one of {', '.join((*METHODS, 'channel'))}")
    if not prunable_parameters(model, scope=s["scope"]):
        raise UserError(f"the model has no parameters to prune in scope {s['scope']!r}")


def check_quantize(step: Step, parents: dict) -> None:
    from compresslab.compress import quantize as q

    s = step.spec
    data = data_of(s)
    model = _parent_model(parents["parent"], data)
    if model is None:
        return
    if s["scheme"] in ("fake", "qat"):
        q.attach_fake_quant(model, s["bits"], act_bits=s.get("act_bits"),
                            **{k: s[k] for k in ("per_channel", "symmetric", "observer", "percentile")})
    elif s["scheme"] == "ptq-static":
        q.calibrate_static_int8(model, [data.x_train[:2]])


#: Checks that run before a step takes its lock: they raise :class:`UserError` for input the
#: step would reject, so a rejected command writes nothing. ``parents`` maps each role to a
#: checkpoint directory or a not-yet-run parent step.
CHECKS = {"distill": check_distill, "prune": check_prune, "quantize": check_quantize}


def check_step(step: Step, parents: dict) -> None:
    check = CHECKS.get(step.kind)
    if check is not None:
        check(step, parents)


QUANT_SCHEMES = ("ptq-dynamic", "ptq-static", "fake", "qat")


def quantize_spec(data: dict, scheme: str, *, bits: int | dict = 8, act_bits: int | dict | None = None,
                  per_channel: bool = False, symmetric: bool = True, observer: str = "minmax",
                  percentile: float = 99.99, calib_batches: int = 8, calib_batch_size: int = 128,
                  recipe: dict | None = None, seed: int = 0) -> dict:
    """The step spec of a quantisation: only the keys ``scheme`` uses, so equal work hashes equally.
    Raises :class:`UserError` for settings the scheme cannot honour."""
    from compresslab.compress import quantize as q

    if scheme not in QUANT_SCHEMES:
        raise UserError(f"--scheme {scheme!r}: use one of {', '.join(QUANT_SCHEMES)}")
    wbits, abits = q.per_type(bits, "--bits"), q.per_type(act_bits, "--act-bits")
    if scheme.startswith("ptq-"):
        if set(wbits.values()) != {8} or (abits and set(abits.values()) != {8}):
            raise UserError(f"{scheme} runs real int8 kernels, so bits must be 8; use --scheme fake or qat "
                            "for other widths")
        if scheme == "ptq-dynamic":
            return {"data": data, "scheme": scheme}
    if observer not in q.OBSERVERS:
        raise UserError(f"--observer {observer!r}: use {' or '.join(q.OBSERVERS)}")
    if not (1 <= calib_batches <= q.MAX_CALIB_BATCHES and 1 <= calib_batch_size <= q.MAX_CALIB_BATCH):
        raise UserError(f"--calib-batches {calib_batches} x --calib-batch-size {calib_batch_size}: use 1 to "
                        f"{q.MAX_CALIB_BATCHES:,} batches of 1 to {q.MAX_CALIB_BATCH:,} examples")
    if not 50 < percentile <= 100:
        raise UserError(f"--percentile {percentile}: must be in (50, 100], e.g. 99.99")
    spec = {"data": data, "scheme": scheme, "seed": seed,
            "calibration": {"batches": calib_batches, "batch_size": calib_batch_size}}
    if scheme == "ptq-static":
        return spec
    spec.update(bits=wbits, act_bits=abits, per_channel=per_channel, symmetric=symmetric, observer=observer,
                percentile=percentile)
    if scheme == "qat":
        if recipe is None:
            raise UserError("qat needs a fine-tuning recipe")
        spec["recipe"] = recipe
    return spec


def preflight(spec) -> None:
    """Load the spec's dataset and build each model it names once (untrained), so a bad
    dataset, model name or option fails with a :class:`UserError` before anything is written."""
    raw = spec.model_dump(mode="json")
    data = dataset(raw.get("data", "mnist1d"), raw.get("val_fraction", 0.1), raw.get("data_seed", raw.get("seed", 0)))
    if data.x_train.shape[0] == 0:
        raise UserError(f"dataset {data.name} has no training examples")
    seen = set()

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"name", "options"} and isinstance(node["name"], str):
                key = repr(node)
                if key not in seen:
                    seen.add(key)
                    build(node, data, 0)
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(raw)
