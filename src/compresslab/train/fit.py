"""The training loop, plus evaluation helpers.

``fit`` is deliberately a plain loop over tensor-indexed batches: same model
initialisation + recipe + seed give bit-identical weights on CPU (and on CUDA under
deterministic algorithms). It trains where the model is: the training split moves to that
device once, and batch order and augmentation are drawn there by a generator on the
device; a split too large for the device streams from host memory instead (``stream``).
On CPU its per-step overhead over a hand-written loop is a few small tensor ops and one
``.item()``; on CUDA the loss is read back only every ``check_every`` steps, so the
host never waits for the GPU in between (see ``benchmarks/train_throughput.py`` and
``benchmarks/gpu_throughput.py``). ``recipe.compile`` runs the model through
``torch.compile`` (``benchmarks/compile_cpu.py``).
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compresslab.data.core import IGNORE_INDEX, Dataset, augment, batches, pk_order, random_resized_crop, stream_batches, valid_tokens
from compresslab.data.stream import LazyImages, loader_batches
from compresslab.device import model_device, precision_flags
from compresslab.errors import UserError
from compresslab.train.losses import Loss, StepContext, Term, compose_loss
from compresslab.train.recipe import Recipe


@dataclass
class FitResult:
    """What ``fit`` did: one history entry per epoch (``epoch``, ``loss``, ``acc``,
    ``seconds``, ``samples_per_s``; training-mode running values; on regression data
    ``error``, the mean Euclidean distance of outputs to targets, instead of ``acc``; on
    token-level data ``acc`` is the fraction of valid tokens, label not -100, predicted right), wall
    seconds, and the number of optimizer steps taken."""

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has the AVX-512/AMX support oneDNN needs for fast bf16.

    Without it (e.g. AVX2-only CPUs) bf16 matmuls and convolutions are emulated and
    autocast makes training many times *slower*, so ``precision="fast"`` skips it.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: On CUDA, steps between loss read-backs (the NaN check and the progress events).
CHECK_EVERY = 50
#: ``fit(stream=None)`` streams the training split from host memory when it would take more
#: than this fraction of the device's free memory (:func:`should_stream`).
STREAM_FRACTION = 0.5
#: A run whose train accuracy is still at chance after this many epochs, and at least
#: :data:`HEALTH_STEPS` optimizer steps, with a flat loss, has collapsed (see :func:`_collapsed`).
#: The step floor keeps tiny training sets (a distilled set is one batch an epoch) from being
#: judged after three steps.
HEALTH_EPOCHS = 3
HEALTH_STEPS = 30


def should_stream(nbytes: int, free_bytes: int | None) -> bool:
    """Whether a training split of ``nbytes`` is too large to move to a device with
    ``free_bytes`` free: more than :data:`STREAM_FRACTION` of it (the rest is for the
    model, its activations and the optimizer state). False when ``free_bytes`` is None
    (unknown)."""
    return free_bytes is not None and nbytes > STREAM_FRACTION * free_bytes


def device_free_bytes(device: torch.device) -> int | None:
    """Memory a new tensor could take on ``device``: on CUDA the driver's free memory plus
    what torch's caching allocator holds unused; None on other devices (unknown, or the
    host memory the data are in already)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def auto_stream(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> bool:
    """What ``fit(stream=None)`` does: stream ``(x, y)`` when they are not on ``device``
    already and :func:`should_stream` given :func:`device_free_bytes`."""
    return x.device != device and should_stream(x.nbytes + y.nbytes, device_free_bytes(device))


def _compile(model: nn.Module) -> tuple[nn.Module, tuple[type[BaseException], ...]]:
    """``torch.compile(model)`` and the exception its backend raises when it cannot work
    here (no C++ compiler, no triton, ...), or a one-line :class:`UserError` right away."""
    try:
        from torch._dynamo.exc import BackendCompilerFailed

        return torch.compile(model), (BackendCompilerFailed,)
    except (ImportError, RuntimeError) as e:
        raise UserError(_compile_message(e)) from None


def _compile_message(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (f"recipe: compile: torch.compile does not work here ({lines[0][:160] if lines else type(e).__name__}); "
            "use compile: false")


def _nan_message(value: float, epoch: int, step: int, global_step: int) -> str:
    what = "nan" if math.isnan(value) else "inf"
    return (f"loss became {what} at epoch {epoch}, step {step} (global step {global_step}); "
            "lower the learning rate or check the data")


def _collapsed(history: list[dict[str, float]], num_classes: int) -> str | None:
    """A one-line reason when training has silently collapsed: after ``len(history)`` epochs
    (the caller judges once) the train accuracy is within 10% of chance and the loss moved by
    under 1%."""
    if num_classes < 2:
        return None
    first, last = history[0]["loss"], history[-1]["loss"]
    chance = 1.0 / num_classes
    if history[-1]["acc"] <= 1.1 * chance and abs(last - first) <= 0.01 * abs(first):
        return (f"training collapsed: train accuracy {100 * history[-1]['acc']:.1f}% is at chance "
                f"({100 * chance:.1f}%) after {len(history)} epochs with a flat loss ({first:.4f} -> {last:.4f}); "
                "lower the learning rate, change the optimizer, or check the labels")
    return None


def default_loss(data: Dataset) -> dict[str, float]:
    """The loss ``fit`` trains with when given none: ``{"mse": 1.0}`` on regression data
    (:attr:`Dataset.task`), else ``{"ce": 1.0}``."""
    return {"mse": 1.0} if data.task == "regression" else {"ce": 1.0}


def _score(total: torch.Tensor, seen: int, regression: bool) -> dict[str, float]:
    """The running training score of an epoch: ``acc``, or on regression data ``error`` (the
    mean Euclidean distance of outputs to targets)."""
    return {"error" if regression else "acc": total.item() / seen}


def _event_score(total: torch.Tensor, seen: int, regression: bool) -> dict[str, float]:
    """:func:`_score` for a callback event, which always carries ``acc`` (nan on regression data)."""
    score = _score(total, seen, regression)
    return {"acc": float("nan"), **score} if regression else score


def _sum_over_ranks(loss_sum: float, correct: torch.Tensor, seen: int,
                    scored: torch.Tensor | None = None) -> tuple[float, torch.Tensor, int, torch.Tensor | None]:
    """Epoch totals over every rank of the initialised process group (unchanged without one);
    ``scored`` (token-level data: the valid tokens counted) is summed too when given."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return loss_sum, correct, seen, scored
    sums = torch.tensor([loss_sum, float(correct), float(seen), float(scored if scored is not None else 0)],
                        dtype=torch.float64)
    dist.all_reduce(sums)
    return float(sums[0]), sums[1], int(sums[2]), (None if scored is None else sums[3])


def _count(seen: int, scored: torch.Tensor | None) -> int:
    """What an epoch's accuracy divides by: examples, or on token-level data the valid tokens
    (at least 1, so an epoch of ignored tokens scores 0 rather than failing)."""
    return seen if scored is None else max(1, int(scored))


def fit(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    *,
    loss: dict[str, float] | Loss | None = None,
    terms: dict[str, Term] | None = None,
    seed: int = 0,
    callback: Callable[[dict[str, Any]], None] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    max_steps: int | None = None,
    weight_decay_scale: dict[str, float] | None = None,
    shard: tuple[int, int] | None = None,
    check_every: int | None = None,
    health: bool = True,
    stream: bool | None = None,
) -> FitResult:
    """Train ``model`` in place on ``data.x_train`` / ``data.y_train`` following ``recipe``.

    - ``loss``: ``{term name: weight}`` (default ``{"ce": 1.0}``, on regression data
      ``{"mse": 1.0}``: :func:`default_loss`), built from the registered
      terms with the recipe's label smoothing and no teacher, ``terms`` supplying extra
      ready ones (see :func:`compresslab.train.losses.compose_loss`); or a ready
      :class:`~compresslab.train.losses.Loss` (as :func:`compresslab.compress.distill.distill` passes).
    - ``seed``: seeds torch's global RNG and a private generator for batch order and
      augmentation, so reruns from the same initial weights are bit-identical on CPU.
    - ``callback(event)``: receives ``start`` / ``step`` / ``epoch`` event dicts
      (epochs and steps count from 1); ``fit`` itself never prints.
    - ``after_step(model)``: called after every optimizer step (e.g. re-apply masks).
    - ``max_steps``: stop after this many optimizer steps (the schedule still spans
      ``recipe.epochs``).
    - ``weight_decay_scale``: ``{parameter name: factor}`` multiplies the recipe's weight
      decay for those parameters (e.g. structured layers by their compression ratio).
    - ``shard=(rank, world_size)``: data-parallel training (the caller wraps ``model`` in
      ``DistributedDataParallel``, which averages gradients). Every rank draws the same
      global batches (and augmentation) from ``seed`` and trains on contiguous slice
      ``rank`` of ``world_size``; a tail batch with fewer than ``world_size`` examples is
      dropped by every rank. Each slice's loss is weighted by its share of the batch, so
      the averaged gradient is that of the whole batch. Step events describe this rank's
      slices; under an initialised process group the history sums over all ranks.

    Training runs on the model's device; the training split moves there once (a no-op
    when it is there already), unless it streams.

    ``stream``: keep the training split in host memory and copy one batch at a time to the
    device (:func:`~compresslab.data.core.stream_batches`: on CUDA gathered into pinned
    memory, copied ``non_blocking`` on a side stream, the next batch's copy overlapping the
    current step). None (default) decides by :func:`auto_stream`: stream when the split is
    not on the device already and would take more than :data:`STREAM_FRACTION` of the
    device's free memory (:func:`device_free_bytes`; only CUDA reports it, so elsewhere
    None means resident); True forces streaming, False forces the resident split.
    Streaming draws the batch order from a CPU generator seeded with ``seed`` and the
    augmentation on the device, as the resident path does. On CPU, where the resident
    path's generator is that CPU generator, streamed and resident training give
    bit-identical weights and history. On CUDA the resident path draws its order on the
    device, so the two see different (equally seeded, reproducible) batch orders.
    Evaluation is not affected: :func:`evaluate_logits` moves one batch at a time.

    ``recipe.compile``: the forward (and so the backward) runs through
    ``torch.compile(model)``; ``model`` itself is the one trained and returned, and
    feature hooks (:func:`~compresslab.models.capture_features`) still fire. Compiling
    costs seconds to minutes on the first batch and again on the first batch of another
    size (an epoch's last); where torch.compile cannot work (no C++ compiler for the CPU
    backend, no triton on CUDA) the first step raises a one-line :class:`UserError`.

    Precision (``recipe.precision``):

    - ``fp32``: true fp32 (TF32 off on CUDA); ``tf32``: TF32 matmuls and convolutions on CUDA;
    - ``fast``: 4-D inputs and the model go channels_last, and the forward runs under bf16
      autocast on CUDA, and on CPUs that support bf16 natively (:func:`native_bf16`);
      weights, loss and logits stay float32, and the model is returned in contiguous
      memory format.

    A non-finite loss raises :class:`UserError`. On CPU it is caught before its optimizer
    step: parameters, buffers (BatchNorm statistics) and optimizer state are those of the
    previous step. With ``check_every`` > 1 (default on CUDA: :data:`CHECK_EVERY`; on CPU: 1)
    the loss is read back every ``check_every`` steps and at each epoch's end: the error
    names the first bad step, but up to ``check_every - 1`` further steps have already
    changed the model (a failed step saves nothing anyway).
    Running out of device memory is a :class:`UserError` naming the batch size.

    ``health``: after :data:`HEALTH_EPOCHS` epochs (when the recipe has more), a train
    accuracy at chance with a flat loss stops training with a :class:`UserError` instead of
    finishing a collapsed run.
    """
    device = model_device(model)
    torch.manual_seed(seed)
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
    if isinstance(loss, Loss):
        loss_fn = loss
    else:
        loss_fn = compose_loss(loss or default_loss(data), terms, label_smoothing=recipe.label_smoothing)
    regression = data.task == "regression"
    token = data.token_level  # labels (N, L): accuracy counts the valid tokens

    x, y = data.x_train, data.y_train
    if stream is None:
        stream = auto_stream(x, y, device)
    x, y = (x.cpu(), y.cpu()) if stream else (x.to(device), y.to(device))
    # streamed and P x K orders are drawn on the CPU: by the device's generator on CPU, else a CPU one
    cpu_gen = gen if gen.device.type == "cpu" else torch.Generator().manual_seed(seed)
    n = int(y.shape[0])
    if n == 0:
        raise UserError(f"dataset {data.name!r}: the training split is empty")
    if recipe.augment != "none" and x.dim() not in (3, 4):
        raise UserError(f"recipe: augment: {recipe.augment!r} needs 1-D or 2-D inputs, "
                        f"got examples of shape {tuple(x.shape[1:])}; use augment: none")
    bs = recipe.batch_size
    steps_per_epoch = math.ceil(n / bs) if recipe.sampler == "random" else max(1, n // bs)
    if shard is not None:
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard={shard}: need 0 <= rank < world_size")
        if min(bs, n) < world:
            raise UserError(f"batch size {bs} on {n} training examples cannot be split over {world} processes; "
                            f"use a batch size of at least {world}")
        steps_per_epoch = n // bs + (n % bs >= world)
    total_steps = recipe.epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max(0, max_steps))
    if recipe.augment.startswith("rrc") and x.dim() != 4:
        raise UserError(f"recipe: augment: {recipe.augment!r} needs 2-D images, got examples of shape "
                        f"{tuple(x.shape[1:])}; use crop or crop-flip")
    rrc = recipe.augment.startswith("rrc")
    crop = recipe.crop_padding if recipe.augment in ("crop", "crop-flip") else 0
    flip = recipe.augment.endswith("-flip") and x.dim() == 4
    fast = recipe.precision == "fast"
    channels_last = fast and x.dim() == 4
    bf16 = fast and (device.type == "cuda" or (device.type == "cpu" and native_bf16()))
    if check_every is None:  # on CPU reading the loss is not a device sync
        check_every = 1 if device.type == "cpu" else CHECK_EVERY
    check_every = max(1, check_every)

    if callback is not None:
        callback({"event": "start", "epochs": recipe.epochs, "steps_per_epoch": steps_per_epoch,
                  "total_steps": total_steps})

    history: list[dict[str, float]] = []
    judged = False  # the collapse check runs once
    global_step = 0
    was_training = model.training
    t_fit = time.perf_counter()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        if total_steps == 0:
            return FitResult(history, time.perf_counter() - t_fit, 0)
        if weight_decay_scale is None:
            params = [p for p in model.parameters() if p.requires_grad] + loss_fn.parameters()
        else:  # one group per distinct scale of the recipe's weight decay
            scales: dict[float, list] = {}
            for name, p in model.named_parameters():
                if p.requires_grad:
                    scales.setdefault(float(weight_decay_scale.get(name, 1.0)), []).append(p)
            scales.setdefault(1.0, []).extend(loss_fn.parameters())
            params = [{"params": ps, "weight_decay": recipe.weight_decay * k} for k, ps in scales.items() if ps]
        optimizer = recipe.make_optimizer(params)
        scheduler = recipe.make_scheduler(optimizer, steps_per_epoch)
        model.train()
        # Buffers (BN statistics) are updated by the forward pass; keep the previous
        # step's values so a failing step can be undone.
        buffers = list(model.buffers())
        saved = [b.clone() for b in buffers]
        amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        forward, compile_failed = _compile(model) if recipe.compile else (model, ())
        capture = contextlib.nullcontext({})
        if loss_fn.feature_points:
            from compresslab.models import capture_features

            capture = capture_features(model, loss_fn.feature_points)

        with capture as features, precision_flags(recipe.precision, device):
            for epoch in range(1, recipe.epochs + 1):
                t0 = time.perf_counter()
                seen = 0
                loss_sum = 0.0
                # correct predictions (regression: summed distances to the targets), read back at epoch end
                correct = torch.zeros((), dtype=torch.float32 if regression else torch.long, device=device)
                scored = torch.zeros((), dtype=torch.long, device=device) if token else None  # valid tokens seen
                window: list[tuple[torch.Tensor, int, int, int]] = []  # CUDA: (loss, batch, step, global step)
                if recipe.sampler == "pk":  # class-balanced runs, drawn on the CPU
                    order = pk_order(y, bs, recipe.pk_instances, steps_per_epoch, generator=cpu_gen)
                    epoch_batches = ((i.to(device), x[i.to(x.device)].to(device), y[i.to(y.device)].to(device))
                                     for i in order.split(bs))
                elif isinstance(x, LazyImages):  # images on disk: decoded by DataLoader workers, same order
                    epoch_batches = loader_batches(x, y, bs, device, generator=cpu_gen)
                else:
                    epoch_batches = (stream_batches(x, y, bs, device, generator=cpu_gen) if stream
                                     else batches(x, y, bs, shuffle=True, generator=gen))
                for step, (idx, xb, yb) in enumerate(epoch_batches, 1):
                    if shard is not None and yb.shape[0] < world:
                        break  # a tail batch too small to split: every rank drops it
                    global_step += 1
                    if rrc:  # of the whole batch, so every rank's generator stays in step
                        xb = random_resized_crop(xb, generator=gen)
                    if crop or flip:
                        xb = augment(xb, crop_padding=crop, flip=flip, generator=gen)
                    weight = 1.0
                    if shard is not None:
                        global_nb = yb.shape[0]
                        idx, xb, yb = (t.tensor_split(world)[rank] for t in (idx, xb, yb))
                        weight = world * yb.shape[0] / global_nb
                    if channels_last:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    if buffers:
                        torch._foreach_copy_(saved, buffers)
                    nb = yb.shape[0]
                    try:
                        with amp():
                            out = forward(xb)
                        logits = out.float()
                        ctx = StepContext(model, xb, yb, idx, logits, features, epoch, step, global_step)
                        total, _ = loss_fn(ctx)
                        if check_every == 1:
                            loss_v = total.item()  # the step's one read-back (on CPU not a device sync)
                            if not math.isfinite(loss_v):
                                if buffers:
                                    torch._foreach_copy_(buffers, saved)
                                raise UserError(_nan_message(loss_v, epoch, step, global_step))
                            loss_sum += loss_v * nb
                        else:
                            window.append((total.detach(), nb, step, global_step))
                        optimizer.zero_grad(set_to_none=True)
                        (total if weight == 1.0 else total * weight).backward()
                        optimizer.step()
                    except torch.OutOfMemoryError as e:
                        raise UserError(f"out of {device.type} memory at batch size {bs} "
                                        f"({str(e).splitlines()[0][:120]}); use a smaller batch size, "
                                        f"e.g. --batch-size {max(1, bs // 2)}") from None
                    except compile_failed as e:
                        raise UserError(_compile_message(e)) from None
                    scheduler.step()
                    if after_step is not None:
                        after_step(model)

                    seen += nb
                    if regression:
                        correct.add_(torch.linalg.vector_norm(logits.detach() - yb, dim=1).sum())
                    elif token:
                        keep = yb != IGNORE_INDEX
                        correct.add_(((logits.detach().argmax(-1) == yb) & keep).sum())
                        scored.add_(keep.sum())
                    else:
                        correct.add_((logits.detach().argmax(1) == yb).sum())
                    last = global_step >= total_steps or step == steps_per_epoch
                    if window and (len(window) >= check_every or last):
                        summed, loss_v = _drain(window, epoch)
                        loss_sum += summed
                    if callback is not None and (check_every == 1 or not window):
                        callback({"event": "step", "epoch": epoch, "step": step, "loss": loss_v,
                                  **_event_score(correct, _count(seen, scored), regression),
                                  "samples_per_s": seen / max(time.perf_counter() - t0, 1e-9)})
                    if global_step >= total_steps:
                        break
                if window:  # a DDP tail batch ended the epoch early
                    loss_sum += _drain(window, epoch)[0]
                seconds = time.perf_counter() - t0
                if shard is not None:
                    loss_sum, correct, seen, scored = _sum_over_ranks(loss_sum, correct, seen, scored)
                record = {"epoch": epoch, "loss": loss_sum / seen, **_score(correct, _count(seen, scored), regression),
                          "seconds": seconds, "samples_per_s": seen / max(seconds, 1e-9)}
                history.append(record)
                if callback is not None:
                    callback({"event": "epoch", **record, **_event_score(correct, _count(seen, scored), regression)})
                if global_step >= total_steps:
                    break
                if (health and not judged and recipe.epochs > len(history) >= HEALTH_EPOCHS
                        and global_step >= HEALTH_STEPS and not regression):
                    judged = True
                    reason = _collapsed(history, data.num_classes)
                    if reason:
                        raise UserError(reason)
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    return FitResult(history, time.perf_counter() - t_fit, global_step)


def _drain(window: list[tuple[torch.Tensor, int, int, int]], epoch: int) -> tuple[float, float]:
    """Read back a window of step losses at once (one device sync) and empty it: their
    batch-weighted sum and the last loss, or a :class:`UserError` naming the first
    non-finite one."""
    losses = torch.stack([w[0] for w in window]).double().cpu()
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        _, _, step, global_step = window[i]
        raise UserError(_nan_message(float(losses[i]), epoch, step, global_step))
    summed = float((losses * torch.tensor([w[1] for w in window], dtype=torch.float64)).sum())
    window.clear()
    return summed, float(losses[-1])


def evaluate_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """float32 logits of ``model`` on ``x`` in eval mode (the train/eval flag is restored).
    Batches run on the model's device; the logits come back on ``x``'s. ``x`` may be token
    ids (int64 ``(N, L)``); a token classifier's logits are then ``(N, L, K)``."""
    was_training = model.training
    model.eval()
    dev = model_device(model)
    try:
        with torch.inference_mode():
            outs = [model(x[i:i + batch_size].to(dev)).float().to(x.device)
                    for i in range(0, x.shape[0], batch_size)]
            if not outs:
                outs = [model(x[:0].to(dev)).float().to(x.device)]
    finally:
        model.train(was_training)
    return torch.cat(outs)  # outside inference mode: a normal tensor usable in autograd code


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (``nan`` for an empty split); with token
    labels ``(N, L)``, the fraction of valid tokens (label not -100) predicted right."""
    if y.shape[0] == 0:
        return float("nan")
    logits, y = valid_tokens(evaluate_logits(model, x, batch_size), y)
    if y.shape[0] == 0:
        return float("nan")
    return float((logits.argmax(-1) == y).float().mean())
