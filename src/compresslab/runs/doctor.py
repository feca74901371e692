"""``compresslab doctor``: find (and optionally remove) broken steps in a run store.

A finished step is broken when any of its files cannot be read back: ``spec.json``
(valid JSON whose hash matches the directory name), ``model.json``, ``metrics.json``,
``model.safetensors`` (every tensor is read, so truncation shows) and ``*.npy``. Also
listed: temporary directories of dead processes, lock files nobody holds, and steps
recorded as failed with their reasons. Removing a broken step is safe: the next run of
the study rebuilds it (and only it).
"""
from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import numpy as np

from compresslab.errors import UserError
from compresslab.runs.store import FAILED, LOCKS, TMP
from compresslab.scratch import pid_alive


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{path.name}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def check_step(d: Path) -> list[str]:
    """Problems of one step directory (empty when healthy)."""
    from safetensors import SafetensorError, safe_open

    spec = d / "spec.json"
    if not spec.is_file():
        return ["spec.json missing (not a finished step)"]
    problems = [p for p in (_json_problem(f) for f in (spec, d / "model.json", d / "metrics.json") if f.exists()) if p]
    if not problems:
        h = json.loads(spec.read_text()).get("hash", "")
        if not d.name.endswith(h[:16]) or not h:
            problems.append(f"spec.json: hash {h[:16] or '(none)'} does not match the directory name")
    weights = d / "model.safetensors"
    if (d / "model.json").exists() and not weights.exists():
        problems.append("model.safetensors missing")
    if weights.exists():
        try:
            with safe_open(str(weights), framework="pt") as f:
                for k in f.keys():
                    f.get_tensor(k)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            problems.append(f"model.safetensors: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    for npy in sorted(d.glob("*.npy")):
        try:
            np.load(npy, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            problems.append(f"{npy.name}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    return problems


def _lock_free(path: Path) -> bool:
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
    return True


def diagnose(root: str | Path) -> dict:
    """Everything wrong with the store at ``root`` (a local directory)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; pass a run store directory (the --runs of your commands)")
    steps = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "studies")
    broken = [{"step": d.name, "problems": p} for d in steps if (p := check_step(d))]
    tmp = [d.name for d in sorted((root / TMP).glob("*")) if not pid_alive(_pid(d.name))] if (root / TMP).is_dir() else []
    locks = [f.name for f in sorted((root / LOCKS).glob("*.lock")) if _lock_free(f)] if (root / LOCKS).is_dir() else []
    failed = []
    for f in sorted((root / FAILED).glob("*.json")) if (root / FAILED).is_dir() else []:
        try:
            rec = json.loads(f.read_text())
            failed.append({"step": f.stem, "label": rec.get("label"), "reason": rec.get("reason")})
        except (OSError, json.JSONDecodeError):
            failed.append({"step": f.stem, "label": None, "reason": "(unreadable failure record)"})
    return {"root": str(root), "steps": len(steps), "broken": broken, "stale_tmp": tmp, "stale_locks": locks,
            "failed": failed, "healthy": not broken}


def _pid(name: str) -> int:
    try:
        return int(name.split(".")[-2])
    except (IndexError, ValueError):
        return -1


def repair(report: dict) -> dict:
    """Remove the broken steps, stale temp directories and free lock files of ``report``."""
    root = Path(report["root"])
    for b in report["broken"]:
        shutil.rmtree(root / b["step"], ignore_errors=True)
    for t in report["stale_tmp"]:
        shutil.rmtree(root / TMP / t, ignore_errors=True)
    for lock in report["stale_locks"]:
        (root / LOCKS / lock).unlink(missing_ok=True)
    return {"removed_steps": [b["step"] for b in report["broken"]], "removed_tmp": report["stale_tmp"],
            "removed_locks": report["stale_locks"]}
