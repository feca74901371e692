"""Which run-store steps each study references (for ``compresslab ls``, ``show`` and ``gc``).

A study's ``results.json`` records ``steps.dirs`` = ``{entry name: step dir}`` (written by
:func:`compresslab.study.kinds.publish`). Older results lack it: their spec
(``results["spec"]``) is validated again by its kind and re-expanded, which names the same
steps since step hashes do not move between versions. When that fails (the spec no longer
validates or expands, or it names steps the store lacks that the study did not record as
failed), nothing is guessed: the study keeps every step that finished no later than its
``results.json`` was written (a study only references steps that existed when it
published), and a one-line warning says so.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import ValidationError

from compresslab.runs.browse import STUDIES, Parents, closure, step_dirs
from compresslab.study.kinds import study_kind


def study_refs(d: Path, finished: dict[str, float]) -> dict:
    """One study directory: ``{"dir", "name", "kind", "date", "time", "source", "steps",
    "warning"}``. ``finished`` maps the store's step dirs to their finish times; ``source`` is
    ``recorded`` (``steps.dirs``), ``expanded`` (from the spec) or ``older`` (the fallback)."""
    path = d / "results.json"
    mtime = path.stat().st_mtime
    info = {"dir": d.name, "name": d.name.rsplit("-", 1)[0], "kind": None, "time": mtime,
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime)), "warning": None}
    try:
        results = json.loads(path.read_text())
        info.update(name=results.get("study", info["name"]), kind=results.get("kind"))
        recorded = (results.get("steps") or {}).get("dirs")
        if isinstance(recorded, dict):
            return {**info, "source": "recorded", "steps": dict(recorded)}
        kind = study_kind(results["kind"])
        dirs = {e.name: e.step.dirname for e in kind.expand(kind.spec.model_validate(results["spec"]))}
        missing = [n for n, s in dirs.items() if s not in finished and n not in (results.get("failed") or {})]
        if missing:
            raise LookupError(f"its spec now names steps the store lacks ({dirs[missing[0]]} for {missing[0]!r})")
        return {**info, "source": "expanded", "steps": dirs}
    except Exception as e:  # noqa: BLE001  (any failure: keep everything it might reference)
        older = {s: s for s, t in finished.items() if t <= mtime}
        if isinstance(e, ValidationError):
            why = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:2])
        else:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        info["warning"] = (f"study {d.name}: cannot tell its steps ({why}); keeping the "
                           f"{len(older)} steps that finished before its results.json")
        return {**info, "source": "older", "steps": older}


def studies(root: Path) -> list[dict]:
    """Every study of the store with the step dirs it references (newest first)."""
    finished = {d.name: (d / "spec.json").stat().st_mtime for d in step_dirs(root)}
    dirs = sorted(d for d in (root / STUDIES).iterdir() if (d / "results.json").is_file()) \
        if (root / STUDIES).is_dir() else []
    return sorted((study_refs(d, finished) for d in dirs), key=lambda s: (-s["time"], s["dir"]))


def referenced(root: Path, found: list[dict] | None = None) -> set[str]:
    """The step dirs any study references directly (ancestors: :func:`closure`)."""
    return {s for st in (studies(root) if found is None else found) for s in st["steps"].values()}


def studies_of(root: Path, name: str, found: list[dict] | None = None) -> list[str]:
    """The studies whose steps are, or descend from, step ``name``."""
    found, parents = studies(root) if found is None else found, Parents(root)
    return [st["dir"] for st in found if name in closure(root, st["steps"].values(), parents)]
