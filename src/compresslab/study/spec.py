"""Study specs: validated (pydantic) descriptions that expand into a DAG of steps."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compresslab.errors import UserError
from compresslab.train import Recipe
from compresslab.train.recipe import validation_message

PRESETS = Path(__file__).parent / "presets"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    name: str
    options: dict = Field(default_factory=dict)


class DistillChild(_Strict):
    method: Literal["distill"]
    name: str
    student: ModelSpec
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; CE gets 1 - alpha")
    recipe: Recipe | None = None  # default: the study recipe


class PruneChild(_Strict):
    method: Literal["prune"]
    name: str
    amount: Union[Annotated[float, Field(gt=0, lt=1)], Literal["p_star", "safe"]] = Field(
        description="fraction of the parameters to remove, or p_star / safe (from the parent's weights)")
    criterion: Literal["global-l1", "layer-l1", "random"] = "global-l1"
    scope: Literal["all", "weights"] = "all"
    finetune_epochs: int = Field(1, ge=0)
    finetune_lr: float | None = Field(None, gt=0, description="default: the study recipe's lr / 10")
    finetune_batch_size: int | None = Field(None, ge=1, description="default: the study recipe's")


class QuantizeChild(_Strict):
    method: Literal["quantize"]
    name: str
    scheme: Literal["ptq-dynamic"] = "ptq-dynamic"


Child = Annotated[Union[DistillChild, PruneChild, QuantizeChild], Field(discriminator="method")]


class Controls(_Strict):
    seeds: list[int] = Field(default_factory=lambda: [1, 2], description="parent retrained from these seeds")
    student_from_scratch: bool = Field(True, description="train each KD student's architecture with CE only")


class StudySpec(_Strict):
    name: str = "study"
    data: str = "mnist1d"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    parent: ModelSpec
    recipe: Recipe = Field(default_factory=Recipe)
    children: list[Child] = Field(default_factory=list)
    controls: Controls = Field(default_factory=Controls)
    latency: bool = True
    split: Literal["val", "test"] = "test"


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


def parse_spec(raw: object, *, source: str = "spec"):
    """A :class:`StudySpec`, or the spec of another study kind (``kind: kurtosis``,
    ``kd-functional``, ``moonshine`` or ``linear-substitution``)."""
    if isinstance(raw, dict) and raw.get("kind") == "kurtosis":
        from compresslab.study.kurtosis import parse_kurtosis_spec

        return parse_kurtosis_spec(raw, source=source)
    if isinstance(raw, dict) and raw.get("kind") == "kd-functional":
        from compresslab.study.kd_functional import parse_kd_spec

        return parse_kd_spec(raw, source=source)
    if isinstance(raw, dict) and raw.get("kind") == "moonshine":
        from compresslab.study.moonshine import parse_moonshine_spec

        return parse_moonshine_spec(raw, source=source)
    if isinstance(raw, dict) and raw.get("kind") == "linear-substitution":
        from compresslab.study.linear_substitution import parse_linear_spec

        return parse_linear_spec(raw, source=source)
    spec = validate_spec(StudySpec, raw, source)
    names = [c.name for c in spec.children]
    dup = {n for n in names if names.count(n) > 1} | ({"parent"} & set(names))
    if dup:
        raise UserError(f"{source}: child names must be unique and not 'parent': {', '.join(sorted(dup))}")
    return spec
