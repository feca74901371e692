"""Training losses as a weighted sum of named terms.

A *term* is any callable ``term(ctx: StepContext) -> scalar tensor``. A term that needs
intermediate activations declares ``feature_points = ["layer.name", ...]``; ``fit`` then
captures those during the forward pass and hands them over in ``ctx.features``
(not detached; bf16 when the forward ran under autocast, so call ``.float()``).
Compression methods (``kd``, ``at``, ``hint``) plug in as extra terms; the loop never
changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compresslab.errors import UserError


@dataclass
class StepContext:
    """Everything a loss term may look at for one training step.

    ``idx`` are the batch's positions in the training split (for per-example caches);
    ``x`` is the batch as fed to the model (after augmentation); ``logits`` are float32.
    ``epoch``, ``step`` (within the epoch) and ``global_step`` count from 1.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 1
    step: int = 1
    global_step: int = 1


Term = Callable[[StepContext], torch.Tensor]


class CrossEntropy:
    """The ``ce`` term: cross-entropy against the labels, with optional label smoothing."""

    feature_points: list[str] = []

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return F.cross_entropy(ctx.logits, ctx.y, label_smoothing=self.label_smoothing)


# name -> factory(label_smoothing=...) for terms that need no outside state
BUILTIN_TERMS: dict[str, Callable[..., Term]] = {"ce": CrossEntropy}


class Loss:
    """``loss(ctx) -> (total, {name: detached value})`` with ``total = Σ weight·term(ctx)``."""

    def __init__(self, terms: dict[str, tuple[float, Term]]):
        self.terms = dict(terms)
        points: list[str] = []
        for _, term in self.terms.values():
            for p in getattr(term, "feature_points", None) or []:
                if p not in points:
                    points.append(p)
        self.feature_points = points

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters owned by terms (e.g. hint regressors), trained with the model's."""
        return [p for _, term in self.terms.values() for p in (term.parameters() if hasattr(term, "parameters") else ())]

    @property
    def weights(self) -> dict[str, float]:
        return {name: w for name, (w, _) in self.terms.items()}

    def __call__(self, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        parts = {}
        for name, (weight, term) in self.terms.items():
            value = term(ctx)
            parts[name] = value.detach()
            weighted = value if weight == 1.0 else value * weight
            total = weighted if total is None else total + weighted
        return total, parts


def compose_loss(weights: dict[str, float], extra_terms: dict[str, Term] | None = None, *,
                 label_smoothing: float = 0.0) -> Loss:
    """Build a :class:`Loss` from ``{term name: weight}``.

    Names resolve first in ``extra_terms`` (ready callables), then in the built-ins
    (:data:`BUILTIN_TERMS`); ``label_smoothing`` configures ``ce``.
    """
    extra = dict(extra_terms or {})
    if not weights:
        raise UserError("loss: no terms given; use e.g. {ce: 1.0}")
    terms: dict[str, tuple[float, Term]] = {}
    for name, weight in weights.items():
        if name in extra:
            term = extra[name]
        elif name in BUILTIN_TERMS:
            term = BUILTIN_TERMS[name](label_smoothing=label_smoothing)
        else:
            available = ", ".join(sorted(set(BUILTIN_TERMS) | set(extra)))
            raise UserError(f"loss: unknown term {name!r}; available terms: {available}")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise UserError(f"loss: weight of {name!r} must be a number, got {weight!r}") from None
        terms[name] = (weight, term)
    return Loss(terms)
