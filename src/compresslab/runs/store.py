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
exists, and readers download it into the local cache before use. Every remote call is
retried with exponential backoff (:data:`RETRY_ENV`). See :class:`RemoteStore`.

When the store itself fails (its disk is full, or the remote store still errors after
every retry) the step raises :class:`StoreError`: one line naming the store, what was
being written and, for a full disk, the free space. It is not the step's failure, so it
is never recorded as one; the study stops (exit code 2) and nothing half-written stays
under a step's name. :mod:`compresslab.runs.faults` injects kills and errors at the
store's write points (``faults.hit``) for the tests of all this; ``docs/reliability.md``
lists the faults and what to do about each.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compresslab.errors import UserError
from compresslab.runs import faults
from compresslab.scratch import pid_alive

#: Bump when the meaning of a step's outputs changes, so old results are not reused.
STORE_VERSION = 1
TMP = ".tmp"
LOCKS = ".locks"
FAILED = ".failed"
COMPLETE = "_COMPLETE"
#: Remote-store retries, ``ATTEMPTS:FIRST_DELAY`` (seconds): each remote call is tried up to
#: ATTEMPTS times, sleeping FIRST_DELAY, then twice that, ... (capped at ``MAX_DELAY``) with a
#: jitter of 0.5-1x seeded by the process id, so workers that failed together retry apart.
#: The default, 6 tries over about 15 s, rides out a dropped connection or a throttling burst
#: and still fails in seconds when the store is really gone. Tests set ``6:0.001``.
RETRY_ENV = "COMPRESSLAB_REMOTE_RETRY"
RETRY_DEFAULT = "6:0.5"
MAX_DELAY = 30.0


class StoreError(UserError):
    """The run store itself failed (a full disk, a remote store that keeps erroring), not the
    step: the executor does not record it as the step's failure but stops the study."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, full: bool = False):
        super().__init__(message)
        self.path, self.full = path, full


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
#: How a full disk reads where the errno is lost: Rust's io::Error text (safetensors), the
#: C library's, and numpy's short write.
_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os error (28|122)\b|\d+ requested and \d+ written")


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) means the disk or quota is full."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, StoreError) and e.full) or (isinstance(e, OSError) and e.errno in _FULL_ERRNOS) \
                or (isinstance(e, Exception) and not isinstance(e, StoreError) and _FULL_TEXT.search(str(e))):
            return True
        e = e.__cause__ or e.__context__
    return False


def full_error(where: str, directory: Path, file: str) -> StoreError:
    """The one line for a full disk: ``where`` (e.g. ``run store runs``), the MiB free on
    ``directory``'s filesystem, the ``file`` being written and what to do."""
    try:
        free = f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return StoreError(f"{where} is full ({free}) writing {file}; free space or point --runs elsewhere, then rerun",
                      path=file, full=True)


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
            faults.hit("lock", step.dirname)
            tmp = self.root / TMP / f"{step.dirname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            try:
                tmp.mkdir(parents=True)
                faults.hit("tmp-dir", step.dirname)
                fn(tmp)
                faults.hit("step-files", step.dirname)
                write_json(tmp / "spec.json", step_record(step))
                faults.hit("spec", step.dirname)
                self.clear_failure(step)  # before the step appears, so no instant leaves a finished step "failed"
                self._publish(step, tmp)
            except BaseException as e:
                full = disk_full(e)
                file = _written_file(e, tmp, step) if full else ""
                shutil.rmtree(tmp, ignore_errors=True)
                if full:
                    raise full_error(self._where(), self.root, file) from None
                raise
            faults.hit("renamed", step.dirname)
        return self.path(step), True

    def _where(self) -> str:
        return f"run store {self.root}"

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
            # who holds it, for doctor; unbuffered, so a full disk cannot fail the close later
            with contextlib.suppress(OSError):
                os.ftruncate(f.fileno(), 0)
                os.write(f.fileno(), json.dumps(_holder()).encode())  # "a+": appends, at 0 after the truncate
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def record_failure(self, step: Step, error: BaseException) -> None:
        """Record that ``step`` failed with ``error`` (a :class:`UserError`). A :class:`StoreError`
        is the store's failure, not the step's: it is raised again, which stops the study."""
        if isinstance(error, StoreError):
            raise error
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        d = self.root / FAILED
        d.mkdir(exist_ok=True)
        write_json(d / f"{step.dirname}.json", {**step_record(step), "error": type(error).__name__,
                                                 "reason": reason, "time": time.time(), **_holder()})

    def clear_failure(self, step: Step) -> None:
        (self.root / FAILED / f"{step.dirname}.json").unlink(missing_ok=True)

    def _clean_stale_tmp(self) -> None:
        tmp_root = self.root / TMP
        for d in tmp_root.iterdir() if tmp_root.is_dir() else ():
            try:
                pid = int(d.name.split(".")[-2])
            except (IndexError, ValueError):
                pid = -1
            if pid <= 0 or not pid_alive(pid):
                shutil.rmtree(d, ignore_errors=True)
        for f in self.root.glob("studies/*/.*.tmp"):  # temp files of killed runs: results.json (write_json), report.html (write_page)
            with contextlib.suppress(IndexError, ValueError):
                if not pid_alive(int(f.name.split(".")[-2])):
                    f.unlink(missing_ok=True)


class RemoteStore(RunStore):
    """A run store at an fsspec URL, shared by workers on several machines.

    A step runs into ``<cache>/.tmp/...``; its files are uploaded to ``<url>/<dir>/``,
    then ``_COMPLETE`` is written last, so a reader never trusts a half-uploaded step.
    :meth:`path` downloads a finished step into the local cache (``cache``, default
    ``~/.cache/compresslab/stores/<hash of url>``) and returns the local directory.
    Locks are objects ``<url>/.locks/<dir>.lock`` holding host, pid and time, taken
    with an exclusive create; a lock whose holder is a dead process on this host, or
    older than ``lock_ttl`` seconds, is stale and taken over.

    Every remote call goes through :meth:`_io`, which retries an ``OSError`` (a dropped
    connection, a timeout, a throttled request) with exponential backoff, as
    :data:`RETRY_ENV` sets; the answers "not found", "exists", "permission denied" and "is
    (not) a directory" are not retried. When the last try fails, a :class:`StoreError`
    names the call, the path and the error. Every call is idempotent (uploads and the
    marker overwrite; a lock create whose answer was lost is recognised as ours).
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
        self.attempts, self.delay = retry_settings()
        self._jitter = random.Random(os.getpid())
        digest = hashlib.sha256(self.remote.encode()).hexdigest()[:16]
        cache = Path(cache) if cache else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) \
            / "compresslab" / "stores" / digest
        super().__init__(cache)

    def __reduce__(self):  # a worker on another machine keeps its own local cache
        return (_remote_store, (self.remote, self.lock_ttl))

    @property
    def location(self) -> str:
        return self.remote

    def _where(self) -> str:
        return f"local cache {self.root} of run store {self.remote}"

    def _remote(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    def _io(self, what: str, path: str, call: Callable, *args, **kw):
        """``call(*args, **kw)``, retried on transient errors; ``what`` and ``path`` name it
        in the error that ends the retries."""
        for attempt in range(1, self.attempts + 1):
            try:
                return call(*args, **kw)
            except _ANSWERS:
                raise
            except OSError as e:
                if disk_full(e):  # the local disk (a download), not the network: retrying will not help
                    raise
                if attempt == self.attempts:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise StoreError(f"remote run store {self.remote}: {what} {path} failed {attempt} times "
                                     f"({type(e).__name__}: {reason}); check the store (network, credentials, "
                                     "quota) and rerun: finished steps are kept") from None
                time.sleep(min(MAX_DELAY, self.delay * 2 ** (attempt - 1)) * (0.5 + 0.5 * self._jitter.random()))

    def is_done(self, step: Step) -> bool:
        marker = self._remote(step.dirname, COMPLETE)
        return self._io("check", marker, self.fs.exists, marker)

    def path(self, step: Step) -> Path:
        """The step's local copy, downloaded on first use (only once it is complete)."""
        local = self.root / step.dirname
        if (local / COMPLETE).is_file():
            return local
        if not self.is_done(step):
            return local  # not finished: callers only read finished steps
        tmp = self.root / TMP / f"{step.dirname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        src = self._remote(step.dirname)
        try:
            tmp.mkdir(parents=True)
            for remote in self._io("list", src, self.fs.find, src):
                rel = remote[len(src) + 1:]
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                self._io("download", remote, self.fs.get_file, remote, str(tmp / rel))
                faults.hit("remote-get", remote)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if disk_full(e):
                raise full_error(self._where(), self.root, f"{step.dirname} (a download)") from None
            raise
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
        faults.hit("remote-marker", dest)
        marker = json.dumps({"files": [p.relative_to(tmp).as_posix() for p in files], **_holder()}).encode()
        self._io("write", f"{dest}/{COMPLETE}", self.fs.pipe_file, f"{dest}/{COMPLETE}", marker)  # last: now visible
        faults.hit("remote-marked", dest)
        (tmp / COMPLETE).write_text("")
        if (self.root / step.dirname).exists():
            shutil.rmtree(self.root / step.dirname, ignore_errors=True)
        os.rename(tmp, self.root / step.dirname)

    @contextlib.contextmanager
    def lock(self, step: Step, poll: float = 0.5):
        path = self._remote(LOCKS, f"{step.dirname}.lock")
        # object stores ignore makedirs; filesystems need it
        self._io("mkdir", self._remote(LOCKS), self.fs.makedirs, self._remote(LOCKS), exist_ok=True)
        me = json.dumps({**_holder(), "token": uuid.uuid4().hex}).encode()
        while True:
            try:
                self._io("lock", path, self._create, path, me)
                break
            except FileExistsError:
                if self._read(path) == me:  # our create went through, its answer was lost
                    break
                if self._stale(path):
                    with contextlib.suppress(FileNotFoundError):
                        self._io("unlock", path, self.fs.rm, path)
                    continue
                time.sleep(poll)
        try:
            yield
        finally:
            # a lock left on a finished step is harmless (readers check _COMPLETE, not locks)
            with contextlib.suppress(FileNotFoundError, StoreError):
                self._io("unlock", path, self.fs.rm, path)

    def _create(self, path: str, data: bytes) -> None:
        with self.fs.open(path, "xb") as f:
            f.write(data)

    def _read(self, path: str) -> bytes | None:
        try:
            return self._io("read", path, self.fs.cat_file, path)
        except FileNotFoundError:
            return None

    def _stale(self, path: str) -> bool:
        try:
            holder = json.loads(self._read(path) or b"{}")
        except json.JSONDecodeError:
            return True
        if not holder:
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
            self._io("delete", self._remote(FAILED, f"{step.dirname}.json"), self.fs.rm,
                     self._remote(FAILED, f"{step.dirname}.json"))

    def upload_dir(self, local: Path, name: str) -> str:
        """Copy a local directory (e.g. a study's results) to ``<url>/<name>``; returns the URL."""
        for p in sorted(q for q in Path(local).rglob("*") if q.is_file()):
            self._put(p, self._remote(name, p.relative_to(local).as_posix()))
        return f"{self.remote}/{name}"

    def _put(self, local: Path, remote: str) -> None:
        parent = remote.rsplit("/", 1)[0]
        self._io("mkdir", parent, self.fs.makedirs, parent, exist_ok=True)
        self._io("upload", remote, self.fs.put_file, str(local), remote)
        faults.hit("remote-put", remote)


#: Errors that are the store's answer, not a failure to reach it: never retried.
_ANSWERS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def retry_settings() -> tuple[int, float]:
    """``(attempts, first delay in seconds)`` from :data:`RETRY_ENV` (default :data:`RETRY_DEFAULT`)."""
    text = os.environ.get(RETRY_ENV) or RETRY_DEFAULT
    attempts, _, delay = text.partition(":")
    try:
        parsed = int(attempts), float(delay or 0)
    except ValueError:
        parsed = (0, -1.0)
    if parsed[0] < 1 or parsed[1] < 0:
        raise UserError(f"{RETRY_ENV}={text!r}: expected ATTEMPTS:FIRST_DELAY_SECONDS such as {RETRY_DEFAULT}")
    return parsed


def _remote_store(url: str, lock_ttl: float) -> RemoteStore:
    return RemoteStore(url, lock_ttl=lock_ttl)


def step_record(step: Step) -> dict:
    """What ``spec.json`` holds: enough to identify and re-run the step."""
    return {"kind": step.kind, "label": step.label, "hash": step.hash, "spec": step.spec,
            "parents": {role: p.dirname for role, p in step.parents.items()}, "store_version": STORE_VERSION}


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    """Write JSON atomically (temp file + rename); keys sorted unless ``sort_keys`` is False.

    A full disk raises :class:`StoreError` naming the file and the free space; the temp
    file is removed (one left by a killed process is removed by the next :class:`RunStore`
    when it is a study's, and goes with its temp directory when it is a step's)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n")
        faults.hit("json-tmp", str(path))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if disk_full(e):
            raise full_error(f"the filesystem of {path.parent}", path.parent, str(path)) from None
        raise
    faults.hit("json", str(path))


def _written_file(error: BaseException, tmp: Path, step: Step) -> str:
    """The file a step was writing when the disk filled, as ``<step dir>/<file>``: the error's
    file name when it has one, else the newest file in the step's temp directory."""
    named = getattr(error, "path", None) if isinstance(error, StoreError) else getattr(error, "filename", None)
    if named:
        named = Path(named)
        return f"{step.dirname}/{named.relative_to(tmp)}" if named.is_relative_to(tmp) else str(named)
    with contextlib.suppress(OSError):
        files = [p for p in tmp.rglob("*") if p.is_file()]
        if files:
            return f"{step.dirname}/{max(files, key=lambda p: p.stat().st_mtime_ns).relative_to(tmp)}"
    return step.dirname


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
