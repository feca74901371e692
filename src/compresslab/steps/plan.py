"""``--workers auto``: how many worker processes, and how many torch threads per step.

On a CPU, tiny models do not gain from a second thread: their per-operation work is too
small to split, and with another process busy a second thread makes them many times
slower (``benchmarks/thread_threshold.py``). Independent steps in separate processes scale
better. So the plan is:

1. the number of workers is the cores, at most the number of steps that can run at once
   (the widest level of the DAG of steps to run); but below :data:`SPAWN_PAYOFF_S` seconds
   of estimated serial work (:func:`step_seconds`) the steps run in this process, as
   starting worker processes (each imports torch) costs more than it saves;
2. each step's *size* is its forward MACs per batch (the model it trains, built once per
   model spec for the step's data, times the recipe's batch size); it gets one torch thread
   per :data:`MACS_PER_THREAD` of size, at least 1 and at most its worker's share of the
   cores (or ``$OMP_NUM_THREADS`` when that is lower).

A tiny model therefore runs on one thread in this process too. On a GPU (``--device
cuda``) steps run in this process with torch's default threads. The thread count does not
depend on the machine's load (that would make a rerun's numbers depend on it): on a busy
machine, set ``OMP_NUM_THREADS=1``.

The constants come from measurements on a 2-core AMD EPYC (AVX-512) host, recorded in
BENCHMARKS.md ("Threads per step"), with the command to remeasure them.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

#: Forward MACs per batch for each torch thread a step gets (below twice this, one thread).
#: Measured: 6.1M MACs per batch ran 0.94x as fast on 2 threads as on 1, 16.1M 1.53x.
MACS_PER_THREAD = 5e6
#: Effective single-thread training rate, MACs per second counting forward and backward
#: (3x the forward MACs; thread_threshold.py measured 11-28e9 for the models above 10M MACs
#: per batch); the fixed cost of one training iteration (optimizer, Python: the tiny models'
#: 1-3 ms) and of one step (evaluation, checkpoint, logits, metrics).
TRAIN_MACS_PER_S = 1e10
ITERATION_S = 0.003
STEP_S = 0.25
#: Estimated serial seconds below which the steps run in this process.
SPAWN_PAYOFF_S = 20.0


@dataclass(frozen=True)
class Plan:
    workers: int  # 1: in this process
    threads: dict  # step hash -> torch threads (empty: torch's default)
    serial_s: float | None  # the estimated serial seconds of the steps to run
    reason: str

    def describe(self) -> dict:
        counts = sorted(set(self.threads.values()))
        return {"workers": self.workers, "threads_per_step": counts, "estimated_serial_s": self.serial_s,
                "reason": self.reason}


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_cap() -> int:
    """The most threads one step may use: the cores, or ``$OMP_NUM_THREADS`` when it is set lower."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(cores(), int(omp))) if omp.isdigit() and int(omp) > 0 else cores()


def _model_spec(step) -> dict | None:
    """The model a step trains or transforms: its own ``model``/``student``, else its parent's."""
    for key in ("model", "student"):
        m = step.spec.get(key)
        if isinstance(m, dict) and isinstance(m.get("name"), str):
            return m
    for parent in step.parents.values():
        if (m := _model_spec(parent)) is not None:
            return m
    return None


class _Sizer:
    """Forward MACs per example of each (model spec, dataset), built once."""

    def __init__(self):
        self.macs: dict[str, int | None] = {}

    def __call__(self, model: dict, data) -> int | None:
        from compresslab.measure import count_macs
        from compresslab.steps.common import build

        key = json.dumps([model, data.name, list(data.input_shape)], sort_keys=True, default=str)
        if key not in self.macs:
            try:
                self.macs[key] = int(count_macs(build(model, data, 0), data.input_shape))
            except Exception:  # noqa: BLE001  (a size is a hint: a model that will not count is sized unknown)
                self.macs[key] = None
        return self.macs[key]


def step_seconds(step, data, macs: int | None) -> float:
    """Estimated single-thread seconds of ``step``: its training (recipe epochs x rounds over
    the training split, forward + backward), else one forward pass over the test split."""
    recipe = step.spec.get("recipe") or {}
    if macs is None:
        return 1.0  # a model that would not count: a guess
    n_train, n_test = data.x_train.shape[0], data.split("test")[0].shape[0]
    epochs = recipe.get("epochs", 0) * max(1, int(step.spec.get("rounds", 1) or 1))
    if epochs:
        iterations = math.ceil(n_train / recipe.get("batch_size", 128)) * epochs
        return STEP_S + iterations * ITERATION_S + 3 * macs * n_train * epochs / TRAIN_MACS_PER_S
    return STEP_S + n_test * macs / TRAIN_MACS_PER_S


def _width(todo: dict) -> int:
    """The most steps of ``todo`` that can run at once: the largest level of its DAG."""
    depth: dict[str, int] = {}

    def level(h: str) -> int:
        if h not in depth:
            parents = [p.hash for p in todo[h].parents.values() if p.hash in todo]
            depth[h] = 1 + max((level(p) for p in parents), default=-1)
        return depth[h]

    counts: dict[int, int] = {}
    for h in todo:
        counts[level(h)] = counts.get(level(h), 0) + 1
    return max(counts.values(), default=0)


def plan(todo: dict, device_type: str = "cpu", workers: int | None = None) -> Plan:
    """The plan for ``todo`` (``{step hash: Step}``, parents first) on ``device_type``;
    ``workers`` fixes the number of processes (``--workers N``) and sizes only the threads."""
    from compresslab.steps.common import data_of

    if device_type != "cpu":
        return Plan(workers or 1, {}, None, f"{device_type}: torch's default threads")
    n, sizer, sizes, serial = cores(), _Sizer(), {}, 0.0
    for h, step in todo.items():
        data = data_of(step.spec) if "data" in step.spec else None
        model = _model_spec(step)
        macs = sizer(model, data) if model is not None and data is not None else None
        sizes[h] = macs * (step.spec.get("recipe") or {}).get("batch_size", 128) if macs else 0
        serial += step_seconds(step, data, macs) if data is not None else 1.0
    serial = round(serial, 1)
    width = _width(todo)
    if workers is not None:
        reason = f"--workers {workers}"
    elif min(n, width) > 1 and serial < SPAWN_PAYOFF_S:
        workers, reason = 1, (f"about {serial:g} s of work: in this process (worker processes pay off above "
                              f"{SPAWN_PAYOFF_S:g} s)")
    else:
        workers = max(1, min(n, width))
        reason = (f"{workers} worker processes on {n} cores, about {serial:g} s of work" if workers > 1 else
                  "in this process: one step at a time" if width == 1 else f"in this process: {n} core")
    cap = max(1, min(thread_cap(), n // workers))
    threads = {h: max(1, min(cap, int(size // MACS_PER_THREAD))) for h, size in sizes.items()}
    return Plan(workers, threads, serial, reason)
