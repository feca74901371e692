"""Soft binary decision tree (Frosst & Hinton, "Distilling a Neural Network Into a Soft
Decision Tree", 2017, arXiv:1711.09784).

Inner node ``i`` (breadth-first: the root is 0, the children of ``i`` are ``2i+1`` left and
``2i+2`` right) takes the right branch with probability ``p_i(x) = σ(β(x·w_i + b_i))`` on the
flattened input, with one learned inverse temperature ``β = exp(log_beta)`` for the tree
(section 2 of the paper). Leaf ``ℓ`` holds ``Q_ℓ = softmax(φ_ℓ)``. The path probability
``P_ℓ(x)`` is the product of ``p_i`` or ``1 - p_i`` along the path to ``ℓ``; it is computed in
log space.

``forward`` returns log-probabilities, used as logits by every loss and metric: the log of
the mixture ``Σ_ℓ P_ℓ(x) Q_ℓ`` while training, and at eval, with ``predict="max-path"`` (the
paper's prediction and the default), ``log Q`` of the leaf with the highest path
probability. The paper's own loss and balance penalty are the ``soft-tree`` loss term
(:mod:`compresslab.train.losses`), which calls :meth:`SoftTree.leaf_loss` and
:meth:`SoftTree.balance_penalty` on ``ctx.model``.

:func:`tree_to_json` writes the tree as plain JSON and :func:`predict_json` evaluates it in pure
Python (no numpy, no torch).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from compresslab.errors import UserError

from .registry import register_model

MAX_DEPTH = 12  # 2^12 leaves; the inner layer has 2^depth - 1 rows of the input size


class SoftTree(nn.Module):
    def __init__(self, in_features: int, depth: int, num_classes: int, predict: str = "max-path",
                 penalty: float = 0.1):
        super().__init__()
        self.depth, self.predict, self.penalty = depth, predict, penalty
        self.inner = nn.Linear(in_features, 2 ** depth - 1)  # row i: w_i, b_i
        self.log_beta = nn.Parameter(torch.zeros(()))
        self.phi = nn.Parameter(0.01 * torch.randn(2 ** depth, num_classes))

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def _log_paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log P over leaves (N, 2^d), log P^i over inner nodes (N, 2^d - 1), p_i (N, 2^d - 1))."""
        z = self.beta * self.inner(x.flatten(1).float())
        right, left = F.logsigmoid(z), F.logsigmoid(-z)
        log_p = z.new_zeros(len(z), 1)
        reach = []
        for level in range(self.depth):
            lo, hi = 2 ** level - 1, 2 ** (level + 1) - 1
            reach.append(log_p)
            log_p = torch.stack([log_p + left[:, lo:hi], log_p + right[:, lo:hi]], dim=2).flatten(1)
        return log_p, torch.cat(reach, dim=1), torch.sigmoid(z)

    def path_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``P_ℓ(x)`` for every leaf, shape (N, 2^depth); rows sum to 1."""
        return self._log_paths(x)[0].exp()

    def leaf_distributions(self) -> torch.Tensor:
        """``Q_ℓ = softmax(φ_ℓ)``, shape (2^depth, classes)."""
        return self.phi.softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_p = self._log_paths(x)[0]
        log_q = self.phi.float().log_softmax(dim=1)
        if not self.training and self.predict == "max-path":
            return log_q[log_p.argmax(dim=1)]
        return torch.logsumexp(log_p[:, :, None] + log_q[None], dim=1)

    def leaf_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The paper's loss (Eq. 3, section 3), batch mean: ``Σ_ℓ P_ℓ(x) · (-Σ_k T_k log Q_ℓk)``,
        the cross-entropy of each leaf against the target distribution ``T`` (N, classes),
        weighted by its path probability. (Eq. 3 as printed wraps this sum in ``-log(...)``
        with the minus sign inside, which is the log of a negative number; the text's
        "cross entropy between each leaf, weighted by its path probability" is what is
        implemented.)"""
        leaf_ce = -targets @ self.phi.float().log_softmax(dim=1).T  # (N, leaves)
        return (self.path_probabilities(x) * leaf_ce).sum(dim=1).mean()

    def balance_penalty(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's regulariser (section 4.1), over the batch:
        ``C = -Σ_i λ_i (0.5 log α_i + 0.5 log(1 - α_i))`` with
        ``α_i = Σ_x P^i(x) p_i(x) / Σ_x P^i(x)`` (``P^i``: path probability of reaching node
        ``i``) and ``λ_i = penalty · 2^-depth(i)`` (the root has depth 0)."""
        _, log_reach, p = self._log_paths(x)
        reach = log_reach.exp()
        alpha = ((reach * p).sum(0) / reach.sum(0).clamp_min(1e-12)).clamp(1e-6, 1 - 1e-6)
        node_depth = torch.log2(torch.arange(1, len(alpha) + 1, device=alpha.device, dtype=alpha.dtype)).floor()
        lam = self.penalty * 2.0 ** -node_depth
        return -(lam * (0.5 * alpha.log() + 0.5 * (1 - alpha).log())).sum()


@register_model("soft-tree")
def soft_tree(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_shape: tuple[int, ...] | None = None,
    depth: int = 8,
    predict: Literal["max-path", "mixture"] = "max-path",
    penalty: float = 0.1,
) -> SoftTree:
    """Soft decision tree of ``depth`` (2^depth leaves); ``predict`` at eval: max-path or
    mixture; ``penalty``: λ of the balance penalty at the root (the ``soft-tree`` loss term)."""
    if input_shape is None:
        raise UserError("soft-tree needs input_shape (one example's shape, e.g. (1, 28, 28)) to size its inner nodes")
    if not 1 <= depth <= MAX_DEPTH:
        raise UserError(f"soft-tree depth must be between 1 and {MAX_DEPTH} (leaves grow as 2^depth), got {depth}")
    if penalty < 0:
        raise UserError(f"soft-tree penalty must be >= 0, got {penalty}")
    return SoftTree(math.prod(input_shape), depth, num_classes, predict, penalty)


def tree_to_json(model: SoftTree) -> dict:
    """The tree as plain JSON: depth, eval prediction (max-path or mixture), input shape, β, inner nodes (w, b; breadth-first) and leaf
    distributions ``Q_ℓ``."""
    cfg = getattr(model, "compresslab_config", {}) or {}
    w, b = model.inner.weight.detach().double(), model.inner.bias.detach().double()
    return {"format": "compresslab-soft-tree/1", "depth": model.depth, "predict": model.predict, "input_shape": cfg.get("input_shape"),
            "beta": float(model.beta.detach()),
            "inner": [{"w": w[i].tolist(), "b": float(b[i])} for i in range(len(b))],
            "leaves": model.leaf_distributions().detach().double().tolist()}


def predict_json(tree: dict, x: list[float], mixture: bool = False) -> list[float]:
    """Class probabilities of the flattened input ``x``: the max-path leaf's distribution, or
    with ``mixture`` the path-weighted mixture of all leaves. Pure Python."""
    paths = [1.0]
    for level in range(tree["depth"]):
        nxt = []
        for j, pj in enumerate(paths):
            node = tree["inner"][2 ** level - 1 + j]
            z = tree["beta"] * (sum(wi * xi for wi, xi in zip(node["w"], x)) + node["b"])
            right = 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))
            nxt += [pj * (1 - right), pj * right]
        paths = nxt
    if not mixture:
        return list(tree["leaves"][max(range(len(paths)), key=paths.__getitem__)])
    return [sum(p * q[k] for p, q in zip(paths, tree["leaves"])) for k in range(len(tree["leaves"][0]))]
