"""Knowledge distillation as named loss terms for ``fit``: ``kd``, ``at`` and ``hint``.

- ``kd`` (Hinton et al. 2015): T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), batchmean.
- ``at`` (Zagoruyko & Komodakis 2017): at(f) = L2-normalised, flattened channel mean
  of f²; the term is the mean over feature points of mean((at_s − at_t)²). Its weight
  in the loss dict is β (1000 in the paper). Works on 1-D and 2-D feature maps.
- ``hint`` (FitNets, Romero et al. 2015): a learned 1x1 regressor maps the student's
  feature to the teacher's channel count; the term is the mean squared error.

Terms combine by name with weights, e.g. ``{"ce": 0.1, "kd": 0.9, "at": 1000}``.

A teacher is a trained or untrained network, or a fixed ``(N_train, K)`` logit tensor
(a *noise teacher*, :func:`noise_logits`). Without augmentation the teacher's
training-set logits and attention maps are computed once and read per example; with
augmentation (or for hints) the teacher runs once per step, shared by all terms.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compresslab.data import Dataset
from compresslab.errors import UserError
from compresslab.models import capture_features, feature_points
from compresslab.scratch import Scratch
from compresslab.train import FitResult, Recipe, evaluate_logits, fit

NOISE_KINDS = ("uniform-noise", "gaussian-noise")
#: The loss terms distillation adds to ``fit``'s (``ce``).
DISTILL_TERMS = ("kd", "at", "hint")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, *,
            teacher_log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), batchmean (Hinton et al. 2015).

    ``teacher_log_probs`` = log_softmax(z_t/T), when already known, replaces ``teacher_logits``.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = teacher_log_probs if teacher_log_probs is not None else F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, prod(spatial)): the channel mean of f², flattened, unit L2 norm."""
    if feature.dim() < 3:
        raise UserError(f"attention transfer needs spatial feature maps (B, C, L) or (B, C, H, W), "
                        f"got shape {tuple(feature.shape)}; choose convolutional feature points")
    return F.normalize(feature.float().pow(2).mean(1).flatten(1), dim=1)


def at_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Mean over feature points of mean((at_s − at_t)²), both already :func:`attention_map`-ed."""
    return torch.stack([(s - t).pow(2).mean() for s, t in zip(student_maps, teacher_maps)]).mean()


def noise_logits(kind: str, n: int, num_classes: int, *, low: float = 0.0, high: float = 1.0,
                 sigma: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A noise teacher: one fixed logit vector per training example, drawn once.

    ``uniform-noise``: U(low, high); ``gaussian-noise``: N(0, sigma²). Row i belongs to
    training example i for the whole run, so the targets never change across epochs.
    """
    gen = torch.Generator().manual_seed(seed)
    if kind == "uniform-noise":
        if not high > low:
            raise UserError(f"uniform-noise teacher: need high > low, got low={low}, high={high}")
        return low + (high - low) * torch.rand(n, num_classes, generator=gen)
    if kind == "gaussian-noise":
        if not sigma > 0:
            raise UserError(f"gaussian-noise teacher: sigma must be > 0, got {sigma}")
        return sigma * torch.randn(n, num_classes, generator=gen)
    raise UserError(f"unknown noise teacher {kind!r}; use one of {', '.join(NOISE_KINDS)}")


class TeacherSignal:
    """The teacher's outputs for the current training batch, for every distillation term.

    Fixed per-example tensors (cached logits, cached attention maps, noise logits) are
    indexed by ``ctx.idx``; anything else comes from one no-grad forward of the teacher
    per optimizer step (``ctx.global_step``), shared by all terms.
    """

    def __init__(self, teacher: nn.Module | None = None, *, logits: torch.Tensor | None = None,
                 maps: dict[str, torch.Tensor] | None = None, live_points: list[str] = ()):
        if teacher is None and logits is None:
            raise ValueError("TeacherSignal needs a teacher module or fixed logits")
        self.teacher = teacher.eval() if teacher is not None else None
        self.cached_logits = logits
        self.cached_maps = maps or {}
        self.live_points = list(live_points)
        self._step: int | None = None
        self._out: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def _forward(self, ctx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.teacher is None:
            raise UserError("this teacher has only fixed logits (a noise teacher): it has no features")
        if self._step != ctx.global_step or self._out is None:
            with torch.no_grad(), capture_features(self.teacher, self.live_points) as feats:
                logits = self.teacher(ctx.x).float()
            self._out, self._step = (logits, dict(feats)), ctx.global_step
        return self._out

    def logits(self, ctx) -> torch.Tensor:
        if self.cached_logits is not None:
            return self.cached_logits[ctx.idx]
        return self._forward(ctx)[0]

    def attention(self, ctx, point: str) -> torch.Tensor:
        if point in self.cached_maps:
            return self.cached_maps[point][ctx.idx]
        return attention_map(self._forward(ctx)[1][point])

    def feature(self, ctx, point: str) -> torch.Tensor:
        return self._forward(ctx)[1][point].float()


def _in_scratch(scratch, name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` copied into a memory-mapped array of ``scratch``; a tensor sharing its memory."""
    arr = scratch.array(name, tuple(t.shape), np.float32)
    arr[:] = t.float().numpy()
    return torch.from_numpy(arr)


class KDTerm:
    """The ``kd`` term: Hinton soft targets at ``temperature``."""

    feature_points: list[str] = []

    def __init__(self, signal: TeacherSignal, temperature: float = 4.0):
        if not temperature > 0:
            raise UserError(f"temperature must be > 0, got {temperature}")
        self.signal, self.temperature = signal, temperature
        # fixed teacher logits: their tempered log-probabilities are computed once, not per step
        fixed = signal.cached_logits
        self.log_probs = None if fixed is None else F.log_softmax(fixed.float() / temperature, dim=1)

    def __call__(self, ctx) -> torch.Tensor:
        if self.log_probs is not None:
            return kd_loss(ctx.logits, None, self.temperature, teacher_log_probs=self.log_probs[ctx.idx])
        return kd_loss(ctx.logits, self.signal.logits(ctx), self.temperature)


class ATTerm:
    """The ``at`` term over ``pairs`` = {student point: teacher point}."""

    def __init__(self, signal: TeacherSignal, pairs: dict[str, str]):
        self.signal, self.pairs = signal, dict(pairs)
        self.feature_points = list(self.pairs)

    def __call__(self, ctx) -> torch.Tensor:
        return at_loss([attention_map(ctx.features[s]) for s in self.pairs],
                       [self.signal.attention(ctx, t) for t in self.pairs.values()])


class HintTerm:
    """The ``hint`` term: MSE between regressor(student feature) and the teacher feature.

    ``regressors[i]`` (one per pair, in order) is a bias-free 1x1 convolution (or a
    linear map for vector features) from the student's to the teacher's channels; ``fit``
    trains its parameters together with the student's (they are not part of the student).
    """

    def __init__(self, signal: TeacherSignal, pairs: dict[str, str], regressors: nn.ModuleList):
        self.signal, self.pairs, self.regressors = signal, dict(pairs), regressors
        self.feature_points = list(self.pairs)

    def parameters(self):
        return self.regressors.parameters()

    def __call__(self, ctx) -> torch.Tensor:
        return torch.stack([F.mse_loss(reg(ctx.features[s].float()), self.signal.feature(ctx, t))
                            for reg, (s, t) in zip(self.regressors, self.pairs.items())]).mean()


def _regressor(c_in: int, c_out: int, dims: int) -> nn.Module:
    if dims == 0:
        return nn.Linear(c_in, c_out, bias=False)
    return (nn.Conv1d if dims == 1 else nn.Conv2d)(c_in, c_out, 1, bias=False)


def probe_shapes(model: nn.Module, x: torch.Tensor, points: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-example output shape of each named feature point on a small batch (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_features(model, points) as feats:
            model(x)
    finally:
        model.train(was_training)
    return {p: tuple(feats[p].shape[1:]) for p in points}


def match_points(student: nn.Module, teacher: nn.Module, x: torch.Tensor, points, *,
                 term: Literal["at", "hint"]) -> dict[str, str]:
    """``{student point: teacher point}`` for ``term``, checked on a sample batch.

    ``points``: None (every feature point the two share by name; for ``at`` only those
    that are spatial maps), a list of shared names, or a ``{student: teacher}`` mapping.
    Spatial sizes must match; ``at`` ignores channel counts, ``hint`` regresses them.
    """
    s_points, t_points = feature_points(student), feature_points(teacher)
    if points is None:
        pairs = {p: p for p in s_points if p in t_points}
    elif isinstance(points, dict):
        pairs = dict(points)
    else:
        pairs = {p: p for p in points}
    s_shape = probe_shapes(student, x, list(pairs))
    t_shape = probe_shapes(teacher, x, list(dict.fromkeys(pairs.values())))
    if points is None and term == "at":
        pairs = {s: t for s, t in pairs.items() if len(s_shape[s]) >= 2 and len(t_shape[t]) >= 2}
    if not pairs:
        raise UserError(f"{term}: the student and teacher share no usable feature points "
                        f"(student: {', '.join(s_points) or 'none'}; teacher: {', '.join(t_points) or 'none'}); "
                        f"name them, e.g. {term}_points: {{student_point: teacher_point}}")
    for s, t in pairs.items():
        if s_shape[s][1:] != t_shape[t][1:] or (term == "at" and len(s_shape[s]) < 2):
            raise UserError(f"{term}: student feature {s!r} {s_shape[s]} and teacher feature {t!r} {t_shape[t]} "
                            "need the same spatial size (channels first); pick matching feature points")
    return pairs


def teacher_attention_maps(teacher: nn.Module, x: torch.Tensor, points: list[str],
                           batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Attention maps of ``teacher`` at ``points`` for every example of ``x`` (eval mode)."""
    was_training = teacher.training
    teacher.eval()
    maps: dict[str, list[torch.Tensor]] = {p: [] for p in points}
    try:
        with torch.no_grad(), capture_features(teacher, points) as feats:
            for i in range(0, x.shape[0], batch_size):
                teacher(x[i:i + batch_size])
                for p in points:
                    maps[p].append(attention_map(feats[p]))
    finally:
        teacher.train(was_training)
    return {p: torch.cat(v) for p, v in maps.items()}


def validate_distill(teacher: nn.Module | torch.Tensor, student: nn.Module, data: Dataset, *,
                     loss: dict[str, float], temperature: float = 4.0, at_points=None,
                     hint_points=None) -> tuple[set[str], dict[str, str], dict[str, str]]:
    """Everything :func:`distill` would reject about its inputs, checked without training
    (cheap: feature shapes are probed on two training examples). Returns the distillation
    terms wanted and the ``at`` and ``hint`` point pairs. Raises :class:`UserError`."""
    unknown = sorted(set(loss) - {"ce", *DISTILL_TERMS})
    if unknown:
        raise UserError(f"loss: unknown term {unknown[0]!r}; available terms: {', '.join(sorted({'ce', *DISTILL_TERMS}))}")
    wants = {name for name in DISTILL_TERMS if name in loss}
    if "kd" in wants and not temperature > 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    n, k = data.x_train.shape[0], data.num_classes
    if n == 0:
        raise UserError(f"dataset {data.name} has no training examples to distil on")
    if isinstance(teacher, torch.Tensor):
        if tuple(teacher.shape) != (n, k):
            raise UserError(f"fixed teacher logits must have shape ({n}, {k}) (one row per training example), "
                            f"got {tuple(teacher.shape)}")
        if wants - {"kd"}:
            raise UserError(f"a noise teacher has only logits: the loss terms {', '.join(sorted(wants - {'kd'}))} "
                            "need a teacher network; use kd and ce")
        return wants, {}, {}
    sample = data.x_train[:2]
    at_pairs = match_points(student, teacher, sample, at_points, term="at") if "at" in wants else {}
    hint_pairs = match_points(student, teacher, sample, hint_points, term="hint") if "hint" in wants else {}
    return wants, at_pairs, hint_pairs


def distill(teacher: nn.Module | torch.Tensor, student: nn.Module, data: Dataset, recipe: Recipe, *,
            loss: dict[str, float] | None = None, temperature: float = 4.0, at_points=None, hint_points=None,
            cache_teacher: bool | None = None, seed: int = 0, callback=None,
            max_steps: int | None = None, weight_decay_scale: dict[str, float] | None = None) -> FitResult:
    """Train ``student`` in place from ``teacher`` with the named terms of ``loss``.

    ``teacher``: a network (trained or not), or fixed ``(N_train, K)`` logits (a noise
    teacher; only ``kd`` and ``ce`` apply). ``loss`` defaults to Hinton KD with α=0.9
    (``{"kd": 0.9, "ce": 0.1}``). ``at_points`` / ``hint_points``: see
    :func:`match_points`. ``cache_teacher`` (default: when ``recipe.augment`` is
    ``none``) computes the teacher's training-set logits and attention maps once, so a
    ``kd``/``at`` step costs about as much as a plain CE step; with augmentation the
    teacher must see the augmented batch and runs every step. ``hint`` always runs the
    teacher (its targets are whole feature maps).
    """
    loss = dict(loss or {"kd": 0.9, "ce": 0.1})
    wants, at_pairs, hint_pairs = validate_distill(teacher, student, data, loss=loss, temperature=temperature,
                                                   at_points=at_points, hint_points=hint_points)
    if isinstance(teacher, torch.Tensor):
        signal = TeacherSignal(logits=teacher.float())
        terms = {"kd": KDTerm(signal, temperature)} if "kd" in wants else {}
        return fit(student, data, recipe, loss=loss, terms=terms, seed=seed, callback=callback, max_steps=max_steps,
               weight_decay_scale=weight_decay_scale)

    sample = data.x_train[:2]
    live = list(dict.fromkeys(hint_pairs.values()))
    if cache_teacher and recipe.augment != "none":
        raise UserError("cache_teacher needs augment: none (the teacher must see each augmented batch)")
    if cache_teacher is None:
        cache_teacher = recipe.augment == "none"
    with Scratch() as scratch:  # cached teacher outputs live in RAM-backed memmaps until training ends
        if cache_teacher:
            logits = _in_scratch(scratch, "logits", evaluate_logits(teacher, data.x_train)) if "kd" in wants else None
            maps = teacher_attention_maps(teacher, data.x_train, list(dict.fromkeys(at_pairs.values())))
            maps = {p: _in_scratch(scratch, f"at{i}", m) for i, (p, m) in enumerate(maps.items())}
            signal = TeacherSignal(teacher, logits=logits, maps=maps, live_points=live)
        else:
            signal = TeacherSignal(teacher, live_points=list(dict.fromkeys([*at_pairs.values(), *live])))
        terms: dict = {}
        if "kd" in wants:
            terms["kd"] = KDTerm(signal, temperature)
        if at_pairs:
            terms["at"] = ATTerm(signal, at_pairs)
        if hint_pairs:
            s_shape = probe_shapes(student, sample, list(hint_pairs))
            t_shape = probe_shapes(teacher, sample, list(dict.fromkeys(hint_pairs.values())))
            torch.manual_seed(seed)
            regressors = nn.ModuleList(_regressor(s_shape[s][0], t_shape[t][0], len(s_shape[s]) - 1)
                                       for s, t in hint_pairs.items())
            terms["hint"] = HintTerm(signal, hint_pairs, regressors)
        return fit(student, data, recipe, loss=loss, terms=terms, seed=seed, callback=callback,
                   max_steps=max_steps, weight_decay_scale=weight_decay_scale)
