"""Embedding compression for re-identification: the primitives (after McDermott,
"Embedding Compression for Efficient Re-Identification").

A ReID store holds one D-dim embedding per observation, so its cost is bytes per embedding.
Ways to cut it, each a pure function or module here (training is wired up elsewhere):

* **Quantised codes** (1-16 bits). An affine grid over a calibrated range ``[lo, hi]``
  (per dimension or global; min/max or a percentile clip), ``step = (hi - lo) / (2^b - 1)``:
  ``code = clamp(round((x - lo) / step), 0, 2^b - 1)``, ``x̂ = lo + code * step``. Inside the
  range the error is at most ``step / 2``; outside it clips to ``lo`` / ``hi``. The grid is not
  widened to include 0 (unlike :mod:`.quantize`'s activation grids): no exact zero is needed
  here, and every level spent outside the data is a level lost. **1 bit** is the same rule,
  a sign-like binarisation: ``code = 1`` iff ``x > m`` (``m = (lo + hi) / 2``, a tie at ``m``
  gives 0: round half to even), decoded to ``m ± (hi - lo) / 2``. With min/max those are the
  extremes, so calibrate 1 bit with a percentile (e.g. 84, about ``mean ± σ``).
  :func:`pack` stores N x D codes row-aligned at exactly ``ceil(D * bits / 8)`` bytes each; the
  quantiser's ``lo`` / ``hi`` are stored once (:attr:`EmbeddingQuantizer.param_bytes`).
* **QAT**: :class:`FakeQuantEmbedding` tracks the range by an exponential moving average of
  batch ranges in training, freezes it in eval, with straight-through gradients.
* **Slicing** to the first k dims and a rank-r bottleneck are options of the ``embedder``
  model (:mod:`compresslab.models.embedding`), trained so from initialisation; the
  training-free baseline is PCA of the parent's embeddings (:func:`pca_fit`, :func:`pca_project`).
* **Dimension pruning**: rank dims (:func:`dimension_importance`), keep the best
  (:func:`keep_top`), cut the output layer's rows (:func:`prune_dimensions`); repeat with
  fine-tuning in between for iterative structured pruning.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from compresslab.compress.quantize import fake_quantize
from compresslab.errors import UserError

MIN_BITS, MAX_BITS = 1, 16
IMPORTANCE = ("variance", "l2")
_TINY = torch.finfo(torch.float32).tiny


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(f"embedding bits {bits!r}: bits must be {MIN_BITS}-{MAX_BITS}")
    return bits


def embedding_range(emb, per_dim: bool = True, percentile: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` of ``emb`` (..., D): shape ``(D,)`` per dim, ``()`` global. ``percentile``
    100 is min/max; ``p < 100`` clips to the ``100 - p`` and ``p`` percentiles."""
    x = torch.as_tensor(emb).detach().float()
    if x.dim() == 0 or x.numel() == 0:
        raise UserError("calibrating an embedding range needs at least one embedding")
    if not 50 < percentile <= 100:
        raise UserError(f"range percentile {percentile!r}: must be above 50 and at most 100")
    x = x.reshape(-1, x.shape[-1]) if per_dim else x.reshape(-1, 1)
    if percentile == 100:
        lo, hi = x.amin(0), x.amax(0)
    else:  # torch.quantile takes at most 2^24 elements: an evenly strided subsample of rows
        x = x[:: x.numel() // 2**24 + 1]
        lo, hi = torch.quantile(x, torch.tensor([1 - percentile / 100, percentile / 100], device=x.device), dim=0)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise UserError("the embeddings contain NaN or infinite values; fix the model before quantising them")
    return (lo, hi) if per_dim else (lo[0], hi[0])


def _step(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    return ((hi - lo) / (2**bits - 1)).clamp_min(_TINY)


class EmbeddingQuantizer:
    """Uniform ``bits``-bit codes over ``[lo, hi]`` (tensors of shape ``(D,)`` or ``()``)."""

    def __init__(self, bits: int, lo, hi):
        self.bits = check_bits(bits)
        self.lo = torch.as_tensor(lo, dtype=torch.float32).detach().clone()
        self.hi = torch.as_tensor(hi, dtype=torch.float32).detach().clone()
        if self.lo.shape != self.hi.shape or self.lo.dim() > 1 or bool((self.hi < self.lo).any()):
            raise UserError("quantiser range: lo and hi must be scalars or (D,) vectors with lo <= hi")

    @classmethod
    def fit(cls, embeddings, bits: int, per_dim: bool = True, percentile: float = 100.0) -> EmbeddingQuantizer:
        """Calibrate on a parent/training set of embeddings (N, D)."""
        return cls(bits, *embedding_range(embeddings, per_dim, percentile))

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @property
    def step(self) -> torch.Tensor:
        return _step(self.lo, self.hi, self.bits)

    @property
    def param_bytes(self) -> int:
        """Bytes of the parameters (``lo`` and ``hi``, float32), stored once per store."""
        return 4 * (self.lo.numel() + self.hi.numel())

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo.dim() == 1 and (x.dim() == 0 or x.shape[-1] != len(self.lo)):
            raise UserError(f"embeddings of shape {tuple(x.shape)} do not match the quantiser's D={len(self.lo)}")
        return self.lo.to(x.device), self.step.to(x.device)

    def encode(self, emb: torch.Tensor) -> torch.Tensor:
        """int64 codes in ``[0, 2^bits - 1]``, shaped like ``emb``."""
        lo, step = self._params(emb)
        return torch.clamp(torch.round((emb.detach().float() - lo) / step), 0, self.qmax).long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        lo, step = self._params(codes)
        return codes.float() * step + lo


def bytes_per_embedding(d: int, bits: int) -> int:
    """Bytes one packed row of ``d`` codes takes (any ``bits``, 32 for float32 too)."""
    return math.ceil(d * bits / 8)


def pack(codes, bits: int) -> np.ndarray:
    """N x D codes -> uint8 array (N, ceil(D*bits/8)). Code j of a row holds bits
    ``[j*bits, (j+1)*bits)`` of the row's bit stream, least significant first; each row
    starts on a byte boundary, so every embedding is addressable on its own."""
    check_bits(bits)
    c = np.asarray(codes.detach().cpu() if torch.is_tensor(codes) else codes)
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.integer):
        raise UserError(f"pack takes an (N, D) array of integer codes, got {c.dtype} of shape {c.shape}")
    if c.size and (c.min() < 0 or c.max() >= 2**bits):
        raise UserError(f"codes must lie in 0..{2**bits - 1} to pack at {bits} bits")
    planes = (c.astype(np.uint32)[..., None] >> np.arange(bits, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(c.shape[0], c.shape[1] * bits), axis=1, bitorder="little")


def unpack(buf, bits: int, n: int, d: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``buf`` (bytes or uint8 array) -> int64 codes (n, d)."""
    check_bits(bits)
    row = bytes_per_embedding(d, bits)
    a = np.frombuffer(buf, np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) else np.asarray(buf, np.uint8)
    if n < 0 or d < 1 or a.size != n * row:
        raise UserError(f"packed store of {a.size} bytes does not hold {n} x {d} codes at {bits} bits ({n * row} bytes)")
    planes = np.unpackbits(a.reshape(n, row), axis=1, count=d * bits, bitorder="little").reshape(n, d, bits)
    return torch.from_numpy((planes.astype(np.int64) << np.arange(bits)).sum(-1))


class FakeQuantEmbedding(nn.Module):
    """QAT of an embedding output: fake-quantised onto the grid of :class:`EmbeddingQuantizer`.

    Training: the range ``lo`` / ``hi`` starts at the first batch's range (or :meth:`calibrate`)
    and then moves towards each batch's by an EMA with ``momentum``; gradients are straight
    through inside the range and zero for clipped elements. Eval: the frozen range, so the
    output equals ``q.decode(q.encode(x))`` for ``q = self.quantizer()``.
    """

    def __init__(self, bits: int, per_dim: bool = True, momentum: float = 0.01, percentile: float = 100.0):
        super().__init__()
        if not 0 < momentum <= 1:
            raise UserError(f"range momentum {momentum!r}: must be in (0, 1]")
        self.bits, self.per_dim, self.momentum, self.percentile = check_bits(bits), per_dim, momentum, percentile
        self.register_buffer("lo", torch.empty(0))
        self.register_buffer("hi", torch.empty(0))

    @property
    def calibrated(self) -> bool:
        return self.lo.numel() > 0

    def calibrate(self, embeddings) -> FakeQuantEmbedding:
        """Set the range from a parent/training set of embeddings."""
        self.lo, self.hi = (t.to(self.lo.device) for t in embedding_range(embeddings, self.per_dim, self.percentile))
        return self

    def quantizer(self) -> EmbeddingQuantizer:
        if not self.calibrated:
            raise UserError("the embedding quantiser has no range yet: train it or call calibrate() first")
        return EmbeddingQuantizer(self.bits, self.lo, self.hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = embedding_range(x, self.per_dim, self.percentile)
            if not self.calibrated:
                self.lo, self.hi = lo, hi
            elif self.lo.shape == lo.shape:
                self.lo.lerp_(lo, self.momentum)
                self.hi.lerp_(hi, self.momentum)
        elif not self.calibrated:
            raise UserError("the embedding quantiser has no range yet: train it or call calibrate() first")
        if self.lo.dim() == 1 and (x.dim() == 0 or x.shape[-1] != len(self.lo)):
            raise UserError(f"embeddings of shape {tuple(x.shape)} do not match the quantiser's D={len(self.lo)}")
        return fake_quantize(x.float() - self.lo, _step(self.lo, self.hi, self.bits), 0, 0, 2**self.bits - 1) + self.lo

    def _load_from_state_dict(self, state_dict, prefix, *args):
        for name in ("lo", "hi"):  # the range's shape is only known once calibrated
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_dim={self.per_dim}, momentum={self.momentum}"


def pca_fit(parent_embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (D,), components (k, D))`` of the top-k principal axes, each signed so its
    largest-magnitude entry is positive (deterministic)."""
    x = torch.as_tensor(parent_embeddings).detach()
    if x.dim() != 2 or not 1 <= k <= min(x.shape):
        raise UserError(f"PCA of {k} components needs (N, D) embeddings with k <= min(N, D), got {tuple(x.shape)}")
    x64 = x.double()
    mean = x64.mean(0)
    comps = torch.linalg.svd(x64 - mean, full_matrices=False).Vh[:k]
    comps = comps * torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    return mean.to(x.dtype), comps.to(x.dtype)


def pca_project(emb: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, k) coordinates on the principal axes."""
    return (emb - mean) @ components.T


def pca_reconstruct(z: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """(N, k) -> (N, D), the inverse of :func:`pca_project` on the principal subspace."""
    return z @ components + mean


def dimension_importance(embeddings: torch.Tensor, method: str = "variance") -> torch.Tensor:
    """Per-dim score (D,): ``variance`` over the set, or ``l2`` (root mean square)."""
    x = torch.as_tensor(embeddings).detach().float()
    if method not in IMPORTANCE:
        raise UserError(f"dimension importance {method!r}: use {' or '.join(IMPORTANCE)}")
    if x.dim() != 2 or len(x) == 0:
        raise UserError(f"dimension importance needs (N, D) embeddings with N >= 1, got {tuple(x.shape)}")
    return x.var(0, unbiased=False) if method == "variance" else x.pow(2).mean(0).sqrt()


def keep_top(importance: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (int64, ascending) of the ``k`` most important dims."""
    if not 1 <= k <= len(importance):
        raise UserError(f"keep k={k}: must be from 1 to D={len(importance)}")
    return torch.topk(importance, k).indices.sort().values


def prune_dimensions(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A new output layer with only rows ``keep`` of ``linear`` (weight and bias)."""
    keep = torch.as_tensor(keep, dtype=torch.long, device=linear.weight.device)
    d = linear.out_features
    if keep.dim() != 1 or len(keep) == 0 or len(keep.unique()) != len(keep) or keep.min() < 0 or keep.max() >= d:
        raise UserError(f"kept dimensions must be distinct indices in 0..{d - 1}")
    out = nn.Linear(linear.in_features, len(keep), bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(linear.weight[keep])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[keep])
    return out


def stored_bytes(store) -> int:
    """Bytes a store (tensor, array or bytes) actually occupies."""
    if torch.is_tensor(store):
        return store.numel() * store.element_size()
    return len(store) if isinstance(store, (bytes, bytearray, memoryview)) else np.asarray(store).nbytes


def stored_bytes_per_embedding(store, n: int) -> float:
    """``stored_bytes(store) / n`` for a store of ``n >= 1`` embeddings."""
    if n < 1:
        raise UserError("bytes per embedding of a store need at least one embedding")
    return stored_bytes(store) / n


# -- on an embedder (compresslab.models.embedding) --------------------------------------------


def _embedding_module(model: nn.Module) -> nn.Module:
    module = getattr(model, "embedding", None)
    if module is None:
        raise UserError(f"{type(model).__name__} has no embedding to compress; use an embedder model "
                        "(--model embedder -o backbone=...)")
    return module


def attach_embedding_quant(model: nn.Module, bits: int, *, per_dim: bool = True,
                           percentile: float = 100.0) -> FakeQuantEmbedding:
    """Put a :class:`FakeQuantEmbedding` after ``model.embedding`` (in place), so the stored
    embedding, every loss on it and the classifier see the quantised values; returns it."""
    fq = FakeQuantEmbedding(bits, per_dim=per_dim, percentile=percentile)
    model.embedding = nn.Sequential(_embedding_module(model), fq)
    return fq


def embedding_quantizer(model: nn.Module) -> EmbeddingQuantizer | None:
    """The quantiser of the codes ``model`` stores, or None for float embeddings."""
    fq = next((m for m in _embedding_module(model).modules() if isinstance(m, FakeQuantEmbedding)), None)
    return fq.quantizer() if fq is not None else None


def detach_embedding_quant(model: nn.Module) -> dict:
    """Remove the quantiser :func:`attach_embedding_quant` put in (in place) and return the
    checkpoint transform that puts it back: ``{"kind": "embedding-quant", ...}``."""
    seq = _embedding_module(model)
    fq = seq[1]
    model.embedding = seq[0]
    return {"kind": "embedding-quant", "bits": fq.bits, "per_dim": fq.per_dim, "percentile": fq.percentile,
            "lo": fq.lo.cpu().tolist(), "hi": fq.hi.cpu().tolist()}


def apply_embedding_quant_transform(model: nn.Module, t: dict) -> nn.Module:
    """A copy of ``model`` with the recorded embedding quantiser (frozen range), in eval mode."""
    import copy

    model = copy.deepcopy(model)
    fq = attach_embedding_quant(model, t["bits"], per_dim=t["per_dim"], percentile=t["percentile"])
    dev = next(model.parameters()).device
    fq.lo, fq.hi = torch.tensor(t["lo"], device=dev), torch.tensor(t["hi"], device=dev)
    return model.eval()


def prune_embedder(model: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A new embedder keeping embedding dimensions ``keep`` of ``model`` (a plain embedder:
    no rank or slice): the backbone's projection loses the other rows, the BNNeck their
    statistics and the classifier their columns; the config says ``dim = len(keep)``."""
    from compresslab.models import build_from_config, model_config

    cfg = model_config(model)
    opts = cfg.get("options", {})
    if cfg["name"] != "embedder" or opts.get("rank") or opts.get("slice"):
        raise UserError("embedding pruning needs a plain embedder (no rank or slice option)")
    dim = opts.get("dim", 128)
    linears = [(n, m) for n, m in model.backbone.named_modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1][1].out_features != dim:
        raise UserError(f"embedding pruning needs a backbone whose last layer is a Linear with {dim} outputs")
    keep = keep.to(torch.long).cpu()
    last = f"backbone.{linears[-1][0]}."
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith(last) or (k.startswith("neck.") and v.dim() == 1):
            v = v[keep.to(v.device)]
        elif k == "classifier.weight":
            v = v[:, keep.to(v.device)]
        state[k] = v
    pruned = build_from_config({**cfg, "options": {**opts, "dim": int(len(keep))}})
    pruned.load_state_dict(state)
    return pruned.to(next(model.parameters()).device)
