"""Typed builders of step specs: the one place each kind's spec is written.

A step's directory is named by a hash of its spec, so equal work must build equal
specs wherever it is asked for: a study's expansion and the Python API both call these.
Each builder includes only the keys its settings use (a key that is absent means the
default), so adding an option later does not change the hashes of existing steps.
"""
from __future__ import annotations

from compresslab.errors import UserError
from compresslab.train import Recipe

QUANT_SCHEMES = ("ptq-dynamic", "ptq-static", "fake", "qat")


def _recipe(recipe: Recipe | dict) -> dict:
    return recipe.model_dump() if isinstance(recipe, Recipe) else dict(recipe)


def data_spec(name: str, val_fraction: float = 0.1, seed: int = 0) -> dict:
    """The dataset and the seed of its validation split."""
    return {"name": name, "val_fraction": val_fraction, "seed": seed}


def model_spec(name: str, options: dict | None = None) -> dict:
    return {"name": name, "options": dict(options or {})}


def finetune_recipe(recipe: Recipe | dict, *, epochs: int, lr: float, batch_size: int | None = None,
                    validated: bool = False) -> dict:
    """``recipe`` for fine-tuning a compressed child: ``epochs`` at ``lr``, no warm-up.

    Always checked as a :class:`Recipe` (a bad value is a :class:`UserError`). Studies
    store the fields as given and the command line the validated model's values (e.g.
    ``warmup_epochs`` 0 vs 0.0): both forms are kept (``validated``) so that existing
    step directories keep their hashes."""
    out = {**_recipe(recipe), "epochs": epochs, "lr": lr, "warmup_epochs": 0}
    if batch_size is not None:
        out["batch_size"] = batch_size
    checked = Recipe.from_dict(out, where="fine-tuning recipe").model_dump()
    return checked if validated else out


def _split_seed(spec: dict, seed: int, data_seed: int | None) -> dict:
    """``spec`` with ``data_seed`` when it differs from the initialisation ``seed`` (absent:
    both are ``seed``, so specs written before the split keep their hashes)."""
    if data_seed is not None and data_seed != seed:
        spec["data_seed"] = data_seed
    return spec


def train_spec(data: dict, model: dict, recipe: Recipe | dict, seed: int, *, nproc: int = 1, sync_bn: bool = False,
               scale_substitute_wd: bool = False, data_seed: int | None = None,
               loss: dict[str, float] | None = None) -> dict:
    """Train ``model`` from scratch with cross-entropy, or the weighted terms of ``loss``
    (``nproc`` > 1: data-parallel, with ``sync_bn`` BatchNorm statistics synchronised across
    the processes). ``seed`` draws the initial weights and ``data_seed`` (default: ``seed``)
    the batch order and augmentation."""
    spec = _split_seed({"data": data, "model": model, "recipe": _recipe(recipe), "seed": seed}, seed, data_seed)
    if loss is not None:
        spec["loss"] = dict(loss)
    if nproc > 1:
        spec["nproc"] = nproc
    if sync_bn:
        spec["sync_bn"] = True
    if scale_substitute_wd:
        spec["scale_substitute_wd"] = True
    return spec


def distill_spec(data: dict, student: dict, recipe: Recipe | dict, seed: int, *, loss: dict[str, float],
                 temperature: float = 4.0, teacher: dict | None = None, at_points=None, hint_points=None,
                 scale_substitute_wd: bool = False, data_seed: int | None = None) -> dict:
    """Train ``student`` with the weighted loss terms of ``loss``. The teacher is the step's
    ``teacher`` parent, or ``teacher`` = ``{"kind": "untrained" | "uniform-noise" |
    "gaussian-noise", ...}`` built inside the step. Seeds as in :func:`train_spec`."""
    spec = _split_seed({"data": data, "student": student, "seed": seed, "temperature": temperature,
                        "recipe": _recipe(recipe), "loss": dict(loss)}, seed, data_seed)
    for key, value in (("teacher", teacher), ("at_points", at_points), ("hint_points", hint_points)):
        if value is not None:
            spec[key] = value
    if scale_substitute_wd:
        spec["scale_substitute_wd"] = True
    return spec


def prune_spec(data: dict, amount: float | str, recipe: Recipe | dict, seed: int, *, method: str = "global-l1",
               scope: str = "all", importance: str = "magnitude", global_channels: bool = False,
               round_to: int | None = None) -> dict:
    """Prune the ``parent`` step, then fine-tune with ``recipe`` (see :func:`finetune_recipe`).
    ``importance``, ``global_channels`` and ``round_to`` (kept channel counts rounded to its
    multiples; written only when given) belong to ``method: channel`` only."""
    spec = {"data": data, "amount": amount, "method": method, "scope": scope, "recipe": _recipe(recipe),
            "seed": seed}
    if method == "channel":
        spec.update(importance=importance, global_channels=global_channels)
        if round_to is not None:
            spec["round_to"] = round_to
    elif round_to is not None:
        raise UserError("--round-to rounds kept channel counts: it needs --method channel")
    return spec


def quantize_spec(data: dict, scheme: str, *, bits: int | dict = 8, act_bits: int | dict | None = None,
                  per_channel: bool = False, symmetric: bool = True, observer: str = "minmax",
                  percentile: float = 99.99, calib_batches: int = 8, calib_batch_size: int = 128,
                  recipe: Recipe | dict | None = None, seed: int = 0, backend: str = "auto") -> dict:
    """Quantise the ``parent`` step: only the keys ``scheme`` uses, so equal work hashes equally
    (``backend``, the int8 kernels of ``ptq-*``, only when it is not ``auto``).
    Raises :class:`UserError` for settings the scheme cannot honour."""
    from compresslab.compress import quantize as q

    if scheme not in QUANT_SCHEMES:
        raise UserError(f"--scheme {scheme!r}: use one of {', '.join(QUANT_SCHEMES)}")
    wbits, abits = q.per_type(bits, "--bits"), q.per_type(act_bits, "--act-bits")
    if scheme.startswith("ptq-"):
        if set(wbits.values()) != {8} or (abits and set(abits.values()) != {8}):
            raise UserError(f"{scheme} runs real int8 kernels, so bits must be 8; use --scheme fake or qat "
                            "for other widths")
        q.int8_backend(backend)  # a known name?
        pinned = {} if backend == "auto" else {"backend": backend}
        if scheme == "ptq-dynamic":
            return {"data": data, "scheme": scheme, **pinned}
    elif backend != "auto":
        raise UserError(f"--backend {backend}: only the real int8 schemes (ptq-dynamic, ptq-static) choose kernels")
    if observer not in q.OBSERVERS:
        raise UserError(f"--observer {observer!r}: use {' or '.join(q.OBSERVERS)}")
    if not (1 <= calib_batches <= q.MAX_CALIB_BATCHES and 1 <= calib_batch_size <= q.MAX_CALIB_BATCH):
        raise UserError(f"--calib-batches {calib_batches} x --calib-batch-size {calib_batch_size}: use 1 to "
                        f"{q.MAX_CALIB_BATCHES:,} batches of 1 to {q.MAX_CALIB_BATCH:,} examples")
    if not 50 < percentile <= 100:
        raise UserError(f"--percentile {percentile}: must be in (50, 100], e.g. 99.99")
    spec = {"data": data, "scheme": scheme, "seed": seed,
            "calibration": {"batches": calib_batches, "batch_size": calib_batch_size}}
    if scheme == "ptq-static":
        return {**spec, **pinned}
    spec.update(bits=wbits, act_bits=abits, per_channel=per_channel, symmetric=symmetric, observer=observer,
                percentile=percentile)
    if scheme == "qat":
        if recipe is None:
            raise UserError("qat needs a fine-tuning recipe")
        spec["recipe"] = _recipe(recipe)
    return spec


def blockswap_spec(data: dict, budget: float, recipe: Recipe | dict, seed: int, *, samples: int = 1000,
                   blocks: list[str] | None = None, batch: int = 128, beta: float = 1000.0,
                   at_points: list[str] | None = None) -> dict:
    """Search the ``teacher`` parent's WRN for a block mix of ``budget`` parameters, then train
    the best with CE + attention transfer (``beta``) under ``recipe``."""
    from compresslab.compress.search import DEFAULT_BLOCKS

    return {"data": data, "budget": float(budget), "samples": samples, "blocks": list(blocks or DEFAULT_BLOCKS),
            "batch": batch, "beta": beta, "at_points": list(at_points or ["group1", "group2", "group3"]),
            "recipe": _recipe(recipe), "seed": seed}


#: The settings each dataset-distillation method reads, with their defaults.
DISTILL_SETTINGS = {
    "random": {},
    "herding": {"herding_epochs": 1},
    "dm": {"init": "real", "iterations": 1000, "lr_img": 1.0, "batch_real": 256, "dsa": False},
    "dc": {"init": "noise", "iterations": 1000, "lr_img": 0.1, "batch_real": 256, "dsa": False},
}


def distill_data_spec(data: dict, *, method: str, ipc: int, seed: int, model: dict | None = None,
                      **settings) -> dict:
    """Distil ``ipc`` images per class of ``data`` with ``method`` (``dm``, ``dc``, ``random``,
    ``herding``; see :mod:`compresslab.compress.dataset_distill`). Only the settings the method
    reads go in, with their defaults filled in (:data:`DISTILL_SETTINGS`), so equal work hashes
    equally; ``model`` (default ConvNet-3) is left out for ``random``."""
    if method not in DISTILL_SETTINGS:
        raise UserError(f"--method {method!r}: use one of {', '.join(DISTILL_SETTINGS)}")
    known = set().union(*DISTILL_SETTINGS.values())
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"distill-data: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    spec = {"data": data, "method": method, "ipc": int(ipc), "seed": seed}
    if method != "random":
        spec["model"] = model or model_spec("convnet")
    for key, default in DISTILL_SETTINGS[method].items():
        value = settings.get(key)
        spec[key] = default if value is None else value
    return spec


def data_scores_spec(data: dict, method: str, seeds: list[int], *, model: dict | None = None,
                     recipe: Recipe | dict | None = None, score_epochs: int | None = None) -> dict:
    """Score every training example of ``data`` for data pruning with ``method`` (random,
    el2n, grand, forgetting) over ``seeds``; see :mod:`compresslab.steps.data_pruning`.
    ``random`` needs only its seed; the trained methods a ``model`` and ``recipe``, and
    el2n / grand ``score_epochs`` (default: the first tenth of the recipe, at least 1)."""
    from compresslab.compress.data_pruning import check_method

    spec: dict = {"data": data, "method": check_method(method), "seeds": [int(s) for s in seeds]}
    if method == "random":
        return {**spec, "seeds": spec["seeds"][:1]}
    if model is None or recipe is None:
        raise UserError(f"score method {method}: needs a model and a recipe to train")
    spec.update(model=model, recipe=_recipe(recipe))
    if method != "forgetting":
        spec["score_epochs"] = score_epochs or max(1, spec["recipe"].get("epochs", 10) // 10)
    return spec


def subset_train_spec(data: dict, student: dict, recipe: Recipe | dict, seed: int, *, keep_fraction: float,
                      alpha: float, temperature: float = 4.0, keep: str = "hardest",
                      class_balanced: bool = False) -> dict:
    """Train ``student`` on the ``keep_fraction`` of the training split that the ``scores``
    parent (a ``data-scores`` step) keeps, with (1-α)·CE + α·KD from the ``teacher`` parent
    (α = 0: CE alone, no teacher, and no ``temperature`` in the spec)."""
    from compresslab.compress.data_pruning import check_fraction
    from compresslab.steps.data_pruning import check_alpha

    spec = {"data": data, "student": student, "recipe": _recipe(recipe), "seed": seed,
            "keep_fraction": check_fraction(keep_fraction), "alpha": check_alpha(alpha)}
    if spec["alpha"] > 0:
        spec["temperature"] = temperature
    if keep != "hardest":
        spec["keep"] = keep
    if class_balanced:
        spec["class_balanced"] = True
    return spec


def lottery_spec(data: dict, model: dict, recipe: Recipe | dict, seed: int, *, rounds: int, rate: float,
                 inner_epochs: int | None = None, control: bool = False, lmc_dense: bool = False,
                 lmc_points: int = 11, hessian_samples: int = 8, hessian_examples: int = 512,
                 inner_data: str | None = None, landscape_points: int = 0, landscape_dims: int = 1) -> dict:
    """IMP (rewinding to the initialisation) on ``data`` for ``rounds`` prunes of ``rate``;
    with a ``distilled`` parent (a ``distill-data`` step) the search loop trains on that set
    for ``inner_epochs`` (default: the recipe's) epochs per round; see
    :mod:`compresslab.steps.lottery`. ``control``: the random re-init control per round;
    ``lmc_dense``: also the dense initialisation's LMC barrier. ``inner_data`` (a data name such
    as ``distilled:DIR``) stands in for the parent; the directory is then part of the hash.
    ``landscape_points`` > 0: a filter-normalised loss landscape of the final ticket, 1-D or
    (``landscape_dims`` 2) 2-D."""
    if not 0.0 < rate < 1.0:
        raise UserError(f"lottery: rate must be in (0, 1), got {rate}")
    if rounds < 1:
        raise UserError(f"lottery: rounds must be >= 1, got {rounds}")
    if inner_epochs is not None and inner_epochs < 1:
        raise UserError(f"lottery: inner_epochs must be >= 1, got {inner_epochs}")
    spec = {"data": data, "model": model, "recipe": _recipe(recipe), "seed": seed, "rounds": int(rounds),
            "rate": float(rate), "lmc_points": int(lmc_points), "hessian_samples": int(hessian_samples),
            "hessian_examples": int(hessian_examples)}
    if inner_epochs is not None:
        spec["inner_epochs"] = int(inner_epochs)
    if inner_data is not None:
        spec["inner_data"] = inner_data
    if control:
        spec["control"] = True
    if lmc_dense:
        spec["lmc_dense"] = True
    if landscape_dims not in (1, 2):
        raise UserError(f"lottery: landscape_dims must be 1 or 2, got {landscape_dims}")
    if landscape_points:
        spec["landscape_points"] = int(landscape_points)
        if landscape_dims == 2:
            spec["landscape_dims"] = 2
    return spec


def adversarial_spec(data: dict, split: str, *, attack: str, eps: float, steps: int, seed: int) -> dict:
    """Adversarial examples of ``split`` crafted on the ``reference`` parent
    (:mod:`compresslab.steps.similarity`); ``steps`` and ``seed`` matter for pgd only, and
    are kept for fgsm too so that one setting names one step."""
    return {"data": data, "split": split, "attack": attack, "eps": eps, "steps": steps, "seed": seed}


def similarity_spec(data: dict, split: str, *, cka_points: list[str] | None = None) -> dict:
    """One ``model`` parent against the ``reference`` parent on ``split``: CKA at
    ``cka_points`` (default: the points both share) and, with an ``adversarial`` parent,
    adversarial transfer (:mod:`compresslab.steps.similarity`)."""
    spec: dict = {"data": data, "split": split}
    if cka_points is not None:
        spec["cka_points"] = list(cka_points)
    return spec
