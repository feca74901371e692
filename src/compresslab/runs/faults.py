"""Fault injection at the run store's write points, for tests of kills, full disks and I/O errors.

The store calls :func:`hit` at each point where a write begins or ends (the names are in
:data:`POINTS`). Nothing happens unless the environment asks for it, read once when this
module is imported:

``COMPRESSLAB_FAULT=<point>:<n>[:<action>][,...]``
    At the ``n``-th time (counting from 1) this process reaches ``point``, do ``action``:
    ``kill`` (the default: SIGKILL this process, as ``kill -9`` would), ``enospc`` (raise
    ``OSError(ENOSPC)``, as a full disk would) or ``eio`` (raise ``OSError(EIO)``).
    Several faults are separated by commas.
``COMPRESSLAB_FAULT_LOG=<file>``
    Append one line per hit, ``<pid> <point> <n> <detail>``, before acting; a clean run with
    the log on lists every instant a kill could land on (``tests/test_faults.py`` draws its
    seeded kill schedule from it).

Unset, :func:`hit` is one global lookup and a return.
"""
from __future__ import annotations

import errno
import os
import signal
from collections import Counter

#: Every write point, with what is on disk when it is reached.
POINTS: dict[str, str] = {
    "lock": "a step's lock is held (local flock or remote lock object); nothing of the step written yet",
    "tmp-dir": "the step's temp directory exists under .tmp/, the step has not run",
    "step-files": "the step wrote its own files into its temp directory; spec.json not yet",
    "json-tmp": "write_json: the temp file beside the target is written, not yet renamed onto it "
                "(model.json, metrics.json, spec.json, results.json, failure records, ...)",
    "json": "write_json: the file is in place under its name",
    "spec": "spec.json is in the temp directory; the rename that publishes the step comes next",
    "renamed": "the step directory is in place under its final name; its lock is still held",
    "remote-put": "remote store: one more file uploaded (a step's file or a study's output)",
    "remote-marker": "remote store: every file of the step uploaded, _COMPLETE not yet written",
    "remote-marked": "remote store: _COMPLETE written; the local cache copy is not yet renamed into place",
    "remote-get": "remote store: one more file of a finished step downloaded into the local cache",
}
ACTIONS = ("kill", "enospc", "eio")
ENV, LOG_ENV = "COMPRESSLAB_FAULT", "COMPRESSLAB_FAULT_LOG"


class _Faults:
    def __init__(self, faults: dict[tuple[str, int], str], log: str | None):
        self.faults, self.log, self.counts = faults, log, Counter()

    def hit(self, point: str, detail: str) -> None:
        if point not in POINTS:  # a new write point must be named (and described) in POINTS
            raise ValueError(f"unknown fault point {point!r}; add it to compresslab.runs.faults.POINTS")
        self.counts[point] += 1
        n = self.counts[point]
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {point} {n} {detail}\n")
        action = self.faults.get((point, n))
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action in ("enospc", "eio"):
            code = errno.ENOSPC if action == "enospc" else errno.EIO
            raise OSError(code, f"{os.strerror(code)} (injected by {ENV} at {point}:{n})", detail or None)


def parse(text: str) -> dict[tuple[str, int], str]:
    """``"spec:2,remote-put:5:eio"`` -> ``{("spec", 2): "kill", ("remote-put", 5): "eio"}``."""
    faults = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        point, _, rest = item.partition(":")
        n, _, action = rest.partition(":")
        action = action or "kill"
        if point not in POINTS or not n.isdigit() or int(n) < 1 or action not in ACTIONS:
            raise ValueError(f"{ENV}={text!r}: expected <point>:<n>[:<action>] with a point of "
                             f"{', '.join(POINTS)}, n >= 1 and an action of {', '.join(ACTIONS)}")
        faults[(point, int(n))] = action
    return faults


def configure(spec: str | None, log: str | None = None) -> None:
    """Set the faults of this process (what importing does from the environment)."""
    global _active
    faults = parse(spec) if spec else {}
    _active = _Faults(faults, log) if faults or log else None


def hit(point: str, detail: str = "") -> None:
    """The store reached ``point`` (one of :data:`POINTS`); ``detail`` names the file or step."""
    if _active is not None:
        _active.hit(point, detail)


_active: _Faults | None = None
configure(os.environ.get(ENV), os.environ.get(LOG_ENV))
