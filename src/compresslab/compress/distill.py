"""Knowledge distillation: Hinton soft targets as a named loss term for ``fit``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compresslab.data import Dataset
from compresslab.train import FitResult, Recipe, evaluate_logits, fit


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), batchmean (Hinton et al. 2015)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


class KDTerm:
    """The ``kd`` loss term. Teacher logits come from a per-example cache (indexed by
    ``ctx.idx``) when the inputs are not augmented, else from a live teacher forward."""

    def __init__(self, temperature: float = 4.0, *, cached: torch.Tensor | None = None,
                 teacher: nn.Module | None = None):
        if (cached is None) == (teacher is None):
            raise ValueError("KDTerm needs exactly one of cached logits or a teacher module")
        self.temperature = temperature
        self.cached = cached
        self.teacher = teacher.eval() if teacher is not None else None

    def __call__(self, ctx) -> torch.Tensor:
        if self.cached is not None:
            target = self.cached[ctx.idx]
        else:
            with torch.no_grad():
                target = self.teacher(ctx.x)
        return kd_loss(ctx.logits, target, self.temperature)


def distill(teacher: nn.Module, student: nn.Module, data: Dataset, recipe: Recipe, *,
            loss: dict[str, float] | None = None, temperature: float = 4.0, seed: int = 0,
            callback=None) -> FitResult:
    """Train ``student`` in place with Hinton KD from ``teacher`` (default α=0.9: kd 0.9 + ce 0.1).

    Without augmentation the teacher's training-set logits are computed once and reused,
    so a KD step costs about as much as a plain CE step.
    """
    loss = dict(loss or {"kd": 0.9, "ce": 0.1})
    if recipe.augment == "none":
        term = KDTerm(temperature, cached=evaluate_logits(teacher, data.x_train))
    else:
        term = KDTerm(temperature, teacher=teacher)
    return fit(student, data, recipe, loss=loss, terms={"kd": term}, seed=seed, callback=callback)
