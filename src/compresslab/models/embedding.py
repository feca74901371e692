"""Embedding networks for re-identification and retrieval: any zoo backbone plus a head.

``embedder`` builds ``backbone`` (any registered model) with ``dim`` outputs, so the
backbone's last layer is the projection to the embedding, then

* an optional rank-``rank`` bottleneck (a Linear ``dim -> rank`` without bias: the stored
  embedding is then ``rank``-dimensional);
* an optional slice to the first ``slice`` dimensions (trained sliced from initialisation);
* optionally, L2 normalisation of the stored embedding (``normalize``);
* an optional BNNeck (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person
  Re-identification"): a BatchNorm1d between the embedding and the identity classifier,
  whose bias is frozen at 0;
* a bias-free Linear classifier over the training identities (the softmax ID loss).

``forward`` returns the identity logits, so every training loop, loss term and cost
count works unchanged; the embedding is the output of the ``embedding`` module (a
feature point of that name: the vector a retrieval system stores, before the BNNeck),
and :func:`embed` returns it. ``nested`` names the Matryoshka widths (Kusupati et al.,
"Matryoshka Representation Learning", 2022) that the ``matryoshka`` loss term trains:
each prefix of the embedding is classified on its own, so one model can be sliced to any
of them after training. Compression methods that change the stored vector (QAT of
the codes, pruning of dimensions) replace or wrap ``embedding``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from compresslab.errors import UserError

from .registry import create_model, register_model


class EmbeddingHead(nn.Module):
    """The optional bottleneck and slice: ``(N, dim) -> (N, stored dims)``. Empty, it is the
    identity, so a hook on it still sees the stored embedding."""

    def __init__(self, dim: int, rank: int | None, keep: int | None, normalize: bool = False):
        super().__init__()
        self.bottleneck = nn.Linear(dim, rank, bias=False) if rank else None
        self.keep, self.normalize = keep, normalize
        self.out_dim = keep or rank or dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bottleneck is not None:
            x = self.bottleneck(x)
        x = x[:, : self.keep] if self.keep else x
        return nn.functional.normalize(x, dim=1) if self.normalize else x


class Embedder(nn.Module):
    """``backbone -> embedding head -> [BNNeck] -> identity classifier``."""

    def __init__(self, backbone: nn.Module, num_classes: int, dim: int, rank: int | None, keep: int | None,
                 bnneck: bool, normalize: bool = False, nested: tuple[int, ...] = ()):
        super().__init__()
        self.backbone = backbone
        self.embedding = EmbeddingHead(dim, rank, keep, normalize)
        self.nested = tuple(nested)
        d = self.embedding.out_dim
        self.neck = nn.BatchNorm1d(d) if bnneck else nn.Identity()
        if bnneck:
            self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(d, num_classes, bias=False)
        inner = {f"backbone.{k}": f"backbone.{v}" for k, v in getattr(backbone, "feature_points", {}).items()}
        self.feature_points = {**inner, "embedding": "embedding", "neck": "neck"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.neck(self.embedding(self.backbone(x))))


def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The stored embeddings of ``x`` (eval mode, float32, on ``x``'s device): the output of
    ``model.embedding``. A model without one is a :class:`UserError`."""
    module = getattr(model, "embedding", None)
    if module is None:
        raise UserError(f"{type(model).__name__} has no embedding; retrieval needs an embedder "
                        "(--model embedder -o backbone=...)")
    out: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, o: out.append(o.detach().float().to(x.device)))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for i in range(0, x.shape[0], batch_size):
                model(x[i:i + batch_size].to(dev))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, module.out_dim if hasattr(module, "out_dim") else 0)


@register_model("embedder")
def embedder(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_shape: tuple[int, ...] | None = None,
    backbone: str = "lenet5",
    backbone_options: dict = {},  # noqa: B006 - never mutated; shown in the option list
    dim: int = 128,
    rank: int | None = None,
    slice: int | None = None,  # noqa: A002 - the option's name in specs
    bnneck: bool = True,
    normalize: bool = False,
    nested: list[int] | None = None,
) -> Embedder:
    """Embedding network: the zoo model ``backbone`` (with ``backbone_options``) projecting to
    ``dim``, an optional rank-``rank`` bottleneck, an optional slice to the first ``slice``
    dims, optional L2 normalisation, an optional BNNeck, and an identity classifier over the
    ``num_classes`` training identities. ``nested``: Matryoshka widths for the ``matryoshka``
    loss term."""
    if backbone == "embedder":
        raise UserError("embedder: the backbone must be a plain model, not another embedder")
    if dim < 1:
        raise UserError(f"embedder: dim must be >= 1, got {dim}")
    if rank is not None and not 1 <= rank <= dim:
        raise UserError(f"embedder: rank {rank} must be in 1..dim ({dim})")
    stored = rank or dim
    if slice is not None and not 1 <= slice <= stored:
        raise UserError(f"embedder: slice {slice} is wider than the embedding ({stored} dims); use 1..{stored}")
    out_dim = slice or stored
    nested = sorted(set(nested or []))
    if nested and not 1 <= nested[0] <= nested[-1] < out_dim:
        raise UserError(f"embedder: nested widths {nested} must be in 1..{out_dim - 1} (the full width is trained anyway)")
    net = create_model(backbone, num_classes=dim, in_channels=in_channels, input_shape=input_shape,
                       **dict(backbone_options))
    return Embedder(net, num_classes, dim, rank, slice, bnneck, normalize, tuple(nested))
