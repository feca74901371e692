"""The ``linear-substitution`` study: structured pointwise maps against Moonshine blocks.

Gray, Crowley & Storkey (2019): after a depthwise conv, replace the pointwise matrix by a
structured efficient linear map. For each target parameter budget and each kind (low-rank,
ACDC, shuffle, hashed), :func:`compresslab.models.linear_subs.fit_budget` picks the
kind's setting so that the whole WRN, with ``base`` (a DConv-family block) in every
residual block and that substitute for its pointwise maps, fits the budget. The
resulting blocks (``DConv+acdc4``, ...) and the reference Moonshine blocks in ``compare``
are trained as students of one teacher by the ``moonshine`` study, which measures
params, MACs, latency, error and agreement, and marks the Pareto frontier.
"""
from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from compresslab.errors import UserError
from compresslab.report.moonshine import write_moonshine_report
from compresslab.runs.store import RunStore
from compresslab.study import moonshine
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions
from compresslab.train.recipe import Recipe, Seed


class LinearSubstitutionSpec(RunOptions):
    """A linear-substitution study (``kind: linear-substitution``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["linear-substitution"]
    name: str = "linear-substitution"
    data: str = "mnist1d"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: Seed = 0
    teacher: ModelSpec
    recipe: Recipe = Field(default_factory=Recipe)
    base: str = Field("DConv", description="the DConv-family block whose pointwise maps are substituted")
    kinds: list[Literal["lowrank", "acdc", "shuffle", "hashed"]] = Field(
        default_factory=lambda: ["lowrank", "acdc", "shuffle", "hashed"], min_length=1)
    budgets: list[int] = Field(min_length=1, description="target total parameter counts")
    compare: list[str] = Field(default_factory=list, description="Moonshine blocks trained alongside")
    modes: list[Literal["scratch", "at", "at+kd"]] = Field(default_factory=lambda: ["scratch"], min_length=1)
    beta: float = Field(1000.0, gt=0)
    scale_substitute_wd: bool = Field(False, description="scale weight decay on the substitutes by their "
                                      "compression ratio")
    latency: bool = True
    split: Literal["val", "test"] = "test"


def _check(spec: LinearSubstitutionSpec, source: str) -> None:
    if not spec.teacher.name.startswith(("wrn-", "wrn1d-")):
        raise UserError(f"{source}: the teacher must be a Wide ResNet (wrn-D-K or wrn1d-D-K), got {spec.teacher.name!r}")


def fitted_blocks(spec: LinearSubstitutionSpec) -> list[dict]:
    """``[{"block", "kind", "budget", "hp", "params"}]``: one substituted block per (budget, kind)."""
    from compresslab.compress.search import block_table, table_params
    from compresslab.models.blocks import parse_block
    from compresslab.models.linear_subs import KINDS, fit_budget

    base = parse_block(spec.base)
    if not base.depthwise or base.pointwise is not None:
        raise UserError(f"base {spec.base!r}: use a plain DConv-family block (DConv, DConvG{{g}}, DConvA{{a}}, "
                        "DConvB{b}); the study adds the substitutes")
    name = spec.teacher.name
    depth, widen = (int(v) for v in name.split("-")[1:3])
    dim = 1 if name.startswith("wrn1d") else 2
    table = block_table(depth, widen, [spec.base], dim=dim, in_channels=1)  # channels of the input don't matter
    n = len(table["costs"])
    widths = [16 * widen, 32 * widen, 64 * widen]
    per_group = n // 3
    layers, c_in = [], 16
    for c_out in widths:
        for i in range(per_group):
            first = c_in if i == 0 else c_out
            mid = c_out // base.bottleneck
            layers += [(first if base.bottleneck == 1 else mid, c_out), (c_out if base.bottleneck == 1 else mid, c_out)]
        c_in = c_out
    plain_pointwise = sum(a * b for a, b in layers)
    fixed = table_params(table, [spec.base] * n) - plain_pointwise
    out, seen = [], set()
    for budget in spec.budgets:
        for kind in spec.kinds:
            fit = fit_budget(kind, layers, budget, fixed_params=fixed)
            value = fit["hp"][KINDS[kind]]
            text = f"{int(value * 10_000) / 10_000:.4f}".rstrip("0") if kind == "hashed" else str(value)
            block = f"{spec.base}+{kind}{text}"
            if block not in seen:
                seen.add(block)
                params = table_params(block_table(depth, widen, [block], dim=dim, in_channels=1), [block] * n)
                out.append({"block": block, "kind": kind, "budget": budget, "hp": fit["hp"], "params": params})
    return out


def expand(spec: LinearSubstitutionSpec) -> list[Entry]:
    """Fit the substitutes to the budgets; the Moonshine study of them and ``compare``.
    The fitted blocks ride along in the teacher entry's ``info``."""
    fitted = fitted_blocks(spec)
    blocks = list(dict.fromkeys([*spec.compare, spec.base, *(f["block"] for f in fitted)]))
    moon = moonshine.MoonshineSpec(kind="moonshine", name=spec.name, data=spec.data, val_fraction=spec.val_fraction,
                                   seed=spec.seed, teacher=spec.teacher, recipe=spec.recipe, blocks=blocks,
                                   modes=spec.modes, beta=spec.beta, scale_substitute_wd=spec.scale_substitute_wd,
                                   latency=spec.latency, split=spec.split)
    entries = moonshine.expand_moonshine(moon)
    entries[0].info.update(substitutes=fitted, moonshine=moon)
    return entries


def collect(spec: LinearSubstitutionSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    info = entries[0].info
    return {**moonshine.collect(info["moonshine"], entries, store, progress), "substitutes": info["substitutes"],
            "moonshine_spec": info["moonshine"].model_dump(mode="json")}


register_study_kind("linear-substitution", spec=LinearSubstitutionSpec, expand=expand, collect=collect,
                    report=write_moonshine_report, print=moonshine.print_results, check=_check)
