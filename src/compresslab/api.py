"""The public Python API: one function per CLI command."""
from __future__ import annotations

import functools
import inspect
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from compresslab import device as devices
from compresslab.compress.prune import METHODS
from compresslab.compress.quantize import quantized_layer_bits
from compresslab.compress.search import DEFAULT_BLOCKS, minibatch, search, write_csv, wrn_geometry
from compresslab.data.core import valid_tokens
from compresslab.errors import UserError
from compresslab.measure import cost_report, count_params, latency
from compresslab.measure.function import compare, mean_distance
from compresslab.measure.weights import plot_prunability, prunability
from compresslab.models import create_model
from compresslab.models.blocks import parse_block
from compresslab.runs.checkpoint import load_checkpoint, read_model_json
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps import build, check_step, dataset, run_step
from compresslab.steps.common import SCORE, checkpoint_logits, load_model
from compresslab.steps.common import checkpoint_step as _checkpoint_step
from compresslab.steps.common import parent_recipe as _parent_recipe
from compresslab.steps.specs import (
    data_spec,
    distill_spec,
    finetune_recipe,
    model_spec,
    prune_spec,
    quantize_spec,
    train_spec,
)
from compresslab.study.moonshine import KD, MODES, mode_loss
from compresslab.train import Recipe, evaluate_logits


def on_device(fn):
    """Give an API function the keyword arguments ``device`` (``auto``: CUDA when present,
    else CPU; ``cpu``, ``cuda``, ``cuda:N``, ``mps``) and ``deterministic`` (False): the call
    trains and measures under that :class:`compresslab.device.Runtime`."""

    @functools.wraps(fn)
    def wrapper(*args, device: str = "auto", deterministic: bool = False, **kwargs):
        with devices.using(devices.Runtime(device, deterministic)):
            return fn(*args, **kwargs)

    sig = inspect.signature(fn)
    extra = [inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, default="auto"),
             inspect.Parameter("deterministic", inspect.Parameter.KEYWORD_ONLY, default=False)]
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])
    return wrapper


def _task(progress, label: str):
    """A progress bar (its callback) for one piece of long work, or nothing."""
    return progress.task(label) if progress else nullcontext(None)


def _run(step: Step, parents: dict[str, Path], runs: str | Path, progress, label: str) -> tuple[Path, bool]:
    """Check ``step`` (before the store is touched: a rejected step writes nothing), then run
    or reuse it with a progress bar."""
    check_step(step, parents)
    with _task(progress, label) as callback:
        return run_step(step, RunStore(runs), parents, callback)


def _score(metrics: dict) -> dict:
    """A step's score per split from its ``metrics.json``: ``{"accuracy": ...}``, or on
    regression data ``{"centre_error_px": ...}``."""
    return {k: metrics[k] for k in SCORE.values() if k in metrics}


def load_recipe(recipe_file: Path | None, overrides: dict) -> Recipe:
    """A :class:`Recipe` from a YAML file of fields (or the defaults), with ``overrides`` on top."""
    fields: dict = {}
    if recipe_file is not None:
        path = Path(recipe_file)
        if not path.is_file():
            raise UserError(f"recipe file {path} not found")
        try:
            fields = yaml.safe_load(path.read_text()) or {}
        except yaml.MarkedYAMLError as e:
            line = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
            raise UserError(f"{path}: malformed YAML{line}: {e.problem}") from None
        if not isinstance(fields, dict):
            raise UserError(f"{path}: a recipe must be a mapping of fields, e.g. 'epochs: 10'")
    return Recipe.from_dict({**fields, **overrides})


@on_device
def train_model(model: str, data: str, *, options: dict | None = None, recipe_file: Path | None = None,
                overrides: dict | None = None, seed: int = 0, val_fraction: float = 0.1,
                runs: str | Path = "runs", progress=None, nproc: int = 1, sync_bn: bool = False,
                data_seed: int | None = None) -> dict:
    """Train ``model`` on ``data`` as a run-store step; returns the checkpoint path and metrics.

    ``seed`` draws the initial weights and the validation split; ``data_seed`` (default:
    ``seed``) the batch order and augmentation.

    The checkpoint directory is named by a hash of the full spec, so the same call twice
    trains once. ``nproc`` > 1 trains data-parallel in that many processes (torch DDP
    through torchrun, see :mod:`compresslab.steps.distributed`); ``nproc`` is then part
    of the spec.
    """
    if nproc < 1:
        raise UserError(f"--nproc {nproc}: must be at least 1 (the number of training processes)")
    recipe = load_recipe(recipe_file, overrides or {})
    ds = dataset(data, val_fraction, seed)
    model_s = model_spec(model, options)
    build(model_s, ds, seed)  # validate name and options before any work
    if nproc > 1 and min(recipe.batch_size, ds.sizes()["train"]) < nproc:
        raise UserError(f"--nproc {nproc}: each batch is split over the processes, so the batch size "
                        f"({recipe.batch_size}) and the training split ({ds.sizes()['train']}) need at least "
                        f"{nproc} examples")
    dev = devices.current().torch_device
    if sync_bn and (nproc < 2 or dev.type != "cuda"):
        raise UserError("--sync-bn synchronises BatchNorm across GPUs: it needs --nproc 2 or more and --device cuda")
    if nproc > 1 and dev.type == "cuda" and nproc > devices.cuda_count():
        raise UserError(f"--nproc {nproc} on CUDA runs one process per GPU; this machine has {devices.cuda_count()}")
    spec = train_spec(data_spec(data, val_fraction, seed), model_s, recipe, seed, nproc=nproc, sync_bn=sync_bn,
                      data_seed=data_seed)
    step = Step("train", spec, label=model)
    if nproc == 1:
        out, ran = _run(step, {}, runs, progress, f"train {model}")
    elif RunStore(runs).is_done(step):
        out, ran = RunStore(runs).path(step), False
    else:
        from compresslab.steps.distributed import launch

        with _task(progress, f"train {model}") as callback:
            r = launch({"spec": spec, "label": model, "runs": str(runs), "device": str(dev)}, nproc, callback)
        out, ran = Path(r["checkpoint"]), r["ran"]
    metrics = read_json(out / "metrics.json")
    return {"checkpoint": str(out), "reused": not ran, **_score(metrics),
            "train_seconds": metrics.get("train_seconds")}


def run_study(spec: str | Path | None = None, *, preset: str | None = None, runs: str | Path = "runs",
              progress=None, execution=None, device: str | None = None, deterministic: bool | None = None,
              data: str | None = None, epochs: int | None = None, subset: int | None = None,
              latency: bool | None = None) -> tuple[dict, Path]:
    """Run (or resume) a study from a YAML file or a preset (default: the ``default`` preset).
    ``execution`` (:class:`~compresslab.steps.executor.Execution`) picks the executor;
    ``device`` and ``deterministic`` override the spec's; ``data`` replaces its dataset, and
    ``epochs``, ``subset`` and ``latency`` shrink it for a smoke run
    (:func:`compresslab.study.spec.adjust`).
    Returns ``(results, output directory)``; see :func:`compresslab.study.run_kind`."""
    from compresslab.steps.executor import Execution, using
    from compresslab.study import load_spec, run_kind
    from compresslab.study.spec import adjust

    s = adjust(load_spec(spec, preset=preset), data=data, epochs=epochs, subset=subset, latency=latency)
    with using(execution or Execution()):
        return run_kind(s, runs, progress=progress, device=device, deterministic=deterministic)


@on_device
def model_info(*, checkpoint: Path | None = None, model: str | None = None, num_classes: int = 10,
               in_channels: int = 1, input_shape: tuple[int, ...] | None = None, options: dict | None = None,
               bits: int | None = None, with_latency: bool = False) -> dict:
    """Cost of a checkpoint or of a freshly built model (keys of ``cost_report``). Without an
    input shape (a fresh model and no ``input_shape``) MACs and BOPs are None and ``note`` says why."""
    layer_bits = None
    if checkpoint is not None:
        net, cfg = load_checkpoint(checkpoint, apply_transforms=False)
        name = cfg["model"]["name"]
        input_shape = input_shape or tuple(cfg["model"].get("input_shape") or ())
        if bits is None:
            layer_bits = quantized_layer_bits(net, cfg["transforms"]) or None
    else:
        name = model
        net = create_model(model, num_classes=num_classes, in_channels=in_channels, input_shape=input_shape,
                           **(options or {}))
        cfg = None
    if not input_shape and with_latency:
        raise UserError("--latency needs an input shape; pass --input-shape, e.g. 3x32x32 or 1x40")
    if input_shape and input_shape[0] != (in_channels if checkpoint is None else cfg["model"]["in_channels"]):
        raise UserError(f"--input-shape {'x'.join(map(str, input_shape))} has {input_shape[0]} channels "
                        f"but the model takes {in_channels if cfg is None else cfg['model']['in_channels']}")
    b = bits or 32
    result = {"model": name, "input_shape": list(input_shape) if input_shape else None,
              **cost_report(net, input_shape or None, weight_bits=b, act_bits=b, layer_bits=layer_bits)}
    if not input_shape:
        result["note"] = "MACs and BOPs depend on the input: pass --input-shape (e.g. 3x32x32 or 1x40) to count them"
    if with_latency:
        runtime = load_model(checkpoint) if checkpoint is not None else net.to(devices.current().torch_device)
        result["latency_ms"] = latency(runtime, input_shape)
        result["num_threads"] = torch.get_num_threads()
    return result


@on_device
def evaluate_checkpoint(checkpoint: Path, data: str, *, seed: int = 0, val_fraction: float = 0.1) -> dict:
    """Accuracy and mean cross-entropy of a checkpoint on every non-empty split; on
    regression data (``bragg:synthetic``) the mean Euclidean centre error (pixels) and the
    mean squared error instead."""
    ds = dataset(data, val_fraction, seed)
    splits = {}
    for split in ("train", "val", "test"):
        y = ds.split(split)[1]
        if len(y) == 0:
            continue
        logits = checkpoint_logits(checkpoint, ds, split)
        if ds.task == "regression":
            splits[split] = {"centre_error_px": mean_distance(logits, y),
                             "loss": float(torch.nn.functional.mse_loss(logits, y)), "n": len(y)}
            continue
        scored, labels = valid_tokens(logits, y)  # token-level data: the valid tokens
        splits[split] = {"accuracy": float((scored.argmax(-1) == labels).float().mean()),
                         "loss": float(torch.nn.functional.cross_entropy(scored, labels)), "n": len(y)}
    return {"checkpoint": str(checkpoint), "data": data, "splits": splits}


@on_device
def compare_checkpoints(a: Path, b: Path, data: str, *, split: str = "test", seed: int = 0,
                        val_fraction: float = 0.1) -> dict:
    """Every output metric of ``b`` against ``a`` on one split (keys of ``compare_logits``; on
    regression data those of ``compare_outputs``: output MSE and centre distances in pixels).
    On token-level data every metric is over the split's valid tokens (label not -100)."""
    ds = dataset(data, val_fraction, seed)
    y = ds.split(split)[1]
    return compare(checkpoint_logits(a, ds, split), checkpoint_logits(b, ds, split), labels=y, task=ds.task)


@on_device
def prune_checkpoint(checkpoint: Path, data: str, *, amount: float | str = "safe", method: str = "global-l1",
                     scope: str = "all", importance: str = "magnitude", global_channels: bool = False,
                     finetune_epochs: int = 1, lr: float | None = None, seed: int = 0, val_fraction: float = 0.1,
                     runs: str | Path = "runs", progress=None, round_to: int | None = None) -> dict:
    """Prune a checkpoint (then fine-tune) as a run-store step.

    ``method`` is ``global-l1`` / ``layer-l1`` / ``random`` (unstructured; masks are kept
    through fine-tuning) or ``channel`` (structured, through Torch-Pruning: the child is
    physically smaller; ``importance``, ``global_channels`` and ``round_to`` apply, and the result
    includes latency before and after, measured side by side).
    ``amount`` is a fraction, or ``"p_star"`` / ``"safe"`` (read off the weights;
    unstructured only). The fine-tuning recipe is the parent's own (when compresslab
    trained it) for ``finetune_epochs`` epochs at a tenth of its lr, or ``lr`` if given.
    """
    checkpoint = Path(checkpoint)
    if method not in (*METHODS, "channel"):
        raise UserError(f"--method {method!r}: use one of {', '.join((*METHODS, 'channel'))}")
    if method == "channel" and isinstance(amount, str):
        raise UserError("--auto applies to unstructured pruning; give --amount with --method channel")
    if not isinstance(amount, str) and not 0 < amount < 1:
        raise UserError(f"--amount {amount}: must be a fraction in (0, 1), e.g. 0.5")
    if finetune_epochs < 0:
        raise UserError(f"--finetune-epochs {finetune_epochs}: must be >= 0")
    ds = dataset(data, val_fraction, seed)
    checkpoint_logits(checkpoint, ds, "val" if ds.sizes()["val"] else "test")  # the checkpoint must fit the data
    recipe = _parent_recipe(checkpoint)
    ft = finetune_recipe(recipe, epochs=finetune_epochs, lr=lr or recipe.lr / 10, validated=True)
    step = Step("prune", prune_spec(data_spec(data, val_fraction, seed), amount, ft, seed, method=method, scope=scope,
                                    importance=importance, global_channels=global_channels, round_to=round_to),
                parents={"parent": _checkpoint_step(checkpoint)}, label=f"prune {checkpoint.name}")
    out, ran = _run(step, {"parent": checkpoint}, runs, progress, f"prune {checkpoint.name}")
    m = read_json(out / "metrics.json")
    result = {"checkpoint": str(out), "reused": not ran, "amount": m["amount"], **_score(m)}
    if method == "channel":

        before, after = load_model(checkpoint), load_model(out)
        shape = tuple(ds.input_shape)
        lat = {"before": latency(before, shape), "after": latency(after, shape)}
        result["structured"] = {**m["structured"], "latency_ms": lat,
                                "speedup": {k: lat["before"][k] / lat["after"][k] for k in lat["before"]}}
    else:
        result.update(sparsity=m["sparsity"]["global"], param_cosine=m["param_cosine"],
                      **({"amount_rule": m["amount_rule"]} if "amount_rule" in m else {}))
    return result


def checkpoint_prunability(checkpoint: Path, *, scope: str = "all", points: int = 101,
                           plot: Path | None = None) -> dict:
    """Data-free prunability of a checkpoint's weights (see ``measure.weights.prunability``)."""
    if points < 2:
        raise UserError(f"--points {points}: need at least 2 points on the curve")
    model, _ = load_checkpoint(checkpoint, apply_transforms=False)
    report = prunability(model, scope=scope, points=points)
    if plot is not None:
        plot = Path(plot)
        if not plot.parent.is_dir():
            raise UserError(f"--plot {plot}: directory {plot.parent} does not exist")
        plot_prunability(report, plot)
    return report


TEACHER_KINDS_CLI = ("teacher", "untrained", "uniform-noise", "gaussian-noise")


@on_device
def distill_checkpoint(checkpoint: Path, student: str, data: str, *, options: dict | None = None,
                       loss: dict[str, float] | None = None, temperature: float = 4.0, teacher_kind: str = "teacher",
                       noise: dict | None = None, at_points=None, hint_points=None, recipe_file: Path | None = None,
                       overrides: dict | None = None, seed: int = 0, val_fraction: float = 0.1,
                       runs: str | Path = "runs", progress=None, data_seed: int | None = None) -> dict:
    """Distil a student from a teacher checkpoint as a run-store step (seeds as in
    :func:`train_model`).

    ``teacher_kind``: ``teacher`` (the checkpoint), ``untrained`` (its architecture at
    random initialisation, seed ``seed``), or a noise teacher (``uniform-noise`` /
    ``gaussian-noise``; ``noise`` gives ``low``/``high`` or ``sigma``). The student's
    recipe is the teacher's own (when compresslab trained it) unless ``recipe_file`` /
    ``overrides`` say otherwise. Returns the student's checkpoint, accuracy, and every
    output metric against the teacher on the test split.
    """
    checkpoint = Path(checkpoint)
    if teacher_kind not in TEACHER_KINDS_CLI:
        raise UserError(f"--teacher-kind {teacher_kind!r}: use one of {', '.join(TEACHER_KINDS_CLI)}")
    parent = _checkpoint_step(checkpoint)
    ds = dataset(data, val_fraction, seed)
    checkpoint_logits(checkpoint, ds, "test")  # the teacher must fit the data
    student_s = model_spec(student, options)
    build(student_s, ds, seed)  # validate before any work
    if recipe_file is None:
        recipe = Recipe.from_dict({**_parent_recipe(checkpoint).model_dump(), **(overrides or {})})
    else:
        recipe = load_recipe(recipe_file, overrides or {})
    teacher = None
    if teacher_kind == "untrained":
        cfg = read_model_json(checkpoint)["model"]
        teacher = {"kind": "untrained", "seed": seed, "model": model_spec(cfg["name"], cfg.get("options"))}
    elif teacher_kind != "teacher":
        teacher = {"kind": teacher_kind, "seed": seed, **(noise or {})}
    spec = distill_spec(data_spec(data, val_fraction, seed), student_s, recipe, seed, temperature=temperature,
                        loss=loss or {"kd": 0.9, "ce": 0.1}, teacher=teacher, at_points=at_points,
                        hint_points=hint_points, data_seed=data_seed)
    step = Step("distill", spec, parents={} if teacher else {"teacher": parent}, label=f"distill {student}")
    out, ran = _run(step, {"teacher": checkpoint}, runs, progress, f"distill {student} from {checkpoint.name}")
    metrics = read_json(out / "metrics.json")
    x, y = ds.split("test")
    teacher_logits = evaluate_logits(load_model(checkpoint), x)
    student_logits = evaluate_logits(load_model(out), x)
    return {"checkpoint": str(out), "reused": not ran, "teacher_kind": teacher_kind, "loss": spec["loss"],
            **_score(metrics), "train_seconds": metrics.get("train_seconds"),
            "vs_teacher": compare(teacher_logits, student_logits, labels=y, task=ds.task)}


@on_device
def substitute_checkpoint(checkpoint: Path, block: str, data: str, *, mode: str = "at", beta: float = 1000.0,
                          epochs: int | None = None, seed: int = 0, runs: str | Path = "runs", progress=None) -> dict:
    """Moonshine: the teacher's WRN with every 3x3 conv replaced by ``block``, trained with the
    teacher's recipe by ``mode`` (``scratch``, ``at`` or ``at+kd``)."""
    if mode not in MODES:
        raise UserError(f"--loss {mode!r}: use one of {', '.join(MODES)}")
    parse_block(block)
    cfg = read_model_json(checkpoint)["model"]
    if not cfg["name"].startswith(("wrn-", "wrn1d-")):
        raise UserError(f"{checkpoint} is a {cfg['name']}; substitute needs a Wide ResNet teacher (wrn-D-K or wrn1d-D-K)")
    options = {**cfg.get("options", {}), "block": block}
    result = distill_checkpoint(checkpoint, cfg["name"], data, options=options, loss=mode_loss(mode, beta, KD()),
                                at_points=["group1", "group2", "group3"] if mode != "scratch" else None,
                                overrides={"epochs": epochs} if epochs else None, seed=seed, runs=runs,
                                progress=progress)
    result["params"] = count_params(load_checkpoint(result["checkpoint"])[0])
    result["teacher_params"] = count_params(load_checkpoint(checkpoint)[0])
    result["block"], result["mode"] = block, mode
    return result


@on_device
def blockswap_checkpoint(checkpoint: Path, data: str, *, budget: float, samples: int = 1000,
                         blocks: list[str] | None = None, batch: int = 128, seed: int = 0,
                         csv_path: Path | None = None, distill: bool = True, validate: int = 0,
                         validate_epochs: int | None = None, runs: str | Path = "runs", progress=None) -> dict:
    """BlockSwap on a WRN teacher: sample block mixes on a parameter budget, rank them by Fisher
    potential at initialisation on one minibatch, save every candidate as CSV, then (``distill``)
    train the best with attention transfer from the teacher. ``validate`` > 0 trains that many
    candidates, spread over the score ranking, with CE and reports the Spearman correlation
    between Fisher potential and their test accuracy."""
    cfg = read_model_json(checkpoint)["model"]
    name = cfg["name"]
    depth, widen, dim = wrn_geometry(name)
    if samples < 1 or batch < 2:
        raise UserError("--samples must be >= 1 and --batch >= 2")
    blocks = blocks or DEFAULT_BLOCKS
    ds = dataset(data, 0.1, seed)
    x, y = minibatch(ds.x_train, ds.y_train, batch, seed)
    with _task(progress, f"blockswap: score {samples} candidates") as callback:
        if callback is not None:
            callback({"event": "start", "epochs": 1, "steps_per_epoch": samples, "total_steps": samples})
        tick = (lambda i, n: callback({"event": "step", "epoch": 1, "step": i, "loss": 0.0, "acc": 0.0,
                                       "samples_per_s": 0.0})) if callback else None
        result = search(depth, widen, blocks, budget, x, y, samples=samples, dim=dim,
                        in_channels=cfg["in_channels"], num_classes=cfg["num_classes"], seed=seed, progress=tick,
                        device=devices.current().torch_device)
    csv_path = Path(csv_path) if csv_path else Path(runs) / "blockswap" / f"{name}-{int(budget)}-s{seed}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    result["csv"] = str(write_csv(result, csv_path))
    out = {k: v for k, v in result.items() if k != "candidates"}
    out["n_candidates"] = len(result["candidates"])
    if validate:
        from scipy.stats import spearmanr

        ranked = sorted(result["candidates"], key=lambda c: -c["score"])
        picks = [ranked[round(i * (len(ranked) - 1) / max(1, validate - 1))] for i in range(min(validate, len(ranked)))]
        t0 = time.perf_counter()
        trained = []
        for c in picks:
            r = train_model(name, data, options={"block": c["genotype"]}, seed=seed, runs=runs, progress=progress,
                            overrides={**_parent_recipe(checkpoint).model_dump(),
                                       **({"epochs": validate_epochs} if validate_epochs else {})})
            trained.append({**c, "accuracy": r["accuracy"]["test"]})
        rho, p = spearmanr([c["score"] for c in trained], [c["accuracy"] for c in trained]) if len(trained) > 2 \
            else (None, None)
        out["validation"] = {"candidates": trained, "spearman": None if rho is None or rho != rho else float(rho),
                             "p_value": None if p is None or p != p else float(p),
                             "seconds": time.perf_counter() - t0}
    if distill:
        student = distill_checkpoint(checkpoint, name, data, options={"block": result["best"]},
                                     loss={"ce": 1.0, "at": 1000.0}, at_points=["group1", "group2", "group3"],
                                     seed=seed, runs=runs, progress=progress)
        out["student"] = {k: student[k] for k in ("checkpoint", "accuracy", "vs_teacher", "reused")}
    return out


@on_device
def quantize_checkpoint(checkpoint: Path, data: str, *, scheme: str = "fake", bits: int | dict = 8,
                        act_bits: int | dict | None = None, per_channel: bool = False, symmetric: bool = True,
                        observer: str = "minmax", percentile: float = 99.99, calib_batches: int = 8,
                        calib_batch_size: int = 128, epochs: int = 3, lr: float | None = None, seed: int = 0,
                        val_fraction: float = 0.1, runs: str | Path = "runs", progress=None,
                        backend: str = "auto") -> dict:
    """Quantise a checkpoint as a run-store step (see :mod:`compresslab.steps.quantize`).

    ``scheme``: ``ptq-dynamic`` / ``ptq-static`` (real int8 kernels, bits must be 8),
    ``fake`` (simulated ``bits`` for weights, ``act_bits`` for layer inputs; calibrated
    on ``calib_batches`` training batches) or ``qat`` (fake-quant, then ``epochs`` of
    fine-tuning with the parent's recipe at a tenth of its lr, or ``lr``). ``backend`` picks
    the int8 kernels of ``ptq-*``: ``auto`` (torch.ao while torch has it, else ONNX Runtime),
    ``torch-ao`` or ``ort``. Returns the
    child's checkpoint, accuracy, cost at its bit widths, every output metric against
    the parent on the test split, and the latency of parent and child measured side by side.
    """
    checkpoint = Path(checkpoint)
    if epochs < 0:
        raise UserError(f"--epochs {epochs}: must be >= 0")
    parent = _checkpoint_step(checkpoint)
    done = [t["kind"] for t in read_model_json(checkpoint)["transforms"]]
    if done:
        raise UserError(f"{checkpoint} is already quantised ({', '.join(done)}); quantise its float parent instead")
    ds = dataset(data, val_fraction, seed)
    parent_logits = checkpoint_logits(checkpoint, ds, "test")  # the checkpoint must fit the data
    base = _parent_recipe(checkpoint)
    ft = finetune_recipe(base, epochs=epochs, lr=lr or base.lr / 10, validated=True)
    spec = quantize_spec(data_spec(data, val_fraction, seed), scheme, bits=bits, act_bits=act_bits,
                         per_channel=per_channel, symmetric=symmetric, observer=observer, percentile=percentile,
                         calib_batches=calib_batches, calib_batch_size=calib_batch_size,
                         recipe=ft if scheme == "qat" else None, seed=seed, backend=backend)
    step = Step("quantize", spec, parents={"parent": parent}, label=f"quantize {checkpoint.name}")
    out, ran = _run(step, {"parent": checkpoint}, runs, progress, f"quantize {checkpoint.name} ({scheme})")
    m = read_json(out / "metrics.json")
    shape = tuple(ds.input_shape)
    after = load_model(out)  # int8 kernels run on the CPU only: then the parent is timed there too
    before = load_model(checkpoint).to(devices.model_device(after))
    lat = {"parent": latency(before, shape), "child": latency(after, shape)}
    y = ds.split("test")[1]
    return {"checkpoint": str(out), "reused": not ran, "scheme": scheme, "quantization": m["quantization"],
            **_score(m), "cost": m["cost"],
            "parent_cost": cost_report(load_checkpoint(checkpoint, apply_transforms=False)[0], shape),
            "vs_parent": compare(parent_logits, checkpoint_logits(out, ds, "test"), labels=y, task=ds.task),
            "latency_ms": lat, "speedup": {k: lat["parent"][k] / lat["child"][k] for k in lat["parent"]},
            "simulated": scheme in ("fake", "qat"), "train_seconds": m.get("train_seconds")}


@on_device
def distill_data(data: str, *, ipc: int, method: str = "dm", init: str | None = None, iterations: int | None = None,
                 model: str = "convnet", options: dict | None = None, lr_img: float | None = None,
                 batch_real: int | None = None, dsa: bool = False, herding_epochs: int | None = None,
                 seed: int = 0, val_fraction: float = 0.1, runs: str | Path = "runs", progress=None) -> dict:
    """Distil ``ipc`` images per class of ``data`` (``dm``, ``dc``) or select them (``random``,
    ``herding``) as a ``distill-data`` step; returns its directory and the dataset name
    ``distilled:<dir>`` that every ``--data`` accepts."""
    from compresslab.steps.specs import distill_data_spec

    if iterations is not None and iterations < 1:
        raise UserError(f"--iterations {iterations}: must be at least 1")
    spec = distill_data_spec(data_spec(data, val_fraction, seed), method=method, ipc=ipc, seed=seed,
                             model=model_spec(model, options), init=init, iterations=iterations, lr_img=lr_img,
                             batch_real=batch_real, dsa=dsa or None, herding_epochs=herding_epochs)
    if spec.get("init", "real") not in ("real", "noise"):
        raise UserError(f"--init {spec['init']!r}: use real or noise")
    step = Step("distill-data", spec, label=f"distill-data {method} ipc {ipc}")
    out, ran = _run(step, {}, runs, progress, f"distill-data {method} ipc={ipc}")
    info = read_json(out / "distilled.json")
    return {"directory": str(out), "data": f"distilled:{out.resolve()}", "reused": not ran, "method": method, "ipc": ipc,
            "examples": ipc * info["num_classes"], "seconds": info["seconds"],
            "train_points_seen": info["train_points_seen"], "final_loss": info.get("final_loss")}


def _landscape_plot(result: dict, path: Path) -> Path:
    """The loss landscape of :func:`landscape_checkpoint` as SVG (report layer) or PNG
    (matplotlib), written atomically."""
    import os

    land, name = result["landscape"], Path(result["checkpoint"]).name
    title = f"loss around {name} ({land['split']}, filter-normalised)"
    if path.suffix.lower() == ".svg":
        from compresslab.report.svg import COLORS, Plot, field

        if land["dims"] == 1:
            p = Plot(title, "step along d1 (× filter norm)", "cross-entropy")
            p.line(land["coords"], land["loss"], color=COLORS["parent"], title="loss")
            p.points(land["coords"], land["loss"], r=2.5, color=COLORS["parent"],
                     titles=[f"a = {a:.3g}: loss {v:.4g}, error {e:.3f}"
                             for a, v, e in zip(land["coords"], land["loss"], land["error"])])
            p.rule(0.0, axis="x", title="θ (the checkpoint)")
            text = p.svg()
        else:
            text = field(land["coords"], land["coords"], land["loss"], title=title, xlabel="d1", ylabel="d2",
                         label="loss", log=True, centre_title=f"θ: loss {land['centre']['loss']:.4g}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # umask permissions, unlike mkstemp's 0600
        tmp.write_text(text)
        os.replace(tmp, path)
        return path
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    from compresslab.figures import save_png

    fig = Figure(figsize=(6, 4.5) if land["dims"] == 2 else (6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if land["dims"] == 1:
        ax.plot(land["coords"], land["loss"], marker="o", ms=3)
        ax.axvline(0.0, color="#555", ls="--", lw=1)
        ax.set_xlabel("step along d1 (× filter norm)")
        ax.set_ylabel("cross-entropy")
        ax.grid(alpha=0.3)
    else:
        z = torch.tensor(land["loss"]).T.clamp_min(1e-12).numpy()  # rows = d2
        c = ax.contourf(land["coords"], land["coords"], z, levels=20, norm=LogNorm(z.min(), z.max()))
        fig.colorbar(c, ax=ax, label="cross-entropy")
        ax.plot([0], [0], marker="*", color="white", mec="black", ms=12)
        ax.set_xlabel("d1")
        ax.set_ylabel("d2")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


@on_device
def landscape_checkpoint(checkpoint: Path, data: str, *, dims: int = 1, span: float = 1.0, points: int = 21,
                         split: str = "train", hessian_samples: int = 32, max_examples: int | None = 2048,
                         batch_size: int = 256, seed: int = 0, masked: bool = True, out: Path | None = None,
                         val_fraction: float = 0.1, progress=None) -> dict:
    """Sharpness of a float checkpoint: Hutchinson's estimate of the Hessian trace of the mean
    cross-entropy (:func:`compresslab.measure.sharpness.hessian_trace`) and the loss landscape
    along ``dims`` filter-normalised random directions (seeds ``seed``, ``seed + 1``;
    :mod:`compresslab.measure.landscape`), both on the first ``max_examples`` of ``split``.

    With ``masked`` (default) the entries of prunable parameters that are exactly zero count
    as pruned: the Hessian and the directions then live on the kept coordinates only (a pruned
    child's landscape is that of the network it is). ``summary``: loss at θ, the largest rise
    on the grid, and ``sharpness`` = mean loss increase at radius span/2. ``out`` (.svg or
    .png): the plot. The train/val split is the one the checkpoint's ``spec.json`` records
    for ``data`` (a run-store step), else seed 0 with ``val_fraction``. Nothing is written when
    an argument is rejected.
    """
    from compresslab.measure.landscape import filter_normalised_direction, landscape_summary, loss_landscape
    from compresslab.measure.sharpness import hessian_trace
    from compresslab.models.masks import prunable_parameters

    if dims not in (1, 2):
        raise UserError(f"--dims must be 1 or 2, got {dims}")
    if not span > 0:
        raise UserError(f"--span must be > 0, got {span}")
    if points < 3:
        raise UserError(f"--points must be >= 3, got {points}")
    if hessian_samples < 0:
        raise UserError(f"--hessian-samples must be >= 0 (0: skip the Hessian), got {hessian_samples}")
    if max_examples is not None and max_examples < 1:
        raise UserError(f"--max-examples must be >= 1, got {max_examples}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out) if out is not None else None
    if out is not None and out.suffix.lower() not in (".svg", ".png"):
        raise UserError(f"--out {out}: write a .svg or a .png file")
    if out is not None and out.is_dir():
        raise UserError(f"--out {out} is a directory; name a .svg or .png file")
    cfg = read_model_json(checkpoint)
    if cfg.get("transforms"):
        kinds = ", ".join(t["kind"] for t in cfg["transforms"])
        raise UserError(f"{checkpoint} is transformed ({kinds}); a landscape needs a float checkpoint "
                        "(use its parent or a pruned child)")
    split_of = {"seed": 0, "val_fraction": val_fraction, "from": "default"}
    spec_file = Path(checkpoint) / "spec.json"
    recorded = (read_json(spec_file).get("spec", {}).get("data") or {}) if spec_file.is_file() else {}
    if recorded.get("name") == data:  # the split the checkpoint was trained on
        split_of = {"seed": recorded["seed"], "val_fraction": recorded["val_fraction"], "from": "spec.json"}
    ds = dataset(data, split_of["val_fraction"], split_of["seed"])
    if ds.task != "classification":
        raise UserError(f"landscape measures cross-entropy; {data} is a {ds.task} dataset")
    checkpoint_logits(checkpoint, ds, split)  # one clear line when the checkpoint does not fit the data
    model = load_checkpoint(checkpoint, apply_transforms=False)[0].to(devices.current().torch_device)
    mask = None
    if masked:
        mask = {n: p.detach() != 0 for n, p in prunable_parameters(model).items() if bool((p == 0).any())}
    x, y = ds.split(split)
    if max_examples is not None:
        x, y = x[:max_examples], y[:max_examples]
    result = {"checkpoint": str(checkpoint), "data": data, "data_split": split_of, "split": split,
              "n": int(y.shape[0]), "seed": seed,
              "masked": bool(mask), "pruned": sum(int((~m).sum()) for m in (mask or {}).values()),
              "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    seconds = {}
    if hessian_samples:
        batches = -(-int(y.shape[0]) // batch_size)
        with _task(progress, f"Hessian trace ({hessian_samples} samples)") as callback:
            tick = _ticker(callback, batches)
            t0 = time.perf_counter()
            h = hessian_trace(model, x, y, samples=hessian_samples, batch_size=batch_size, seed=seed, mask=mask,
                              tick=tick)
            seconds["hessian"] = time.perf_counter() - t0
        result["hessian"] = h
    dirs = [filter_normalised_direction(model, seed=seed + k, mask=mask) for k in range(dims)]
    with _task(progress, f"{dims}-D landscape, {points ** dims} points") as callback:
        tick = _ticker(callback, points ** dims + (0 if points % 2 else 1))
        t0 = time.perf_counter()
        land = loss_landscape(model, ds, dirs, span=span, points=points, split=split, max_examples=max_examples,
                              tick=tick)
        seconds["landscape"] = time.perf_counter() - t0
    result["landscape"] = land
    result["summary"] = landscape_summary(land)
    result["seconds"] = seconds
    if out is not None:
        result["out"] = str(_landscape_plot(result, out))
    return result


def _ticker(callback, total: int):
    """A no-argument tick feeding a progress callback ``total`` steps (or None)."""
    if callback is None:
        return None
    callback({"event": "start", "epochs": 1, "steps_per_epoch": total, "total_steps": total})
    count = [0]

    def tick():
        count[0] += 1
        callback({"event": "step", "epoch": 1, "step": count[0], "loss": 0.0, "acc": 0.0, "samples_per_s": 0.0})

    return tick
