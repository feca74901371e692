"""Training losses as a weighted sum of named terms, built from a registry of term factories.

A *term* is any callable ``term(ctx: StepContext) -> scalar tensor``. A term that needs
intermediate activations declares ``feature_points = ["layer.name", ...]``; ``fit`` then
captures those during the forward pass and hands them over in ``ctx.features``
(not detached; bf16 when the forward ran under autocast, so call ``.float()``). A term
with trainable state (e.g. a regressor) exposes it as ``parameters()``; ``fit`` trains it
with the model's.

Every term name resolves through one registry: :func:`register_term` maps a name to a
*factory* ``factory(signal, **cfg) -> term``. ``signal`` is the teacher's signal
(:class:`compresslab.compress.distill.TeacherSignal`; None when there is no teacher) and
``cfg`` holds keyword settings shared by all terms (``label_smoothing``, ``temperature``,
``student``, ``seed``, ...): each factory takes what it needs and ignores the rest.
``ce`` (classification) and ``mse`` (regression) are registered here; importing :mod:`compresslab.compress` registers ``kd``,
``at`` and ``hint``. A user registers a term the same way::

    @register_term("logit_l2")
    def logit_l2(signal, **_):
        return lambda ctx: ctx.logits.pow(2).mean()

    fit(model, data, recipe, loss={"ce": 1.0, "logit_l2": 0.01})
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compresslab.data.core import valid_tokens
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
#: ``factory(signal, **cfg) -> Term``; see the module docstring.
TermFactory = Callable[..., Term]

_TERMS: dict[str, TermFactory] = {}


def register_term(name: str, factory: TermFactory | None = None, *, override: bool = False):
    """Register ``factory`` as the loss term ``name``.

    As a decorator, ``@register_term("name")``; as a call, ``register_term("name", factory)``.
    Returns the factory (the decorator when ``factory`` is omitted). A name already
    registered raises :class:`ValueError` unless ``override`` is true.
    """

    def add(f: TermFactory) -> TermFactory:
        if name in _TERMS and not override:
            raise ValueError(f"loss term {name!r} is already registered; pass override=True to replace it")
        _TERMS[name] = f
        return f

    return add if factory is None else add(factory)


def list_terms() -> list[str]:
    """Registered term names, sorted."""
    return sorted(_TERMS)


def get_term_factory(name: str) -> TermFactory:
    """The factory registered as ``name``; :class:`UserError` listing the registered names if none."""
    if name not in _TERMS:
        raise _unknown_term(name, _TERMS)
    return _TERMS[name]


def _unknown_term(name: str, known) -> UserError:
    return UserError(f"loss: unknown term {name!r}; available terms: {', '.join(sorted(known))}")


def require_teacher(signal: Any, name: str) -> Any:
    """``signal``, or a :class:`UserError` saying that the term ``name`` needs a teacher."""
    if signal is None:
        raise UserError(f"loss: the {name!r} term needs a teacher; train with distill")
    return signal


class CrossEntropy:
    """The ``ce`` term: cross-entropy against the labels, with optional label smoothing.

    Token-level data (logits ``(B, L, K)``, labels ``(B, L)``): the mean over the batch's
    valid tokens (label not -100, :func:`~compresslab.data.core.valid_tokens`), each token
    one example; a batch without any valid token contributes 0."""

    feature_points: list[str] = []

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        if ctx.y.is_floating_point():
            raise UserError("loss: the 'ce' term needs class labels, and this dataset has regression targets; "
                            "use the 'mse' term (the default for regression data)")
        logits, y = valid_tokens(ctx.logits, ctx.y)
        if y.shape[0] == 0 and ctx.y.ndim == 2:  # every token of the batch ignored
            return ctx.logits.sum() * 0.0
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)


@register_term("ce")
def _cross_entropy(signal: Any, *, label_smoothing: float = 0.0, **_: Any) -> CrossEntropy:
    return CrossEntropy(label_smoothing)


class MeanSquaredError:
    """The ``mse`` term: mean over examples and outputs of ``(output - target)²``, against the
    float targets ``(N, K)`` of a regression dataset (the default loss there)."""

    feature_points: list[str] = []

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        if not ctx.y.is_floating_point() or ctx.y.shape != ctx.logits.shape:
            raise UserError(f"loss: the 'mse' term needs regression targets shaped like the outputs "
                            f"{tuple(ctx.logits.shape)}, got {ctx.y.dtype} {tuple(ctx.y.shape)}; "
                            "for class labels use 'ce'")
        return F.mse_loss(ctx.logits, ctx.y)


@register_term("mse")
def _mean_squared_error(signal: Any, **_: Any) -> MeanSquaredError:
    return MeanSquaredError()


class BatchHardTriplet:
    """The ``triplet`` term, batch-hard (Hermans, Beyer & Leibe, "In Defense of the Triplet
    Loss for Person Re-Identification", 2017): for each anchor of the batch, the farthest
    embedding of its own identity and the nearest of another, mean of
    max(0, d(a, p) - d(a, n) + margin) over the anchors that have both, on Euclidean
    distances between the model's ``embedding`` feature point. Batches need several
    examples per identity (``recipe.sampler: pk``)."""

    feature_points = ["embedding"]

    def __init__(self, margin: float = 0.3):
        self.margin = margin

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        e = ctx.features["embedding"].float().flatten(1)
        sq = (e * e).sum(1)
        d = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp_min(1e-12).sqrt()  # no inf gradient at 0
        same = ctx.y[:, None] == ctx.y[None, :]
        pos = same & ~torch.eye(len(ctx.y), dtype=torch.bool, device=e.device)
        valid = pos.any(1) & (~same).any(1)
        if not bool(valid.any()):
            return e.sum() * 0.0
        hardest_pos = d.masked_fill(~pos, float("-inf")).amax(1)
        hardest_neg = d.masked_fill(same, float("inf")).amin(1)
        return F.relu(hardest_pos - hardest_neg + self.margin)[valid].mean()


@register_term("triplet")
def _triplet(signal: Any, **_: Any) -> BatchHardTriplet:
    return BatchHardTriplet()


class Matryoshka:
    """The ``matryoshka`` term (Kusupati et al., "Matryoshka Representation Learning", 2022):
    for each nested width k of an embedder (its ``nested`` option), the cross-entropy of the
    identity classifier restricted to the first k dims of the BNNeck's output, averaged over
    the widths; with ``ce`` for the full width, every prefix of the embedding learns to
    identify on its own."""

    feature_points = ["neck"]

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        model = getattr(ctx.model, "module", ctx.model)  # under DistributedDataParallel
        widths = getattr(model, "nested", ())
        if not widths:
            raise UserError("loss: the matryoshka term needs an embedder with nested widths (-o nested=[8,32])")
        z, w = ctx.features["neck"].float(), model.classifier.weight
        return torch.stack([F.cross_entropy(z[:, :k] @ w[:, :k].T, ctx.y) for k in widths]).mean()


@register_term("matryoshka")
def _matryoshka(signal: Any, **_: Any) -> Matryoshka:
    return Matryoshka()


class SoftTreeLoss:
    """The ``soft-tree`` term (Frosst & Hinton 2017, model ``soft-tree``): the path-weighted
    cross-entropy of the leaves against the targets plus the tree's balance penalty, both
    computed by the model (``ctx.model.leaf_loss(x, T) + ctx.model.balance_penalty(x)``, see
    :mod:`compresslab.models.soft_tree`). Targets: one-hot labels, or under ``distill`` the
    teacher's softmax at ``temperature``."""

    feature_points: list[str] = []

    def __init__(self, signal: Any = None, temperature: float = 4.0):
        self.signal, self.temperature = signal, temperature
        if signal is not None:
            signal.want_logits()

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        model = getattr(ctx.model, "module", ctx.model)  # under DistributedDataParallel
        if not hasattr(model, "balance_penalty"):
            raise UserError("loss: the soft-tree term needs the soft-tree model (--model soft-tree)")
        if self.signal is not None:
            targets = self.signal.log_probs(ctx, self.temperature).exp()
        else:
            targets = F.one_hot(ctx.y, ctx.logits.shape[1]).float()
        return model.leaf_loss(ctx.x, targets) + model.balance_penalty(ctx.x)


@register_term("soft-tree")
def _soft_tree(signal: Any, *, temperature: float = 4.0, **_: Any) -> SoftTreeLoss:
    return SoftTreeLoss(signal, temperature)


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


def compose_loss(weights: dict[str, float], terms: dict[str, Term] | None = None, *, signal: Any = None,
                 **cfg: Any) -> Loss:
    """Build a :class:`Loss` from ``{term name: weight}``, terms in the order of ``weights``.

    A name found in ``terms`` (ready callables) is used as is; any other is built by its
    registered factory as ``factory(signal, **cfg)``.
    """
    ready = dict(terms or {})
    if not weights:
        raise UserError("loss: no terms given; use e.g. {ce: 1.0}")
    built: dict[str, tuple[float, Term]] = {}
    for name, weight in weights.items():
        if name not in ready and name not in _TERMS:
            raise _unknown_term(name, {*_TERMS, *ready})
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise UserError(f"loss: weight of {name!r} must be a number, got {weight!r}") from None
        built[name] = (weight, ready[name] if name in ready else _TERMS[name](signal, **cfg))
    return Loss(built)
