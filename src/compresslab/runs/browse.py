"""Browsing and cleaning a local run store: list steps, follow their parents, pin, delete.

A step is a directory ``<kind>-<hash16>`` holding ``spec.json`` (the store writes it last,
so its modification time is when the step finished). Its parents are in ``spec.json``
by role. A parent made from a checkpoint directory by a single-step command
(``compresslab prune runs/train-...``) is recorded as ``checkpoint-<hash16>``, a hash of
that checkpoint's ``model.json`` + ``model.safetensors``; :func:`checkpoint_index` maps
it back to the step that holds those files, when it is in the store.

Pins are empty-ish marker files ``<store>/.pins/<step dir>.json`` (``{"time": ...}``);
a pinned step and its ancestors survive :func:`delete_steps` plans (``compresslab gc``).

Deleting a step takes its lock (``.locks/<dir>.lock``, the ``flock`` :meth:`RunStore.lock`
takes), without waiting: a step someone holds is skipped. Under the lock the directory is
renamed into the temp area as ``.tmp/<dir>.<pid>.<random>`` and removed there, so the
step's name never points at a half-deleted directory, and what a killed ``gc`` leaves is
cleaned by the next :class:`RunStore` like any dead temp directory.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

from compresslab.errors import UserError
from compresslab.runs.doctor import _lock_free, _pid
from compresslab.runs.store import LOCKS, TMP, Step, read_json, write_json
from compresslab.scratch import pid_alive

PINS = ".pins"
STUDIES = "studies"
STEP_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*-[0-9a-f]{16}$")


def store_root(runs: str | os.PathLike) -> Path:
    """``runs`` as a local run store directory, or a one-line :class:`UserError`."""
    text = str(runs)
    if "://" in text and not text.startswith("file://"):
        raise UserError(f"{text}: remote run stores are not supported by ls/show/pin/gc; "
                        "run it on the machine that holds a local copy")
    root = Path(text.removeprefix("file://"))
    if not root.is_dir():
        raise UserError(f"{root}: no such directory; pass a run store (the --runs of your commands)")
    if not (any(is_step_dir(d) for d in root.iterdir()) or (root / STUDIES).is_dir() or (root / LOCKS).is_dir()):
        raise UserError(f"{root}: not a run store (no step directories, studies/ or .locks/); "
                        "pass the --runs of your commands")
    return root


def is_step_dir(d: Path) -> bool:
    """A finished step: a ``<kind>-<hash16>`` directory with its ``spec.json``."""
    return bool(STEP_NAME.match(d.name)) and (d / "spec.json").is_file()


def step_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if is_step_dir(d))


def dir_bytes(d: Path) -> int:
    """Total size of the files under ``d`` (their apparent sizes)."""
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def step_info(d: Path, pinned: set[str] | None = None) -> dict:
    """What ``compresslab ls`` shows of one step directory."""
    rec = read_json(d / "spec.json")
    metrics = _maybe_json(d / "metrics.json")
    acc, cost = metrics.get("accuracy") or {}, metrics.get("cost") or {}
    mtime = (d / "spec.json").stat().st_mtime
    return {"dir": d.name, "kind": rec.get("kind"), "label": rec.get("label", ""),
            "parents": dict(rec.get("parents") or {}), "test_acc": acc.get("test"), "val_acc": acc.get("val"),
            "params": cost.get("params"), "nonzero_params": cost.get("nonzero_params"), "bytes": dir_bytes(d),
            "time": mtime, "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime)),
            "pinned": d.name in (pinned if pinned is not None else pins(d.parent))}


def list_steps(root: Path, kind: str | None = None) -> list[dict]:
    """Every finished step (newest first), optionally of one kind."""
    pinned = pins(root)
    steps = [step_info(d, pinned) for d in step_dirs(root)]
    return sorted((s for s in steps if kind is None or s["kind"] == kind), key=lambda s: (-s["time"], s["dir"]))


def resolve_step(text: str, runs: str | os.PathLike | None) -> tuple[Path, str]:
    """``(store root, step dir name)`` for a step directory path, or a dir name / unique
    prefix of it / unique prefix of its hash inside ``runs``."""
    path = Path(text)
    if is_step_dir(path):
        return path.resolve().parent, path.name
    if runs is None or os.sep in text:
        raise UserError(f"{text}: not a step directory (no spec.json); pass runs/<kind>-<hash> or a "
                        "hash prefix with --runs")
    root = store_root(runs)
    names = [d.name for d in step_dirs(root)]
    if text in names:
        return root, text
    hits = [n for n in names if n.startswith(text) or n.rsplit("-", 1)[1].startswith(text)] if text else []
    if not hits:
        raise UserError(f"no step {text!r} in {root}; `compresslab ls {root}` lists them")
    if len(hits) > 1:
        more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
        raise UserError(f"{text!r} matches {len(hits)} steps in {root} ({', '.join(hits[:3])}{more}); "
                        "give more characters")
    return root, hits[0]


# --- parents -----------------------------------------------------------------------

def parents_of(root: Path, name: str) -> dict[str, str]:
    """A step's parents by role (dir names, as recorded; ``{}`` when it is not in the store)."""
    spec = root / name / "spec.json"
    return dict(_maybe_json(spec).get("parents") or {}) if spec.is_file() else {}


def checkpoint_dirname(d: Path) -> str | None:
    """The ``checkpoint-<hash16>`` name a single-step command gives the checkpoint ``d`` as
    a parent (SHA-256 of ``model.json`` then ``model.safetensors``), or None without them."""
    files = [d / "model.json", d / "model.safetensors"]
    if not all(f.is_file() for f in files):
        return None
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return Step("checkpoint", {"sha256": h.hexdigest()}).dirname


def checkpoint_index(root: Path) -> dict[str, str]:
    """``{checkpoint-<hash16>: step dir}`` for every step of the store that holds a checkpoint
    (reads every model file once: call it only when a ``checkpoint-`` parent shows up)."""
    out = {}
    for d in step_dirs(root):
        if (c := checkpoint_dirname(d)) is not None:
            out.setdefault(c, d.name)
    return out


class Parents:
    """Parents with ``checkpoint-`` names resolved to the store's steps (hashing lazily)."""

    def __init__(self, root: Path):
        self.root, self._index = root, None

    def resolve(self, name: str) -> str:
        if name.startswith("checkpoint-") and not (self.root / name).is_dir():
            if self._index is None:
                self._index = checkpoint_index(self.root)
            return self._index.get(name, name)
        return name

    def __call__(self, name: str) -> dict[str, str]:
        return {role: self.resolve(p) for role, p in parents_of(self.root, name).items()}


def closure(root: Path, names, parents: Parents | None = None) -> set[str]:
    """``names`` and all their ancestors (through parents, checkpoint parents resolved)."""
    parents = parents or Parents(root)
    seen: set[str] = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += parents(n).values()
    return seen


def lineage(root: Path, name: str, parents: Parents | None = None, _path: tuple = ()) -> dict:
    """``{"dir", "label", "in_store", "recorded_as", "parents": {role: lineage}}``, recursively."""
    parents = parents or Parents(root)
    d = root / name
    rec = _maybe_json(d / "spec.json") if d.is_dir() else {}
    node = {"dir": name, "kind": rec.get("kind"), "label": rec.get("label"), "in_store": is_step_dir(d),
            "parents": {}}
    if name in _path:  # cannot happen with content hashes; never loop on a hand-edited store
        return node
    for role, p in parents_of(root, name).items():
        child = lineage(root, parents.resolve(p), parents, (*_path, name))
        child["recorded_as"] = p
        node["parents"][role] = child
    return node


# --- pins --------------------------------------------------------------------------

def pins(root: Path) -> set[str]:
    d = root / PINS
    return {f.stem for f in d.glob("*.json")} if d.is_dir() else set()


def pin(root: Path, name: str, on: bool = True) -> bool:
    """Pin (or unpin) a step; returns whether anything changed."""
    marker = root / PINS / f"{name}.json"
    if on == marker.is_file():
        return False
    if on:
        marker.parent.mkdir(exist_ok=True)
        write_json(marker, {"step": name, "time": time.time()})
    else:
        marker.unlink()
    return True


# --- deleting ----------------------------------------------------------------------

def writers(root: Path) -> list[str]:
    """Step dir names being written now: locks someone holds, temp dirs of live processes."""
    busy = [f.stem for f in sorted((root / LOCKS).glob("*.lock")) if not _lock_free(f)] \
        if (root / LOCKS).is_dir() else []
    for t in sorted((root / TMP).iterdir()) if (root / TMP).is_dir() else []:
        if _pid(t.name) > 0 and pid_alive(_pid(t.name)):
            busy.append(t.name.rsplit(".", 2)[0])
    return sorted(set(busy))


def plan(root: Path, keep: set[str], min_age_s: float = 0.0, now: float | None = None) -> dict:
    """Which steps a gc deletes: those outside the ancestors of ``keep``, of pinned steps and
    of steps younger than ``min_age_s``; plus the bytes that frees."""
    now = time.time() if now is None else now
    steps = {d.name: d for d in step_dirs(root)}
    recent = {n for n, d in steps.items() if now - (d / "spec.json").stat().st_mtime < min_age_s}
    kept = closure(root, set(keep) | pins(root) | recent)
    delete = sorted(n for n in steps if n not in kept)
    sizes = {n: dir_bytes(steps[n]) for n in delete}
    return {"root": str(root), "steps": len(steps), "delete": delete, "bytes": sum(sizes.values()),
            "sizes": sizes, "kept": len(steps) - len(delete), "recent": sorted(recent), "pinned": sorted(pins(root)),
            "writers": writers(root)}


def delete_steps(root: Path, names: list[str]) -> dict:
    """Delete finished steps, each under its lock; a step someone holds is skipped."""
    deleted, skipped, freed = [], [], 0
    for name in names:
        d = root / name
        with _try_lock(root, name) as held:
            if not held:
                skipped.append({"step": name, "reason": "locked by another process"})
                continue
            if not is_step_dir(d):
                skipped.append({"step": name, "reason": "gone"})
                continue
            size = dir_bytes(d)
            (root / TMP).mkdir(exist_ok=True)
            trash = root / TMP / f"{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            os.rename(d, trash)  # the step vanishes at once; its files go below
        shutil.rmtree(trash, ignore_errors=True)
        deleted.append(name)
        freed += size
    return {"deleted": deleted, "skipped": skipped, "bytes_freed": freed}


@contextlib.contextmanager
def _try_lock(root: Path, name: str):
    """The step's store lock (yields True), or False at once when another process holds it."""
    (root / LOCKS).mkdir(exist_ok=True)
    with open(root / LOCKS / f"{name}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
        f.flush()
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _maybe_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}
