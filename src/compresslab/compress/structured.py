"""Structured (channel) pruning through Torch-Pruning's dependency graph.

:func:`structured_prune` removes whole channels/features IN PLACE, so the model
becomes physically smaller (fewer parameters and MACs, not just zeros). Coupled
layers (a conv, its BatchNorm, the next conv's inputs, residual adds, flatten
into a Linear) are pruned together by ``torch_pruning``'s dependency graph.

A pruned model no longer matches a fresh ``build_from_config`` of its config.
:func:`structure_of` records the widths that changed, by module path, and
:func:`apply_structure` rebuilds those modules on a freshly built model so the
pruned state dict loads with ``strict=True``::

    report = structured_prune(model, (3, 32, 32), amount=0.5)
    fresh = apply_structure(build_from_config(model_config(model)), report["structure"])
    fresh.load_state_dict(model.state_dict())   # strict

Transformers (Hugging Face BERT-style attention, found by
:func:`compresslab.models.hf.attention_heads`) lose whole attention heads (Torch-Pruning's
``num_heads`` / ``prune_num_heads``; ``amount`` of each layer's heads) and feed-forward
channels; the hidden width of the residual stream is kept (its embeddings and every
layer writing to it are protected), so the pruned model needs no new embeddings and
still rebuilds from its checkpoint's ``structure``.

Parameter-free ops that change the channel count (e.g. the option-A shortcut of
the CIFAR ResNets: subsample + zero-pad new channels) are not understood by
``torch_pruning``: it treats the pad as element-wise, couples channel i of the
narrow tensor with channel i of the wide one, and the pruned model no longer
runs. :func:`structured_prune` finds such ops in the traced graph and protects
every layer coupled to them (see the report's ``protected``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from compresslab.data.core import valid_tokens
from compresslab.errors import UserError
from compresslab.measure.cost import count_macs, count_params
from compresslab.models.hf import attention_heads
from compresslab.models.structure import apply_structure, structure_of  # noqa: F401 (re-exported)
from compresslab.ort import example_input

IMPORTANCES = ("magnitude", "taylor")


# --------------------------------------------------------------------------- pruning


def structured_prune(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    amount: float,
    importance: str = "magnitude",
    global_pruning: bool = False,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    ignore_output: bool = True,
    round_to: int | None = None,
) -> dict:
    """Remove a fraction ``amount`` of the channels of ``model``, in place.

    - ``input_shape``: one example's shape, without the batch dimension.
    - ``amount``: channel pruning ratio in (0, 1). Uniform (default): every
      prunable group loses ``amount`` of its channels. ``global_pruning=True``:
      ``amount`` of all prunable channels go, ranked across groups, so widths
      differ per layer (a group that would lose every channel is left whole).
    - ``importance``: ``"magnitude"`` (group L2 norm of the weights) or
      ``"taylor"`` (|w * dL/dw| from one batch ``data=(x, y)`` of
      cross-entropy gradients, computed in eval mode).
    - ``ignore_output``: protect the module producing the logits, so the
      number of outputs is unchanged.
    - ``round_to``: round each pruned layer's kept channel count to the nearest
      multiple of this (unrounded widths run slower, Torch-Pruning#38), never
      below one multiple and never above the layer's width; a layer narrower
      than ``round_to`` is left whole.

    BatchNorm running statistics and training flags are left as they were;
    gradients are cleared. Returns a report with ``params_before/after``,
    ``macs_before/after`` (per example), ``param_ratio`` and ``mac_ratio``
    (after / before), ``protected`` (module path -> why it was not pruned) and
    ``structure`` (:func:`structure_of`, or None if the model has no config).
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise UserError(f"amount must be a fraction strictly between 0 and 1, got {amount!r}")
    if importance not in IMPORTANCES:
        raise UserError(f"unknown importance {importance!r}; use one of {', '.join(IMPORTANCES)}")
    if importance == "taylor" and data is None:
        raise UserError("taylor importance needs data=(x, y): one batch of inputs and integer labels")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise UserError(f"round_to must be a positive integer or None, got {round_to!r}")

    params_before = count_params(model)
    macs_before = count_macs(model, input_shape)  # also validates input_shape
    param = next(model.parameters(), None)
    if param is None:
        raise UserError("the model has no parameters, so there is nothing to prune")
    example = example_input(model, input_shape, device=param.device, dtype=param.dtype)
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out_shape = tuple(model(example).shape)
        protected = {}
        if ignore_output:
            protected[_module_names(model)[_output_layer(model, example)]] = "produces the logits"
        heads = attention_heads(model)
        if heads:  # channels are the last dim of (B, L, D) activations: _unsafe_layers' dim-1 test does not apply
            protected.update(heads.keep)
        else:
            protected.update(_unsafe_layers(model, example, protected))
        named = dict(model.named_modules())
        pruner = _RoundingPruner(
            model,
            example,
            importance=_importance(importance),
            pruning_ratio=float(amount),
            global_pruning=global_pruning,
            ignored_layers=[named[n] for n in protected],
            round_to=round_to,
            **(dict(num_heads=heads.num_heads, prune_num_heads=True, prune_head_dims=False,
                    head_pruning_ratio=float(amount)) if heads else {}),
        )
        if importance == "taylor":
            _taylor_gradients(model, data)
        pruner.step()
        if heads:
            heads.update()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            new_shape = tuple(model(example).shape)
    finally:
        for m, flag in flags:
            m.training = flag
    if ignore_output and new_shape != out_shape:
        raise UserError(f"pruning changed the output shape {out_shape} -> {new_shape}; "
                        "the model has a layout torch-pruning cannot follow")

    params_after, macs_after = count_params(model), count_macs(model, input_shape)
    return {
        "amount": float(amount),
        "importance": importance,
        "global_pruning": bool(global_pruning),
        "params_before": params_before,
        "params_after": params_after,
        "param_ratio": params_after / params_before,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "mac_ratio": macs_after / macs_before if macs_before else 1.0,
        "protected": protected,
        "structure": structure_of(model) if hasattr(model, "compresslab_config") else None,
    }


def kept_channels(current: int, kept: int, round_to: int) -> int:
    """``kept`` rounded to the nearest multiple of ``round_to`` in ``[round_to, current]``;
    ``current`` itself when the layer is narrower than ``round_to``."""
    if current < round_to:
        return current
    nearest = round_to * max(1, int(kept / round_to + 0.5))
    return min(nearest, round_to * (current // round_to))


class _RoundingPruner(tp.pruner.BasePruner):
    """Torch-Pruning's pruner with :func:`kept_channels` rounding (its own rounds down, to
    zero channels when fewer than ``round_to`` would remain)."""

    def _round_to(self, n_pruned, current_channels, round_to):
        return current_channels - kept_channels(current_channels, current_channels - n_pruned, round_to)


def _importance(name: str) -> tp.importance.Importance:
    if name == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.MagnitudeImportance(p=2)


def _taylor_gradients(model: nn.Module, data) -> None:
    """Fill ``.grad`` with the cross-entropy gradient of one batch (model in eval mode)."""
    try:
        x, y = data
    except (TypeError, ValueError):
        raise UserError("data must be a pair (x, y) of tensors: one batch of inputs and labels") from None
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise UserError("data must be a pair (x, y) of tensors: one batch of inputs and labels")
    param = next(model.parameters())
    model.zero_grad(set_to_none=True)
    try:
        x = x.to(param.device, param.dtype if x.is_floating_point() else x.dtype)
        logits, labels = valid_tokens(model(x), y.to(param.device).long())  # token logits: the scored tokens
        loss = F.cross_entropy(logits, labels)
    except (RuntimeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"taylor importance: the batch x {tuple(x.shape)}, y {tuple(y.shape)} does not fit "
                        f"the model ({first})") from None
    loss.backward()


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def _output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The Conv/Linear whose output is the model's output, else the last one run."""
    ran: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out: ran.append((mod, out)))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    if not ran:
        raise UserError("the model has no Conv or Linear layer to prune")
    for module, produced in reversed(ran):
        if produced is out:
            return module
    return ran[-1][0]


def _unsafe_layers(model: nn.Module, example: torch.Tensor, ignored: dict[str, str]) -> dict[str, str]:
    """Layers coupled to a parameter-free op that changes the channel count.

    torch-pruning models unknown ops (``F.pad`` on channels, as in option-A
    shortcuts) as element-wise: channel i in = channel i out. When the op's
    input and output channel counts differ, that mapping is wrong, so every
    group passing through such an op is protected whole. Channel counts come
    from the autograd metadata of the traced graph.
    """
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    bad_nodes = {node for node in graph.module2node.values()
                 if node.type == tp.ops.OPTYPE.ELEMENTWISE and _changes_channels(node.grad_fn)}
    if not bad_nodes:
        return {}
    names = _module_names(model)
    unsafe: dict[str, str] = {}
    for group in graph.get_all_groups(root_module_types=[tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR]):
        deps = [dep for dep, _ in group]
        hit = next((n for d in deps for n in (d.source, d.target) if n in bad_nodes), None)
        if hit is None:
            continue
        why = f"coupled through {hit.grad_fn.name()}, which changes the channel count"
        for dep in deps:
            module = dep.target.module
            if graph.is_out_channel_pruning_fn(dep.handler) and module in names and names[module] not in ignored:
                unsafe[names[module]] = why
    return unsafe


def _changes_channels(grad_fn) -> bool:
    """True when the op's output has a different dim-1 size than one of its activation inputs (same rank).

    Inputs of size 1 in dim 1 (broadcasting) and parameters (e.g. the weight
    transpose inside ``F.linear``) do not count.
    """
    out = _shape(grad_fn, 0)
    if out is None or len(out) < 2:
        return False
    for fn, index in grad_fn.next_functions:
        if fn is None or hasattr(fn, "variable"):  # AccumulateGrad: a parameter, not an activation
            continue
        shape = _shape(fn, index)
        if shape is not None and len(shape) == len(out) and shape[1] not in (1, out[1]):
            return True
    return False


def _shape(grad_fn, index: int) -> tuple[int, ...] | None:
    """Shape of output ``index`` of the forward op behind ``grad_fn`` (None if unknown)."""
    metadata = getattr(grad_fn, "_input_metadata", None)
    if metadata is None or index >= len(metadata):
        return None
    return tuple(metadata[index].shape)
