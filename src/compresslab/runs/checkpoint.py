"""Checkpoints: ``model.safetensors`` (float weights) + ``model.json`` (how to rebuild).

``model.json`` holds the architecture config from :mod:`compresslab.models`, the
``structure`` (layer widths changed by structured pruning, re-applied to the fresh
module before the weights load) and the list of *transforms* applied after the
weights are loaded (e.g. int8 dynamic quantisation). Loading never unpickles: safetensors for our own files,
``torch.load(weights_only=True)`` for foreign ``.pt`` state dicts.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from compresslab.errors import UserError
from compresslab.runs.store import read_json, write_json

FORMAT = "compresslab-checkpoint/1"


def save_checkpoint(directory: str | Path, model: torch.nn.Module, *, transforms: list[dict] | None = None,
                    meta: dict | None = None) -> None:
    """Save ``model`` (the float module, before ``transforms``) into ``directory``."""
    from compresslab.models import model_config
    from compresslab.models.structure import structure_of

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}  # device-free
    save_file(state, str(directory / "model.safetensors"))
    write_json(directory / "model.json", {
        "format": FORMAT,
        "model": model_config(model),
        "structure": structure_of(model),
        "transforms": list(transforms or []),
        "meta": dict(meta or {}),
    })


def read_model_json(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint {directory} not found; pass a step directory containing model.json "
                        "(the path `compresslab train` printed)")
    cfg = read_json(directory / "model.json")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "model" not in cfg:
        raise UserError(f"{directory / 'model.json'}: not a compresslab checkpoint ({FORMAT})")
    return cfg


def load_checkpoint(directory: str | Path, *, apply_transforms: bool = True) -> tuple[torch.nn.Module, dict]:
    """Rebuild the module from ``model.json``, load its weights, apply its transforms.

    Returns ``(model in eval mode, model.json dict)``. With ``apply_transforms=False``
    the float module is returned (what cost counting and fine-tuning want).
    """
    from compresslab.compress import apply_transform
    from compresslab.models import build_from_config
    from compresslab.models.structure import apply_structure

    directory = Path(directory)
    cfg = read_model_json(directory)
    model = apply_structure(build_from_config(cfg["model"]), cfg.get("structure") or {})
    if callable(getattr(model, "sync_structure", None)):  # e.g. attention head counts after pruned heads
        model.sync_structure()
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights}: file not found; the checkpoint is incomplete, re-create it")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights}: unreadable safetensors file ({e}); `compresslab doctor <run store> --remove` "
                        "deletes broken steps, then re-run") from None
    load_state_checked(model, state, source=str(weights), against=str(directory / "model.json"))
    model.eval()
    if apply_transforms:
        for t in cfg["transforms"]:
            model = apply_transform(model, t)
    return model, cfg


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str,
                       against: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line UserError on any mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if bad_shape:
            parts.append(f"shape mismatch {_few(bad_shape)}")
        raise UserError(f"{source} does not match {against}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def load_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a foreign ``.pt``/``.pth`` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError and friends; none may execute code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: refused to load ({first}); only plain tensor state dicts are accepted") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a dict of tensors (a state dict)")
    return obj


def _few(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
