"""Global architecture search: Optuna (NSGA-II by default) over a codesign search space, on
the task metric and BOPs (optionally latency and params); every trial is a run-store
``train`` step.

The search asks a **batch** of trials, builds one ``train`` step per trial
(:func:`compresslab.steps.specs.train_spec` of the ``searched`` model), runs them through
the current executor (``--workers N``, ``--executor ray``) and tells Optuna the results.
The objectives are read from each step's ``metrics.json``: the metric on the **validation**
split (the test split is reported, never searched on), BOPs and params at 32 bits;
latency (batch 1, ms) is measured here, one model after another.

**Resuming.** The study lives in ``RUNS/search/<space>-<hash>/`` (``study.db``, SQLite; or
``study.journal`` with ``--storage journal``, which several processes may share; or an RDB
URL), named by a hash of the space and the settings (not ``--trials``: a rerun with more
trials extends the search). The sampler is re-seeded at each batch from ``--seed`` and the
number of trials so far, so a rerun asks the same architectures and their finished steps
are reused. Trials a killed process left running (same host, process gone) are adopted:
their steps run again, which reuses what finished.

**Early stopping (successive halving).** Optuna's pruners do not support multi-objective
studies, so halving runs across a batch instead: with ``halving`` H, the batch trains at
``E/2^H, ..., E/2, E`` epochs (rounded, at least 1; equal rungs merge); after each rung the
better half by non-dominated rank (ties: the task metric) goes on. A promoted trial trains
from scratch for the longer budget, as its own step, so its numbers are those of a search
without halving; the rest are told PRUNED and shown as stopped early. ``halving 0``
trains every trial for ``E`` epochs.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from compresslab.codesign.pareto import hypervolume_trace, nondominated_ranks, pareto_mask
from compresslab.codesign.space import Space, load_space, sample
from compresslab.errors import UserError
from compresslab.runs.store import RunStore, Step, canonical_json, read_json, write_json
from compresslab.scratch import pid_alive
from compresslab.steps import dataset
from compresslab.steps.executor import execute
from compresslab.steps.specs import data_spec, model_spec, train_spec
from compresslab.train import Recipe

SAMPLERS = ("nsga2", "tpe", "random")
#: Objective -> (direction, the task it needs or None, log scale for the hypervolume).
OBJECTIVES = {"accuracy": ("maximize", "classification", False), "error": ("minimize", "regression", False),
              "bops": ("minimize", None, True), "latency": ("minimize", None, True),
              "params": ("minimize", None, True)}
SPACES = Path(__file__).parent / "presets" / "search"


@dataclass(frozen=True)
class Entry:
    name: str
    step: Step


def parse_objectives(text: str, task: str) -> list[str]:
    """``accuracy,bops`` -> names, checked against the data's task."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    metric = "accuracy" if task == "classification" else "error"
    for n in names:
        if n not in OBJECTIVES:
            raise UserError(f"--objectives: unknown {n!r}; use {metric} and any of bops, latency, params")
        need = OBJECTIVES[n][1]
        if need and need != task:
            raise UserError(f"--objectives: {n} is not measurable on {task} data; use {metric}")
    if len(set(names)) != len(names) or len(names) < 2 or names[0] != metric:
        raise UserError(f"--objectives {text!r}: start with the task metric ({metric}) and add at least one cost, "
                        f"each once, e.g. {metric},bops")
    return names


def resolve_space(space: str | Path) -> Path:
    """A space file, or the name of a shipped one (``presets/search/<name>.yaml``)."""
    path = Path(space)
    if not path.is_file() and (SPACES / f"{space}.yaml").is_file():
        return SPACES / f"{space}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPACES.glob("*.yaml")))
        raise UserError(f"search space {space} not found; give a YAML file or one of: {known}")
    return path


def _storage(kind: str | None, folder: Path):
    import optuna

    if kind in (None, "sqlite"):
        return f"sqlite:///{folder / 'study.db'}"
    if kind == "journal":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    if "://" in kind:
        return optuna.storages.RDBStorage(kind)
    raise UserError(f"--storage {kind!r}: use sqlite (default), journal, or an RDB URL such as postgresql://...")


def _sampler(name: str, seed: int, population: int):
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, population))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def rungs(epochs: int, halving: int) -> list[int]:
    """The epochs of each successive-halving rung, shortest first (equal rungs merged)."""
    return sorted({max(1, round(epochs / 2 ** (halving - r))) for r in range(halving + 1)})


def _values(step_dir: Path, objectives: list[str], input_shape) -> tuple[list[float], dict]:
    m = read_json(step_dir / "metrics.json")
    score = m.get("accuracy") or m.get("centre_error_px")
    out = {"accuracy": score["val"], "error": score["val"], "bops": m["cost"]["bops"],
           "params": float(m["cost"]["params"])}
    if "latency" in objectives:
        from compresslab.measure import latency
        from compresslab.runs.checkpoint import load_checkpoint

        model = load_checkpoint(step_dir)[0].eval()
        out["latency"] = latency(model, input_shape, batch_sizes=(1,))["batch1"]
    return [out[o] for o in objectives], {"test": score["test"]}


def _minimised(values: list[float], objectives: list[str]) -> list[float]:
    return [-v if OBJECTIVES[o][0] == "maximize" else v for v, o in zip(values, objectives)]


def search(space: str | Path, data: str, *, trials: int, objectives: str = "", epochs: int = 5,
           recipe: dict | None = None,
           sampler: str = "nsga2", seed: int = 0, runs: str | Path = "runs", storage: str | None = None,
           batch: int = 8, halving: int = 1, val_fraction: float = 0.1, reference: Path | None = None,
           execution=None, progress=None, on_trial=None) -> tuple[dict, Path]:
    """Run (or resume) a search; returns ``(results, its folder)``. ``on_trial`` receives a
    dict per finished trial; ``recipe``: the training fields (``epochs`` is replaced); ``on_trial`` a
    dict per finished trial (number, state, values, ran). Writes ``front.csv``,
    ``front.json``, ``trials.csv``, ``pareto.svg``, ``hypervolume.svg`` and
    ``results.json`` into the folder after every batch."""
    if trials < 1:
        raise UserError(f"--trials {trials}: must be at least 1")
    if batch < 1 or halving < 0 or epochs < 1:
        raise UserError("--batch and --epochs must be >= 1 and --halving >= 0")
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    path = resolve_space(space)
    sp = load_space(path)
    ds = dataset(data, val_fraction, seed)
    metric = "accuracy" if ds.task == "classification" else "error"
    objs = parse_objectives(objectives or f"{metric},bops", ds.task)
    recipe = Recipe.from_dict({**(recipe or {}), "epochs": epochs}).model_dump()
    ref_point = _reference(reference, ds.task) if reference else None
    try:
        import optuna
    except ImportError:
        raise UserError("compresslab search needs Optuna: pip install 'compresslab[codesign]' (or optuna)") from None
    settings = {"space": sp.as_dict(), "data": data_spec(data, val_fraction, seed), "objectives": objs,
                "recipe": recipe, "sampler": sampler, "seed": seed, "batch": batch, "halving": halving}
    digest = hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:12]
    store = RunStore(runs)
    folder = Path(runs) / "search" / f"{path.stem}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "settings.json", settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=folder.name, storage=_storage(storage, folder), load_if_exists=True,
                                directions=[OBJECTIVES[o][0] for o in objs])

    def step_of(arch: dict, ep: int) -> Step:
        return Step("train", train_spec(settings["data"], model_spec("searched", arch), {**recipe, "epochs": ep}, seed),
                    label="searched")

    me = f"{socket.gethostname()}:{os.getpid()}"
    ran_total = 0
    while True:
        done = [t for t in study.trials if t.state.is_finished()]
        orphans = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING and _orphan(t, me)]
        left = trials - len(done) - len([t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING])
        if not orphans and left <= 0:
            break
        if orphans:
            todo = [(t.number, optuna.Trial(study, t._trial_id), t.user_attrs["arch"]) for t in orphans[:batch]]
        else:
            study.sampler = _sampler(sampler, seed + len(study.trials), batch)
            todo = []
            for _ in range(min(batch, left)):
                t = study.ask()
                arch = sample(sp, t)
                t.set_user_attr("arch", arch)
                t.set_user_attr("owner", me)
                todo.append((t.number, t, arch))
        ran_total += _run_batch(study, todo, objs, step_of, rungs(epochs, halving), store, ds.input_shape, execution,
                                progress, on_trial)
        _write_outputs(study, objs, folder, metric, ref_point)
    results = _write_outputs(study, objs, folder, metric, ref_point)
    results.update(folder=str(folder), steps_ran=ran_total)
    return results, folder


def _orphan(t, me: str) -> bool:
    """A running trial whose owner process on this host is gone."""
    host, _, pid = t.user_attrs.get("owner", ":").rpartition(":")
    return "arch" in t.user_attrs and t.user_attrs["owner"] != me and host == socket.gethostname() \
        and pid.isdigit() and not pid_alive(int(pid))


def _run_batch(study, todo, objs, step_of, epochs_per_rung, store, input_shape, execution, progress, on_trial) -> int:
    import optuna

    alive = list(range(len(todo)))
    values: dict[int, list[float]] = {}
    extra: dict[int, dict] = {}
    failed: dict[int, str] = {}
    pruned: dict[int, int] = {}
    ran_steps = 0
    for r, ep in enumerate(epochs_per_rung):
        entries = [Entry(f"trial {todo[i][0]} ({ep} epochs)", step_of(todo[i][2], ep)) for i in alive]
        ran, bad = execute(entries, store, progress, execution)
        ran_steps += len({e.step.hash for e in entries if ran.get(e.name)})  # a repeated architecture trains once
        for i, e in zip(alive, entries):
            if e.name in bad:
                failed[i] = bad[e.name]
            else:
                values[i], extra[i] = _values(store.path(e.step), objs, input_shape)
                extra[i].update(step=e.step.dirname, epochs=ep, ran=ran[e.name])
        alive = [i for i in alive if i not in failed]
        if r + 1 < len(epochs_per_rung) and len(alive) > 1:
            ranks = nondominated_ranks([_minimised(values[i], objs) for i in alive])
            order = sorted(range(len(alive)), key=lambda k: (ranks[k], _minimised(values[alive[k]], objs)[0]))
            keep = math.ceil(len(alive) / 2)
            for k in order[keep:]:
                pruned[alive[k]] = ep
            alive = sorted(alive[k] for k in order[:keep])
    for i, (number, trial, _) in enumerate(todo):
        if i in failed:
            trial.set_user_attr("failure", failed[i])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            state = "failed"
        else:
            trial.set_user_attr("values", values[i])
            trial.set_user_attr("result", extra[i])
            if i in pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                state = "stopped"
            else:
                study.tell(trial, values[i])
                state = "complete"
        if on_trial:
            on_trial({"trial": number, "state": state, "values": dict(zip(objs, values.get(i, []))),
                      "epochs": extra.get(i, {}).get("epochs"), "ran": extra.get(i, {}).get("ran"),
                      "failure": failed.get(i)})
    return ran_steps


def _reference(checkpoint: Path, task: str) -> dict:
    """A trained model's point for the plot (e.g. BraggNN trained with the same epochs)."""
    f = Path(checkpoint) / "metrics.json"
    if not f.is_file():
        raise UserError(f"--reference {checkpoint}: not a checkpoint directory (no metrics.json)")
    m = read_json(f)
    key = "accuracy" if task == "classification" else "centre_error_px"
    if key not in m:
        raise UserError(f"--reference {checkpoint}: it was not trained on {task} data")
    name = read_json(Path(checkpoint) / "model.json")["model"]["name"]
    return {"name": name, "checkpoint": str(checkpoint), "metric": m[key]["val"], "test": m[key]["test"],
            "bops": m["cost"]["bops"], "params": m["cost"]["params"]}


def _rows(study, objs: list[str]) -> list[dict]:
    rows = []
    for t in study.trials:
        if "values" not in t.user_attrs:
            continue
        res = t.user_attrs["result"]
        rows.append({"trial": t.number, "state": t.state.name.lower(), "epochs": res["epochs"],
                     **dict(zip(objs, t.user_attrs["values"])), "test": res["test"], "step": res["step"],
                     "params_choice": t.params, "model": model_spec("searched", t.user_attrs["arch"])})
    return rows


def _write_outputs(study, objs: list[str], folder: Path, metric: str, ref_point: dict | None) -> dict:
    rows = _rows(study, objs)
    complete = [r for r in rows if r["state"] == "complete"]
    points = [_minimised([r[o] for o in objs], objs) for r in complete]
    front = [r for r, on in zip(complete, pareto_mask(points)) if on]
    front.sort(key=lambda r: r["bops"])
    trace = hypervolume_trace(points, [OBJECTIVES[o][2] for o in objs])
    fields = ["trial", "state", "epochs", *objs, "test", "step", "params", "model"]
    for name, table in (("trials.csv", rows), ("front.csv", front)):
        with open(folder / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([{"test": f"{metric}_test", "params": "choices"}.get(c, c) for c in fields])
            for r in table:
                w.writerow([*(r[c] for c in fields[:-2]), json.dumps(r["params_choice"], sort_keys=True),
                            json.dumps(r["model"], sort_keys=True)])
    write_json(folder / "front.json", [{"trial": r["trial"], **{o: r[o] for o in objs}, "model": r["model"],
                                        "step": r["step"]} for r in front])
    (folder / "pareto.svg").write_text(_pareto_svg(rows, front, metric, ref_point))
    (folder / "hypervolume.svg").write_text(_hv_svg([r["trial"] for r in complete], trace))
    results = {"objectives": objs, "trials": len(study.trials), "complete": len(complete),
               "stopped": sum(r["state"] == "pruned" for r in rows),
               "failed": sum(t.state.name == "FAIL" for t in study.trials),
               "front": [{"trial": r["trial"], **{o: r[o] for o in objs}, "test": r["test"], "model": r["model"]}
                         for r in front],
               "hypervolume": trace[-1] if trace else 0.0, "reference": ref_point}
    write_json(folder / "results.json", results)
    return results


def _pareto_svg(rows, front, metric: str, ref_point) -> str:
    from compresslab.report.svg import COLORS, Plot

    label = "accuracy (val)" if metric == "accuracy" else "centre error, px (val)"
    p = Plot(f"Global search: {label} against BOPs", "BOPs (32-bit)", label, xscale="log")
    for state, shape, name in (("complete", "circle", "trials"), ("pruned", "down", "stopped early (shorter training)")):
        sel = [r for r in rows if r["state"] == state]
        if sel:
            p.points([r["bops"] for r in sel], [r[metric] for r in sel], color=COLORS["control"], shape=shape,
                     titles=[f"trial {r['trial']}: {r[metric]:.4g}, {r['bops']:.3g} BOPs ({r['epochs']} epochs)"
                             for r in sel], label=name)
    if front:
        xs, ys = [r["bops"] for r in front], [r[metric] for r in front]
        p.line(xs, ys, color=COLORS["close"], label="Pareto front")
        p.points(xs, ys, color=COLORS["close"], titles=[f"trial {r['trial']} (front)" for r in front],
                 labels=[str(r["trial"]) for r in front])
    if ref_point:
        p.points([ref_point["bops"]], [ref_point["metric"]], color=COLORS["parent"], shape="square",
                 titles=[f"{ref_point['name']}: {ref_point['metric']:.4g}"], label=ref_point["name"])
    return p.svg()


def _hv_svg(numbers: list[int], trace: list[float]) -> str:
    from compresslab.report.svg import COLORS, Plot

    p = Plot("Hypervolume of the front so far", "trial", "hypervolume (normalised, reference 1.1)")
    if trace:
        p.line(numbers, trace, color=COLORS["parent"])
        p.points(numbers, trace, color=COLORS["parent"], titles=[f"trial {n}: {v:.4f}" for n, v in zip(numbers, trace)])
    return p.svg()


__all__ = ["SAMPLERS", "OBJECTIVES", "Space", "parse_objectives", "rungs", "search"]
