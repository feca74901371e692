"""A rich progress bar on stderr, fed by ``fit``'s callback events.

>>> with RichProgress(quiet=args.quiet) as progress:
...     with progress.task("train parent"):
...         fit(model, data, recipe, callback=progress)

It shows nothing at all when ``quiet`` or when stderr is not a terminal, so logs and
pipes stay clean.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

_BLANK = {"epoch": "", "loss": "", "acc": "", "speed": ""}


class RichProgress:
    """Context manager and ``fit`` callback: one bar per task (label, steps, epoch, loss,
    accuracy, samples/s, elapsed time)."""

    def __init__(self, quiet: bool = False, *, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.enabled = not quiet and (self.console.is_terminal if console else sys.stderr.isatty())
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._label = "train"
        self._epochs = 0

    def __enter__(self) -> RichProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[epoch]}"),
                TextColumn("{task.fields[loss]}"),
                TextColumn("{task.fields[acc]}"),
                TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextmanager
    def task(self, label: str) -> Iterator[RichProgress]:
        """Label the bar of whatever runs inside (a pulsing bar until ``fit`` starts)."""
        prev_label, prev_task = self._label, self._task
        self._label = label
        self._task = self._progress.add_task(label, total=None, **_BLANK) if self._progress else None
        try:
            yield self
        finally:
            if self._progress is not None and self._task is not None:
                t = self._progress.tasks[self._task]
                self._progress.update(self._task, total=t.total if t.total is not None else 1,
                                      completed=t.total if t.total is not None else 1)
            self._label, self._task = prev_label, prev_task

    def __call__(self, event: dict[str, Any]) -> None:
        """The ``fit`` callback."""
        p = self._progress
        if p is None:
            return
        kind = event.get("event")
        if kind == "start":
            self._epochs = event["epochs"]
            total = event.get("total_steps", event["epochs"] * event["steps_per_epoch"])
            if self._task is None:
                self._task = p.add_task(self._label, total=total, **_BLANK)
            else:
                p.reset(self._task, total=total, **_BLANK)
        elif kind in ("step", "epoch") and self._task is not None:
            p.update(
                self._task,
                advance=1 if kind == "step" else 0,
                epoch=f"epoch {event['epoch']}/{self._epochs}",
                loss=f"loss {event['loss']:.4f}",
                acc=f"err {event['error']:.3f}" if "error" in event else f"acc {event['acc']:.1%}",
                speed=f"{event['samples_per_s']:,.0f} samples/s",
            )
