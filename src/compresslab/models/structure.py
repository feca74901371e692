"""Recording and re-applying changed layer widths (structured pruning's output).

A channel-pruned model no longer matches a fresh ``build_from_config`` of its config.
:func:`structure_of` records the widths that changed, by module path, and
:func:`apply_structure` rebuilds those modules on a freshly built model, so the pruned
state dict loads with ``strict=True``. Checkpoints store the result as ``structure`` in
``model.json``.
"""
from __future__ import annotations

from torch import nn

from compresslab.errors import UserError

#: Module types whose widths :func:`structure_of` records and :func:`apply_structure` rebuilds.
STRUCTURED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
                    nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def structure_of(model: nn.Module, reference: nn.Module | None = None) -> dict[str, dict]:
    """Widths that differ from ``reference`` (default: a fresh build of the model's config).

    Returns ``{module path: {"type": class name, <size fields>}}`` for every
    Conv/Linear/BatchNorm/LayerNorm/GroupNorm whose sizes changed. Size fields:
    Conv ``in_channels, out_channels, groups``; Linear ``in_features,
    out_features``; BatchNorm ``num_features``; LayerNorm ``normalized_shape``
    (list); GroupNorm ``num_groups, num_channels``. JSON-serialisable.
    """
    if reference is None:
        from compresslab.models import build_from_config, model_config

        reference = build_from_config(model_config(model))
    fresh = dict(reference.named_modules())
    structure: dict[str, dict] = {}
    for name, module in model.named_modules():
        if not isinstance(module, STRUCTURED_TYPES):
            continue
        if name not in fresh or type(fresh[name]) is not type(module):
            raise UserError(f"module {name!r} ({type(module).__name__}) has no counterpart of the same type in a "
                            "fresh build of this model; structure only records changed widths")
        sizes = _sizes(module)
        if sizes != _sizes(fresh[name]):
            structure[name] = {"type": type(module).__name__, **sizes}
    return structure


def _sizes(module: nn.Module) -> dict:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return {"in_channels": module.in_channels, "out_channels": module.out_channels, "groups": module.groups}
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"num_features": module.num_features}
    if isinstance(module, nn.LayerNorm):
        return {"normalized_shape": list(module.normalized_shape)}
    return {"num_groups": module.num_groups, "num_channels": module.num_channels}


def apply_structure(model: nn.Module, structure: dict[str, dict]) -> nn.Module:
    """Replace the modules named in ``structure`` by ones of the recorded sizes; returns ``model``.

    ``model`` is a freshly built model of the original config. Every other
    constructor argument (kernel size, stride, padding, dilation, bias,
    padding mode, eps, momentum, affine, ...), the device, dtype and training
    flag are kept. The new modules are freshly initialised: load the pruned
    state dict afterwards.
    """
    if not isinstance(structure, dict):
        raise UserError(f"structure must be a dict of module path -> sizes, got {type(structure).__name__}")
    modules = dict(model.named_modules())
    for name, spec in structure.items():
        old = modules.get(name)
        if old is None or not isinstance(spec, dict) or spec.get("type") != type(old).__name__:
            found = "nothing" if old is None else type(old).__name__
            raise UserError(f"structure entry {name!r} ({spec!r}) does not match the model, which has {found} "
                            "there; was it recorded for another architecture?")
        try:
            new = _rebuild(old, spec)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"structure entry {name!r} ({spec!r}) is malformed: {e}") from None
        new.train(old.training)
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, new)
    return model


def _rebuild(old: nn.Module, spec: dict) -> nn.Module:
    """A new module of ``type(old)`` with ``spec``'s sizes and ``old``'s other settings."""
    kind = type(old)
    like = {"device": old.weight.device if getattr(old, "weight", None) is not None else None,
            "dtype": old.weight.dtype if getattr(old, "weight", None) is not None else None}
    if isinstance(old, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return kind(int(spec["in_channels"]), int(spec["out_channels"]), old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, groups=int(spec.get("groups", old.groups)),
                    bias=old.bias is not None, padding_mode=old.padding_mode, **like)
    if isinstance(old, nn.Linear):
        return kind(int(spec["in_features"]), int(spec["out_features"]), bias=old.bias is not None, **like)
    if isinstance(old, nn.modules.batchnorm._BatchNorm):
        return kind(int(spec["num_features"]), eps=old.eps, momentum=old.momentum, affine=old.affine,
                    track_running_stats=old.track_running_stats, **like)
    if isinstance(old, nn.LayerNorm):
        return kind([int(s) for s in spec["normalized_shape"]], eps=old.eps,
                    elementwise_affine=old.elementwise_affine, bias=old.bias is not None, **like)
    return kind(int(spec["num_groups"]), int(spec["num_channels"]), eps=old.eps, affine=old.affine, **like)
