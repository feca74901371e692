"""Knowledge distillation: the ``kd``, ``at`` and ``hint`` loss terms, teacher signals, ``distill``.

Importing this module registers three terms with :func:`compresslab.train.losses.register_term`:

- ``kd`` (Hinton et al. 2015): T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), batchmean.
- ``at`` (Zagoruyko & Komodakis 2017): at(f) = L2-normalised, flattened channel mean
  of f²; the term is the mean over feature points of mean((at_s − at_t)²). Its weight
  in the loss dict is β (1000 in the paper). Works on 1-D and 2-D feature maps.
- ``hint`` (FitNets, Romero et al. 2015): a learned 1x1 regressor maps the student's
  feature to the teacher's channel count; the term is the mean squared error.

Token-level data (labels ``(N, L)``, logits ``(N, L, K)``, token features ``(N, L, D)``)
scores only the valid tokens, label not -100 (:func:`compresslab.data.core.valid_tokens`):

- ``kd``: the same formula with each valid token one example (batchmean over them).
- ``at`` on token inputs (integer ids): at(f) = the per-token energy mean_d f² over the
  positions, zeroed where a token is not valid, L2-normalised per example
  (:func:`token_attention_map`); the term is the mean over the valid positions of
  (at_s − at_t)², averaged over feature points. Teacher maps run live (not cached).
- ``hint`` on token inputs: a bias-free linear regressor maps each token's student feature
  to the teacher's width; the term is the MSE over the valid tokens.

Without token labels (sequence-level text data) a valid token is one that is not the
dataset's padding id (``meta["text"]["pad_id"]``), when known.

Terms combine by name with weights, e.g. ``{"ce": 0.1, "kd": 0.9, "at": 1000}``; a
user-registered term may read the teacher the same way, through the
:class:`TeacherSignal` its factory receives.

A teacher is a trained or untrained network, or a fixed ``(N_train, K)`` logit tensor
(a *noise teacher*, :func:`noise_logits`). Terms tell the signal what they read when
they are built; without augmentation the teacher's training-set logits and attention
maps are then computed once and read per example; with augmentation (or for feature
targets) the teacher runs once per step, shared by all terms.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compresslab.data import Dataset
from compresslab.data.core import IGNORE_INDEX, valid_tokens
from compresslab.device import model_device
from compresslab.errors import UserError
from compresslab.models import capture_features, feature_points
from compresslab.scratch import Scratch
from compresslab.train import (
    FitResult,
    Loss,
    Recipe,
    compose_loss,
    evaluate_logits,
    fit,
    get_term_factory,
    register_term,
    require_teacher,
)
from compresslab.train.fit import auto_stream

NOISE_KINDS = ("uniform-noise", "gaussian-noise")
#: ``distill``'s loss when none is given: Hinton KD with α = 0.9.
DEFAULT_LOSS = {"kd": 0.9, "ce": 0.1}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, *,
            teacher_log_probs: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), batchmean (Hinton et al. 2015).

    ``teacher_log_probs`` = log_softmax(z_t/T), when already known, replaces ``teacher_logits``.
    Token-level logits ``(B, L, K)``: the mean over the valid tokens (``labels`` ``(B, L)``
    not -100; every token without labels), each one example; 0 when there is none.
    """
    t = temperature
    log_p_t = teacher_log_probs if teacher_log_probs is not None else F.log_softmax(teacher_logits.float() / t, dim=-1)
    if student_logits.ndim == 3:
        student_logits = valid_tokens(student_logits, labels)[0]
        log_p_t = valid_tokens(log_p_t, labels)[0]
        if student_logits.shape[0] == 0:
            return student_logits.sum() * 0.0
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
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


def token_attention_map(feature: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Token features (B, L, D) -> (B, L): each token's mean of f² over D, zero where ``keep``
    (B, L) is False, L2-normalised per example over the positions."""
    if feature.dim() != 3:
        raise UserError(f"attention transfer on token inputs needs per-token features (B, L, D), "
                        f"got shape {tuple(feature.shape)}; choose per-token feature points")
    energy = feature.float().pow(2).mean(-1)
    if keep is not None:
        energy = energy * keep
    return F.normalize(energy, dim=1)


def token_keep(ctx, pad_id: int | None = None) -> torch.Tensor | None:
    """The valid tokens (B, L) of a batch of token ids: labels not -100 when the labels are
    per token, else ids other than ``pad_id`` (None when that is unknown: every position)."""
    if ctx.y.ndim == 2 and not ctx.y.is_floating_point():
        return ctx.y != IGNORE_INDEX
    if pad_id is not None and ctx.x.ndim == 2 and not ctx.x.is_floating_point():
        return ctx.x != pad_id
    return None


def _token_labels(ctx) -> torch.Tensor | None:
    """``ctx.y`` when it holds one class label per token, else None."""
    return ctx.y if ctx.y.ndim == 2 and not ctx.y.is_floating_point() else None


def _at_valid(s: torch.Tensor, t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """mean over the valid positions of (s − t)² (every position when ``keep`` is None; 0 when none is valid)."""
    d = (s - t).pow(2)
    if keep is None:
        return d.mean()
    return d[keep].mean() if bool(keep.any()) else d.sum() * 0.0


def noise_logits(kind: str, n: int, num_classes: int, *, low: float = 0.0, high: float = 1.0,
                 sigma: float = 1.0, seed: int = 0, tokens: int | None = None) -> torch.Tensor:
    """A noise teacher: one fixed logit vector per training example, drawn once.

    ``uniform-noise``: U(low, high); ``gaussian-noise``: N(0, sigma²). Row i belongs to
    training example i for the whole run, so the targets never change across epochs.
    With ``tokens`` = L (token-level data), one vector per token: ``(n, L, num_classes)``.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (n, num_classes) if tokens is None else (n, tokens, num_classes)
    if kind == "uniform-noise":
        if not high > low:
            raise UserError(f"uniform-noise teacher: need high > low, got low={low}, high={high}")
        return low + (high - low) * torch.rand(*shape, generator=gen)
    if kind == "gaussian-noise":
        if not sigma > 0:
            raise UserError(f"gaussian-noise teacher: sigma must be > 0, got {sigma}")
        return sigma * torch.randn(*shape, generator=gen)
    raise UserError(f"unknown noise teacher {kind!r}; use one of {', '.join(NOISE_KINDS)}")


class TeacherSignal:
    """The teacher's outputs for the current training batch, for every term that reads them.

    Terms declare what they read when they are built (:meth:`want_logits`,
    :meth:`want_attention`, :meth:`want_features`); then :meth:`prepare`, called once
    before training, settles how each is delivered. Fixed per-example tensors (cached
    logits, cached attention maps, noise logits) are indexed by ``ctx.idx``; anything
    else comes from one no-grad forward of the teacher per optimizer step
    (``ctx.global_step``), shared by all terms.
    """

    def __init__(self, teacher: nn.Module | None = None, *, logits: torch.Tensor | None = None,
                 maps: dict[str, torch.Tensor] | None = None):
        if teacher is None and logits is None:
            raise ValueError("TeacherSignal needs a teacher module or fixed logits")
        self.teacher = teacher
        self.cached_logits = logits
        self.cached_maps = dict(maps or {})
        self.live_points: list[str] = []
        self._wants_logits = False
        self._attention_points: list[str] = []
        self._feature_points: list[str] = []
        self._log_probs: dict[float, torch.Tensor] = {}
        self._step: int | None = None
        self._out: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def want_logits(self) -> None:
        """A term reads :meth:`logits` or :meth:`log_probs` (cacheable)."""
        self._wants_logits = True

    def want_attention(self, points) -> None:
        """A term reads :meth:`attention` at these teacher feature points (cacheable)."""
        self._attention_points = list(dict.fromkeys([*self._attention_points, *points]))

    def want_features(self, points) -> None:
        """A term reads :meth:`feature` at these teacher feature points (always computed live)."""
        self._feature_points = list(dict.fromkeys([*self._feature_points, *points]))

    def prepare(self, x: torch.Tensor, scratch: Scratch, *, cache: bool) -> None:
        """Settle delivery once every term is built, and put the teacher in eval mode. With
        ``cache``, the wanted logits and attention maps of the teacher on every training
        example ``x`` are computed now into RAM-backed arrays of ``scratch`` (which must
        outlive training); the rest runs live."""
        if self.teacher is None:
            return
        self.teacher.eval()
        dev = model_device(self.teacher)  # where the batches' indices are, streamed or not
        attention = [p for p in self._attention_points if p not in self.cached_maps]
        if cache:
            if self._wants_logits and self.cached_logits is None:
                self.cached_logits = _in_scratch(scratch, "logits", evaluate_logits(self.teacher, x).to(dev))
            maps = teacher_attention_maps(self.teacher, x, attention) if attention else {}
            self.cached_maps.update({p: _in_scratch(scratch, f"at{i}", m.to(dev)) for i, (p, m) in enumerate(maps.items())})
            attention = []
        self.live_points = list(dict.fromkeys([*attention, *self._feature_points]))

    def _forward(self, ctx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.teacher is None:
            raise UserError("this teacher has only fixed logits (a noise teacher): it has no features")
        if self._step != ctx.global_step or self._out is None:
            with torch.no_grad(), capture_features(self.teacher, self.live_points) as feats:
                logits = self.teacher(ctx.x).float()
            self._out, self._step = (logits, dict(feats)), ctx.global_step
        return self._out

    def logits(self, ctx) -> torch.Tensor:
        """The teacher's float32 logits for the batch."""
        if self.cached_logits is not None:
            return self.cached_logits[ctx.idx]
        return self._forward(ctx)[0]

    def log_probs(self, ctx, temperature: float) -> torch.Tensor:
        """log_softmax(teacher logits / ``temperature``) for the batch; from fixed logits,
        computed once for the whole training set."""
        if self.cached_logits is None:
            return F.log_softmax(self._forward(ctx)[0] / temperature, dim=-1)
        if temperature not in self._log_probs:
            self._log_probs[temperature] = F.log_softmax(self.cached_logits.float() / temperature, dim=-1)
        return self._log_probs[temperature][ctx.idx]

    def attention(self, ctx, point: str) -> torch.Tensor:
        """The teacher's :func:`attention_map` at ``point`` for the batch."""
        if point in self.cached_maps:
            return self.cached_maps[point][ctx.idx]
        return attention_map(self._live_feature(ctx, point))

    def feature(self, ctx, point: str) -> torch.Tensor:
        """The teacher's float32 feature map at ``point`` for the batch."""
        return self._live_feature(ctx, point).float()

    def _live_feature(self, ctx, point: str) -> torch.Tensor:
        feats = self._forward(ctx)[1]
        if point not in feats:
            raise ValueError(f"teacher feature point {point!r} was not asked for; a term reading it must "
                             "call want_features (or want_attention) when it is built")
        return feats[point]


def _in_scratch(scratch, name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` copied into a memory-mapped array of ``scratch``; a tensor sharing its memory.
    A tensor on an accelerator stays where it is (float32): that is where training reads it."""
    if t.device.type != "cpu":
        return t.float()
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
        signal.want_logits()

    def __call__(self, ctx) -> torch.Tensor:
        labels = _token_labels(ctx)
        tokens = {} if labels is None else {"labels": labels}  # example-level: the call as it always was
        return kd_loss(ctx.logits, None, self.temperature,
                       teacher_log_probs=self.signal.log_probs(ctx, self.temperature), **tokens)


class ATTerm:
    """The ``at`` term over ``pairs`` = {student point: teacher point}; with ``tokens`` (token-id
    inputs) over per-token features, :func:`token_attention_map` on the valid tokens."""

    def __init__(self, signal: TeacherSignal, pairs: dict[str, str], *, tokens: bool = False,
                 pad_id: int | None = None):
        self.signal, self.pairs, self.tokens, self.pad_id = signal, dict(pairs), tokens, pad_id
        self.feature_points = list(self.pairs)
        if tokens:
            signal.want_features(self.pairs.values())
        else:
            signal.want_attention(self.pairs.values())

    def __call__(self, ctx) -> torch.Tensor:
        if self.tokens:
            keep = token_keep(ctx, self.pad_id)
            return torch.stack([_at_valid(token_attention_map(ctx.features[s], keep),
                                          token_attention_map(self.signal.feature(ctx, t), keep), keep)
                                for s, t in self.pairs.items()]).mean()
        return at_loss([attention_map(ctx.features[s]) for s in self.pairs],
                       [self.signal.attention(ctx, t) for t in self.pairs.values()])


class HintTerm:
    """The ``hint`` term: MSE between regressor(student feature) and the teacher feature.

    ``regressors[i]`` (one per pair, in order) is a bias-free 1x1 convolution (or a
    linear map for vector features) from the student's to the teacher's channels; ``fit``
    trains its parameters together with the student's (they are not part of the student).

    With ``tokens`` (token-id inputs, features (B, L, D)) the regressor is linear on each
    token's feature and the MSE is over the valid tokens only.
    """

    def __init__(self, signal: TeacherSignal, pairs: dict[str, str], regressors: nn.ModuleList, *,
                 tokens: bool = False, pad_id: int | None = None):
        self.signal, self.pairs, self.regressors = signal, dict(pairs), regressors
        self.tokens, self.pad_id = tokens, pad_id
        self.feature_points = list(self.pairs)
        signal.want_features(self.pairs.values())

    def parameters(self):
        return self.regressors.parameters()

    def __call__(self, ctx) -> torch.Tensor:
        keep = token_keep(ctx, self.pad_id) if self.tokens else None
        parts = []
        for reg, (s, t) in zip(self.regressors, self.pairs.items()):
            pred, target = reg(ctx.features[s].float()), self.signal.feature(ctx, t)
            if keep is not None and pred.dim() == 3:  # per-token features (a pooled one is per example)
                if not bool(keep.any()):
                    parts.append(pred.sum() * 0.0)
                    continue
                pred, target = pred[keep], target[keep]
            parts.append(F.mse_loss(pred, target))
        return torch.stack(parts).mean()


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
    On token ids ``x`` (integers) features are (L, D) per example, channels last: the
    positions L must match and D may differ.
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
    tokens = _token_inputs(x)
    for s, t in pairs.items():
        same = s_shape[s][:-1] == t_shape[t][:-1] if tokens else s_shape[s][1:] == t_shape[t][1:]
        if not same or (term == "at" and len(s_shape[s]) < 2):
            raise UserError(f"{term}: student feature {s!r} {s_shape[s]} and teacher feature {t!r} {t_shape[t]} "
                            f"need the same {'number of tokens (L, D)' if tokens else 'spatial size (channels first)'}; "
                            "pick matching feature points")
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


def _teacher_network(signal: TeacherSignal | None, name: str) -> nn.Module:
    """The teacher network behind ``signal``; a :class:`UserError` if there is none."""
    teacher = require_teacher(signal, name).teacher
    if teacher is None:
        raise UserError(f"a noise teacher has only logits: feature terms such as {name} need a teacher network; "
                        "use kd and ce")
    return teacher


@register_term("kd")
def _kd_term(signal: TeacherSignal | None, *, temperature: float = 4.0, **_) -> KDTerm:
    return KDTerm(require_teacher(signal, "kd"), temperature)


def _token_inputs(x: torch.Tensor | None) -> bool:
    """Whether a batch holds token ids (integers), whose features are per token (B, L, D)."""
    return x is not None and not x.is_floating_point()


@register_term("at")
def _at_term(signal: TeacherSignal | None, *, student: nn.Module | None = None, sample: torch.Tensor | None = None,
             at_points=None, pad_id: int | None = None, **_) -> ATTerm:
    teacher = _teacher_network(signal, "at")
    return ATTerm(signal, match_points(student, teacher, sample, at_points, term="at"),
                  tokens=_token_inputs(sample), pad_id=pad_id)


@register_term("hint")
def _hint_term(signal: TeacherSignal | None, *, student: nn.Module | None = None,
               sample: torch.Tensor | None = None, hint_points=None, seed: int = 0, pad_id: int | None = None,
               **_) -> HintTerm:
    teacher = _teacher_network(signal, "hint")
    pairs = match_points(student, teacher, sample, hint_points, term="hint")
    s_shape = probe_shapes(student, sample, list(pairs))
    t_shape = probe_shapes(teacher, sample, list(dict.fromkeys(pairs.values())))
    tokens = _token_inputs(sample)
    with torch.random.fork_rng(devices=[]):  # the regressors' initialisation depends on seed alone
        torch.manual_seed(seed)
        regressors = nn.ModuleList(_regressor(s_shape[s][-1], t_shape[t][-1], 0) if tokens  # per token, channels last
                                   else _regressor(s_shape[s][0], t_shape[t][0], len(s_shape[s]) - 1)
                                   for s, t in pairs.items())
    return HintTerm(signal, pairs, regressors.to(model_device(student)),  # made on the CPU, trained with the student
                    tokens=tokens, pad_id=pad_id)


def _teacher_signal(teacher: nn.Module | torch.Tensor, data: Dataset) -> TeacherSignal:
    n, k = data.x_train.shape[0], data.num_classes
    if n == 0:
        raise UserError(f"dataset {data.name} has no training examples to distil on")
    if not isinstance(teacher, torch.Tensor):
        return TeacherSignal(teacher)
    want = (n, data.y_train.shape[1], k) if data.token_level else (n, k)
    if tuple(teacher.shape) != want:
        raise UserError(f"fixed teacher logits must have shape {want} (one row per training example"
                        f"{', one per token' if data.token_level else ''}), got {tuple(teacher.shape)}")
    return TeacherSignal(logits=teacher.float().to(data.device))


def _distill_loss(teacher: nn.Module | torch.Tensor, student: nn.Module, data: Dataset, loss: dict[str, float],
                  **cfg) -> tuple[TeacherSignal, Loss]:
    """The teacher's signal (not prepared yet) and ``loss`` built on it from the registered terms."""
    for name in loss:  # unknown names first, before any probing
        get_term_factory(name)
    signal = _teacher_signal(teacher, data)
    if data.text is not None and data.text.get("pad_id") is not None:  # feature terms on sequence-level text
        cfg.setdefault("pad_id", data.text["pad_id"])
    return signal, compose_loss(loss, signal=signal, student=student, sample=data.x_train[:2], **cfg)


def validate_distill(teacher: nn.Module | torch.Tensor, student: nn.Module, data: Dataset, *,
                     loss: dict[str, float], temperature: float = 4.0, at_points=None,
                     hint_points=None) -> None:
    """Everything :func:`distill` would reject about its inputs, checked without training:
    the loss terms are built on the teacher (cheap: feature shapes are probed on two
    training examples) but nothing is computed. Raises :class:`UserError`."""
    _distill_loss(teacher, student, data, dict(loss or DEFAULT_LOSS), temperature=temperature,
                  at_points=at_points, hint_points=hint_points)


def distill(teacher: nn.Module | torch.Tensor, student: nn.Module, data: Dataset, recipe: Recipe, *,
            loss: dict[str, float] | None = None, temperature: float = 4.0, at_points=None, hint_points=None,
            cache_teacher: bool | None = None, seed: int = 0, data_seed: int | None = None, callback=None,
            max_steps: int | None = None, weight_decay_scale: dict[str, float] | None = None) -> FitResult:
    """Train ``student`` in place from ``teacher`` with the named terms of ``loss``.

    ``teacher``: a network (trained or not), or fixed ``(N_train, K)`` logits (a noise
    teacher; only ``kd`` and ``ce`` apply). ``loss`` defaults to Hinton KD with α=0.9
    (``{"kd": 0.9, "ce": 0.1}``); every term comes from the registry
    (:func:`compresslab.train.losses.register_term`) and is built as
    ``factory(signal, label_smoothing=, temperature=, at_points=, hint_points=, student=,
    sample=, seed=)``, ``signal`` being the teacher's :class:`TeacherSignal` and ``sample``
    two training examples. ``at_points`` / ``hint_points``: see :func:`match_points`.
    ``seed`` initialises the terms' own parameters (hint regressors) and, unless
    ``data_seed`` is given, also draws the batch order (see :func:`~compresslab.train.fit`).
    ``cache_teacher`` (default: when ``recipe.augment`` is ``none``) computes the teacher's
    training-set logits and attention maps once, so a ``kd``/``at`` step costs about as
    much as a plain CE step; with augmentation the teacher must see the augmented batch
    and runs every step. Feature terms such as ``hint`` always run the teacher (their
    targets are whole feature maps).

    Training runs on the student's device; a teacher network is moved there (in place),
    and cached teacher outputs stay there (on CPU: in RAM-backed scratch memmaps).
    """
    device = model_device(student)
    if not auto_stream(data.x_train, data.y_train, device):  # else fit streams it from host memory
        data = data.to(device)
    if isinstance(teacher, nn.Module):
        teacher.to(device)
    signal, loss_fn = _distill_loss(teacher, student, data, dict(loss or DEFAULT_LOSS),
                                    label_smoothing=recipe.label_smoothing, temperature=temperature,
                                    at_points=at_points, hint_points=hint_points, seed=seed)
    if signal.teacher is not None and cache_teacher and recipe.augment != "none":
        raise UserError("cache_teacher needs augment: none (the teacher must see each augmented batch)")
    if cache_teacher is None:
        cache_teacher = recipe.augment == "none"
    with Scratch() as scratch:  # cached teacher outputs live in RAM-backed memmaps until training ends
        signal.prepare(data.x_train, scratch, cache=cache_teacher)
        return fit(student, data, recipe, loss=loss_fn, seed=seed if data_seed is None else data_seed,
                   callback=callback, max_steps=max_steps,
                   weight_decay_scale=weight_decay_scale)
