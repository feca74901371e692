"""Study specs: loading (file or preset), parsing by kind, and the parts several kinds share
(model specs, and the children of a parent: distilled, pruned, quantised)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compresslab.compress.quantize import MAX_CALIB_BATCH, MAX_CALIB_BATCHES
from compresslab.errors import UserError
from compresslab.train import Recipe
from compresslab.train.recipe import MAX_EPOCHS, validation_message

PRESETS = Path(__file__).parent / "presets"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunOptions(BaseModel):
    """How a study runs, for every kind: not part of its identity (left out of the spec's
    dump and hash), so the same study resumes on another machine or device."""

    device: str = Field("auto", exclude=True, description="auto (CUDA when present, else CPU), cpu, cuda, "
                        "cuda:N or mps; `compresslab study --device` overrides it")
    deterministic: bool = Field(False, exclude=True, description="deterministic algorithms: identical weights "
                                "for the same seed, device and precision, at some speed cost on GPUs")


class ModelSpec(Strict):
    name: str
    options: dict = Field(default_factory=dict)


class DistillChild(Strict):
    method: Literal["distill"]
    name: str
    student: ModelSpec
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; CE gets 1 - alpha")
    recipe: Recipe | None = None  # default: the study recipe


class PruneChild(Strict):
    method: Literal["prune"]
    name: str
    amount: Annotated[float, Field(gt=0, lt=1)] | Literal["p_star", "safe"] = Field(
        description="fraction of the parameters to remove, or p_star / safe (from the parent's weights)")
    criterion: Literal["global-l1", "layer-l1", "random"] = "global-l1"
    scope: Literal["all", "weights"] = "all"
    finetune_epochs: int = Field(1, ge=0, le=MAX_EPOCHS)
    finetune_lr: float | None = Field(None, gt=0, description="default: the study recipe's lr / 10")
    finetune_batch_size: int | None = Field(None, ge=1, le=2**20, description="default: the study recipe's")


Bits = Annotated[int, Field(ge=2, le=16)]
BitWidths = Bits | dict[Literal["conv", "linear"], Bits]


class QuantizeChild(Strict):
    method: Literal["quantize"]
    name: str
    scheme: Literal["ptq-dynamic", "ptq-static", "fake", "qat"] = "ptq-dynamic"
    bits: BitWidths = Field(8, description="weight bits, or per layer type {conv: 4, linear: 8}; 8 for ptq-*")
    act_bits: BitWidths | None = Field(None, description="fake/qat: bits of each quantised layer's input")
    per_channel: bool = False
    symmetric: bool = True
    observer: Literal["minmax", "percentile"] = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    calib_batches: int = Field(8, ge=1, le=MAX_CALIB_BATCHES)
    calib_batch_size: int = Field(128, ge=1, le=MAX_CALIB_BATCH)
    epochs: int = Field(2, ge=0, le=MAX_EPOCHS, description="qat: fine-tuning epochs at the study recipe's lr / 10")
    source: str | None = Field(None, description="quantise this (prune) child instead of the parent")

    @model_validator(mode="after")
    def _int8(self) -> QuantizeChild:
        if self.scheme.startswith("ptq-"):
            bits = set(self.bits.values()) if isinstance(self.bits, dict) else {self.bits}
            if bits != {8} or self.act_bits is not None:
                raise ValueError(f"{self.scheme} runs real int8 kernels: bits must be 8 and act_bits unset; "
                                 "use scheme fake or qat for other widths")
        return self


Child = Annotated[DistillChild | PruneChild | QuantizeChild, Field(discriminator="method")]


def load_spec(path: str | Path | None = None, *, preset: str | None = None):
    """Load a spec from a YAML file, a preset name, or the default preset."""
    if path is not None and preset is not None:
        raise UserError("give either a spec file or --preset, not both")
    if path is None:
        preset = preset or "default"
        path = PRESETS / f"{preset}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
            raise UserError(f"unknown preset {preset!r}; known presets: {known}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study spec {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: malformed YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML: {e}") from None
    return parse_spec(raw, source=str(path))


def validate_spec(cls, raw: object, source: str):
    """``cls.model_validate(raw)``; a non-mapping or any validation problem becomes one
    :class:`UserError` line naming ``source``."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a study spec must be a mapping, got {type(raw).__name__}")
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise UserError(validation_message(e, source)) from None


def adjust(spec, *, data: str | None = None, epochs: int | None = None, subset: int | None = None,
           latency: bool | None = None):
    """``spec`` with its dataset replaced by ``data`` (every ``data`` field: a preset pointed
    at your copy of CIFAR-10), and for a quick smoke run every epoch count at most
    ``epochs`` and the data a seeded subset of ``subset`` examples (``NAME@N``, see
    :func:`compresslab.data.load_dataset`); ``latency`` turns the kind's latency
    measurement on or off where it has one. Unchanged without any of them."""
    if data is None and epochs is None and subset is None and latency is None:
        return spec
    if (epochs is not None and epochs < 0) or (subset is not None and subset < 2):
        raise UserError("--epochs must be >= 0 and --subset >= 2")

    def walk(node):
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k in ("epochs", "finetune_epochs") and isinstance(v, int) and epochs is not None:
                    v = min(v, epochs)
                elif k == "data" and isinstance(v, str):
                    v = data or v
                    if subset is not None:
                        v = f"{v.rpartition('@')[0] if '@' in v else v}@{subset}"
                out[k] = walk(v)
            return out
        return [walk(v) for v in node] if isinstance(node, list) else node

    raw = walk(spec.model_dump(mode="json"))
    if latency is not None and "latency" in raw:
        raw["latency"] = latency
    return type(spec).model_validate({**raw, "device": spec.device, "deterministic": spec.deterministic})


def parse_spec(raw: object, *, source: str = "spec"):
    """The spec of the study kind that ``raw["kind"]`` names (no ``kind``: the plain study),
    validated by its model and the kind's own check. Problems become one :class:`UserError` line."""
    from compresslab.study.kinds import study_kind

    name = raw.get("kind", "study") if isinstance(raw, dict) else "study"
    if not isinstance(name, str):
        raise UserError(f"{source}: kind must be a string, got {name!r}")
    try:
        kind = study_kind(name)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    spec = validate_spec(kind.spec, raw, source)
    if kind.check is not None:
        kind.check(spec, source)
    return spec


def check_children(children: list, source: str) -> None:
    """Child names unique and not ``parent``; a quantised child's ``source`` names an earlier prune child."""
    names = [c.name for c in children]
    dup = {n for n in names if names.count(n) > 1} | ({"parent"} & set(names))
    if dup:
        raise UserError(f"{source}: child names must be unique and not 'parent': {', '.join(sorted(dup))}")
    prunes: list[str] = []
    for c in children:
        if isinstance(c, PruneChild):
            prunes.append(c.name)
        elif isinstance(c, QuantizeChild) and c.source is not None and c.source not in prunes:
            raise UserError(f"{source}: child {c.name!r}: source {c.source!r} is not a prune child listed before "
                            f"it (earlier prune children: {', '.join(prunes) or 'none'})")
