"""Data-parallel training of one train step (``compresslab train --nproc N``).

:func:`launch` runs ``torchrun --standalone --nproc_per_node N -m
compresslab.steps.distributed PAYLOAD`` and waits. Every worker (:func:`main`) builds
the dataset and the model from the step spec exactly as the ``train`` step does
(same seed on every rank), wraps the model in ``DistributedDataParallel`` (gloo on CPU)
and runs ``fit(..., shard=(rank, world_size))``. Rank 0 alone writes into the run store:
the checkpoint goes through ``RunStore.run`` like any train step. A ``UserError`` in a
worker reaches the parent as a ``UserError``; rank 0's progress events reach the
parent's callback as JSON lines on stdout.

Debug hook: with ``COMPRESSLAB_DDP_HASH_DIR`` set, every rank writes the SHA-256 of its
final parameters to ``rank<R>.sha256`` there (the ranks must agree).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from compresslab.errors import UserError

HASH_ENV = "COMPRESSLAB_DDP_HASH_DIR"
_EVENT = "@compresslab-event "
_MODULE = "compresslab.steps.distributed"


def threads_per_rank(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


def launch(argv_payload: dict, nproc: int, callback: Callable[[dict], None] | None = None) -> dict:
    """Run the workers through torchrun; return what rank 0 wrote.

    ``argv_payload``: ``{"spec": train step spec, "label": str, "runs": run store}``.
    Returns ``{"checkpoint": step directory, "ran": bool}``.
    """
    with tempfile.TemporaryDirectory(prefix="compresslab-ddp-") as tmp:
        tmp = Path(tmp)
        payload = {**argv_payload, "result": str(tmp / "result.json"), "errors": str(tmp),
                   "events": callback is not None}
        (tmp / "payload.json").write_text(json.dumps(payload))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", _MODULE, str(tmp / "payload.json")]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_rank(nproc))}
        with open(tmp / "stderr.log", "w+") as err, \
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env) as proc:
            try:
                for line in proc.stdout:
                    if line.startswith(_EVENT):
                        if callback is not None:
                            callback(json.loads(line[len(_EVENT):]))
                    else:  # anything else a worker prints stays off our stdout (--json)
                        sys.stderr.write(line)
                code = proc.wait()
            except BaseException:
                proc.terminate()  # torchrun stops its workers
                proc.wait()
                raise
            err.seek(0)
            log = err.read()
        errors = sorted(tmp.glob("error-*.txt"))
        if errors:
            raise UserError(errors[0].read_text().strip())
        result = tmp / "result.json"
        if code != 0 or not result.is_file():
            tail = "\n".join(log.strip().splitlines()[-20:])
            raise RuntimeError(f"distributed training failed (torchrun exit code {code}):\n{tail}")
        return json.loads(result.read_text())


def _params_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _train(payload: dict, rank: int, world: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from compresslab.runs.store import RunStore, Step, write_json
    from compresslab.steps.common import build, data_of, data_seed, finish_model, history, wd_scales
    from compresslab.train import Recipe, fit

    step = Step("train", payload["spec"], label=payload["label"])
    s = step.spec
    device = torch.device("cpu")
    if payload.get("device", "cpu").startswith("cuda"):  # one GPU per rank, NCCL between them
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
        torch.cuda.set_device(device)
    data = data_of(s, device)
    model = build(s["model"], data, s["seed"]).to(device)
    if s.get("sync_bn"):  # BatchNorm statistics over the global batch, not each rank's slice
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    recipe = Recipe(**s["recipe"])
    wd = wd_scales(s, model)
    if recipe.precision == "fast" and data.x_train.dim() == 4:
        model.to(memory_format=torch.channels_last)  # before DDP builds its gradient buckets
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    events = rank == 0 and payload.get("events")
    callback = (lambda e: print(_EVENT + json.dumps(e), flush=True)) if events else None
    result = fit(ddp, data, recipe, loss=s.get("loss"), seed=data_seed(s), callback=callback,
                 weight_decay_scale={f"module.{k}": v for k, v in wd.items()} if wd else None,
                 shard=(rank, world))
    if os.environ.get(HASH_ENV):
        Path(os.environ[HASH_ENV], f"rank{rank}.sha256").write_text(_params_sha256(model) + "\n")
    if rank == 0:
        if s.get("sync_bn"):  # the checkpoint holds the plain architecture, with the trained weights
            plain = build(s["model"], data, s["seed"]).to(device)
            plain.load_state_dict(model.state_dict())
            model = plain
        out, ran = RunStore(payload["runs"]).run(step, lambda d: finish_model(d, model, data, extra=history(result),
                                                                             precision=recipe.precision))
        write_json(Path(payload["result"]), {"checkpoint": str(out), "ran": ran})
    dist.barrier()


def main(argv: list[str] | None = None) -> int:
    """A torchrun worker: ``python -m compresslab.steps.distributed PAYLOAD.json``."""
    import torch.distributed as dist

    argv = sys.argv[1:] if argv is None else argv
    payload: dict[str, Any] = json.loads(Path(argv[0]).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    try:
        _train(payload, rank, world)
    except UserError as e:
        Path(payload["errors"], f"error-{rank}.txt").write_text(str(e))
        return 2  # torchrun then stops the other ranks
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
