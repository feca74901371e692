"""Training recipe: optimizer, learning-rate schedule, epochs, augmentation, precision.

A :class:`Recipe` is a validated pydantic model, so a study file can hold one as a
plain mapping. It also builds the optimizer and the per-iteration lr scheduler.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from compresslab.errors import UserError


def validation_message(err: ValidationError, where: str) -> str:
    """One line: ``where: field: problem`` for each error, joined with ``; ``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}")
    return "; ".join(parts)


#: Upper bound on any epoch count: a typo such as 1e12 must not start a run that never ends.
MAX_EPOCHS = 100_000
#: A seed: non-negative (numpy generators reject negative seeds) and below 2**32.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class Recipe(BaseModel):
    """How to train: every field has a default, unknown fields are rejected.

    ``milestones`` and ``warmup_epochs`` are in epochs (milestones as fractions of
    ``epochs``); schedules are evaluated per optimizer step, not per epoch.

    Fields added later (``compile``, ``sampler``, ``pk_instances``) are left out of
    :meth:`model_dump` while they hold their defaults, so the dumps (and the step hashes
    made from them) of recipes written before they existed are unchanged.
    """

    model_config = ConfigDict(extra="forbid")

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by adam/adamw)")
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "multistep", "onecycle", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75],
                                    description="multistep: fractions of the total epochs")
    gamma: float = Field(0.1, gt=0, le=1, description="multistep: lr factor at each milestone")
    warmup_epochs: float = Field(0.0, ge=0, le=MAX_EPOCHS, description="linear warm-up from 0 (not with onecycle)")
    epochs: int = Field(10, ge=0, le=MAX_EPOCHS)
    batch_size: int = Field(128, ge=1, le=2**20)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: Literal["none", "crop", "crop-flip", "rrc", "rrc-flip"] = Field(
        "none", description="crop: zero-pad by crop_padding and crop back; rrc: random-resized-crop (8-100% of "
        "the area, aspect 3/4-4/3, resized back; 2-D images only); -flip adds a horizontal flip")
    crop_padding: int = Field(4, ge=0)
    precision: Literal["fp32", "tf32", "fast"] = Field(
        "fp32", description="fp32 (true fp32, TF32 off), tf32 (TF32 matmuls on CUDA), or fast (bf16 autocast + "
        "channels_last on CUDA, and on CPUs with native bf16)")
    compile: bool = Field(False, description="run the model through torch.compile (left out of the dump when false)")
    sampler: Literal["random", "pk"] = Field(
        "random", description="random batches, or pk: batch_size / pk_instances identities (classes) with "
        "pk_instances examples each, for metric losses such as triplet")
    pk_instances: int = Field(4, ge=2, le=1024, description="pk: examples per identity in a batch")

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 <= m <= 1 for m in v):
            raise ValueError("each milestone must be a fraction of the epochs in [0, 1]")
        return sorted(v)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov: needs optimizer sgd with momentum > 0")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ValueError("warmup_epochs: onecycle has its own warm-up; set warmup_epochs to 0")
        if self.epochs and self.warmup_epochs > self.epochs:
            raise ValueError("warmup_epochs: must not exceed epochs")
        if self.sampler == "pk" and (self.batch_size % self.pk_instances or self.batch_size < 2 * self.pk_instances):
            raise ValueError(f"sampler pk: batch_size ({self.batch_size}) must be a multiple of pk_instances "
                             f"({self.pk_instances}) holding at least 2 identities")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        for name in ("compile", "sampler", "pk_instances"):
            if getattr(self, name) == type(self).model_fields[name].default:
                out.pop(name, None)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "recipe") -> Recipe:
        """Validate a mapping read from YAML/JSON; problems become a one-line :class:`UserError`."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping of recipe fields, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise UserError(validation_message(err, where)) from None

    # -- builders ---------------------------------------------------------------------------

    def make_optimizer(self, params: Iterable) -> torch.optim.Optimizer:
        """The configured optimizer over ``params`` (parameters, or param-group dicts)."""
        params = list(params)
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                                   weight_decay=self.weight_decay)
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """Multiplier of ``lr`` for optimizer step ``step`` (0-based); not for onecycle.

        Warm-up is linear, ``(step + 1) / warmup_steps``; cosine then decays from 1 to 0
        over the remaining steps; multistep multiplies by ``gamma`` at each milestone.
        """
        total = max(1, self.epochs * steps_per_epoch)
        warmup = round(self.warmup_epochs * steps_per_epoch)
        if step < warmup:
            factor = (step + 1) / warmup
            if self.schedule == "multistep":
                factor *= self.gamma ** sum(step >= m * total for m in self.milestones)
            return factor
        if self.schedule == "cosine":
            t = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
        if self.schedule == "multistep":
            return self.gamma ** sum(step >= m * total for m in self.milestones)
        return 1.0

    def make_scheduler(self, optimizer: torch.optim.Optimizer,
                       steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
        """A scheduler to ``.step()`` after every optimizer step."""
        if self.schedule == "onecycle":
            total = max(1, self.epochs * steps_per_epoch)
            # Momentum is left as configured so the recipe's value means what it says.
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=total,
                                                       cycle_momentum=False)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self.lr_factor(s, steps_per_epoch))
