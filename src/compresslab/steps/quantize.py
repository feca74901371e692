"""The ``quantize`` step: ``ptq-dynamic`` / ``ptq-static`` (real int8), ``fake`` (simulated
bits, calibrated activation ranges) or ``qat`` (fake-quant, then fine-tuning with the
spec's recipe; exact zeros of a pruned parent stay zero).

``fake`` and ``qat`` run on the step's device. torch's int8 kernels (``ptq-*``) are
CPU-only: those steps run on the CPU whatever the device, and their ``runtime`` record
says ``cpu``."""
from __future__ import annotations

from pathlib import Path

import torch

from compresslab.compress import quantize as q
from compresslab.compress.prune import apply_masks
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.runs.store import Step
from compresslab.steps.common import data_of, finish_model, history, parent_model, step_device
from compresslab.steps.registry import register_step
from compresslab.train import Recipe, fit

FAKE_OPTIONS = ("per_channel", "symmetric", "observer", "percentile")


def check_quantize(step: Step, parents: dict) -> None:
    s = step.spec
    data = data_of(s)
    model = parent_model(parents["parent"], data)
    if model is None:
        return
    if s["scheme"] in ("fake", "qat"):
        q.attach_fake_quant(model, s["bits"], act_bits=s.get("act_bits"), **{k: s[k] for k in FAKE_OPTIONS})
    elif s["scheme"] == "ptq-static":
        q.calibrate_static_int8(model, [data.x_train[:2]])  # is the model FX-traceable?


@register_step("quantize", check=check_quantize)
def run_quantize(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    scheme, extra = s["scheme"], {}
    dev = torch.device("cpu") if scheme.startswith("ptq-") else step_device()
    data = data_of(s, dev)
    model, _ = load_checkpoint(parents["parent"], apply_transforms=False)  # float: api and specs refuse quantised parents
    model.to(dev)
    precision = "fp32"
    if scheme == "ptq-dynamic":
        transform = q.dynamic_int8_transform(model, s.get("backend", "auto"))
    else:
        cal = s["calibration"]
        batches = q.calibration_batches(data.x_train, cal["batches"], cal["batch_size"], s["seed"])
        if scheme == "ptq-static":
            transform = q.calibrate_static_int8(model, batches, s.get("backend", "auto"))
        else:
            opts = {k: s[k] for k in FAKE_OPTIONS}
            q.attach_fake_quant(model, s["bits"], act_bits=s.get("act_bits"), **opts)
            if s.get("act_bits"):
                q.calibrate(model, batches)
            if scheme == "qat":
                masks = {n: p != 0 for n, p in model.named_parameters() if bool((p == 0).any())}
                recipe = Recipe(**s["recipe"])
                result = fit(model, data, recipe, seed=s["seed"], callback=callback,
                             after_step=(lambda m: apply_masks(m, masks)) if masks else None)
                extra, precision = history(result), recipe.precision
            ranges = q.act_ranges(model)
            q.strip_fake_quant(model)
            transform = q.fake_quant_transform(s["bits"], act_bits=s.get("act_bits"), ranges=ranges, **opts)
    finish_model(out, model, data, transforms=[transform], layer_bits=q.quantized_layer_bits(model, [transform]),
                 extra={**extra, "quantization": {"scheme": scheme, **{k: v for k, v in transform.items()
                                                                        if k != "act_ranges"}}}, precision=precision)
