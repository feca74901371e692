"""The whole codesign pipeline in one command: a hand-designed baseline, the global search
(:mod:`compresslab.study.search`), the local search of the best front members
(:mod:`compresslab.study.local_search`), hls4ml export of the winner with its C simulation
(:mod:`compresslab.export_hls`) and, on Bragg peaks, the classical pseudo-Voigt fit.

A pipeline spec (YAML; the preset ``codesign-bragg`` is the seed papers' task)::

    name: codesign-bragg
    data: bragg:synthetic
    recipe: {optimizer: adam, lr: 0.003, weight_decay: 0, batch_size: 256}
    baseline: {model: braggnn, epochs: 10}         # hand-designed reference, same recipe
    search: {space: codesign-bragg-hls-space, trials: 24, epochs: 6, batch: 8, halving: 1}
    local: {top_k: 2, bits: [8, 6, 4], prune_rounds: 2, prune_amount: 0.3, qat_epochs: 2, finetune_epochs: 1}
    hls4ml: {precision: "ap_fixed<16,6>", parity_samples: 200}
    pseudo_voigt: {patches: 200}                    # bragg:synthetic only

Every model is a run-store step, so a rerun reuses everything but the hls4ml compile and the
timings. Outputs go to ``RUNS/codesign/<name>-<hash12>/``: ``results.json``, ``report.html``
and the hls4ml project under ``hls4ml/``.

The winner is the cheapest model (fewest BOPs) at least as good as the baseline on the test
split (the local search's match); when none is, the best model of the second front.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compresslab.errors import UserError

PRESET_DIR = Path(__file__).parent / "study" / "presets" / "codesign"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Baseline(_Strict):
    model: str = "braggnn"
    options: dict = Field(default_factory=dict)
    epochs: int = Field(3, ge=1)


class SearchStage(_Strict):
    space: str = "codesign-bragg-hls-space"
    trials: int = Field(12, ge=1)
    epochs: int = Field(3, ge=1)
    batch: int = Field(6, ge=1)
    halving: int = Field(1, ge=0)
    objectives: list[str] = Field(default_factory=list)
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"


class LocalStage(_Strict):
    top_k: int = Field(2, ge=1)
    bits: list[int] = Field(default_factory=lambda: [8, 4])
    prune_rounds: int = Field(2, ge=0)
    prune_amount: float = Field(0.3, gt=0, lt=1)
    qat_epochs: int = Field(1, ge=0)
    finetune_epochs: int = Field(1, ge=0)
    tolerance: float = Field(0.0, ge=0)


class HlsStage(_Strict):
    precision: str = "ap_fixed<16,6>"
    reuse_factor: int = Field(1, ge=1)
    parity_samples: int = Field(200, ge=1)


class PseudoVoigt(_Strict):
    patches: int = Field(200, ge=1)


class CodesignSpec(_Strict):
    name: str = "codesign"
    data: str = "bragg:synthetic"
    seed: int = 0
    recipe: dict = Field(default_factory=lambda: {"optimizer": "adam", "lr": 0.003, "weight_decay": 0.0,
                                                  "batch_size": 256})
    baseline: Baseline = Field(default_factory=Baseline)
    search: SearchStage = Field(default_factory=SearchStage)
    local: LocalStage = Field(default_factory=LocalStage)
    hls4ml: HlsStage | None = Field(default_factory=HlsStage)
    pseudo_voigt: PseudoVoigt | None = None


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_spec(path: str | Path | None = None, preset: str | None = None, **overrides) -> CodesignSpec:
    """A validated spec from a YAML file or a preset; ``overrides`` (dotted keys such as
    ``search.trials``) replace fields. Bad specs are one-line :class:`UserError`\\ s."""
    if (path is None) == (preset is None):
        raise UserError("give a pipeline spec (YAML) or --preset NAME, not both and not neither")
    if preset is not None:
        if preset not in presets():
            raise UserError(f"unknown codesign preset {preset!r}; known: {', '.join(presets())}")
        path = PRESET_DIR / f"{preset}.yaml"
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such pipeline spec: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a YAML mapping of pipeline settings")
    for key, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"{path.name}: `{p}` must be a mapping to override {key}")
        node[leaf] = value
    try:
        return CodesignSpec(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{path.name}: {where}: {err['msg']}") from None


def run_pipeline(spec: CodesignSpec, runs: str | Path = "runs", *, progress=None, echo=print) -> tuple[dict, Path]:
    """Run (or resume) the pipeline; returns ``(results, output folder)``."""
    from compresslab.api import train_model
    from compresslab.data import bragg
    from compresslab.export_hls import export_hls, parse_precision
    from compresslab.measure.cost import latency
    from compresslab.runs.checkpoint import load_checkpoint
    from compresslab.runs.store import read_json, write_json
    from compresslab.steps import dataset
    from compresslab.study.local_search import run_local_search
    from compresslab.study.search import search

    t0 = time.perf_counter()
    runs = Path(runs)
    ds = dataset(spec.data, 0.1, spec.seed)  # unknown data: a UserError before anything is written
    if spec.hls4ml is not None:
        parse_precision(spec.hls4ml.precision)
    if spec.pseudo_voigt is not None and not spec.data.startswith("bragg:"):
        raise UserError("pseudo_voigt: the classical fit applies to bragg:synthetic only; set `pseudo_voigt: null`")
    out = runs / "codesign" / f"{spec.name}-{spec_digest(spec)}"

    echo(f"[1/4] baseline {spec.baseline.model}, {spec.baseline.epochs} epochs")
    base = train_model(spec.baseline.model, spec.data, options=spec.baseline.options, seed=spec.seed, runs=runs,
                       overrides={**spec.recipe, "epochs": spec.baseline.epochs}, progress=progress)
    baseline = Path(base["checkpoint"])

    s = spec.search
    echo(f"[2/4] global search: {s.trials} trials of {s.space}, {s.epochs} epochs each")
    found, folder = search(s.space, spec.data, trials=s.trials, objectives=",".join(s.objectives), epochs=s.epochs,
                           recipe=spec.recipe, sampler=s.sampler, seed=spec.seed, runs=runs, batch=s.batch,
                           halving=s.halving, reference=baseline, progress=progress)
    front = read_json(folder / "front.json")
    metric = found["objectives"][0]
    best_first = sorted(front, key=lambda r: r[metric], reverse=metric == "accuracy")
    candidates = [runs / r["step"] for r in best_first[:spec.local.top_k]]
    if not candidates:
        raise UserError("the global search finished no trial; raise search.trials or search.epochs")

    lo = spec.local
    echo(f"[3/4] local search: {len(candidates)} front members x QAT at {lo.bits} bits, {lo.prune_rounds} prune rounds")
    local = run_local_search(candidates, spec.data, bits=lo.bits, prune_rounds=lo.prune_rounds,
                             prune_amount=lo.prune_amount, qat_epochs=lo.qat_epochs, finetune_epochs=lo.finetune_epochs,
                             baseline=baseline, tolerance=lo.tolerance, seed=spec.seed, runs=runs,
                             out=out / "local-search", progress=progress)
    rows, sense = local["rows"], local["sense"]
    winner = local["match"] or min((rows[i] for i in local["front2"]),
                                   key=lambda r: r["metric"] if sense == "min" else -r["metric"])
    arch = Path(local["candidates"][winner["candidate"]]).name if winner["candidate"] >= 0 else "baseline"
    winner = {**winner, "label": arch if winner["name"] == "candidate" else f"{winner['name']} of {arch}"}
    results = {"study": spec.name, "kind": "codesign", "data": spec.data, "split": local["split"],
               "score": local["score"], "sense": sense, "spec": spec.model_dump(mode="json"),
               "baseline": local["baseline"], "search": {**found, "folder": str(folder)},
               "local": {k: local[k] for k in ("rows", "front1", "front2", "out")},
               "winner": winner, "matched": local["match"] is not None,
               "bops_reduction": local["baseline"]["bops"] / winner["bops"] if winner["bops"] else None}

    model, _ = load_checkpoint(winner["checkpoint"])
    per_patch = latency(model.eval(), tuple(ds.input_shape), batch_sizes=(256,))["batch256"] / 256 / 1000
    results["winner_seconds_per_example"] = per_patch
    if spec.pseudo_voigt is not None:
        pv = bragg.pseudo_voigt_baseline(ds, limit=spec.pseudo_voigt.patches)
        results["pseudo_voigt"] = {**pv, "speedup": pv["seconds_per_patch"] / per_patch}

    if spec.hls4ml is not None:
        echo(f"[4/4] hls4ml export of {winner['label']} ({Path(winner['checkpoint']).name}) and its C simulation")
        hls_dir = out / "hls4ml"
        if hls_dir.exists():
            shutil.rmtree(hls_dir)
        h = spec.hls4ml
        try:
            results["hls4ml"] = export_hls(winner["checkpoint"], hls_dir, spec.data, precision=h.precision,
                                           reuse_factor=h.reuse_factor, parity_samples=h.parity_samples,
                                           seed=spec.seed, progress=progress)
        except UserError as e:  # a model hls4ml cannot convert: the rest of the pipeline still stands
            results["hls4ml"] = {"error": str(e), "checkpoint": winner["checkpoint"]}
    results["verdict"] = verdict(results)
    results["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results, sort_keys=False)
    from compresslab.report.codesign import write_codesign_report

    write_codesign_report(results, out / "report.html")
    return results, out


def verdict(r: dict) -> list[str]:
    """The headline lines: the BOPs reduction at matched quality, the classical speed-up, C-sim parity."""
    unit = " px" if r["score"] != "accuracy" else ""
    fmt = (lambda v: f"{100 * v:.2f}%") if r["score"] == "accuracy" else (lambda v: f"{v:.4f}{unit}")
    b, w = r["baseline"], r["winner"]
    lines = []
    if r["matched"]:
        lines.append(f"{w['label']} matches the baseline ({fmt(w['metric'])} against {fmt(b['metric'])}) "
                     f"with {r['bops_reduction']:,.0f}x fewer BOPs ({w['bops']:.3g} against {b['bops']:.3g}).")
    else:
        lines.append(f"No searched or compressed model matched the baseline's {fmt(b['metric'])}; the best reached "
                     f"{fmt(w['metric'])} at {w['bops']:.3g} BOPs ({r['bops_reduction']:,.1f}x fewer than the baseline).")
    if "pseudo_voigt" in r:
        pv = r["pseudo_voigt"]
        lines.append(f"Against the pseudo-Voigt fit ({fmt(pv['centre_error_px'])} mean error, "
                     f"{1e3 * pv['seconds_per_patch']:.2f} ms per patch): the winner is {pv['speedup']:,.0f}x faster "
                     f"per patch on this CPU at batch 256.")
    if "error" in r.get("hls4ml", {}):
        lines.append(f"hls4ml export of the winner failed: {r['hls4ml']['error']}")
    elif "hls4ml" in r:
        p = r["hls4ml"]["parity"]
        close = (f"centres {p['centre_distance_px']:.4f} px apart" if "centre_distance_px" in p
                 else f"top-1 agreement {100 * p['top1_agreement']:.2f}%")
        lines.append(f"hls4ml C simulation at {r['hls4ml']['precision']}: max |Δ| {p['max_abs_diff']:.2e} against "
                     f"PyTorch, {close}; resources and latency need synthesis.")
    return lines


def spec_digest(spec: CodesignSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:12]
