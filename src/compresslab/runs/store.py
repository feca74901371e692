"""Content-addressed run store: one directory per step, named by a hash of its spec.

A step directory appears under its final name only once it is complete: the step
writes into a private temporary directory which is then renamed into place
(``os.rename`` of a directory is atomic on POSIX). A killed run therefore leaves
at most a temporary directory, which the next run removes, and re-running skips
every step whose directory exists.

Concurrent runs of the same step are serialised by a lock per step
(``.locks/<dir>.lock``, an ``flock`` the kernel releases when its holder dies, so a
lock left by a killed process is taken over at once); the waiter then finds the step
done and reuses it. A study step that fails is recorded (by the executor) in
``.failed/<dir>.json`` with its reason until it succeeds.

The store can also live at any fsspec URL (``s3://bucket/prefix``, ``memory://x``):
steps then run in a local cache directory, their files are uploaded, and a
``_COMPLETE`` marker is written last; a step counts as done only when its marker
exists, and readers download it into the local cache before use. See
:class:`RemoteStore`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compresslab.errors import UserError
from compresslab.scratch import pid_alive

#: Bump when the meaning of a step's outputs changes, so old results are not reused.
STORE_VERSION = 1
TMP = ".tmp"
LOCKS = ".locks"
FAILED = ".failed"
COMPLETE = "_COMPLETE"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Step:
    """A pure unit of work: ``kind`` + ``spec`` + the steps it consumes (``parents``, by role)."""

    kind: str
    spec: dict
    parents: dict[str, Step] = field(default_factory=dict)
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


class RunStore:
    """A directory of finished steps (``root/<kind>-<hash>``) plus a private temp area.

    ``RunStore("runs")`` is a local directory; ``RunStore("s3://bucket/runs")`` (any
    URL with ``://``) returns a :class:`RemoteStore`.
    """

    remote: str | None = None

    def __new__(cls, root: str | os.PathLike = "runs", **kw):
        if cls is RunStore and "://" in str(root) and not str(root).startswith("file://"):
            return super().__new__(RemoteStore)
        return super().__new__(cls)

    def __init__(self, root: str | os.PathLike):
        root = str(root).removeprefix("file://")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"run store {self.root} is a file; pass a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_stale_tmp()

    def __reduce__(self):  # workers (processes, Ray tasks) rebuild the store from its location
        return (RunStore, (self.location,))

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, step: Step) -> Path:
        return self.root / step.dirname

    def is_done(self, step: Step) -> bool:
        return (self.path(step) / "spec.json").is_file()

    def run(self, step: Step, fn: Callable[[Path], None]) -> tuple[Path, bool]:
        """Run ``fn(tmpdir)`` unless the step is finished; publish atomically.

        Returns ``(final_dir, ran)``. ``spec.json`` is written by the store. Holds the
        step's lock while running; a second process asking for the same step waits,
        then reuses the result.
        """
        if self.is_done(step):
            return self.path(step), False
        with self.lock(step):
            if self.is_done(step):  # another process finished it while we waited
                return self.path(step), False
            tmp = self.root / TMP / f"{step.dirname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                fn(tmp)
                write_json(tmp / "spec.json", step_record(step))
                self._publish(step, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.clear_failure(step)
        return self.path(step), True

    def _publish(self, step: Step, tmp: Path) -> None:
        os.rename(tmp, self.path(step))

    @contextlib.contextmanager
    def lock(self, step: Step, poll: float = 0.2):
        """Exclusive lock on ``step`` across processes on this machine (``flock``)."""
        locks = self.root / LOCKS
        locks.mkdir(exist_ok=True)
        with open(locks / f"{step.dirname}.lock", "a+") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(poll)
            f.seek(0)
            f.truncate()
            f.write(json.dumps(_holder()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def record_failure(self, step: Step, error: BaseException) -> None:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        d = self.root / FAILED
        d.mkdir(exist_ok=True)
        write_json(d / f"{step.dirname}.json", {**step_record(step), "error": type(error).__name__,
                                                 "reason": reason, "time": time.time(), **_holder()})

    def clear_failure(self, step: Step) -> None:
        (self.root / FAILED / f"{step.dirname}.json").unlink(missing_ok=True)

    def _clean_stale_tmp(self) -> None:
        tmp_root = self.root / TMP
        if not tmp_root.is_dir():
            return
        for d in tmp_root.iterdir():
            try:
                pid = int(d.name.split(".")[-2])
            except (IndexError, ValueError):
                pid = -1
            if pid <= 0 or not pid_alive(pid):
                shutil.rmtree(d, ignore_errors=True)


class RemoteStore(RunStore):
    """A run store at an fsspec URL, shared by workers on several machines.

    A step runs into ``<cache>/.tmp/...``; its files are uploaded to ``<url>/<dir>/``,
    then ``_COMPLETE`` is written last, so a reader never trusts a half-uploaded step.
    :meth:`path` downloads a finished step into the local cache (``cache``, default
    ``~/.cache/compresslab/stores/<hash of url>``) and returns the local directory.
    Locks are objects ``<url>/.locks/<dir>.lock`` holding host, pid and time, taken
    with an exclusive create; a lock whose holder is a dead process on this host, or
    older than ``lock_ttl`` seconds, is stale and taken over.
    """

    def __init__(self, url: str, *, cache: str | os.PathLike | None = None, lock_ttl: float = 24 * 3600):
        try:
            import fsspec

            self.fs, self.base = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise UserError(f"run store {url}: no fsspec filesystem for this URL ({e}); install its fsspec "
                            "backend, e.g. pip install s3fs for s3://") from None
        self.remote, self.lock_ttl = url.rstrip("/"), lock_ttl
        self.base = self.base.rstrip("/")
        digest = hashlib.sha256(self.remote.encode()).hexdigest()[:16]
        cache = Path(cache) if cache else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) \
            / "compresslab" / "stores" / digest
        super().__init__(cache)

    def __reduce__(self):  # a worker on another machine keeps its own local cache
        return (_remote_store, (self.remote, self.lock_ttl))

    @property
    def location(self) -> str:
        return self.remote

    def _remote(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    def is_done(self, step: Step) -> bool:
        return self.fs.exists(self._remote(step.dirname, COMPLETE))

    def path(self, step: Step) -> Path:
        """The step's local copy, downloaded on first use (only once it is complete)."""
        local = self.root / step.dirname
        if (local / COMPLETE).is_file():
            return local
        if not self.is_done(step):
            return local  # not finished: callers only read finished steps
        tmp = self.root / TMP / f"{step.dirname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        for remote in self.fs.find(self._remote(step.dirname)):
            rel = remote[len(self._remote(step.dirname)) + 1:]
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(tmp / rel))
        try:
            os.rename(tmp, local)
        except OSError:  # another reader on this machine got there first
            shutil.rmtree(tmp, ignore_errors=True)
        return local

    def _publish(self, step: Step, tmp: Path) -> None:
        dest = self._remote(step.dirname)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        for p in files:
            self._put(p, f"{dest}/{p.relative_to(tmp).as_posix()}")
        with self.fs.open(f"{dest}/{COMPLETE}", "w") as f:  # last: the step is now visible
            f.write(json.dumps({"files": [p.relative_to(tmp).as_posix() for p in files], **_holder()}))
        (tmp / COMPLETE).write_text("")
        if (self.root / step.dirname).exists():
            shutil.rmtree(self.root / step.dirname, ignore_errors=True)
        os.rename(tmp, self.root / step.dirname)

    @contextlib.contextmanager
    def lock(self, step: Step, poll: float = 0.5):
        path = self._remote(LOCKS, f"{step.dirname}.lock")
        self.fs.makedirs(self._remote(LOCKS), exist_ok=True)  # object stores ignore it; filesystems need it
        me = _holder()
        while True:
            try:
                with self.fs.open(path, "xb") as f:
                    f.write(json.dumps(me).encode())
                break
            except FileExistsError:
                if self._stale(path):
                    self.fs.rm(path)
                    continue
                time.sleep(poll)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)

    def _stale(self, path: str) -> bool:
        try:
            with self.fs.open(path, "rb") as f:
                holder = json.loads(f.read() or b"{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return True
        if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", -1))):
            return True
        return time.time() - float(holder.get("time", 0)) > self.lock_ttl

    def record_failure(self, step: Step, error: BaseException) -> None:
        super().record_failure(step, error)
        self._put(self.root / FAILED / f"{step.dirname}.json", self._remote(FAILED, f"{step.dirname}.json"))

    def clear_failure(self, step: Step) -> None:
        super().clear_failure(step)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._remote(FAILED, f"{step.dirname}.json"))

    def upload_dir(self, local: Path, name: str) -> str:
        """Copy a local directory (e.g. a study's results) to ``<url>/<name>``; returns the URL."""
        for p in sorted(q for q in Path(local).rglob("*") if q.is_file()):
            self._put(p, self._remote(name, p.relative_to(local).as_posix()))
        return f"{self.remote}/{name}"

    def _put(self, local: Path, remote: str) -> None:
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), remote)


def _remote_store(url: str, lock_ttl: float) -> RemoteStore:
    return RemoteStore(url, lock_ttl=lock_ttl)


def step_record(step: Step) -> dict:
    """What ``spec.json`` holds: enough to identify and re-run the step."""
    return {"kind": step.kind, "label": step.label, "hash": step.hash, "spec": step.spec,
            "parents": {role: p.dirname for role, p in step.parents.items()}, "store_version": STORE_VERSION}


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    """Write JSON atomically (temp file + rename); keys sorted unless ``sort_keys`` is False."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); `compresslab doctor <run store> --remove` deletes broken "
                        "steps, then re-run") from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
