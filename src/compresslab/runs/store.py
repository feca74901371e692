"""Content-addressed run store: one directory per step, named by a hash of its spec.

A step directory appears under its final name only once it is complete: the step
writes into a private temporary directory which is then renamed into place
(``os.rename`` of a directory is atomic on POSIX). A killed run therefore leaves
at most a temporary directory, which the next run removes, and re-running skips
every step whose directory exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from compresslab.errors import UserError

#: Bump when the meaning of a step's outputs changes, so old results are not reused.
STORE_VERSION = 1
TMP = ".tmp"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Step:
    """A pure unit of work: ``kind`` + ``spec`` + the steps it consumes (``parents``, by role)."""

    kind: str
    spec: dict
    parents: dict[str, "Step"] = field(default_factory=dict)
    label: str = ""

    @property
    def hash(self) -> str:
        payload = {
            "version": STORE_VERSION,
            "kind": self.kind,
            "spec": self.spec,
            "parents": {role: p.hash for role, p in sorted(self.parents.items())},
        }
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()

    @property
    def dirname(self) -> str:
        return f"{self.kind}-{self.hash[:16]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """A directory of finished steps (``root/<kind>-<hash>``) plus a private temp area."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"run store {self.root} is a file; pass a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_stale_tmp()

    def path(self, step: Step) -> Path:
        return self.root / step.dirname

    def is_done(self, step: Step) -> bool:
        return (self.path(step) / "spec.json").is_file()

    def run(self, step: Step, fn: Callable[[Path], None]) -> tuple[Path, bool]:
        """Run ``fn(tmpdir)`` unless the step is finished; publish atomically.

        Returns ``(final_dir, ran)``. ``spec.json`` is written by the store.
        """
        final = self.path(step)
        if self.is_done(step):
            return final, False
        tmp = self.root / TMP / f"{step.dirname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            fn(tmp)
            write_json(tmp / "spec.json", {
                "kind": step.kind,
                "label": step.label,
                "hash": step.hash,
                "spec": step.spec,
                "parents": {role: p.dirname for role, p in step.parents.items()},
                "store_version": STORE_VERSION,
            })
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.is_done(step):  # not a lost race: a real failure
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished it first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final, True

    def _clean_stale_tmp(self) -> None:
        tmp_root = self.root / TMP
        if not tmp_root.is_dir():
            return
        for d in tmp_root.iterdir():
            try:
                pid = int(d.name.split(".")[-2])
            except (IndexError, ValueError):
                pid = -1
            if pid <= 0 or not _pid_alive(pid):
                shutil.rmtree(d, ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete the step directory and re-run") from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
