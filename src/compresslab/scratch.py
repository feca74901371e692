"""A private, RAM-backed scratch directory for intermediates, as memory-mapped arrays.

Temporary data (cached teacher activations, streamed features) belongs in node-local
RAM, not on the run store's disk. :class:`Scratch` makes a private directory
``compresslab-<pid>-<random>`` under the scratch root and removes it on exit, also
when an exception leaves the ``with`` block:

>>> with Scratch() as s:
...     a = s.array("teacher", (n, d), np.float32)   # writable, zero-filled
...     a[:100] = batch
...     b = s.open("teacher")                        # read-only view of the same data

The root is ``$COMPRESSLAB_SCRATCH`` if set, else ``/dev/shm`` if it is a writable
directory, else :func:`tempfile.gettempdir`. A process killed before it could clean up
(SIGKILL, out of memory) leaves its directory behind; the next :class:`Scratch` under
the same root removes every ``compresslab-<pid>-*`` directory whose process is gone.

Files on tmpfs use RAM; each array is allocated at full size when created, so a full
``/dev/shm`` is a :class:`UserError` then, not a SIGBUS on a later write.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from compresslab.errors import UserError

ENV = "COMPRESSLAB_SCRATCH"
PREFIX = "compresslab-"
_OWNED = re.compile(rf"^{PREFIX}(\d+)-")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_root() -> Path:
    """``$COMPRESSLAB_SCRATCH``, else ``/dev/shm`` if writable, else the system temp directory."""
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def clean_stale(root: Path) -> list[Path]:
    """Remove ``compresslab-<pid>-*`` directories under ``root`` whose process is gone; return them."""
    removed = []
    for d in Path(root).iterdir():
        m = _OWNED.match(d.name)
        if m and d.is_dir() and not d.is_symlink() and not pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class Scratch:
    """A private scratch directory holding named memory-mapped arrays; a context manager.

    ``root`` defaults to :func:`scratch_root`. :attr:`path` is the directory while the
    context is open, else None. Memmaps still referenced after exit stay readable
    (the files are unlinked, not unmapped) and free their memory once dropped.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else scratch_root()
        self.path: Path | None = None
        self._meta: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def __enter__(self) -> Scratch:
        hint = f"set {ENV} to a writable directory (e.g. /dev/shm)"
        if not self.root.is_dir():
            raise UserError(f"scratch root {self.root} is not a directory; {hint}")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise UserError(f"scratch root {self.root} is not writable; {hint}")
        clean_stale(self.root)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=self.root))
        except OSError as e:
            raise UserError(f"cannot create a scratch directory in {self.root}: {e.strerror}; {hint}") from None
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the directory and everything in it (idempotent)."""
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
            self._meta.clear()

    def _file(self, name: str) -> Path:
        if self.path is None:
            raise UserError("this Scratch is not open; use it as `with Scratch() as s: ...`")
        if not isinstance(name, str) or not name or "/" in name or ".." in name or "\0" in name:
            raise UserError(f"scratch array names must be non-empty and contain no '/' or '..', got {name!r}")
        return self.path / name

    def array(self, name: str, shape, dtype=np.float32) -> np.memmap:
        """A new zero-filled, writable array ``name`` of ``shape`` and ``dtype``, backed by a file."""
        path = self._file(name)
        if name in self._meta:
            raise UserError(f"scratch array {name!r} already exists")
        shape = tuple(int(s) for s in np.atleast_1d(shape))
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes == 0:
            raise UserError(f"scratch array {name!r} must hold at least one element, got shape {shape}")
        with open(path, "xb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, nbytes)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                path.unlink()
                raise UserError(f"no space for a {nbytes / 2**20:.1f} MiB scratch array in {self.root}; "
                                f"free some or set {ENV} to a larger directory") from None
        self._meta[name] = (shape, dtype)
        # The file already has its full size (zeros): "r+" maps it like "w+" would, without re-truncating.
        return np.memmap(path, dtype=dtype, mode="r+", shape=shape)

    def open(self, name: str) -> np.memmap:
        """A read-only memmap of the array ``name`` made earlier with :meth:`array`."""
        path = self._file(name)
        if name not in self._meta:
            known = ", ".join(self._meta) or "none"
            raise UserError(f"no scratch array {name!r}; arrays in this scratch: {known}")
        shape, dtype = self._meta[name]
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)
