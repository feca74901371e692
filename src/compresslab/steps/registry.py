"""The step-kind registry: one runner (and an optional pre-lock check) per kind of step.

A *step kind* turns a :class:`~compresslab.runs.store.Step` of its kind into files in a
fresh run-store directory. Register one with :func:`register_step`; the executors, the
studies and the Python API look kinds up by name, so a new kind is one new module:

>>> def check_mine(step, parents):            # optional: reject bad input before any write
...     ...
>>> @register_step("mine", check=check_mine)
... def run_mine(step, out, parents, callback=None):
...     ...                                   # write the step's files into ``out``

``parents`` maps each parent role to its finished directory. A check receives, for each
role, either a directory (an existing checkpoint) or the parent :class:`Step` itself
when it has not run yet (a study's preflight); it raises :class:`UserError` for input
the runner would reject, so a rejected command leaves nothing in the store.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compresslab.errors import UserError
from compresslab.runs.store import RunStore, Step

Runner = Callable[..., None]  # (step, out: Path, parents: dict[str, Path], callback) -> None
Check = Callable[[Step, dict], None]


@dataclass(frozen=True)
class StepKind:
    name: str
    run: Runner
    check: Check | None = None


_STEPS: dict[str, StepKind] = {}


def register_step(name: str, *, check: Check | None = None, override: bool = False):
    """Decorator: register ``fn(step, out, parents, callback=None)`` as the runner of ``name``."""

    def deco(fn: Runner) -> Runner:
        if name in _STEPS and not override:
            raise ValueError(f"step kind {name!r} is already registered")
        _STEPS[name] = StepKind(name, fn, check)
        return fn

    return deco


def get_step(name: str) -> StepKind:
    try:
        return _STEPS[name]
    except KeyError:
        raise UserError(f"no step kind {name!r} registered; known step kinds: {', '.join(list_steps())}") from None


def list_steps() -> list[str]:
    return sorted(_STEPS)


def check_step(step: Step, parents: dict) -> None:
    """Run the kind's pre-lock check, if it has one."""
    kind = get_step(step.kind)
    if kind.check is not None:
        kind.check(step, parents)


def run_step(step: Step, store: RunStore, parents: dict[str, Path], callback=None) -> tuple[Path, bool]:
    """Run (or reuse) ``step`` in ``store``: ``(directory, ran)``."""
    run = get_step(step.kind).run
    return store.run(step, lambda out: run(step, out, parents, callback))
