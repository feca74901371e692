"""Log finished steps and studies to MLflow or TensorBoard (``--track``).

Tracking reads the run store after the work is done (each step's ``spec.json`` and
``metrics.json``, a study's ``results.json``), so it logs the same whichever executor ran
the steps. A step becomes one run: its spec as params (flattened, ``spec.recipe.lr``), its
metrics at step 0 (``accuracy.test``, ``cost.macs``, ...), each per-epoch list in
``metrics.json`` as step-indexed curves (``history.loss`` at step = epoch) and its paths as
tags (nothing is copied). A study becomes a parent run (summary metrics, headline, report
path) with one nested run per step.

Tracking never fails a run: a missing package or an unreachable tracker prints one warning
line on stderr and the run store stays as written.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from compresslab.errors import UserError
from compresslab.runs.store import read_json

EXPERIMENT = "compresslab"  # MLflow experiment unless MLFLOW_EXPERIMENT_NAME names another
USAGE = "use mlflow (a local ./mlruns), mlflow:URI (a directory or http://HOST:PORT) or tensorboard:DIR"
#: results.json keys that are not summary metrics (the spec is logged as params; steps get their own runs).
NOT_SUMMARY = {"spec", "steps", "models", "runtime", "data", "failed"}
_MAX_VALUE = 6000  # MLflow's limit on a param value (and a tag's, with room to spare)


@dataclass(frozen=True)
class Tracker:
    """Where to log: ``backend`` is ``mlflow`` (``where``: a tracking URI or directory) or
    ``tensorboard`` (``where``: the log directory)."""

    backend: str
    where: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.where}"


def parse_track(text: str | None) -> Tracker | None:
    """``--track`` -> a :class:`Tracker` (None without the option); a bad value is a ``UserError``."""
    if text is None:
        return None
    backend, _, where = text.partition(":")
    backend, where = backend.strip().lower(), where.strip()
    if backend == "mlflow":
        return Tracker("mlflow", where or "./mlruns")
    if backend == "tensorboard" and where:
        return Tracker("tensorboard", where)
    if backend == "tensorboard":
        raise UserError("--track tensorboard needs a log directory, e.g. --track tensorboard:runs/tb")
    raise UserError(f"--track {text!r}: {USAGE}")


@dataclass
class Record:
    """One run to log: what a step directory (or a study's results) holds, flattened."""

    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    text: str = ""  # TensorBoard: headline lines


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def flatten(obj, prefix: str = "") -> dict:
    """Nested dicts -> ``{"a.b.c": leaf}``; lists and other leaves are kept whole."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out = {}
    for k, v in obj.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _key(k: str) -> str:
    return re.sub(r"[^\w.\- /]", "_", k)  # the characters MLflow accepts in a key


def _param(v) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return s[:_MAX_VALUE]


def _numbers(obj, prefix: str = "", skip=()) -> dict[str, float]:
    """The numeric leaves of nested dicts (lists are skipped)."""
    return {_key(k): float(v) for k, v in flatten({k: v for k, v in obj.items() if k not in skip}, prefix).items()
            if _number(v)}


def read_step(step_dir: str | Path, name: str | None = None, reused: bool | None = None) -> Record:
    """A step directory -> a :class:`Record` (spec params, metrics, curves, path tags)."""
    step_dir = Path(step_dir).resolve()
    spec = read_json(step_dir / "spec.json")
    rec = Record(name or step_dir.name)
    rec.params = {"kind": spec["kind"], **{_key(k): _param(v) for k, v in flatten(spec["spec"], "spec").items()},
                  **{_key(f"parent.{role}"): d for role, d in spec.get("parents", {}).items()}}
    rec.tags = {"compresslab.step_dir": str(step_dir), "compresslab.step": step_dir.name,
                "compresslab.kind": spec["kind"], "compresslab.label": spec.get("label", "")}
    if (step_dir / "model.safetensors").is_file():
        rec.tags["compresslab.checkpoint"] = str(step_dir / "model.safetensors")
    if reused is not None:
        rec.tags["compresslab.reused"] = str(reused).lower()
    metrics = read_json(step_dir / "metrics.json") if (step_dir / "metrics.json").is_file() else {}
    rec.tags.update({_key(f"runtime.{k}"): str(v) for k, v in metrics.get("runtime", {}).items()})
    rec.metrics = _numbers(metrics, skip={"runtime"})
    for key, rows in metrics.items():  # per-epoch lists of records, e.g. history
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            for i, row in enumerate(rows):
                at = int(row["epoch"]) if _number(row.get("epoch")) else i + 1
                for k, v in row.items():
                    if k != "epoch" and _number(v):
                        rec.curves.setdefault(_key(f"{key}.{k}"), []).append((at, float(v)))
    return rec


def read_study(study_dir: str | Path) -> tuple[Record, list[Record]]:
    """A study directory -> its parent record and one record per finished step, by entry name."""
    study_dir = Path(study_dir).resolve()
    results = read_json(study_dir / "results.json")
    steps = results.get("steps", {})
    parent = Record(study_dir.name)
    parent.params = {"study": str(results.get("study")), "kind": str(results.get("kind")),
                     **{_key(k): _param(v) for k, v in flatten(results.get("spec", {}), "spec").items()}}
    parent.metrics = {**_numbers(results, skip=NOT_SUMMARY), "steps.ran": len(steps.get("ran", [])),
                      "steps.reused": len(steps.get("reused", [])), "steps.failed": len(results.get("failed") or {})}
    parent.text = "\n".join(str(h) for h in results.get("headline", []))
    parent.tags = {"compresslab.study_dir": str(study_dir), "compresslab.results": str(study_dir / "results.json"),
                   "compresslab.kind": str(results.get("kind"))}
    if (study_dir / "report.html").is_file():
        parent.tags["compresslab.report"] = str(study_dir / "report.html")
    if parent.text:
        parent.tags["compresslab.headline"] = parent.text[:_MAX_VALUE]
    rows = {m["name"]: m for m in results.get("models", []) if isinstance(m, dict) and "name" in m}
    ran = set(steps.get("ran", []))
    children = []
    for entry, dirname in steps.get("dirs", {}).items():
        step_dir = study_dir.parent.parent / dirname  # runs/studies/<study> -> runs/<step>
        if not (step_dir / "spec.json").is_file():  # a failed step has no directory
            continue
        rec = read_step(step_dir, entry, reused=entry not in ran)
        rec.tags["compresslab.entry"] = entry
        if entry in rows:  # what the study measured on this model (e.g. its function vs the parent)
            rec.metrics.update(_numbers(rows[entry], "study", skip={"step"}))
            rec.tags.update({_key(f"study.{k}"): str(v) for k, v in rows[entry].items()
                             if isinstance(v, str) and k not in ("name", "step")})
        children.append(rec)
    return parent, children


# --- MLflow -------------------------------------------------------------------------------

def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT


def _mlflow(where: str):
    """An ``MlflowClient`` and the experiment id; a directory becomes MLflow's file store."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server fails at once
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if "://" not in where or where.startswith("file://"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store opt-in
        where = Path(where.removeprefix("file://")).resolve().as_uri()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=where)
    name = experiment_name()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client, client.create_experiment(name)
        except Exception:  # another process created it meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    return client, exp.experiment_id


def _mlflow_log(client, experiment: str, rec: Record, parent: str | None = None) -> str:
    from mlflow.entities import Metric, Param

    tags = {**rec.tags, **({"mlflow.parentRunId": parent} if parent else {})}
    run_id = client.create_run(experiment, run_name=rec.name,
                               tags={k: v[:_MAX_VALUE] for k, v in tags.items()}).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in rec.metrics.items()]
    metrics += [Metric(k, v, now, at) for k, points in rec.curves.items() for at, v in points]
    params = [Param(k, v) for k, v in rec.params.items()]
    for i in range(0, len(params), 100):  # MLflow's batch limits
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.set_terminated(run_id)
    return run_id


# --- TensorBoard --------------------------------------------------------------------------

def _table(pairs: dict) -> str:
    return "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in sorted(pairs.items()))


def _tensorboard_log(logdir: Path, rec: Record) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(logdir)) as w:
        for k, v in rec.metrics.items():
            w.add_scalar(k, v, 0)
        for k, points in rec.curves.items():
            for at, v in points:
                w.add_scalar(k, v, at)
        if rec.params:
            w.add_text("params", _table(rec.params))
        w.add_text("paths", _table(rec.tags))
        if rec.text:
            w.add_text("headline", rec.text)


# --- entry points -------------------------------------------------------------------------

def _log(tracker: Tracker, parent: Record | None, children: list[Record]) -> str:
    """Log the runs; returns where they went (for the one-line summary)."""
    if tracker.backend == "mlflow":
        client, experiment = _mlflow(tracker.where)
        parent_id = _mlflow_log(client, experiment, parent) if parent else None
        ids = [_mlflow_log(client, experiment, rec, parent_id) for rec in children]
        run = parent_id or (ids[0] if len(ids) == 1 else None)
        return f"MLflow {client.tracking_uri} (experiment {experiment_name()}" + (f", run {run})" if run else ")")
    root = Path(tracker.where)
    if parent:
        _tensorboard_log(root / parent.name, parent)
        root = root / parent.name
    for rec in children:
        _tensorboard_log(root / rec.name, rec)
    return f"TensorBoard {root}"


PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}


def _safely(tracker: Tracker, read) -> bool:
    """Read the records and log them; any failure is one warning line on stderr."""
    try:
        parent, children = read()
        where = _log(tracker, parent, children)
    except ImportError as e:
        pkg = PACKAGES[tracker.backend]
        reason = " ".join(str(e).split())[:200]
        print(f"warning: --track {tracker}: the {pkg} package is not installed (pip install 'compresslab[{pkg}]'; {reason}); "
              "nothing was tracked, the run store is complete", file=sys.stderr)
        return False
    except Exception as e:  # a tracker never fails the run
        text = " ".join(str(e).split())
        unreachable = any(s in text for s in ("Max retries exceeded", "Connection refused", "timed out"))
        reason = f"no server answered at {tracker.where}" if unreachable else f"{type(e).__name__}: {text[:200]}"
        print(f"warning: --track {tracker}: could not log ({reason}); the run store is complete",
              file=sys.stderr)
        return False
    n = len(children)
    print(f"tracked {'a study and ' if parent else ''}{n} step{'s' * (n != 1)} in {where}", file=sys.stderr)
    return True


def track_steps(tracker: Tracker | None, steps: list[tuple[str | Path, bool | None]]) -> bool:
    """Log each ``(step directory, reused)`` as one run. Nothing without a tracker."""
    if tracker is None:
        return False
    if not steps:
        print(f"warning: --track {tracker}: this command made no run-store step; nothing was tracked", file=sys.stderr)
        return False
    return _safely(tracker, lambda: (None, [read_step(d, reused=r) for d, r in steps]))


def track_study(tracker: Tracker | None, study_dir: str | Path) -> bool:
    """Log a study: a parent run (summary metrics, report path) with one nested run per step."""
    if tracker is None:
        return False
    return _safely(tracker, lambda: read_study(study_dir))


__all__ = ["Record", "Tracker", "parse_track", "read_step", "read_study", "track_steps", "track_study"]
