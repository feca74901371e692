"""The Python API on live objects: ``nn.Module``s and data in memory, no run store.

>>> import compresslab
>>> compresslab.compare(teacher, student, (x, y))      # every output metric, and CKA
>>> compresslab.cost(student, x[:1])                   # params, MACs, BOPs, bytes, latency
>>> small = compresslab.prune(teacher, amount=0.5)     # a pruned copy
>>> int8 = compresslab.quantize(teacher, scheme="dynamic")
>>> compresslab.distill(teacher, student, (x, y), recipe={"epochs": 5, "optimizer": "adam", "lr": 1e-3})

Each function calls the same lower-layer code as the command line and the run-store
steps (``measure.function.compare``, ``measure.cka``, ``measure.cost``,
``measure.weights.prunability``, ``compress.prune``, ``compress.quantize``,
``compress.distill.distill``, ``train.fit``), so a number here is the number a study reports.

**Data** (:func:`as_data`) may be a tensor of inputs, a tuple ``(x, y)``, a dict of tensors
(model inputs by name, plus ``labels``), a torch ``DataLoader`` (or any iterable) yielding
``(x, y)`` tuples or dicts, or a Hugging Face ``datasets.Dataset``. It is materialised once
into tensors in memory: a DataLoader is iterated to the end, a ``datasets.Dataset`` is read
whole (its non-numeric columns, e.g. raw text, are dropped). Sequences of different lengths
are right-padded to the longest: ``labels`` with -100 (ignored), every other key with 0.
Dict inputs are stacked into one ``(N, K, L)`` tensor and the model is called through
:class:`~compresslab.models.io.DictInputs`; outputs may be tensors, Hugging Face
``ModelOutput``s, dicts or tuples (:func:`~compresslab.models.io.logits_of`).

**Token-level outputs** ``(N, L, C)`` are scored at the positions whose label is not -100
and whose ``attention_mask`` (when the data have one) is 1, as
:mod:`compresslab.measure.function` scores them.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from compresslab.compress import quantize as q
from compresslab.compress.distill import distill as _distill
from compresslab.compress.prune import apply_masks, resolve_amount
from compresslab.compress.prune import prune as _prune
from compresslab.data.core import IGNORE_INDEX, Dataset
from compresslab.errors import UserError
from compresslab.measure.cka import cka_between
from compresslab.measure.cost import cost_report
from compresslab.measure.cost import latency as _latency
from compresslab.measure.function import compare as _compare
from compresslab.measure.weights import prunability as _prunability
from compresslab.models.features import feature_points
from compresslab.models.io import DictInputs, Logits, stack_inputs
from compresslab.train import FitResult, Recipe, evaluate_logits, fit

__all__ = ["Data", "as_data", "compare", "cost", "distill", "prunability", "prune", "quantize", "train"]

#: Keys of a dict batch that hold the labels, not a model input.
LABEL_KEYS = ("labels", "label")


# -- data -------------------------------------------------------------------------------------


@dataclass(eq=False)
class Data:
    """User data as tensors: ``x`` the inputs ``(N, ...)``, or for dict data the model's
    inputs stacked ``(N, K, L)`` with their ``keys`` and ``dtypes``; ``y`` the labels or
    None; ``mask`` the ``attention_mask`` ``(N, L)`` when the data have one."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    keys: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def model(self, model: nn.Module) -> nn.Module:
        """``model`` as a one-tensor-in, logits-out module for these data."""
        if self.keys is not None:
            return DictInputs(model, self.keys, self.dtypes)
        return Logits(model)


def _tensor(v, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{what}: expected a tensor (or array), got {type(v).__name__}") from None


def _pad_cat(parts: list[torch.Tensor], value: int, what: str) -> torch.Tensor:
    """Concatenate on dim 0, right-padding dim 1 to the longest with ``value``."""
    if len({tuple(p.shape[1:]) for p in parts}) > 1:
        if any(p.ndim < 2 or p.shape[2:] != parts[0].shape[2:] for p in parts):
            raise UserError(f"{what}: batches of different shapes {sorted({tuple(p.shape) for p in parts})} "
                            "can be padded on dim 1 only")
        longest = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0) * (p.ndim - 2) + (0, longest - p.shape[1]), value=value)
                 for p in parts]
    return torch.cat(parts)


def _from_dict(d: Mapping) -> Data:
    label_key = next((k for k in LABEL_KEYS if k in d), None)
    tensors = {str(k): _tensor(v, f"data[{k!r}]") for k, v in d.items() if k != label_key}
    if not tensors:
        raise UserError("dict data hold only labels; add the model's inputs, e.g. 'input_ids'")
    y = _tensor(d[label_key], f"data[{label_key!r}]") if label_key else None
    keys = tuple(tensors)
    return Data(stack_inputs(tensors, keys), y, keys, tuple(t.dtype for t in tensors.values()),
                tensors.get("attention_mask"))


def _hf_dataset(ds) -> Data:
    """A ``datasets.Dataset`` read whole; columns of numbers (ragged ones padded) are kept."""
    table = ds.with_format("torch")[:]
    cols = {}
    for name, v in table.items():
        if isinstance(v, torch.Tensor):
            cols[name] = v
        elif isinstance(v, list) and v and all(isinstance(t, torch.Tensor) for t in v):
            cols[name] = _pad_cat([t[None] for t in v], IGNORE_INDEX if name in LABEL_KEYS else 0, name)
    if not any(k not in LABEL_KEYS for k in cols):
        raise UserError(f"the dataset has no numeric columns to feed a model (columns: {', '.join(ds.column_names)}); "
                        "tokenize it first, e.g. ds.map(tokenizer)")
    return _from_dict(cols)


def _from_batches(batches: Iterable) -> Data:
    """A DataLoader (any iterable of ``(x, y)``, ``(x,)``, tensors or dict batches) read to the end."""
    parts: dict[str, list[torch.Tensor]] = {}
    kind = None
    for batch in batches:
        if isinstance(batch, Mapping):
            this, items = "dict", {str(k): _tensor(v, f"batch[{k!r}]") for k, v in batch.items()}
        elif isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 2:
            this = "tuple"
            items = {"x": _tensor(batch[0], "batch[0]"), **({"y": _tensor(batch[1], "batch[1]")}
                                                           if len(batch) == 2 else {})}
        elif isinstance(batch, torch.Tensor):
            this, items = "tuple", {"x": batch}
        else:
            raise UserError(f"a batch is a {type(batch).__name__}; yield (x, y) tuples or dicts of tensors")
        if kind is None:
            kind = this
        if this != kind or set(items) != set(parts or items):
            raise UserError("every batch must have the same form (all (x, y) tuples, or dicts with the same keys)")
        for k, v in items.items():
            parts.setdefault(k, []).append(v)
    if kind is None:
        raise UserError("the data loader yielded no batches")
    label = {"y"} | set(LABEL_KEYS)
    cat = {k: _pad_cat(v, IGNORE_INDEX if k in label else 0, k) for k, v in parts.items()}
    if kind == "dict":
        return _from_dict(cat)
    return Data(cat["x"], cat.get("y"))


def as_data(data) -> Data:
    """User data as :class:`Data` (see the module docstring for what is accepted)."""
    if isinstance(data, Data):
        return data
    if isinstance(data, torch.Tensor) or type(data).__module__ == "numpy":
        return Data(_tensor(data, "data"))
    if isinstance(data, Mapping):
        return _from_dict(data)
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        x, y = data
        d = _from_dict(x) if isinstance(x, Mapping) else Data(_tensor(x, "x"))
        d.y = _tensor(y, "y")
        if d.y.shape[:1] != d.x.shape[:1]:
            raise UserError(f"x has {d.x.shape[0]} examples but y has {d.y.shape[0] if d.y.ndim else 0}")
        return d
    if hasattr(data, "with_format") and hasattr(data, "column_names"):
        return _hf_dataset(data)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        return _from_batches(data)
    raise UserError(f"data of type {type(data).__name__}: pass a tensor, (x, y), a dict of tensors, "
                    "a DataLoader or a datasets.Dataset")


def _recipe(recipe) -> Recipe:
    if recipe is None or isinstance(recipe, Recipe):
        return recipe or Recipe()
    return Recipe.from_dict(recipe)


def _num_outputs(net: nn.Module, x: torch.Tensor) -> int:
    return int(evaluate_logits(net, x[:2]).shape[-1])


def _dataset(d: Data, net: nn.Module, name: str = "live") -> Dataset:
    """A training :class:`Dataset` of ``d`` (every example in the train split)."""
    if d.y is None:
        raise UserError("training needs labels: pass (x, y), or a dict or batches with 'labels'")
    meta = {"task": "regression"} if d.y.is_floating_point() else {}
    num = _num_outputs(net, d.x)
    return Dataset(name, d.x, d.y, d.x[:0], d.y[:0], d.x[:0], d.y[:0], num_classes=num, meta=meta)


def _token_keep(d: Data) -> torch.Tensor | None:
    """``(N, L)`` positions that count, for token-level data; None otherwise."""
    keep = None
    if d.y is not None and d.y.ndim == 2 and not d.y.is_floating_point():
        keep = d.y != IGNORE_INDEX
    if d.mask is not None:
        keep = d.mask.bool() if keep is None else keep & d.mask.bool()
    return keep


# -- compare ----------------------------------------------------------------------------------


def cka_pairs(model_a: nn.Module, model_b: nn.Module) -> list[tuple[str, str]]:
    """Feature points to compare: by name when both models have the same points (the same
    architecture, e.g. a model and its pruned copy); otherwise paired by depth, each point
    of the model with fewer matched to the one at the same relative depth in the other
    (point ``j`` of ``n`` with point ``round((j + 1) m / n) - 1`` of ``m``: a 2-layer student's
    layers with a 4-layer teacher's second and fourth)."""
    pa, pb = list(feature_points(model_a)), list(feature_points(model_b))
    if pa == pb:
        return [(p, p) for p in pa]
    if not pa or not pb:
        return []
    short, long_ = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
    pairs = [(p, long_[round((j + 1) * len(long_) / len(short)) - 1]) for j, p in enumerate(short)]
    return pairs if short is pa else [(a, b) for b, a in pairs]


class _TokensFirst(nn.Module):
    """A :class:`DictInputs` model fed ``(B, L, K)``: the stacked dict inputs with the token
    axis second, as :func:`~compresslab.measure.cka.cka_between`'s token mask ``(N, L)`` wants."""

    def __init__(self, net: DictInputs):
        super().__init__()
        self.net = net

    @property
    def feature_points(self) -> dict[str, str]:
        return {name: f"net.{path}" for name, path in feature_points(self.net).items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2))


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def compare(model_a: nn.Module, model_b: nn.Module, data, *, cka: bool = True, unbiased: bool = True,
            batch_size: int = 256) -> dict:
    """Which function ``model_b`` computes next to ``model_a`` on ``data``.

    Returns the keys of :func:`compresslab.measure.function.compare` (``agreement``,
    ``disagreement``, ``kappa``, ``js_divergence``, ``activation_distance``,
    ``output_cosine``, ``kl_ab`` = KL(p_a ‖ p_b), ``kl_ba``, and with labels ``accuracy_a``,
    ``accuracy_b``; float labels: the regression keys), plus ``n`` (examples), ``tokens``
    (token-level outputs: the scored positions) and ``cka``: linear CKA (debiased unless
    ``unbiased=False``) per pair of feature points (:func:`cka_pairs`; key ``point`` or
    ``point_a~point_b``), with one row per scored token for token-level data.
    """
    d = as_data(data)
    a, b = d.model(model_a), d.model(model_b)
    la, lb = evaluate_logits(a, d.x, batch_size), evaluate_logits(b, d.x, batch_size)
    if la.shape != lb.shape:
        raise UserError(f"the models' outputs differ in shape: {tuple(la.shape)} and {tuple(lb.shape)}; "
                        "compare models with the same classes on the same data")
    token = la.ndim == 3
    task = "regression" if d.y is not None and d.y.is_floating_point() else "classification"
    out: dict = {**_compare(la, lb, labels=d.y, task=task, mask=d.mask if token else None), "n": len(d)}
    keep = _token_keep(d) if token else None
    if token:
        out["tokens"] = int(keep.sum()) if keep is not None else la.shape[0] * la.shape[1]
    if cka:
        pairs = cka_pairs(a, b)
        x = d.x
        if keep is not None and d.keys is not None:  # one row per token: the token axis second
            a, b, x = _TokensFirst(a), _TokensFirst(b), d.x.transpose(1, 2)
        res = cka_between(a, b, x, pairs=pairs, batch_size=batch_size, unbiased=unbiased, mask=keep) if pairs else {}
        out["cka"] = {k: v["cka"] for k, v in res.items()}
    return out


# -- cost -------------------------------------------------------------------------------------


class _Fixed(nn.Module):
    """``model`` run on rows of a fixed ``example``: the tensor it is called with sets only
    the batch size. ``measure.cost`` feeds zeros and random floats, which are no token ids."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        super().__init__()
        self.model, self.example = model, example
        # count the matmuls between activations (attention) of transformers, as measure.cost does for
        # the models that declare them: any module saying so, or a transformers model passed as it is
        self.activation_matmuls = any(getattr(m, "activation_matmuls", False) or (
            hasattr(m, "config") and hasattr(m, "base_model_prefix")) for m in model.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[0]) % self.example.shape[0]
        return self.model(self.example[rows].to(_device(self.model)))


def cost(model: nn.Module, example, *, bits: int = 32, latency: bool = True,
         batch_sizes: Sequence[int] = (1, 256)) -> dict:
    """What ``model`` costs on inputs like ``example`` (a tensor batch, a dict batch, or any
    data :func:`as_data` takes; its first example sets the shape, e.g. the sequence length).

    Keys of :func:`compresslab.measure.cost_report` (``params``, ``nonzero_params``,
    ``macs`` and ``bops`` per example, ``bytes`` at ``bits`` per parameter,
    ``nonzero_bytes``, ``bytes_fp32``) and, with ``latency``, ``latency_ms``: median
    milliseconds per forward pass at each of ``batch_sizes`` (the example's rows repeated).
    MACs count the convolutions and linear layers and, for a transformer (a ``transformers``
    model, or a module with ``activation_matmuls = True``), the matmuls between activations
    (attention scores and their weighted sums), as :func:`compresslab.measure.cost.layer_costs`
    counts them.
    """
    d = as_data(example)
    net = _Fixed(d.model(model), d.x)
    shape = tuple(d.x.shape[1:])
    report = cost_report(net, shape, weight_bits=bits, act_bits=bits)
    if latency:
        report["latency_ms"] = _latency(net, shape, batch_sizes=batch_sizes)
    return report


# -- prunability, prune -----------------------------------------------------------------------


def prunability(model: nn.Module, *, scope: str = "all", points: int = 101) -> dict:
    """How far ``model`` can be magnitude-pruned, from its weights alone (what ``compresslab
    prunability`` reports): ``p_star``, ``cos_at_p_star``, ``kurtosis_of_kurtoses``,
    ``safe_amount``, the ``curve`` of [p, cos], ``per_tensor_kurtosis``, ``num_params``,
    ``scope`` (:func:`compresslab.measure.weights.prunability`)."""
    if points < 2:
        raise UserError(f"points {points}: need at least 2 points on the curve")
    return _prunability(model, scope=scope, points=points)


def prune(model: nn.Module, amount: float | str = 0.5, *, method: str = "global-l1", scope: str = "all",
          seed: int = 0, data=None, recipe=None, example=None, importance: str = "magnitude") -> nn.Module:
    """A pruned copy of ``model`` (the original is untouched).

    ``method``: ``global-l1``, ``layer-l1``, ``random`` (unstructured: the pruned entries of
    the conv, linear and norm weights and biases in ``scope`` become exact zeros) or
    ``channel`` (structured through Torch-Pruning: the copy is physically smaller; needs an
    ``example`` input). ``amount``: a fraction, or ``"p_star"`` / ``"safe"`` read off the
    weights (:func:`prunability`). With ``data``, the copy is then fine-tuned on them with
    ``recipe`` (default: one epoch of the default :class:`~compresslab.train.Recipe`),
    pruned entries held at zero, as the ``prune`` step does.
    """
    pruned = copy.deepcopy(model)
    if method == "channel":
        from compresslab.compress.structured import structured_prune

        if example is None or isinstance(amount, str):
            raise UserError("channel pruning needs a numeric amount and an example input: "
                            "prune(model, 0.5, method='channel', example=x[:1])")
        structured_prune(pruned, tuple(as_data(example).x.shape[1:]), amount=amount, importance=importance)
        masks = None
    else:
        amount, _ = resolve_amount(amount, pruned, scope)
        masks = _prune(pruned, amount, method=method, scope=scope, seed=seed)
    if data is not None:
        d = as_data(data)
        net = d.model(pruned)
        fit(net, _dataset(d, net), _recipe(recipe or {"epochs": 1}), seed=seed,
            after_step=(lambda _: apply_masks(pruned, masks)) if masks else None)
    return pruned


# -- quantize ---------------------------------------------------------------------------------

#: Short scheme names and the ``quantize`` step's.
SCHEMES = {"dynamic": "ptq-dynamic", "static": "ptq-static", "fake": "fake", "qat": "qat",
           "ptq-dynamic": "ptq-dynamic", "ptq-static": "ptq-static"}


def quantize(model: nn.Module, bits: int | dict = 8, *, scheme: str = "dynamic", calibration=None,
             act_bits: int | dict | None = None, per_channel: bool = False, symmetric: bool = True,
             observer: str = "minmax", percentile: float = 99.99, calib_batches: int = 8,
             calib_batch_size: int = 128, backend: str = "auto", recipe=None, seed: int = 0) -> nn.Module:
    """A quantised copy of ``model`` (the original is untouched).

    ``scheme``: ``dynamic`` (int8 Linear kernels, activations quantised on the fly; no data;
    the big win for transformers on CPU), ``static`` (int8 with activation ranges calibrated
    on ``calibration``), ``fake`` (simulated ``bits`` for conv/linear weights, and with
    ``act_bits`` their inputs, ranges calibrated on ``calibration``) or ``qat`` (fake, then
    fine-tuned on ``calibration`` with ``recipe``, exact zeros kept). ``dynamic`` and
    ``fake`` return a module called like ``model``; ``static`` returns the module of
    :func:`compresslab.compress.quantize.apply_static_int8`, called with the tensor inputs
    (dict data: stacked, see :class:`~compresslab.models.io.DictInputs`), returning logits.
    Int8 runs on the CPU. ``backend``: ``auto``, ``torch-ao`` or ``onnxruntime``
    (:func:`compresslab.compress.quantize.int8_backend`).
    """
    if scheme not in SCHEMES:
        raise UserError(f"scheme {scheme!r}: use one of dynamic, static, fake, qat")
    scheme = SCHEMES[scheme]
    if scheme.startswith("ptq-") and bits != 8:
        raise UserError(f"scheme {scheme} runs int8 kernels (bits=8); use scheme='fake' to simulate {bits} bits")
    d = as_data(calibration) if calibration is not None else None
    needs_data = scheme in ("ptq-static", "qat") or (scheme == "fake" and act_bits)
    if needs_data and d is None:
        raise UserError(f"scheme {scheme}{' with act_bits' if scheme == 'fake' else ''} needs data: "
                        "pass calibration=(x, y), a DataLoader or a dict of tensors")
    target = copy.deepcopy(model)
    batches = q.calibration_batches(d.x, calib_batches, calib_batch_size, seed) if d is not None else []
    if scheme == "ptq-dynamic":
        target = target.cpu().eval()
        if d is not None and getattr(target, "compresslab_config", None) is None and d.keys is None:
            target.compresslab_config = {"input_shape": list(d.x.shape[1:])}  # where ONNX Runtime traces it
        return q.quantize_dynamic_int8(target, q.dynamic_int8_transform(target, backend))
    if scheme == "ptq-static":
        target = target.cpu().eval()
        net = target if d.keys is None else d.model(target)  # FX traces a plain model, not the wrapper
        transform = q.calibrate_static_int8(net, [b.cpu() for b in batches], backend)
        return q.apply_static_int8(net, transform, batches[0][:1].cpu())
    q.attach_fake_quant(target, bits, act_bits=act_bits, per_channel=per_channel, symmetric=symmetric,
                        observer=observer, percentile=percentile)
    if act_bits:
        q.calibrate(d.model(target), batches)
    if scheme == "qat":
        masks = {n: p != 0 for n, p in target.named_parameters() if bool((p == 0).any())}
        net = d.model(target)
        fit(net, _dataset(d, net), _recipe(recipe or {"epochs": 1}), seed=seed,
            after_step=(lambda _: apply_masks(target, masks)) if masks else None)
    return target.eval()


# -- train, distill ---------------------------------------------------------------------------


def _result(model: nn.Module, r: FitResult) -> dict:
    return {"model": model, "history": r.history, "seconds": r.seconds, "steps": r.steps}


def train(model: nn.Module, data, recipe=None, *, loss: dict[str, float] | None = None, seed: int = 0) -> dict:
    """Train ``model`` in place on ``data`` (every example; labels needed) with ``recipe``
    (a :class:`~compresslab.train.Recipe` or a dict of its fields; default: the defaults)
    and ``loss`` (registered term names and weights; default cross-entropy), through
    :func:`compresslab.train.fit`. Returns ``{"model", "history" (per epoch: loss, acc,
    seconds, samples_per_s), "seconds", "steps"}``."""
    d = as_data(data)
    net = d.model(model)
    return _result(model, fit(net, _dataset(d, net), _recipe(recipe), loss=loss, seed=seed))


def _teacher_labels(teacher: nn.Module, d: Data) -> torch.Tensor:
    """The teacher's predicted classes, -100 where the attention mask is 0."""
    y = evaluate_logits(teacher, d.x).argmax(-1)
    if y.ndim == 2 and d.mask is not None:
        y = y.masked_fill(~d.mask.bool(), IGNORE_INDEX)
    return y


def distill(teacher: nn.Module, student: nn.Module, data, *, loss: dict[str, float] | None = None,
            recipe=None, temperature: float = 4.0, at_points=None, hint_points=None, seed: int = 0) -> dict:
    """Train ``student`` in place from ``teacher`` on ``data`` through
    :func:`compresslab.compress.distill.distill` (the ``distill`` step's code). ``loss``:
    term names and weights (default ``{"kd": 0.9, "ce": 0.1}``; ``at`` and ``hint`` read
    the feature points, e.g. ``layer0`` of a transformer). Without labels in ``data`` the
    teacher's predictions are the labels. Returns what :func:`train` returns."""
    d = as_data(data)
    t_net, s_net = d.model(teacher), d.model(student)
    if d.y is None:
        d = Data(d.x, _teacher_labels(t_net, d), d.keys, d.dtypes, d.mask)
    r = _distill(t_net, s_net, _dataset(d, s_net), _recipe(recipe), loss=loss, temperature=temperature,
                 at_points=at_points, hint_points=hint_points, seed=seed)
    return _result(student, r)
