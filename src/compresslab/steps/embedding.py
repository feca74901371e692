"""Step kinds that compress an embedder's stored embedding (children of a ``parent``):

* ``embed-qat``: the embedding output fake-quantised to ``bits`` (range calibrated on
  the parent's training embeddings, then tracked), fine-tuned with ``recipe`` and
  ``loss``; the checkpoint holds the float model and an ``embedding-quant`` transform;
* ``embed-prune``: iterative structured pruning of embedding dimensions, down to
  ``keep`` over ``rounds`` (a geometric schedule), each round keeping the dimensions of
  highest variance over the training set and fine-tuning.

Slicing and low rank are ``train`` steps of an embedder with the ``slice`` / ``rank``
option (trained so from initialisation); PCA needs no step.
"""
from __future__ import annotations

from pathlib import Path

from compresslab.compress.embedding import (
    attach_embedding_quant,
    detach_embedding_quant,
    dimension_importance,
    keep_top,
    prune_embedder,
)
from compresslab.errors import UserError
from compresslab.models.embedding import embed
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.runs.store import Step
from compresslab.steps.common import data_of, data_seed, finish_model, parent_model, step_device
from compresslab.steps.registry import register_step
from compresslab.train import Recipe, fit


def embed_qat_spec(data: dict, bits: int, recipe: Recipe | dict, seed: int, *, loss: dict[str, float],
                   percentile: float = 100.0) -> dict:
    """Fake-quantise the ``parent`` step's embedding to ``bits`` and fine-tune."""
    return {"data": data, "bits": bits, "percentile": percentile, "loss": dict(loss), "seed": seed,
            "recipe": recipe.model_dump() if isinstance(recipe, Recipe) else dict(recipe)}


def embed_prune_spec(data: dict, keep: int, recipe: Recipe | dict, seed: int, *, loss: dict[str, float],
                     rounds: int = 3) -> dict:
    """Prune the ``parent`` step's embedding to ``keep`` dimensions in ``rounds``, fine-tuning each."""
    return {"data": data, "keep": keep, "rounds": rounds, "loss": dict(loss), "seed": seed,
            "recipe": recipe.model_dump() if isinstance(recipe, Recipe) else dict(recipe)}


def _dims(model) -> int:
    return int(model.embedding.out_dim)


def check_embed(step: Step, parents: dict) -> None:
    s = step.spec
    data = data_of(s)
    model = parent_model(parents["parent"], data)
    if model is None:
        return
    if not hasattr(model, "embedding"):
        raise UserError(f"{step.kind}: the parent is not an embedder; train one with --model embedder")
    if step.kind == "embed-prune" and not 1 <= s["keep"] < _dims(model):
        raise UserError(f"embed-prune: keep {s['keep']} must be below the parent's {_dims(model)} dimensions")
    if step.kind == "embed-prune":
        prune_embedder(model, keep_top(dimension_importance(embed(model, data.x_train[:8])), s["keep"]))


def _parent(parents: dict, s: dict):
    dev = step_device()
    data = data_of(s, dev)
    model, _ = load_checkpoint(parents["parent"], apply_transforms=False)
    return model.to(dev), data


@register_step("embed-qat", check=check_embed)
def run_embed_qat(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    model, data = _parent(parents, s)
    fq = attach_embedding_quant(model, s["bits"], percentile=s["percentile"])
    fq.calibrate(_float_embeddings(model, data))
    recipe = Recipe(**s["recipe"])
    result = fit(model, data, recipe, loss=s["loss"], seed=data_seed(s), callback=callback)
    transform = detach_embedding_quant(model)
    finish_model(out, model, data, transforms=[transform], precision=recipe.precision,
                 extra={"train_seconds": result.seconds, "history": result.history,
                        "embedding": {"dim": _dims(model), "bits": s["bits"]}})


def _float_embeddings(model, data):
    """The training embeddings before the quantiser just attached (its range's calibration)."""
    seq = model.embedding
    model.embedding = seq[0]
    try:
        return embed(model, data.x_train)
    finally:
        model.embedding = seq


@register_step("embed-prune", check=check_embed)
def run_embed_prune(step: Step, out: Path, parents: dict[str, Path], callback=None) -> None:
    s = step.spec
    model, data = _parent(parents, s)
    recipe = Recipe(**s["recipe"])
    start, history, seconds = _dims(model), [], 0.0
    for r in range(1, s["rounds"] + 1):
        width = max(s["keep"], round(start * (s["keep"] / start) ** (r / s["rounds"])))
        importance = dimension_importance(embed(model, data.x_train), "variance")
        model = prune_embedder(model, keep_top(importance, width))
        result = fit(model, data, recipe, loss=s["loss"], seed=data_seed(s) + r - 1, callback=callback)
        history += [{**h, "round": r, "dims": width} for h in result.history]
        seconds += result.seconds
    finish_model(out, model, data, precision=recipe.precision,
                 extra={"train_seconds": seconds, "history": history, "embedding": {"dim": _dims(model), "bits": 32}})
