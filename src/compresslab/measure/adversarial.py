"""Adversarial transferability: do examples that fool one model fool another?

Attacks are untargeted and bounded in L∞ around the clean input, in input units
(compresslab's datasets are standardised, so ε is in standard deviations):

- :func:`fgsm` (Goodfellow et al. 2015): x + ε · sign(∇ₓ CE);
- :func:`pgd` (Madry et al. 2018): ``steps`` signed-gradient steps of ``step_size``,
  each projected back onto the ε-ball, from a random start inside it.

Gradients are taken with respect to the input only (``torch.autograd.grad``), so model
parameters never accumulate ``.grad``; models run in eval mode and get their
training flag back.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from compresslab.device import model_device
from compresslab.errors import UserError

ATTACKS = ("fgsm", "pgd")


@contextmanager
def _eval(model: nn.Module):
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.train(flag)


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _check(eps: float, steps: int = 1) -> None:
    if not eps > 0:
        raise UserError(f"adversarial eps must be > 0 (an L-inf radius in input units), got {eps}")
    if steps < 1:
        raise UserError(f"adversarial steps must be >= 1, got {steps}")


def _clamp(x: torch.Tensor, clamp: tuple[float, float] | None) -> torch.Tensor:
    return x if clamp is None else x.clamp(*clamp)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         clamp: tuple[float, float] | None = None, batch_size: int = 500) -> torch.Tensor:
    """x + eps · sign(∇ₓ CE(model(x), y)), optionally clamped to ``clamp`` = (lo, hi)."""
    _check(eps)
    out, dev = [], model_device(model)
    with _eval(model):
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            out.append(_clamp(xb + eps * _input_grad(model, xb, yb).sign(), clamp).detach().to(x.device))
    return torch.cat(out) if out else x.clone()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True, generator: torch.Generator | None = None,
        clamp: tuple[float, float] | None = None, batch_size: int = 500) -> torch.Tensor:
    """L∞ projected gradient descent on the CE loss; ``step_size`` defaults to 2.5·eps/steps.

    Deterministic for a given ``generator`` (used only for the random start; a CPU
    generator gives the same start on every device). Runs on the model's device.
    """
    _check(eps, steps)
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    out, dev = [], model_device(model)
    with _eval(model):
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            adv = xb.clone()
            if random_start:
                noise = torch.rand(xb.shape, generator=generator, dtype=xb.dtype, device=generator.device
                                   if generator is not None else xb.device)
                adv = _clamp(xb + eps * (2 * noise.to(xb.device) - 1), clamp)
            xb, yb, adv = xb.to(dev), yb.to(dev), adv.to(dev)
            for _ in range(steps):
                adv = adv + alpha * _input_grad(model, adv, yb).sign()
                adv = _clamp(torch.minimum(torch.maximum(adv, xb - eps), xb + eps), clamp).detach()
            out.append(adv.to(x.device))
    return torch.cat(out) if out else x.clone()


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    dev = model_device(model)
    with _eval(model), torch.no_grad():
        return torch.cat([model(x[i:i + batch_size].to(dev)).argmax(1).to(x.device)
                          for i in range(0, x.shape[0], batch_size)])


def craft(reference: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "fgsm", eps: float,
          steps: int = 10, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """Adversarial versions of ``x`` crafted on ``reference`` with ``attack`` (fgsm, or pgd
    from a random start drawn with ``seed``): the examples :func:`transfer_rate` uses."""
    if attack not in ATTACKS:
        raise UserError(f"unknown attack {attack!r}; use one of {', '.join(ATTACKS)}")
    _check(eps, steps)
    if attack == "fgsm":
        return fgsm(reference, x, y.long(), eps, batch_size=batch_size)
    return pgd(reference, x, y.long(), eps, steps=steps, generator=torch.Generator().manual_seed(seed),
               batch_size=batch_size)


def transfer(reference: nn.Module, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *,
             batch_size: int = 500) -> dict:
    """How often the adversarial examples ``x_adv`` crafted on ``reference`` (:func:`craft`)
    fool ``model``: one model's entry of :func:`transfer_rate`."""
    y = y.long()
    ref_clean = _predict(reference, x, batch_size) == y
    ref_adv_pred = _predict(reference, x_adv, batch_size)
    ref_fooled = ref_clean & (ref_adv_pred != y)
    n_ref = int(ref_clean.sum())
    clean_ok = _predict(model, x, batch_size) == y
    adv_pred = _predict(model, x_adv, batch_size)
    eligible = ref_fooled & clean_ok
    n = int(eligible.sum())
    return {
        "transfer_rate": float((adv_pred[eligible] != y[eligible]).double().mean()) if n else None,
        "n_eligible": n,
        "clean_accuracy": float(clean_ok.double().mean()),
        "adv_accuracy": float((adv_pred == y).double().mean()),
        "reference_fooled": float(ref_fooled.sum()) / n_ref if n_ref else None,
        "agreement_on_adversarial": float((adv_pred == ref_adv_pred).double().mean()),
    }


def transfer_rate(reference: nn.Module, others: dict[str, nn.Module] | nn.Module, x: torch.Tensor,
                  y: torch.Tensor, *, attack: str = "fgsm", eps: float, steps: int = 10, seed: int = 0,
                  batch_size: int = 500) -> dict:
    """Craft adversarial examples once on ``reference``; measure how often they fool each model.

    Transfer rate of a compared model: among the examples that the reference and the
    compared model both classify correctly when clean, *and* on which the attack fools
    the reference, the fraction whose adversarial version the compared model also
    misclassifies (``None`` when no example is eligible). Per model::

        {"transfer_rate", "n_eligible", "clean_accuracy", "adv_accuracy",
         "reference_fooled", "agreement_on_adversarial"}

    ``reference_fooled`` is the fraction of reference-correct examples the attack fools;
    ``agreement_on_adversarial`` the fraction of adversarial examples on which the two
    models predict the same class. A single module for ``others`` returns its dict
    directly instead of ``{name: dict}``.
    """
    x_adv = craft(reference, x, y, attack=attack, eps=eps, steps=steps, seed=seed, batch_size=batch_size)
    if isinstance(others, nn.Module):
        return transfer(reference, others, x, x_adv, y, batch_size=batch_size)
    return {name: transfer(reference, model, x, x_adv, y, batch_size=batch_size) for name, model in others.items()}
