"""Model registry: register factories, build models by name, record how to rebuild them.

A model name is one of

* a registered name (``register_model``), e.g. ``"cnn1d"``, ``"resnet20"``;
* a pattern name (``register_pattern``), e.g. ``"wrn-40-2"``, whose numbers become
  fixed keyword arguments of the factory;
* a user model ``"package.module:factory"``: the module is imported and
  ``factory(num_classes=..., in_channels=..., **options)`` is called;
* a model from the ecosystem, ``hf:DIR``, ``hf-config:FILE.json``, ``timm:NAME`` or
  ``torchvision:NAME`` (see :mod:`compresslab.models.hf`).

A factory may leave a dict ``compresslab_record`` on the model it returns: its entries
join the recorded options (e.g. the Hugging Face config, so a checkpoint of ``hf:DIR``
rebuilds without the directory).

``create_model`` validates the options against the factory's signature (types via
pydantic, so ``"64"`` becomes ``64`` for an ``int`` option) and stores
``model.compresslab_config`` so ``build_from_config`` can rebuild the architecture.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import re
import typing
from collections.abc import Callable
from typing import Any

import torch.nn as nn
from pydantic import TypeAdapter, ValidationError

from compresslab.errors import UserError

Factory = Callable[..., nn.Module]

# Arguments create_model passes itself; never options.
_RESERVED = ("num_classes", "in_channels", "input_shape")

_REGISTRY: dict[str, tuple[Factory, dict[str, Any]]] = {}
_PATTERNS: list[tuple[re.Pattern[str], str, Factory, dict[str, Any]]] = []


def register_model(name: str, **fixed: Any) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory`` under ``name``.

    ``fixed`` keyword arguments are always passed to the factory and are not
    user options (e.g. ``register_model("resnet20", depth=20)(resnet)``).
    """

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = (factory, dict(fixed))
        return factory

    return decorator


def register_pattern(regex: str, label: str, **fixed: Any) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory`` for every name matching ``regex``.

    Named groups of ``regex`` are parsed as ints and passed as keyword
    arguments, e.g. ``r"wrn-(?P<depth>\\d+)-(?P<widen_factor>\\d+)"``. ``label``
    is the human-readable form listed in messages (``"wrn-D-K"``).
    """

    def decorator(factory: Factory) -> Factory:
        _PATTERNS.append((re.compile(regex), label, factory, dict(fixed)))
        return factory

    return decorator


def list_models(include_patterns: bool = False) -> list[str]:
    """Registered model names in natural order (plus pattern labels such as ``wrn-D-K`` if asked)."""
    names = sorted(_REGISTRY, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])
    if include_patterns:
        names += [label for _, label, _, _ in _PATTERNS]
    return names


def _known_names() -> str:
    return ", ".join(list_models(include_patterns=True) + ["hf:DIR", "hf-config:FILE.json", "timm:NAME",
                                                           "torchvision:NAME", "package.module:factory"])


def _import_factory(name: str) -> Factory:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UserError(f"model {name!r}: a user model must be written 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure while importing user code
        raise UserError(
            f"model {name!r}: cannot import module {module_name!r} "
            f"({type(exc).__name__}: {exc}); check the name and that it is on PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"model {name!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def _resolve(name: str) -> tuple[str, Factory, dict[str, Any]]:
    """Return (recorded name, factory, fixed kwargs) for a model name."""
    if not isinstance(name, str) or not name:
        raise UserError(f"model name must be a non-empty string, got {name!r}; known: {_known_names()}")
    from .hf import prefixed_factory  # hf:DIR, hf-config:FILE, timm:NAME, torchvision:NAME (not module:factory)

    prefixed = prefixed_factory(name)
    if prefixed is not None:
        return name, *prefixed
    if ":" in name:
        return name, _import_factory(name), {}
    for key in (name, name.lower()):
        if key in _REGISTRY:
            factory, fixed = _REGISTRY[key]
            return key, factory, fixed
        for regex, _, factory, fixed in _PATTERNS:
            match = regex.fullmatch(key)
            if match:
                groups = {k: int(v) for k, v in match.groupdict().items()}
                return key, factory, {**fixed, **groups}
    raise UserError(f"unknown model {name!r}; known models: {_known_names()}")


def _type_name(annotation: Any) -> str:
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _option_params(factory: Factory, fixed: dict[str, Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """The factory's option parameters, their type hints, and whether it takes ``**kwargs``."""
    signature = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: treat as untyped
        hints = {}
    params: dict[str, inspect.Parameter] = {}
    var_keyword = False
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_keyword = True
        elif p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name in _RESERVED or p.name in fixed:
            continue
        else:
            params[p.name] = p
    return params, {n: hints.get(n, Any) for n in params}, var_keyword


def describe_options(name: str) -> str:
    """One-line description of a model's options: ``"width: int = 32, depth: int = 3"``."""
    _, factory, fixed = _resolve(name)
    params, hints, var_keyword = _option_params(factory, fixed)
    parts = []
    for n, p in params.items():
        default = "" if p.default is p.empty else f" = {p.default!r}"
        parts.append(f"{n}: {_type_name(hints[n])}{default}")
    if var_keyword:
        parts.append("**kwargs")
    return ", ".join(parts) or "none"


def _validate(adapter: TypeAdapter, value: Any) -> Any:
    """Validate leniently; a string that fails is retried as JSON (``"[64, 64]"`` from a CLI)."""
    try:
        return adapter.validate_python(value)
    except ValidationError:
        if isinstance(value, str):
            try:
                return adapter.validate_python(json.loads(value))
            except (ValueError, ValidationError):
                pass
        raise


def _validate_options(
    name: str, factory: Factory, fixed: dict[str, Any], options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check options against the factory signature.

    Returns (validated values to pass, JSON form to record). The recorded form
    also holds the defaults of options not given, where they are JSON-serialisable.
    """
    params, hints, var_keyword = _option_params(factory, fixed)
    accepted = lambda: f"accepted options for {name!r}: {describe_options(name)}"  # noqa: E731
    values: dict[str, Any] = {}
    recorded: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params and not var_keyword:
            if key in fixed:
                raise UserError(f"option {key}={value!r} is fixed by the model name {name!r}; {accepted()}")
            raise UserError(f"unknown option {key}={value!r} for model {name!r}; {accepted()}")
        adapter = TypeAdapter(hints.get(key, Any))
        try:
            values[key] = _validate(adapter, value)
        except ValidationError as exc:
            reason = "; ".join(e["msg"] for e in exc.errors())
            raise UserError(
                f"option {key}={value!r} for model {name!r} is not a valid "
                f"{_type_name(hints.get(key, Any))} ({reason}); {accepted()}"
            ) from exc
        try:
            recorded[key] = adapter.dump_python(values[key], mode="json")
        except Exception as exc:
            raise UserError(f"option {key}={value!r} for model {name!r} is not JSON-serialisable; pass plain values") from exc
    for key, p in params.items():
        if key in options:
            continue
        if p.default is p.empty:
            raise UserError(f"model {name!r} needs option {key!r}; {accepted()}")
        try:
            recorded[key] = TypeAdapter(hints[key]).dump_python(p.default, mode="json")
        except Exception:
            pass  # a default that cannot be recorded is simply left to the factory
    return values, recorded


def _positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return value


def _check_shape(input_shape: Any, in_channels: int) -> tuple[int, ...] | None:
    if input_shape is None:
        return None
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise UserError(f"input_shape must be one example's shape (C, *spatial) of positive ints, got {input_shape!r}")
    if shape[0] != in_channels:
        raise UserError(f"input_shape {list(shape)} starts with {shape[0]} channels but in_channels={in_channels}; make them agree")
    return shape


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_shape: tuple[int, ...] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a model by name and record its config in ``model.compresslab_config``.

    ``input_shape`` is one example's shape ``(C, *spatial)``; it is passed only to
    factories whose signature has an ``input_shape`` parameter. ``options`` are
    validated against the factory's signature; mistakes raise ``UserError``.
    """
    key, factory, fixed = _resolve(name)
    num_classes = _positive_int("num_classes", num_classes)
    in_channels = _positive_int("in_channels", in_channels)
    shape = _check_shape(input_shape, in_channels)
    values, recorded = _validate_options(key, factory, fixed, options)

    params = inspect.signature(factory).parameters
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not var_keyword and not {"num_classes", "in_channels"} <= params.keys():
        raise UserError(f"model {key!r}: the factory must accept keyword arguments num_classes and in_channels")
    kwargs = {**fixed, **values, "num_classes": num_classes, "in_channels": in_channels}
    if "input_shape" in params:
        kwargs["input_shape"] = shape

    try:
        model = factory(**kwargs)
    except (RuntimeError, MemoryError, ValueError, OverflowError) as e:  # e.g. widths too large to allocate
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model {key!r} could not be built with options {recorded} ({first[:160]}); "
                        f"check the sizes: {describe_options(key)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {key!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    # what the factory needs to rebuild the model without its source (an HF config dict)
    recorded.update(model.__dict__.pop("compresslab_record", None) or {})
    model.compresslab_config = {
        "name": key,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_shape": list(shape) if shape is not None else None,
        "options": recorded,
    }
    return model


def model_config(model: nn.Module) -> dict[str, Any]:
    """A copy of the config ``create_model`` recorded on ``model``."""
    config = getattr(model, "compresslab_config", None)
    if not isinstance(config, dict):
        raise UserError("this model was not built by create_model, so it has no config; build it with create_model")
    return copy.deepcopy(config)


def build_from_config(cfg: dict[str, Any]) -> nn.Module:
    """Rebuild a model (fresh weights) from a config made by ``model_config``."""
    if not isinstance(cfg, dict) or not {"name", "num_classes", "in_channels"} <= cfg.keys():
        raise UserError("a model config needs the keys name, num_classes, in_channels (and optionally input_shape, options)")
    input_shape = cfg.get("input_shape")
    return create_model(
        cfg["name"],
        num_classes=cfg["num_classes"],
        in_channels=cfg["in_channels"],
        input_shape=tuple(input_shape) if input_shape is not None else None,
        **(cfg.get("options") or {}),
    )
