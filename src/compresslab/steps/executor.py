"""Run steps (a DAG: each step lists its parent steps) in dependency order.

Executors:

* ``local`` (default): in this process, or in ``workers`` worker processes (spawned),
  each step starting as soon as its parents are done; ``workers="auto"`` (the default)
  picks the number of processes and each step's torch threads from the cores and the
  size of the steps (:mod:`compresslab.steps.plan`);
* ``ray``: each step is a Ray task with ``cpus_per_step`` CPUs (and ``gpus_per_step``
  GPUs, fractions such as 0.25 packing several steps on one GPU); the DAG becomes task
  dependencies (a task receives its parents' results), so Ray
  schedules it. Finished steps are skipped before submission. Without ``ray_address`` a
  local Ray instance is started; ``auto`` or ``HOST:PORT`` joins an existing cluster.

Every step runs through :meth:`RunStore.run` (a lock per step, atomic publication), so
executors can share a store and be interrupted at any point. A step that raises a
:class:`UserError` (e.g. a NaN loss) is recorded as failed; the steps that depend on it
are skipped and every independent step still runs. Each local step sets torch's thread
count from its own size (:mod:`compresslab.steps.plan`; at most its worker's share of the
CPUs), a Ray step to ``cpus_per_step``: the same thread count gives bit-identical results
under every executor.
Every step runs under the caller's :class:`compresslab.device.Runtime` (its device and
determinism), in worker processes and Ray tasks too; ``--workers N`` on one GPU runs N
steps on it at once.

On Ray, a step whose worker process or node dies is run again (:data:`RAY_MAX_RETRIES`); an
exception the step raises is not (see there, and ``docs/reliability.md``).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from dataclasses import dataclass

from compresslab import device as devices
from compresslab.errors import UserError
from compresslab.steps.registry import run_step

EXECUTORS = ("local", "ray")

#: Ray's ``max_retries`` for a step's task: how many times Ray runs a step again when the
#: process running it dies (its node's raylet was killed, the machine was lost or preempted,
#: the kernel's OOM killer hit it). Running a step again is safe because a step is idempotent:
#: its directory is named by the hash of its inputs and appears only by an atomic rename, and
#: the dead attempt's ``flock`` died with it, so a retry either finds the finished directory
#: and reuses it, or redoes the work in a fresh temp directory (the dead attempt's temp
#: directory is removed by the next store that opens). Each death costs the steps that were
#: running on that node one retry; 3 rides out three deaths of the same step's node while a
#: step that kills its own worker every time (a crash in native code, the kernel's OOM
#: killer) fails after 4 attempts instead of looping. ``retry_exceptions`` stays
#: ``False``: an exception raised by a step is deterministic (a retry gives it again), a
#: :class:`UserError` is a result (recorded as the step's failure), and a full or failing
#: store (``StoreError``) stops the study at once.
RAY_MAX_RETRIES = 3
#: The environment variable that overrides :data:`RAY_MAX_RETRIES` (e.g. higher on preemptible nodes).
RAY_RETRIES_ENV = "COMPRESSLAB_RAY_MAX_RETRIES"


def ray_max_retries() -> int:
    """``$COMPRESSLAB_RAY_MAX_RETRIES`` if set (an integer >= 0), else :data:`RAY_MAX_RETRIES`."""
    text = os.environ.get(RAY_RETRIES_ENV, "").strip()
    if not text:
        return RAY_MAX_RETRIES
    if not text.isdigit():
        raise UserError(f"{RAY_RETRIES_ENV}={text!r}: use an integer >= 0 (task retries when a Ray worker dies)")
    return int(text)


AUTO = "auto"


def parse_workers(text: str) -> int | str:
    """``--workers``: ``auto`` or an integer >= 1."""
    if text.strip().lower() == AUTO:
        return AUTO
    if not text.strip().isdigit() or int(text) < 1:
        raise UserError(f"--workers {text!r}: use auto or an integer >= 1")
    return int(text)


@dataclass(frozen=True)
class Execution:
    executor: str = "local"
    workers: int | str = AUTO
    ray_address: str | None = None
    cpus_per_step: int = 1
    gpus_per_step: float = 0.0

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise UserError(f"--executor {self.executor!r}: use {' or '.join(EXECUTORS)}")
        if self.workers != AUTO and (not isinstance(self.workers, int) or self.workers < 1):
            raise UserError(f"--workers {self.workers!r}: use auto or an integer >= 1")
        if self.cpus_per_step < 1:
            raise UserError("--cpus-per-step must be >= 1")
        if self.executor == "local" and self.ray_address:
            raise UserError("--ray-address needs --executor ray")
        if self.executor == "local" and self.gpus_per_step:
            raise UserError("--gpus-per-step needs --executor ray (local --workers share the --device)")
        if self.ray_address is None:  # a local Ray instance has this machine's GPUs
            devices.check_gpus_per_step(self.gpus_per_step)
        elif self.gpus_per_step < 0:
            raise UserError(f"--gpus-per-step {self.gpus_per_step:g}: must be >= 0")


_current: contextvars.ContextVar[Execution] = contextvars.ContextVar("execution", default=Execution())  # noqa: B039 (frozen)


@contextlib.contextmanager
def using(execution: Execution):
    """Run the studies started inside this block with ``execution``."""
    token = _current.set(execution)
    try:
        yield execution
    finally:
        _current.reset(token)


def current() -> Execution:
    return _current.get()


def _run_step(step, store, threads: int | None, runtime: devices.Runtime, *parent_results,
              callback=None) -> tuple[str, object]:
    """Run one step in this process under ``runtime`` (device, determinism):
    ``("ran" | "reused", dir name)`` or ``("failed", reason)``. ``parent_results`` are the
    parents' results (Ray passes them as top-level arguments, which is what makes it wait
    for them); ``callback`` receives the training events."""
    import torch

    bad = [r for r in parent_results if r[0] == "failed"]
    if bad:
        return "failed", f"skipped: a parent step failed ({bad[0][1]})"
    if threads:
        torch.set_num_threads(threads)
    parents = {role: store.path(p) for role, p in step.parents.items()}
    try:
        with devices.using(runtime):
            _, ran = run_step(step, store, parents, callback)
    except UserError as e:
        store.record_failure(step, e)
        return "failed", str(e)
    return ("ran" if ran else "reused"), step.dirname


def execute(entries: list, store, progress=None, execution: Execution | None = None,
            plan_out: dict | None = None) -> tuple[dict, dict]:
    """Run every entry's step; returns ``({name: ran}, {name: failure reason})``.
    An entry is anything with a ``name`` and a ``step``, listed parents first. ``plan_out``
    (a dict) receives how the steps were run: executor, workers, threads per step, why."""
    ex = execution or current()
    runtime = devices.current()
    order: dict[str, object] = {}  # step hash -> step, in dependency order (entries come parents first)
    for e in entries:
        order.setdefault(e.step.hash, e.step)
    how = {"executor": ex.executor, "workers": ex.workers}
    # finished steps are never handed to a worker or a Ray task; nothing left, nothing started
    results = {h: ("reused", step.dirname) for h, step in order.items() if store.is_done(step)}
    todo = {h: step for h, step in order.items() if h not in results}
    if not todo:
        how.update(workers=0, reason="every step was already done")
    elif ex.executor == "ray":
        results.update(_ray(todo, store, ex, progress, runtime))
    else:  # local: each step's threads by its size (steps.plan); the processes as asked, or as planned
        from compresslab.steps.plan import plan

        p = plan(todo, runtime.torch_device.type, None if ex.workers == AUTO else ex.workers)
        how.update(p.describe(), workers=p.workers)
        if p.workers == 1:
            results.update(_sequential(todo, store, progress, runtime, p.threads, _labels(entries)))
        else:
            results.update(_pool(todo, store, p.workers, p.threads, progress, runtime))
    if plan_out is not None:
        plan_out.update(how)
    ran = {e.name: results[e.step.hash][0] == "ran" for e in entries if results[e.step.hash][0] != "failed"}
    failed = {e.name: results[e.step.hash][1] for e in entries if results[e.step.hash][0] == "failed"}
    return ran, failed


def _labels(entries) -> dict:
    """A progress label per step hash: the first entry's name and the step's kind."""
    out = {}
    for e in entries:
        out.setdefault(e.step.hash, f"{e.name} ({e.step.kind})")
    return out


def _sequential(order: dict, store, progress, runtime, threads: dict, labels: dict) -> dict:
    """Every step of ``order`` in this process, with ``threads[hash]`` torch threads where
    given (else the current count), restored afterwards."""
    import torch

    results: dict[str, tuple] = {}
    before = torch.get_num_threads()
    try:
        for h, step in order.items():
            parent_results = [results[p.hash] for p in step.parents.values() if p.hash in results]
            task = progress.task(labels[h]) if progress else contextlib.nullcontext(None)
            with task as callback:
                results[h] = _run_step(step, store, threads.get(h), runtime, *parent_results, callback=callback)
    finally:
        torch.set_num_threads(before)
    return results


class _Ticker:
    """One progress bar counting finished steps (parallel executors)."""

    def __init__(self, progress, label: str, total: int):
        self.cm = progress.task(label) if progress else contextlib.nullcontext(None)
        self.total, self.done = total, 0

    def __enter__(self):
        self.callback = self.cm.__enter__()
        if self.callback:
            self.callback({"event": "start", "epochs": 1, "steps_per_epoch": self.total, "total_steps": self.total})
        return self

    def tick(self):
        self.done += 1
        if self.callback:
            self.callback({"event": "step", "epoch": 1, "step": self.done, "loss": 0.0, "acc": 0.0,
                           "samples_per_s": 0.0})

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def _pool(order: dict, store, workers: int, threads: dict, progress, runtime) -> dict:
    """Every step of ``order`` in ``workers`` spawned processes, ``threads[hash]`` threads each
    (else :func:`_run_step`'s default)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    results: dict[str, tuple] = {}
    pending = dict(order)
    running = {}
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool, \
            _Ticker(progress, f"steps ({workers} workers)", len(order)) as ticker:
        while pending or running:
            for h, step in list(pending.items()):
                deps = [p.hash for p in step.parents.values() if p.hash in order]
                if all(d in results for d in deps):
                    del pending[h]
                    running[pool.submit(_run_step, step, store, threads.get(h), runtime, *(results[d] for d in deps))] = h
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                results[running.pop(fut)] = fut.result()
                ticker.tick()
    return results


def _ray(order: dict, store, ex: Execution, progress, runtime) -> dict:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'compresslab[ray]' (or ray)") from None
    retries = ray_max_retries()
    # Ray's driver prints task failures and retries on stdout (from a thread, until shutdown);
    # --json keeps stdout for its output, so they go to stderr
    with contextlib.redirect_stdout(sys.stderr):
        return _ray_tasks(ray, order, store, ex, progress, runtime, retries)


def _ray_tasks(ray, order: dict, store, ex: Execution, progress, runtime, retries: int) -> dict:
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=ex.ray_address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **({} if ex.ray_address else {"num_cpus": os.cpu_count()}))
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot reach the Ray cluster at {ex.ray_address or 'a new local instance'} "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    task = ray.remote(_run_step)
    refs, results = {}, {}
    try:
        with _Ticker(progress, "steps (ray)", len(order)) as ticker:
            for h, step in order.items():
                deps = [p.hash for p in step.parents.values() if p.hash in refs]
                refs[h] = task.options(num_cpus=ex.cpus_per_step, num_gpus=ex.gpus_per_step,
                                       max_retries=retries, retry_exceptions=False).remote(
                    step, store, ex.cpus_per_step, runtime, *(refs[d] for d in deps))
            waiting = {r: h for h, r in refs.items()}
            while waiting:
                ready, _ = ray.wait(list(waiting), num_returns=1)
                for r in ready:
                    h = waiting.pop(r)
                    results[h] = _ray_result(ray, r, order[h], retries)
                    ticker.tick()
    finally:
        if started:
            ray.shutdown()
    return results


def _ray_result(ray, ref, step, retries: int) -> tuple[str, object]:
    """``ray.get(ref)``, with Ray's errors as one line: a :class:`UserError` raised inside the
    task (a ``StoreError``: the store is full or unreachable) as itself, a step whose worker
    died on every attempt (or that Ray lost otherwise) as a :class:`UserError` naming it. Other
    exceptions (bugs in a step) propagate with their traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserError):
            raise e.cause from None
        raise
    except ray.exceptions.RayError as e:  # WorkerCrashedError, NodeDiedError, OutOfMemoryError, ...
        raise UserError(f"step {step.dirname}: Ray lost it ({type(e).__name__}) after {retries} retries; "
                        "finished steps are kept: check the nodes (memory, logs) and run the study again") from None
