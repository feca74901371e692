"""``compresslab sensitivity``: the per-layer sensitivity table of a checkpoint and, under a
budget, a mixed-precision assignment, optionally made into a fake-quant run-store step.

The measurements and the assignment algorithms are :mod:`compresslab.compress.sensitivity`;
this module loads the checkpoint and data, picks the budget, writes ``sensitivity.json``
and hands the assignment to :func:`compresslab.api.quantize_checkpoint` (so the child is
the same ``quantize`` step, per-layer bits in its spec, as ``compresslab quantize`` makes).
"""
from __future__ import annotations

from pathlib import Path

from compresslab import device as devices
from compresslab.api import _task, on_device, quantize_checkpoint
from compresslab.compress import quantize as q
from compresslab.compress import sensitivity as sens
from compresslab.errors import UserError
from compresslab.runs.checkpoint import load_checkpoint, read_model_json
from compresslab.runs.store import read_json, write_json
from compresslab.steps import dataset
from compresslab.steps.common import checkpoint_logits, checkpoint_step

METHODS = ("exact", "greedy")


def budget_of(opts: dict, *, budget: float | None, ratio: float | None, unit: str) -> float:
    """The absolute budget: ``budget``, or ``ratio`` times every layer at its widest option."""
    if (budget is None) == (ratio is None):
        raise UserError(f"give one budget: --budget-{unit} N or --budget-ratio R")
    if ratio is not None:
        if not 0 < ratio <= 1:
            raise UserError(f"--budget-ratio {ratio}: must be in (0, 1], e.g. 0.25")
        return ratio * sum(choices[0][1] for choices in opts.values())
    return float(budget)


def assign(table: dict, *, budget: float | None = None, ratio: float | None = None, cost: str = "bops",
           objective: str = "drift", methods: tuple[str, ...] = METHODS) -> dict:
    """Per-layer bits under the budget by each of ``methods``, with every uniform width for
    reference: ``{"cost", "objective", "budget", "widest", "assignments": {method: {"bits",
    "cost", "loss"}}, "uniform": {bits: {"cost", "loss"}}}`` (``loss``: the summed per-layer
    ``objective`` of the table, the additive prediction the assignment minimises)."""
    opts = sens.options(table, cost=cost, objective=objective)
    total = budget_of(opts, budget=budget, ratio=ratio, unit=cost)
    sens.check_budget(opts, total, "BOPs" if cost == "bops" else "bytes")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise UserError(f"--method {sorted(unknown)}: use {' or '.join(METHODS)}")
    out = {"cost": cost, "objective": objective, "budget": total,
           "widest": sum(choices[0][1] for choices in opts.values()), "assignments": {}, "uniform": {}}
    for m in methods:
        bits = sens.ASSIGNERS[m](opts, total)
        c, loss = sens.totals(opts, bits)
        out["assignments"][m] = {"bits": bits, "cost": c, "loss": loss}
    for b in table["bits"]:
        c, loss = sens.totals(opts, {layer: int(b) for layer in opts})
        out["uniform"][int(b)] = {"cost": c, "loss": loss}
    return out


@on_device
def sensitivity(checkpoint: Path, data: str, *, bits: tuple[int, ...] = sens.DEFAULT_BITS,
                sparsities: tuple[float, ...] = (), act_bits: int | None = None, split: str = "val",
                per_channel: bool = False, symmetric: bool = True, calib_batches: int = 8,
                calib_batch_size: int = 128, seed: int = 0, val_fraction: float = 0.1, table: Path | None = None,
                budget_bops: float | None = None, budget_bytes: float | None = None,
                budget_ratio: float | None = None, cost: str | None = None, objective: str = "drift",
                method: str = "exact", make: bool = False, out: Path | None = None, runs: str | Path = "runs",
                progress=None) -> dict:
    """The sensitivity table of ``checkpoint`` (or ``table``, a ``sensitivity.json`` written
    earlier for the same checkpoint), and with a budget the assignment by ``method``
    (``exact``, ``greedy`` or ``both``); ``make`` quantises the checkpoint to the chosen
    assignment as a ``quantize`` step (fake-quant PTQ, per-layer bits). ``out``: a directory
    for ``sensitivity.json``. Returns ``checkpoint``, ``checkpoint_sha256``, ``data``,
    ``table`` and, with a budget, ``assignment`` (and with ``make`` ``quantized``: the
    :func:`compresslab.api.quantize_checkpoint` result)."""
    checkpoint = Path(checkpoint)
    sha = checkpoint_step(checkpoint).spec["sha256"]
    done = [t["kind"] for t in read_model_json(checkpoint)["transforms"]]
    if done:
        raise UserError(f"{checkpoint} is already quantised ({', '.join(done)}); measure its float parent instead")
    if split not in ("val", "test"):
        raise UserError(f"--split {split!r}: use val or test")
    budgeted = budget_bops is not None or budget_bytes is not None or budget_ratio is not None
    if make and not budgeted:
        raise UserError("--assign needs a budget: --budget-bops N, --budget-bytes N or --budget-ratio R")
    if budget_bops is not None and budget_bytes is not None:
        raise UserError("give one budget: --budget-bops or --budget-bytes")
    cost = cost or ("bytes" if budget_bytes is not None else "bops")
    methods = METHODS if method == "both" else (method,)
    if method not in (*METHODS, "both"):
        raise UserError(f"--method {method!r}: use exact, greedy or both")
    ds = dataset(data, val_fraction, seed)
    if table is not None:
        saved = read_json(Path(table))
        if saved.get("checkpoint_sha256") != sha:
            raise UserError(f"{table} was measured on another checkpoint; re-run without --table")
        result = {k: saved[k] for k in ("checkpoint", "checkpoint_sha256", "data", "table")}
    else:
        checkpoint_logits(checkpoint, ds, split)  # a clear error when the checkpoint does not fit the data
        model = load_checkpoint(checkpoint, apply_transforms=False)[0].to(devices.current().torch_device)
        dev = next(model.parameters()).device
        calib = None
        if act_bits:
            calib = [b.to(dev) for b in q.calibration_batches(ds.x_train, calib_batches, calib_batch_size, seed)]
        n_layers = len(sens.quant_layers(model))
        steps = n_layers * (len(set(bits)) + len(set(sparsities)))
        with _task(progress, f"sensitivity of {n_layers} layers") as callback:
            count = [0]

            def tick():
                count[0] += 1
                if callback is not None:
                    callback({"event": "step", "epoch": 1, "step": count[0], "loss": 0.0, "acc": 0.0,
                              "samples_per_s": 0.0})

            if callback is not None:
                callback({"event": "start", "epochs": 1, "steps_per_epoch": steps, "total_steps": steps})
            tab = sens.layer_sensitivity(model, ds, bits=bits, sparsities=sparsities, act_bits=act_bits, split=split,
                                         per_channel=per_channel, symmetric=symmetric, calib=calib, tick=tick)
        result = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha, "data": data, "table": tab}
    if budgeted:
        result["assignment"] = assign(result["table"], budget=budget_bops if cost == "bops" else budget_bytes,
                                      ratio=budget_ratio, cost=cost, objective=objective, methods=methods)
    if make:
        chosen = result["assignment"]["assignments"][methods[0]]["bits"]
        t = result["table"]
        act = {"layers": {layer: t["act_bits"] for layer in chosen}} if t["act_bits"] else None
        result["quantized"] = quantize_checkpoint(
            checkpoint, data, scheme="fake", bits={"layers": chosen}, act_bits=act, per_channel=t["per_channel"],
            symmetric=t["symmetric"], calib_batches=calib_batches, calib_batch_size=calib_batch_size, seed=seed,
            val_fraction=val_fraction, runs=runs, progress=progress, device=devices.current().device,
            deterministic=devices.current().deterministic)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "sensitivity.json", result)
        result["json"] = str(Path(out) / "sensitivity.json")
    return result
