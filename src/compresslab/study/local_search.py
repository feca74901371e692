"""Local search: stage 2 of neural architecture codesign (Weitz et al.).

Stage 1 (the global search) proposes trained candidates. Here each candidate is compressed
by composing the existing step kinds, every child a run-store step (a rerun reuses them):

- ``qat-b{B}``: quantisation-aware training at B bits (weights and layer inputs), and one
  child per ``mixed`` bit map (per layer type today; whatever ``quantize_spec`` accepts);
- ``prune-r{R}``: iterative magnitude pruning, round R removing ``amount`` of the weights
  still kept (a chain of ``prune`` steps at cumulative sparsity ``1 - (1 - amount)^R``:
  global magnitude ranks the zeros of the parent first, so each round keeps them), each
  round fine-tuned; with ``structured``, ``amount`` of the channels per round instead;
- ``prune-r{R}+qat-b{B}``: every pruned round quantised at every width (QAT keeps zeros).

Each child's BOPs come from its ``metrics.json`` cost, which counts every layer at its own
weight and activation bits and weight sparsity. The second Pareto front (metric vs BOPs) is
taken over the candidates and all children; the first is the candidates' front as given.
With a hand-designed ``baseline``, :func:`match_baseline` reports the smallest-BOPs model at
least as good as it (within ``tolerance``) and the BOPs reduction.
"""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from compresslab.errors import UserError
from compresslab.measure.pareto import pareto_front
from compresslab.report.svg import COLORS, SERIES, Plot
from compresslab.runs.checkpoint import read_model_json
from compresslab.runs.store import RunStore, Step, read_json, write_json
from compresslab.steps import check_step, dataset, run_step
from compresslab.steps.common import SCORE, checkpoint_step, parent_recipe
from compresslab.steps.specs import data_spec, finetune_recipe, prune_spec, quantize_spec

#: Whether a larger score is better, by the ``metrics.json`` key.
SENSE = {"accuracy": "max", "centre_error_px": "min"}


@dataclass
class Child:
    """One compressed child: its name (``prune-r2+qat-b4``), candidate index, step, and its
    parent (a candidate's directory or an earlier child's step)."""

    name: str
    candidate: int
    step: Step
    parent: Path | Step
    bits: int | dict | None = None
    rounds: int = 0
    info: dict = field(default_factory=dict)


def bits_label(bits: int | dict) -> str:
    return f"b{bits}" if isinstance(bits, int) else ",".join(f"{k}={v}" for k, v in sorted(bits.items()))


def check_candidate(path: Path, data_name: str, score: str, role: str = "candidate") -> dict:
    """A float run-store checkpoint trained on ``data_name``: its ``metrics.json``, else a
    :class:`UserError` that says what to give instead."""
    path = Path(path)
    cfg = read_model_json(path)  # missing or foreign directory: a clear error
    if cfg["transforms"]:
        kinds = ", ".join(t["kind"] for t in cfg["transforms"])
        raise UserError(f"{role} {path} is already quantised ({kinds}); give its float parent")
    spec_file, metrics_file = path / "spec.json", path / "metrics.json"
    if spec_file.is_file():
        trained_on = (read_json(spec_file)["spec"].get("data") or {}).get("name")
        if trained_on is not None and trained_on != data_name:
            raise UserError(f"{role} {path} was trained on {trained_on}, not {data_name}; give --data {trained_on} "
                            "or a checkpoint trained on it")
    metrics = read_json(metrics_file) if metrics_file.is_file() else {}
    if score not in metrics or (metrics.get("cost") or {}).get("bops") is None:
        raise UserError(f"{role} {path} has no {score} and BOPs in metrics.json; give a run-store step "
                        "directory (compresslab train prints one)")
    return metrics


def plan(candidates: list[Path], data: dict, *, bits: list[int], mixed: list[dict], prune_rounds: int,
         prune_amount: float, structured: bool, round_to: int | None, qat_epochs: int, finetune_epochs: int,
         act_bits: bool, seed: int) -> list[Child]:
    """Every child step, parents first (validates bits, amounts and epochs)."""
    if prune_rounds < 0:
        raise UserError(f"--prune-rounds {prune_rounds}: must be >= 0")
    if prune_rounds and not 0 < prune_amount < 1:
        raise UserError(f"--prune-amount {prune_amount}: must be a fraction in (0, 1), e.g. 0.2")
    if round_to is not None and not structured:
        raise UserError("--round-to rounds kept channel counts: it needs --structured")
    for name, e in (("--qat-epochs", qat_epochs), ("--finetune-epochs", finetune_epochs)):
        if e < 0:
            raise UserError(f"{name} {e}: must be >= 0")
    widths = [*bits, *mixed]
    if not widths and not prune_rounds:
        raise UserError("nothing to search: give --bits, --mixed or --prune-rounds")
    children: list[Child] = []
    for i, path in enumerate(candidates):
        base = parent_recipe(path)
        qat = finetune_recipe(base, epochs=qat_epochs, lr=base.lr / 10, validated=True)
        ft = finetune_recipe(base, epochs=finetune_epochs, lr=base.lr / 10, validated=True)
        me = checkpoint_step(path)

        def quantized(parent: Step, parent_ref, prefix: str, rounds: int):
            for b in widths:
                spec = quantize_spec(data, "qat", bits=b, act_bits=b if act_bits else None, recipe=qat, seed=seed)
                name = f"{prefix}qat-{bits_label(b)}"
                children.append(Child(name, i, Step("quantize", spec, parents={"parent": parent},
                                                    label=f"{name} of {path.name}"), parent_ref, b, rounds))

        quantized(me, Path(path), "", 0)
        parent, parent_ref = me, Path(path)
        for r in range(1, prune_rounds + 1):
            if structured:
                spec = prune_spec(data, prune_amount, ft, seed, method="channel", round_to=round_to)
            else:  # cumulative: the parent's zeros rank first, so this prunes `amount` of the rest
                spec = prune_spec(data, round(1 - (1 - prune_amount) ** r, 12), ft, seed, scope="weights")
            name = f"prune-r{r}"
            step = Step("prune", spec, parents={"parent": parent}, label=f"{name} of {path.name}")
            children.append(Child(name, i, step, parent_ref, None, r))
            quantized(step, step, f"{name}+", r)
            parent, parent_ref = step, step
    return children


def match_baseline(rows: list[dict], baseline: dict, sense: str, tolerance: float = 0.0) -> dict | None:
    """The smallest-BOPs row whose ``metric`` is at least as good as ``baseline["metric"]``,
    allowing ``tolerance`` (in the metric's units) worse; None when none is. Adds
    ``reduction`` = baseline BOPs / its BOPs."""
    b = baseline["metric"]
    ok = [r for r in rows if (r["metric"] >= b - tolerance if sense == "max" else r["metric"] <= b + tolerance)]
    if not ok:
        return None
    best = min(ok, key=lambda r: (r["bops"], -r["metric"] if sense == "max" else r["metric"]))
    return {**best, "reduction": baseline["bops"] / best["bops"]}


def _row(name: str, candidate: int, path: Path, score: str, split: str, reused: bool | None = None) -> dict:
    m = read_json(path / "metrics.json")
    q = m.get("quantization") or {}
    cost = m["cost"]
    return {"name": name, "candidate": candidate, "checkpoint": str(path), "metric": m[score][split],
            "metric_by_split": m[score], "bops": cost["bops"], "params": cost["params"],
            "nonzero_params": cost["nonzero_params"], "bytes": cost["bytes"],
            "weight_bits": q.get("weight_bits"), "act_bits": q.get("act_bits"),
            **({} if reused is None else {"reused": reused})}


def plot_fronts(results: dict) -> str:
    """BOPs (log) against the metric: the candidates with their (stage 1) front, every child,
    the second front, and the baseline."""
    score, rows = results["score"], results["rows"]
    p = Plot(f"Local search on {results['data']}", "BOPs per example", f"{score} ({results['split']})",
             xscale="log")
    for i, cand in enumerate(results["candidates"]):
        kids = [r for r in rows if r["candidate"] == i and r["name"] != "candidate"]
        color = SERIES[i % len(SERIES)]
        p.points([r["bops"] for r in kids], [r["metric"] for r in kids], color=color, hollow=[True] * len(kids),
                 titles=[f"{Path(cand).name} {r['name']}: {r['metric']:.4g}, {r['bops']:.3g} BOPs" for r in kids],
                 label=f"children of {Path(cand).name}")
    cands = [r for r in rows if r["name"] == "candidate"]
    p.points([r["bops"] for r in cands], [r["metric"] for r in cands], color=COLORS["parent"], shape="square",
             titles=[f"candidate {Path(r['checkpoint']).name}: {r['metric']:.4g}" for r in cands], label="candidates")
    for key, color, dash, label in (("front1", COLORS["parent"], True, "stage 1 front (candidates)"),
                                    ("front2", COLORS["close"], False, "stage 2 front (local search)")):
        front = [rows[j] for j in results[key]]
        p.line([r["bops"] for r in front], [r["metric"] for r in front], color=color, dash=dash, label=label)
    if results.get("baseline"):
        b = results["baseline"]
        p.points([b["bops"]], [b["metric"]], color=COLORS["far"], shape="star",
                 titles=[f"baseline {Path(b['checkpoint']).name}: {b['metric']:.4g}"], label="baseline")
    return p.svg()


def run_local_search(candidates: list[Path], data: str, *, bits: list[int] = (8, 6, 4), mixed: list[dict] = (),
                     prune_rounds: int = 3, prune_amount: float = 0.2, structured: bool = False,
                     round_to: int | None = None, qat_epochs: int = 2, finetune_epochs: int = 2,
                     act_bits: bool = True, baseline: Path | None = None, tolerance: float = 0.0,
                     split: str = "test", seed: int = 0, val_fraction: float = 0.1, runs: str | Path = "runs",
                     out: Path | None = None, progress=None) -> dict:
    """Compress every candidate (see the module doc), then the fronts and the baseline match.

    Writes ``results.json`` and ``fronts.svg`` into ``out`` (default
    ``<runs>/local-search/<hash12>``, named by the children's steps and the baseline) and
    returns the results: ``rows`` (candidates and children: metric on ``split``, BOPs, params,
    bits), ``front1`` / ``front2`` (indices into rows), ``baseline`` and ``match``.
    """
    candidates = [Path(c) for c in candidates]
    if not candidates:
        raise UserError("give at least one candidate checkpoint")
    if len({c.resolve() for c in candidates}) < len(candidates):
        raise UserError("a candidate is given twice; give each checkpoint once")
    if split not in ("val", "test"):
        raise UserError(f"--split {split!r}: use val or test")
    if tolerance < 0:
        raise UserError(f"--tolerance {tolerance}: must be >= 0 (how much worse than the baseline still matches)")
    ds = dataset(data, val_fraction, seed)  # unknown data: a UserError
    score = SCORE[ds.task]
    for c in candidates:
        check_candidate(c, data, score)
        m = read_model_json(c)["model"]
        if (m["num_classes"], m["in_channels"]) != (ds.num_classes, ds.in_channels):
            raise UserError(f"candidate {c} has {m['num_classes']} outputs and {m['in_channels']} input channels; "
                            f"{data} needs {ds.num_classes} and {ds.in_channels}")
    if baseline is not None:
        check_candidate(Path(baseline), data, score, role="baseline")
    children = plan(candidates, data_spec(data, val_fraction, seed), bits=list(bits), mixed=list(mixed),
                    prune_rounds=prune_rounds, prune_amount=prune_amount, structured=structured, round_to=round_to,
                    qat_epochs=qat_epochs, finetune_epochs=finetune_epochs, act_bits=act_bits, seed=seed)
    for ch in children:  # before the store is touched: a rejected search writes nothing
        if isinstance(ch.parent, Path):
            check_step(ch.step, {"parent": ch.parent})
    key = hashlib.sha256(" ".join([*(c.step.hash for c in children), str(baseline and checkpoint_step(baseline).hash),
                                   split, repr(tolerance)]).encode()).hexdigest()[:12]
    out = Path(out) if out is not None else Path(runs) / "local-search" / key
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")

    store = RunStore(runs)
    rows = [_row("candidate", i, c, score, split) for i, c in enumerate(candidates)]
    for ch in children:
        parent = ch.parent if isinstance(ch.parent, Path) else store.path(ch.parent)
        label = f"{ch.name} of {candidates[ch.candidate].name}"
        with progress.task(label) if progress else nullcontext(None) as callback:
            path, ran = run_step(ch.step, store, {"parent": parent}, callback)
        rows.append({**_row(ch.name, ch.candidate, path, score, split, reused=not ran), "rounds": ch.rounds})

    sense = SENSE[score]
    points = [(r["bops"], r["metric"]) for r in rows]
    front1 = pareto_front(points[:len(candidates)], ("min", sense))
    front2 = pareto_front(points, ("min", sense))
    results = {"data": data, "score": score, "sense": sense, "split": split,
               "candidates": [str(c) for c in candidates], "rows": rows, "front1": front1, "front2": front2,
               "tolerance": tolerance, "baseline": None, "match": None, "out": str(out)}
    if baseline is not None:
        results["baseline"] = {**_row("baseline", -1, Path(baseline), score, split)}
        results["match"] = match_baseline(rows, results["baseline"], sense, tolerance)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fronts.svg").write_text(plot_fronts(results))
    write_json(out / "results.json", results)
    return results
