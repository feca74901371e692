"""The ``blockswap`` study: BlockSwap students of one WRN teacher, one per parameter budget.

BlockSwap (Turner, Crowley, O'Boyle, Storkey & Gray, ICLR 2020) samples mixes of cheap
blocks that fit a parameter budget, ranks them by Fisher potential at initialisation on
one minibatch, and trains the best with attention transfer from the teacher. For each
budget this study runs one ``blockswap`` step (search + training, see
:mod:`compresslab.steps.blockswap`), then measures every student as the Moonshine study
does: params, MACs, latency, error and agreement with the teacher, with the Pareto front.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from compresslab.compress.search import wrn_geometry
from compresslab.console import console, echo, short, table
from compresslab.errors import UserError
from compresslab.report.blockswap import write_blockswap_report
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps.specs import blockswap_spec, data_spec, train_spec
from compresslab.study import moonshine
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions
from compresslab.train.recipe import Recipe, Seed


class BlockSwapSpec(RunOptions):
    """A BlockSwap study (``kind: blockswap``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["blockswap"]
    name: str = "blockswap"
    data: str = "mnist1d"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: Seed = 0
    teacher: ModelSpec = Field(description="a WRN (wrn-D-K or wrn1d-D-K) with the standard Conv blocks")
    recipe: Recipe = Field(default_factory=Recipe, description="teacher and students alike")
    budgets: list[float] = Field(min_length=1, description="student parameter budgets (each met within 2.5%)")
    samples: int = Field(1000, ge=1, le=100_000, description="candidates sampled and scored per budget")
    blocks: list[str] | None = Field(None, description="block types to mix (default: the Moonshine family)")
    batch: int = Field(128, ge=2, le=4096, description="minibatch for the Fisher potential")
    beta: float = Field(1000.0, gt=0, description="attention-transfer weight")
    at_points: list[str] = Field(default_factory=lambda: ["group1", "group2", "group3"])
    latency: bool = True
    split: Literal["val", "test"] = "test"

    @field_validator("budgets")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(b <= 0 for b in v) or len(set(v)) != len(v):
            raise ValueError("budgets must be positive and distinct")
        return v


def expand(spec: BlockSwapSpec) -> list[Entry]:
    data = data_spec(spec.data, spec.val_fraction, spec.seed)
    teacher = Step("train", train_spec(data, spec.teacher.model_dump(), spec.recipe, spec.seed), label="teacher")
    entries = [Entry("teacher", "parent", "train", teacher, {"block": "teacher", "mode": "teacher"})]
    for b in spec.budgets:
        name = f"budget-{short(b)}"
        step = Step("blockswap", blockswap_spec(data, b, spec.recipe, spec.seed, samples=spec.samples,
                                                blocks=spec.blocks, batch=spec.batch, beta=spec.beta,
                                                at_points=spec.at_points),
                    parents={"teacher": teacher}, label=name)
        entries.append(Entry(name, "child", "blockswap", step, {"block": name, "mode": "at", "budget": b}))
    return entries


def collect(spec: BlockSwapSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    """Moonshine's measurements (:func:`compresslab.study.moonshine.collect`), plus each
    student's search record."""
    results = moonshine.collect(spec, entries, store, progress)
    for row, e in zip([results["teacher"], *results["students"]], entries):
        if e.role != "parent":
            row["search"] = read_json(store.path(e.step) / "metrics.json")["blockswap"]
    return results


def print_results(results: dict, out: Path) -> None:
    t = table(f"study {results['study']}: BlockSwap students, {results['split']} split",
              ["budget", "params", "MACs", "ms@256", "error %", "agree %", "search s", "candidates"])
    for r in [results["teacher"], *results["students"]]:
        lat = (r["cost"].get("latency_ms") or {}).get("batch256")
        s = r.get("search") or {}
        t.add_row(r["name"], short(r["cost"]["params"]), short(r["cost"]["macs"]), "–" if lat is None else f"{lat:.2f}",
                  f"{100 * r['error']:.2f}", f"{100 * r['function']['agreement']:.2f}",
                  f"{s['seconds']['total']:.1f}" if s else "–", f"{s['candidates']:,}" if s else "–")
    console().print(t)
    for r in results["students"]:
        echo(f"{r['name']}: {'-'.join(r['search']['best'])}")
    echo(f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


def _check(spec: BlockSwapSpec, source: str) -> None:
    try:
        wrn_geometry(spec.teacher.name)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


register_study_kind("blockswap", spec=BlockSwapSpec, expand=expand, collect=collect, report=write_blockswap_report,
                    print=print_results, check=_check)
