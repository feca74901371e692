"""Linear CKA over a large activation set: in RAM, memmapped from /dev/shm, memmapped from disk.

Usage: flock /tmp/bench.lock .venv/bin/python benchmarks/cka_scratch.py [--rows 20000] [--dim 4096]
       [--batch 2000] [--rounds 5] [--cka-rounds 2] [--disk-dir /tmp] [--no-kd]

Two float32 activation matrices X, Y (rows x dim; 328 MB each at the defaults) are held as
(a) numpy arrays in the process's memory, (b) np.memmap arrays in a ``Scratch`` (the scratch
root: $COMPRESSLAB_SCRATCH, else /dev/shm), (c) ``.npy`` files in a run-store-like directory on
disk, opened with ``np.load(mmap_mode="r")``: warm (pages in the page cache, as right after
they were written) and cold (their pages dropped with fsync + posix_fadvise(DONTNEED) first).

Timed, in one process, the sources interleaved in rounds (median and best per source, ratios
of medians to (a)):
* write: filling (b) and (c) from (a);
* read: one pass over X and Y in row batches, each batch copied to float64 and summed
  (the I/O part of a CKA pass);
* CKA: a full ``LinearCKA(mode="feature")`` pass (X^T Y, X^T X, Y^T Y in float64), which is
  compute-bound; (a), (b) and cold (c) only.
Then, unless --no-kd, the kd-functional measurement on the tiny study of
tests/test_kd_functional.py: CKA of every model against the teacher with ``cka_between`` per
model (before) and with ``cache_features`` once plus ``cka_against_cached`` per model (after),
on 1 thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from compresslab.measure.cka import LinearCKA, cache_features, cka_against_cached, cka_between
from compresslab.scratch import Scratch

warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def fs_of(path) -> str:
    """The type, device and mount point of the filesystem holding ``path``, as ``df`` reports them."""
    out = subprocess.run(["df", "--output=fstype,source,target", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        return "unknown filesystem"
    fstype, source, target = out.stdout.splitlines()[1].split(maxsplit=2)
    return f"{fstype} ({source} mounted on {target})"


def drop_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_pass(x, y, batch: int) -> float:
    total = 0.0
    for s in range(0, x.shape[0], batch):
        total += float(np.array(x[s : s + batch], dtype=np.float64).sum())
        total += float(np.array(y[s : s + batch], dtype=np.float64).sum())
    return total


def cka_pass(x, y, batch: int) -> dict:
    acc = LinearCKA(mode="feature", n_hint=x.shape[0])
    for s in range(0, x.shape[0], batch):
        acc.update(torch.from_numpy(np.asarray(x[s : s + batch])), torch.from_numpy(np.asarray(y[s : s + batch])))
    return acc.result()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def report(title: str, times: dict[str, list[float]], base: str) -> None:
    print(title)
    ref = statistics.median(times[base])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<24} median {med:8.3f} s  best {min(ts):8.3f} s  ratio to {base} {med / ref:6.2f}  "
              f"(runs: {', '.join(f'{t:.3f}' for t in ts)})")


def kd_part(rounds: int) -> None:
    # Tiny models: 1 thread. With 2 threads and the other core busy, these small ops run ~100x slower
    # (measured: cka_between of two cnn1d on 1,000 examples, 0.01 s on 1 thread, 0.6-1 s on 2).
    torch.set_num_threads(1)
    from compresslab.runs.checkpoint import load_checkpoint
    from compresslab.runs.store import RunStore
    from compresslab.steps import data_of
    from compresslab.study import parse_spec, run_kind
    from compresslab.study.kd_functional import CONDITIONS, expand_kd

    spec = parse_spec({
        "kind": "kd-functional", "name": "tiny-kd", "data": "mnist1d",
        "teacher": {"name": "cnn1d", "options": {"width": 8, "depth": 2, "hidden": 16}},
        "student": {"name": "cnn1d", "options": {"width": 4, "depth": 2, "hidden": 8}},
        "recipe": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 2, "batch_size": 256},
        "conditions": list(CONDITIONS), "seeds": [1, 2],
        "adversarial": {"attack": "pgd", "eps": 0.3, "steps": 3},
    })
    with tempfile.TemporaryDirectory(prefix="cka-scratch-kd-") as runs:
        t_study, (results, _) = timed(lambda: run_kind(spec, runs))
        store = RunStore(runs)
        reference, *others = [e for e in expand_kd(spec) if e.role != "measure"]
        x, _ = data_of(reference.step.spec).split(spec.split)
        teacher, _ = load_checkpoint(store.path(reference.step))
        models = [load_checkpoint(store.path(e.step))[0] for e in others]

        def before():
            return [cka_between(teacher, m, x, points=spec.cka_points) for m in models]

        def after():
            with Scratch() as s:
                cached = cache_features(teacher, x, spec.cka_points, s)
                return [cka_against_cached(cached, m, x, spec.cka_points) for m in models]

        times = {"before: cka_between": [], "after: cached teacher": []}
        for _ in range(rounds):
            t, old = timed(before)
            times["before: cka_between"].append(t)
            t, new = timed(after)
            times["after: cached teacher"].append(t)
        diff = max(abs(a[k][e] - b[k][e]) for a, b in zip(old, new) for k in a for e in ("biased", "unbiased")
                   if a[k][e] is not None)
        rows = {r["name"]: r["cka_points"] for r in results["models"]}
        names = [e.name for e in others]
        diff_study = max(abs(a[k][e] - rows[name][k][e]) for name, a in zip(names, old) for k in a
                         for e in ("biased", "unbiased") if a[k][e] is not None)
        print(f"\nkd-functional tiny study (tests/test_kd_functional.py), {torch.get_num_threads()} thread: "
              f"{len(models)} models against the teacher, {x.shape[0]} {spec.split} examples, "
              f"points {', '.join(old[0])}; whole study {t_study:.1f} s")
        report("CKA of all models against the teacher:", times, "before: cka_between")
        print(f"  max |CKA after - before| {diff:.1e}; "
              f"study results (its similarity steps) vs cka_between {diff_study:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of write and read passes")
    ap.add_argument("--cka-rounds", type=int, default=2, help="rounds of CKA passes (about 30 s each per source)")
    ap.add_argument("--disk-dir", default="/tmp", help="where the run-store-like directory of .npy files goes")
    ap.add_argument("--no-kd", action="store_true", help="skip the kd-functional before/after part")
    args = ap.parse_args()
    torch.set_num_threads(2)
    load0 = os.getloadavg()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    y = 0.5 * x[:, ::-1] + rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    mb = x.nbytes / 1e6
    with Scratch() as scratch, tempfile.TemporaryDirectory(prefix="cka-scratch-", dir=args.disk_dir) as disk:
        store = Path(disk) / "train-0123456789ab"  # laid out like a run-store step directory
        store.mkdir()
        files = [store / "acts_x.npy", store / "acts_y.npy"]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
              f"{' '.join(f'{v:.2f}' for v in load0)} before")
        print(f"X, Y: {args.rows} x {args.dim} float32, {mb:.0f} MB each; row batches of {args.batch}")
        print(f"(b) scratch {scratch.path}: {fs_of(scratch.path)}")
        print(f"(c) disk    {store}: {fs_of(store)}")

        def to_scratch(s):
            for name, a in (("x", x), ("y", y)):
                m = s.array(name, a.shape, np.float32)
                m[:] = a
                m.flush()

        def to_disk():
            for f, a in zip(files, (x, y)):
                np.save(f, a)
            drop_cache(files)  # fsync first: the data is on disk

        writes = {"(b) scratch memmap": [], "(c) disk .npy": []}
        for _ in range(args.rounds):
            with Scratch() as fresh:
                writes["(b) scratch memmap"].append(timed(lambda: to_scratch(fresh))[0])
            writes["(c) disk .npy"].append(timed(to_disk)[0])
        to_scratch(scratch)

        # Every pass opens its memmaps afresh and drops them after: pages mapped by a live memmap
        # cannot be evicted, so "cold" must drop the files' pages while no map of them exists.
        def disk():
            return tuple(np.load(f, mmap_mode="r") for f in files)

        def disk_cold():
            drop_cache(files)
            return disk()

        sources = {"(a) RAM": lambda: (x, y), "(b) scratch memmap": lambda: (scratch.open("x"), scratch.open("y")),
                   "(c) disk memmap, warm": disk, "(c) disk memmap, cold": disk_cold}
        for name, open_xy in sources.items():  # check and warm up; the .npy pages end in the page cache
            a, b = open_xy()
            assert np.array_equal(a[-3:], x[-3:]) and np.array_equal(b[-3:], y[-3:]), name
            read_pass(a, b, args.batch)
            del a, b

        def run(names, fn, rounds):
            times, outs = {name: [] for name in names}, []
            for _ in range(rounds):
                for name in names:
                    pair = sources[name]()
                    t, out = timed(lambda pair=pair: fn(*pair, args.batch))
                    del pair
                    times[name].append(t)
                    outs.append(out)
            return times, outs

        reads, sums = run(list(sources), read_pass, args.rounds)
        cka_pass(x[: 2 * args.batch], y[: 2 * args.batch], args.batch)  # warm-up
        ckas, results = run(["(a) RAM", "(b) scratch memmap", "(c) disk memmap, cold"], cka_pass, args.cka_rounds)
        print()
        report(f"write X and Y ({2 * mb:.0f} MB; disk includes fsync):", writes, "(b) scratch memmap")
        report(f"read pass over X and Y ({2 * mb:.0f} MB, batches copied to float64 and summed):", reads, "(a) RAM")
        print(f"  identical sums from every source: {len(set(sums)) == 1}")
        report("linear CKA, feature mode (float64 X^T Y, X^T X, Y^T Y):", ckas, "(a) RAM")
        same = all(r == results[0] for r in results)
        print(f"  CKA biased {results[0]['biased']:.6f}, unbiased {results[0]['unbiased']:.6f}; "
              f"identical from every source: {same}")
    if not args.no_kd:
        kd_part(3)
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
