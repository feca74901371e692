"""Study kinds: a registry, and the one template (:func:`run_kind`) that runs every kind.

A study kind is a spec (a pydantic model with a ``kind`` field) plus its science:

* ``expand(spec) -> [Entry]``: the models it needs, as run-store steps, parents first;
* ``collect(spec, entries, store, progress) -> dict``: its results, from the finished steps;
* ``report(results, path)``: writes ``report.html`` (from :mod:`compresslab.report`);
* ``print(results, out_dir)``: the command line's summary (``compresslab study``).

:func:`run_kind` does the rest for every kind: validation before anything is written
(the dataset, every model, every step's pre-lock check), the executor, the failure
policy (exit code 3), the ``data`` block, timing, and publishing ``results.json`` and
``report.html`` under ``runs/studies/<name>-<hash12>/``. A new kind is one module that
calls :func:`register_study_kind` (and is imported by ``compresslab.study``, or by the
user before parsing a spec):

>>> register_study_kind("my-kind", spec=MySpec, expand=expand, collect=collect,
...                     report=write_my_report, print=print_my_results)
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel

from compresslab import device as devices
from compresslab.errors import StudyIncomplete, UserError
from compresslab.runs.store import RunStore, Step, canonical_json, disk_full, full_error, write_json
from compresslab.steps import build, check_step, data_of
from compresslab.steps.executor import execute


@dataclass
class Entry:
    """One model of a study: its name, role, how it is made and the step that makes it.
    ``info`` holds what the kind needs to find it again at collect time (a seed, a condition)."""

    name: str
    role: str  # "parent" | "child" | "control"
    method: str  # "train" | "distill" | "prune" | "quantize" | "independent" | "scratch" | ...
    step: Step
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StudyKind:
    name: str
    spec: type[BaseModel]
    expand: Callable[[BaseModel], list[Entry]]
    collect: Callable[..., dict]
    report: Callable[[dict, Path], object]
    print: Callable[[dict, Path], None]
    check: Callable[[BaseModel, str], None] | None = None
    #: With ``partial``, a failed step (other than the first entry's) does not stop the
    #: study: ``collect`` gets the entries that finished and the report lists the failures.
    partial: bool = False


_KINDS: dict[str, StudyKind] = {}


def register_study_kind(name: str, *, spec: type[BaseModel], expand, collect, report, print, check=None,
                        partial: bool = False, override: bool = False) -> StudyKind:
    """Register a study kind (see the module docstring). ``check(spec, source)`` validates
    what pydantic cannot and raises :class:`UserError`."""
    if name in _KINDS and not override:
        raise ValueError(f"study kind {name!r} is already registered")
    kind = StudyKind(name, spec, expand, collect, report, print, check, partial)
    _KINDS[name] = kind
    return kind


def list_study_kinds() -> list[str]:
    return sorted(_KINDS)


def study_kind(name: str) -> StudyKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UserError(f"unknown study kind {name!r}; known kinds: {', '.join(list_study_kinds())}") from None


def run_key(key: str) -> bool:
    """Whether a ``results.json`` key measures the run rather than the study: a wall time (a
    key naming ``seconds``), a latency (``*_ms``, ``ms_per_*``, ``*_ms_per_*``; they vary from run to run),
    where the store is (``store``) or how the steps were executed (``execution``)."""
    return "seconds" in key or key.endswith("_ms") or key.startswith("ms_per_") or "_ms_per_" in key \
        or key in ("store", "execution")


def deterministic(results: dict) -> dict:
    """A study's results without the keys that measure the run (:func:`run_key`, at any depth)
    and with ``steps`` as the step directory of each entry (not which ran or were reused):
    what two runs of one spec must share exactly."""
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if not run_key(k)}
        return [strip(v) for v in o] if isinstance(o, list) else o

    out = strip(results)
    if isinstance(out.get("steps"), dict):
        out["steps"] = out["steps"].get("dirs")
    return out


def data_block(data) -> dict:
    return {"name": data.name, "sizes": data.sizes(), "num_classes": data.num_classes,
            "input_shape": list(data.input_shape), "notes": data.notes}


def preflight(spec: BaseModel, entries: list[Entry]) -> None:
    """Everything a study can reject, before anything is written: each dataset loads and
    has training examples, each model the spec names builds, and each step passes its
    kind's pre-lock check (parents that have not run are checked by their architecture)."""
    for d in dict.fromkeys(canonical_json(e.step.spec["data"]) for e in entries if "data" in e.step.spec):
        data = data_of({"data": json.loads(d)})
        if data.x_train.shape[0] == 0:
            raise UserError(f"dataset {data.name} has no training examples")
        if data.task == "regression":
            raise UserError(f"dataset {data.name} is a regression task; studies measure classifiers (agreement, "
                            "accuracy). Use train, evaluate, compare, prune and quantize on it")
    data = next((data_of(e.step.spec) for e in entries if "data" in e.step.spec), None)
    seen: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"name", "options"} and isinstance(node["name"], str):
                if data is not None and canonical_json(node) not in seen:
                    seen.add(canonical_json(node))
                    build(node, data, 0)
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec.model_dump(mode="json"))
    checked: set[str] = set()
    for e in entries:
        if e.step.hash not in checked:
            checked.add(e.step.hash)
            check_step(e.step, dict(e.step.parents))


def study_dir(spec: BaseModel, runs: str | Path) -> Path:
    """``runs/studies/<name>-<hash12>``, the hash over the whole spec (any study kind)."""
    h = hashlib.sha256(canonical_json(spec.model_dump(mode="json")).encode()).hexdigest()[:12]
    return Path(runs) / "studies" / f"{spec.name}-{h}"


def publish(spec: BaseModel, store: RunStore, results: dict, ran: dict[str, bool], report,
            t0: float | None = None, dirs: dict[str, str] | None = None) -> Path:
    """Add the spec, the steps run / reused, their store directories by entry name (``dirs``)
    and wall seconds since ``t0`` to ``results``; write ``results.json`` and
    ``report(results, path)`` as ``report.html``. Returns the directory."""
    results["spec"] = spec.model_dump(mode="json")
    results["steps"] = {"ran": sorted(k for k, v in ran.items() if v),
                        "reused": sorted(k for k, v in ran.items() if not v)}
    if dirs is not None:
        results["steps"]["dirs"] = dict(sorted(dirs.items()))
    if t0 is not None:
        results["seconds"] = time.perf_counter() - t0
    out = study_dir(spec, store.root)
    out.mkdir(parents=True, exist_ok=True)
    results["store"] = store.location
    write_json(out / "results.json", results, sort_keys=False)  # the order the kind reports in
    try:
        report(results, out / "report.html")  # atomically (report.page.write_page)
    except OSError as e:
        if disk_full(e):  # one line, as for the store's own files
            raise full_error(f"the filesystem of {out}", out, str(out / "report.html")) from None
        raise
    if store.remote:  # shared stores get the study's outputs too
        store.upload_dir(out, f"studies/{out.name}")
    return out


def run_kind(spec: BaseModel, runs: str | Path = "runs", *, progress=None, device: str | None = None,
             deterministic: bool | None = None) -> tuple[dict, Path]:
    """Run (or resume) a study of any kind; write ``results.json`` and ``report.html``.

    Every step and measurement runs on ``device`` (default: the spec's ``device``) with
    ``deterministic`` (default: the spec's); ``results["runtime"]`` records the device,
    its name, torch and CUDA versions and the determinism flag. Returns
    ``(results, out_dir)``. Steps that fail are skipped with their dependents and
    everything else still runs; then :class:`StudyIncomplete` (exit code 3) is raised,
    except for a ``partial`` kind whose first entry finished: its results and report
    list the failures under ``failed`` (the CLI still exits with 3).
    """
    kind = study_kind(spec.kind)
    runtime = devices.Runtime(device or getattr(spec, "device", "auto"),
                              getattr(spec, "deterministic", False) if deterministic is None else deterministic)
    t0 = time.perf_counter()
    with devices.using(runtime):
        entries = kind.expand(spec)
        preflight(spec, entries)
        store = RunStore(runs)
        how: dict = {}
        ran, failed = execute(entries, store, progress, plan_out=how)
        if failed and (not kind.partial or entries[0].name in failed):
            raise StudyIncomplete(failed)
        done = [e for e in entries if e.name not in failed]
        data = next((data_of(e.step.spec) for e in entries if "data" in e.step.spec), None)
        results = {"study": spec.name, "kind": kind.name, "data": data and data_block(data),
                   "num_threads": torch.get_num_threads(),
                   "runtime": devices.describe(runtime.torch_device, deterministic=runtime.deterministic),
                   **kind.collect(spec, done, store, progress), "failed": failed, "execution": how}
    dirs = {e.name: e.step.dirname for e in entries}
    return results, publish(spec, store, results, ran, kind.report, t0, dirs)


__all__ = ["Entry", "StudyKind", "data_block", "deterministic", "list_study_kinds", "preflight", "publish",
           "register_study_kind", "run_key", "run_kind", "study_dir", "study_kind"]
