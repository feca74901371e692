"""Steps: registered step kinds, the typed builders of their specs, and the executors.

``steps`` sits above ``runs`` (the store and checkpoints) and below ``study``: a study
expands into steps, and the executors (:mod:`compresslab.steps.executor`) run them by
kind without knowing about studies. The built-in kinds are ``train``, ``distill``,
``prune``, ``quantize``, ``blockswap``, ``embed-qat``, ``embed-prune``, ``distill-data``,
``train-distilled``, ``data-scores``, ``lottery``, ``adversarial`` and ``similarity``; see
:mod:`compresslab.steps.registry` to add one.
"""
from compresslab.steps import (  # noqa: F401  (register the built-in kinds)
    blockswap,
    data_pruning,
    distill,
    distill_data,
    embedding,
    lottery,
    prune,
    quantize,
    similarity,
    train,
)
from compresslab.steps.common import build, data_of, dataset, finish_model, history, wd_scales
from compresslab.steps.registry import StepKind, check_step, get_step, list_steps, register_step, run_step

__all__ = [
    "StepKind",
    "build",
    "check_step",
    "data_of",
    "dataset",
    "finish_model",
    "get_step",
    "history",
    "list_steps",
    "register_step",
    "run_step",
    "wd_scales",
]
