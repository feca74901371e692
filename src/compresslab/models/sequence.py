"""Sequence models for 1-D signals (input (N, C, L), e.g. MNIST-1D (N, 1, 40)).

* ``gru``: the signal read as L time steps of C features by stacked (optionally
  bidirectional) GRU layers; the classifier sees the last layer's final states.
* ``transformer1d``: a small pre-norm ViT for 1-D signals: non-overlapping patches
  embedded by a Conv1d, a learned positional embedding, ``depth`` encoder layers,
  a final LayerNorm, mean over tokens, a Linear head.

Feature points all use the Conv1d layout: a sequence feature is ``(N, channels, steps)``
(GRU: ``(N, hidden * directions, L)``; transformer: ``(N, dim, tokens)``) and the pooled
one ``(N, channels)``, so attention transfer (mean of squares over dim 1) gives a map
over time steps / tokens, as it does for ``cnn1d``.

Cost: ``measure.cost`` counts Conv/Linear modules only (not ``nn.GRU``, and not the
projections inside ``nn.MultiheadAttention``, which it calls functionally). The GRU
layer and encoder-block wrappers therefore declare ``macs_per_position()`` and ``c_out``
(the protocol ``measure.cost`` reads): a GRU layer's gate matmuls, an encoder block's
attention (q/k/v and output projections, QK^T, attention x V); the feed-forward Linears
of a block are counted by ``measure.cost`` itself. Elementwise work (gates, norms,
softmax) is not counted, as for BatchNorm/ReLU elsewhere.

Initialisation uses torch's global RNG only, so it is deterministic given
``torch.manual_seed`` before building.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compresslab.errors import UserError

from .registry import register_model

_DEFAULT_LENGTH = 40


def _length(name: str, input_shape: tuple[int, ...] | None) -> int:
    if input_shape is None:
        return _DEFAULT_LENGTH
    if len(input_shape) != 2:
        raise UserError(f"{name} takes 1-D signals (C, L), got input_shape {list(input_shape)}")
    return int(input_shape[1])


# --------------------------------------------------------------------------- GRU


class GRULayer(nn.Module):
    """One GRU layer on channels-first sequences: (N, C_in, L) -> (N, hidden * dirs, L).

    Returns the output sequence as a tensor (``nn.GRU`` returns a tuple), so a forward
    hook on this module captures a tensor.
    """

    def __init__(self, c_in: int, hidden: int, bidirectional: bool):
        super().__init__()
        self.gru = nn.GRU(c_in, hidden, batch_first=True, bidirectional=bidirectional)
        self.c_out = hidden * (2 if bidirectional else 1)

    def macs_per_position(self) -> int:
        """Multiply-accumulates per time step, for ``measure.cost``: the input and
        recurrent matmuls of the three gates, per direction: 3 * H * (C_in + H)."""
        g = self.gru
        return (2 if g.bidirectional else 1) * 3 * g.hidden_size * (g.input_size + g.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.transpose(1, 2))
        return out.transpose(1, 2)


class FinalState(nn.Module):
    """(N, hidden * dirs, L) -> (N, hidden * dirs): the forward direction's output at the
    last step, and (bidirectional) the backward direction's at the first step, i.e.
    each direction's state after reading the whole sequence."""

    def __init__(self, hidden: int, bidirectional: bool):
        super().__init__()
        self.hidden, self.bidirectional = hidden, bidirectional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.bidirectional:
            return x[:, :, -1]
        return torch.cat([x[:, : self.hidden, -1], x[:, self.hidden :, 0]], dim=1)


class GRUNet(nn.Module):
    """``layers`` GRU layers (each its own module), final state, Linear head.

    Feature points: ``layer1``..``layerK`` (N, hidden * dirs, L) and ``pool`` (N, hidden * dirs).
    Any input length works.
    """

    def __init__(self, num_classes: int, in_channels: int, hidden: int, layers: int, bidirectional: bool):
        super().__init__()
        width = hidden * (2 if bidirectional else 1)
        self.layers = nn.Sequential(
            *(GRULayer(in_channels if i == 0 else width, hidden, bidirectional) for i in range(layers))
        )
        self.pool = FinalState(hidden, bidirectional)
        self.fc = nn.Linear(width, num_classes)
        self.feature_points = {f"layer{i + 1}": f"layers.{i}" for i in range(layers)}
        self.feature_points["pool"] = "pool"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(x)))


@register_model("gru")
def gru(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_shape: tuple[int, ...] | None = None,
    hidden: int = 64,
    layers: int = 1,
    bidirectional: bool = False,
) -> GRUNet:
    """GRU over the L steps of a (C, L) signal; classifies from each direction's final state."""
    _length("gru", input_shape)
    if hidden < 1 or layers < 1:
        raise UserError(f"gru needs hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}")
    return GRUNet(num_classes, in_channels, hidden, layers, bidirectional)


# --------------------------------------------------------------------------- transformer


class PatchEmbed(nn.Module):
    """(N, C, L) -> (N, dim, tokens): zero-pad L on the right to a multiple of ``patch``,
    embed each patch with a Conv1d (kernel = stride = patch), add a learned positional
    embedding. The token count is fixed at build time."""

    def __init__(self, in_channels: int, dim: int, patch: int, length: int):
        super().__init__()
        self.patch, self.length = patch, length
        self.tokens = -(-length // patch)
        self.proj = nn.Conv1d(in_channels, dim, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, dim, self.tokens))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.length:
            raise UserError(
                f"transformer1d was built for signals of length {self.length} ({self.tokens} tokens of "
                f"{self.patch}), got length {x.shape[-1]}; build it with input_shape matching the data"
            )
        pad = self.tokens * self.patch - self.length
        if pad:
            x = F.pad(x, (0, pad))
        return self.proj(x) + self.pos


class EncoderBlock(nn.Module):
    """One pre-norm ``nn.TransformerEncoderLayer`` on channels-first tokens:
    (N, dim, T) -> (N, dim, T).

    The layer holds the parameters; ``forward`` composes its public submodules as the
    layer's own pre-norm forward does (x + attn(norm1(x)), then x + ffn(norm2(x))) instead
    of calling it. The layer's eval-mode "fast path" reads ``linear1.weight`` as a tensor
    and so fails once dynamic int8 quantisation has replaced ``linear1``/``linear2``;
    composing the submodules also keeps the feed-forward Linears visible to forward hooks
    (``measure.cost``) in every mode.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int, tokens: int):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=mlp_ratio * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.c_out, self.tokens = dim, tokens

    def macs_per_position(self) -> int:
        """Attention multiply-accumulates per token, for ``measure.cost``: q, k, v and
        output projections (4 dim^2) plus QK^T and attention x V (2 * tokens * dim).
        The feed-forward Linears are ordinary modules that ``measure.cost`` counts."""
        return 4 * self.c_out * self.c_out + 2 * self.tokens * self.c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        x = x.transpose(1, 2)
        h = layer.norm1(x)
        x = x + layer.dropout1(layer.self_attn(h, h, h, need_weights=False)[0])
        h = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x)))))
        return (x + layer.dropout2(h)).transpose(1, 2)


class TokenPool(nn.Module):
    """(N, dim, T) -> (N, dim): final LayerNorm over dim, then mean over tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).mean(dim=1)


class Transformer1d(nn.Module):
    """Patch embedding, ``depth`` encoder blocks (each its own module), norm + mean pool, Linear.

    Feature points: ``embed`` and ``block1``..``blockD`` (N, dim, tokens), ``pool`` (N, dim).
    """

    def __init__(self, num_classes: int, in_channels: int, length: int, dim: int, depth: int, heads: int,
                 patch: int, mlp_ratio: int):
        super().__init__()
        self.embed = PatchEmbed(in_channels, dim, patch, length)
        tokens = self.embed.tokens
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_ratio, tokens) for _ in range(depth)))
        self.pool = TokenPool(dim)
        self.fc = nn.Linear(dim, num_classes)
        self.feature_points = {"embed": "embed"}
        self.feature_points.update({f"block{i + 1}": f"blocks.{i}" for i in range(depth)})
        self.feature_points["pool"] = "pool"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.embed(x))))


@register_model("transformer1d")
def transformer1d(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_shape: tuple[int, ...] | None = None,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    patch: int = 4,
    mlp_ratio: int = 2,
) -> Transformer1d:
    """Pre-norm transformer on patches of a (C, L) signal (L from ``input_shape``, default 40;
    L not a multiple of ``patch`` is zero-padded on the right). Fixed input length."""
    length = _length("transformer1d", input_shape)
    if min(dim, depth, heads, patch, mlp_ratio) < 1:
        raise UserError(
            f"transformer1d needs dim, depth, heads, patch, mlp_ratio >= 1, "
            f"got {dim}, {depth}, {heads}, {patch}, {mlp_ratio}"
        )
    if dim % heads:
        raise UserError(f"transformer1d needs dim divisible by heads, got dim={dim}, heads={heads}")
    if patch > length:
        raise UserError(f"transformer1d needs patch <= signal length, got patch={patch} for length {length}")
    return Transformer1d(num_classes, in_channels, length, dim, depth, heads, patch, mlp_ratio)
