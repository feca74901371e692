"""Adapters between the models people bring and the one-tensor-in, logits-out modules
compresslab trains and measures.

Every loop in compresslab (``fit``, ``evaluate_logits``, CKA, cost) calls ``model(x)``
with one tensor and reads a tensor of logits back. Models from other libraries differ
on both ends:

* **outputs**: a Hugging Face ``ModelOutput`` (``.logits``), a dict with ``"logits"``,
  or a tuple whose first item is the logits. :func:`logits_of` reads any of them, and
  :class:`Logits` wraps a module so that it returns plain logits.
* **inputs**: a dict of tensors (``input_ids``, ``attention_mask``, ...).
  :class:`DictInputs` takes those tensors stacked on dim 1, ``(B, K, L)``, and calls the
  wrapped model with one keyword argument per key. Stacking keeps the rest of the library
  unchanged: a dataset of dict batches is an ``(N, K, L)`` tensor that is indexed,
  shuffled and batched like any other.

Both wrappers keep the wrapped model as the child ``model`` and expose its feature points
under the same names (paths prefixed with ``model.``; a transformer's are its layers,
:func:`~compresslab.models.features.transformer_blocks`), so attention transfer, hints and
CKA see through them.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from compresslab.errors import UserError
from compresslab.models.features import feature_points


def logits_of(output) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, ``output.logits`` (a Hugging Face
    ``ModelOutput``), ``output["logits"]`` (a dict), or the first item of a tuple or list.
    Anything else raises a one-line :class:`UserError`."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    raise UserError(f"the model returned {type(output).__name__}, not logits; return a tensor, a ModelOutput "
                    "with .logits, a dict with 'logits' or a tuple whose first item is the logits")


def forward_parameters(model: nn.Module) -> tuple[list[str], set[str] | None]:
    """``(required, accepted)`` keyword names of ``model.forward``: the parameters without a
    default, and every name it takes (None when it takes ``**kwargs``: any name)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a builtin or compiled forward: nothing to check
        return [], None
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in named if p.default is p.empty]
    any_name = any(p.kind == p.VAR_KEYWORD for p in params)
    return required, None if any_name else {p.name for p in named}


def check_inputs(model: nn.Module, keys: Sequence[str]) -> None:
    """A one-line :class:`UserError` when ``model``'s forward needs an argument that the
    batches (with ``keys``) lack, or when a key is one it does not take."""
    required, accepted = forward_parameters(model)
    missing = [name for name in required if name not in keys]
    if missing:
        raise UserError(f"the model's forward needs {missing[0]!r}, which the data does not have "
                        f"(it has {', '.join(map(repr, keys))}); add it to the batches or give it a default")
    if accepted is not None:
        unknown = [k for k in keys if k not in accepted]
        if unknown:
            raise UserError(f"the data has {unknown[0]!r}, which the model's forward does not take "
                            f"(it takes {', '.join(map(repr, sorted(accepted)))}); drop it from the batches")


class _Wrapper(nn.Module):
    """A module around ``model`` (its only child) that sees its feature points."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def feature_points(self) -> dict[str, str]:
        return {name: f"model.{path}" for name, path in feature_points(self.model).items()}


class Logits(_Wrapper):
    """``model`` returning plain logits: ``Logits(model)(*args, **kwargs)`` is
    ``logits_of(model(*args, **kwargs))``."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return logits_of(self.model(*args, **kwargs))


class DictInputs(_Wrapper):
    """``model`` fed from dict batches stacked into one tensor.

    ``x`` of shape ``(B, K, L, ...)`` holds the K tensors of a batch (the dict's values for
    ``keys``, in that order, all of shape ``(B, L, ...)``) stacked on dim 1, in one dtype;
    ``forward(x)`` calls ``model(**{keys[i]: x[:, i]})``, each cast back to ``dtypes[i]``
    (default: int64, as token ids and masks are), and returns :func:`logits_of` its output.
    Building it checks ``model.forward`` against ``keys``: a required argument the batches
    lack is a one-line :class:`UserError` that names it.

    >>> batch = {"input_ids": ids, "attention_mask": mask}            # each (B, L)
    >>> net = DictInputs(bert, list(batch))
    >>> logits = net(stack_inputs(batch, net.keys))                   # (B, L, C)
    """

    def __init__(self, model: nn.Module, keys: Sequence[str], dtypes: Sequence[torch.dtype] | None = None):
        super().__init__(model)
        keys = tuple(keys)
        if not keys:
            raise UserError("dict batches need at least one tensor, e.g. 'input_ids'")
        check_inputs(model, keys)
        self.keys = keys
        self.dtypes = tuple(dtypes) if dtypes is not None else (torch.int64,) * len(keys)
        if len(self.dtypes) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(self.dtypes)} dtypes")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[1] != len(self.keys):
            raise UserError(f"DictInputs expects the batch's {len(self.keys)} tensors ({', '.join(self.keys)}) "
                            f"stacked on dim 1, shape (B, {len(self.keys)}, L); got {tuple(x.shape)}")
        kwargs = {k: x[:, i].to(dt) for i, (k, dt) in enumerate(zip(self.keys, self.dtypes))}
        return logits_of(self.model(**kwargs))

    def extra_repr(self) -> str:
        return f"keys={list(self.keys)}"


def stack_inputs(batch: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    """The tensors ``batch[k]`` for ``keys``, all of one shape ``(B, L, ...)``, stacked on
    dim 1 into ``(B, K, L, ...)`` in their common dtype (what :class:`DictInputs` takes)."""
    tensors = [torch.as_tensor(batch[k]) for k in keys]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        described = ", ".join(f"{k} {tuple(t.shape)}" for k, t in zip(keys, tensors))
        raise UserError(f"the tensors of a dict batch must share one shape to be stacked; got {described}")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.stack([t.to(dtype) for t in tensors], dim=1)
