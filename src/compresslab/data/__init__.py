"""Datasets by name: ``load_dataset("digits")``, ``load_dataset("mnist:DIR")`` ...

Every dataset comes back as a :class:`Dataset` of float32 ``(N, C, *spatial)``
inputs and int64 labels, with a seeded validation split carved from train and
inputs standardised per channel with the train split's mean and std.

Retrieval (re-identification) datasets, ``identities:synthetic`` and ``market1501:DIR``,
train on identity classes and test by retrieval on disjoint identities: their test split
is query then gallery images, described by ``Dataset.meta["retrieval"]``, and test
accuracy is meaningless for them (see :mod:`compresslab.data.retrieval`).

A synthetic set made by ``compresslab distill-data``, ``distilled:DIR``, trains on its synthetic
images and validates and tests on its source dataset's splits (see :mod:`compresslab.data.distilled`).

Regression datasets, ``bragg:synthetic``, say so with ``Dataset.meta["task"] = "regression"``
(:attr:`Dataset.task`): their targets are float32 ``(N, K)`` and ``num_classes`` is the output
dimension K (see :mod:`compresslab.data.bragg`).

Your own files: ``conll:DIR``, ``jsonl:FILE``, ``hf-disk:DIR`` (text: int64 token ids, not
standardised, described by ``Dataset.text``; see :mod:`compresslab.data.text`) and
``imagefolder:DIR`` (:mod:`compresslab.data.images`; ``stream=1`` keeps the training split on
disk, :mod:`compresslab.data.stream`). Options follow ``?``: ``conll:DIR?max_len=64&tokenizer=DIR``
(``Loader.options`` lists the keys a loader accepts). docs/data.md has examples.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from compresslab.data import bragg, distilled, images, loaders, ner_synth, retrieval, stream, text
from compresslab.data.core import SPLITS, Dataset, augment, batches
from compresslab.errors import UserError

__all__ = [
    "DATASETS",
    "Dataset",
    "Loader",
    "SPLITS",
    "augment",
    "batches",
    "list_datasets",
    "load_dataset",
]


@dataclass(frozen=True)
class Loader:
    """A registered dataset: ``load(path, seed) -> loaders.Raw``.

    ``arg`` names what follows ``name:`` (``"DIR"``, ``"FILE"``), or is ``None``
    for datasets that take no path. ``options`` are the keys the loader accepts after
    ``?`` (``conll:DIR?max_len=64&tokenizer=DIR``); each given one reaches ``load`` as a
    keyword argument with its string value, and a loader without options is called with
    ``(path, seed)`` only.
    """

    load: Callable[..., loaders.Raw]
    arg: str | None = None
    options: tuple[str, ...] = ()

    def __call__(self, path: str | None, seed: int, options: dict[str, str] | None = None) -> loaders.Raw:
        return self.load(path, seed, **options) if options else self.load(path, seed)


DATASETS: dict[str, Loader] = {
    "mnist1d": Loader(loaders.load_mnist1d),
    "digits": Loader(loaders.load_digits),
    "mnist": Loader(loaders.load_mnist, "DIR"),
    "cifar10": Loader(loaders.load_cifar10, "DIR"),
    "cifar100": Loader(loaders.load_cifar100, "DIR"),
    "npz": Loader(loaders.load_npz, "FILE"),
    "identities": Loader(retrieval.load_identities, "synthetic"),
    "market1501": Loader(retrieval.load_market1501, "DIR"),
    "bragg": Loader(bragg.load_bragg, "synthetic"),
    "distilled": Loader(distilled.not_raw, "DIR"),  # load_dataset reads it whole (no carving, no scaling)
    "conll": Loader(text.load_conll, "DIR", text.CONLL_OPTIONS),
    "jsonl": Loader(text.load_jsonl, "FILE", text.JSONL_OPTIONS),
    "hf-disk": Loader(text.load_hf_disk, "DIR", text.HF_DISK_OPTIONS),
    "imagefolder": Loader(images.load_imagefolder, "DIR", images.OPTIONS),
    "ner-synthetic": Loader(ner_synth.load_ner_synthetic, None, tuple(ner_synth.NER_SYNTHETIC_OPTIONS)),
}


def list_datasets() -> list[str]:
    """The accepted dataset names, e.g. ``["mnist1d", ..., "mnist:DIR", ...]``."""
    return [f"{n}:{l.arg}" if l.arg else n for n, l in DATASETS.items()]


def _resolve(name: str) -> tuple[Loader, str | None, dict[str, str]]:
    """Split ``name`` into its registered loader, path and ``?key=value&...`` options, or
    raise a UserError (an unknown option key names the accepted ones)."""
    base, question, query = name.partition("?")
    prefix, sep, path = base.partition(":")
    known = ", ".join(list_datasets())
    loader = DATASETS.get(prefix)
    if loader is None:
        raise UserError(f"unknown dataset {name!r}; known: {known}")
    if loader.arg is None and sep:
        raise UserError(f"dataset {prefix!r} takes no path; use {prefix!r} (known: {known})")
    if loader.arg is not None and not path:
        raise UserError(f"dataset {prefix!r} needs a path: use {prefix}:{loader.arg}")
    options: dict[str, str] = {}
    if question:
        if not loader.options:
            raise UserError(f"dataset {prefix!r} takes no options (nothing after '?'): {name!r}")
        allowed = ", ".join(loader.options)
        for pair in query.split("&"):
            key, eq, value = pair.partition("=")
            if not eq or not key or not value:
                raise UserError(f"dataset {name!r}: option {pair!r} is not key=value; "
                                f"write {prefix}:{loader.arg}?key=value&key=value (keys: {allowed})")
            if key not in loader.options:
                raise UserError(f"dataset {name!r}: unknown option {key!r}; {prefix} accepts {allowed}")
            if key in options:
                raise UserError(f"dataset {name!r}: option {key!r} given twice")
            options[key] = value
    return loader, (path if loader.arg else None), options


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Scale every tensor per channel by the train split's mean and std."""
    dims = [0] + list(range(2, train.dim()))
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant channel: centre only
    return [(t - mean) / std for t in (train, *others)]


def _subset(name: str) -> tuple[str, int | None]:
    """``"cifar10:DIR@2000"`` -> ``("cifar10:DIR", 2000)``; no ``@N`` suffix -> ``(name, None)``."""
    base, at, n = name.rpartition("@")
    if not at or not n.isdigit():
        return name, None
    if int(n) < 2:
        raise UserError(f"dataset {name!r}: a subset needs at least 2 examples (NAME@N)")
    return base, int(n)


def load_dataset(name: str, *, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Load a dataset by name, carve a seeded validation split and standardise.

    ``name`` is one of :func:`list_datasets` (``mnist1d``, ``digits``,
    ``mnist:DIR``, ``cifar10:DIR``, ``cifar100:DIR``, ``npz:FILE``, and the retrieval
    datasets ``identities:synthetic``, ``market1501:DIR``), optionally with
    ``@N``: a seeded random subset of N training and at most N test examples (smoke
    runs of large presets; for retrieval datasets, whole test identities). The
    validation split is ``val_fraction`` of train (at least one example when positive)
    chosen by ``torch.Generator().manual_seed(seed)``. The same name and seed always
    give identical tensors.

    For a retrieval dataset ``num_classes`` is the number of training identities, the
    test labels are identity labels (``-1`` allowed: junk), not classes, and
    ``meta["retrieval"]`` holds ``n_query``, ``cams_test`` and ``ids_test``.

    For a regression dataset (``bragg:synthetic``; ``meta["task"] == "regression"``) the
    targets are float32 ``(N, K)`` and ``num_classes`` is K; inputs a loader marks
    ``meta["normalised"] = "per-example"`` are not standardised.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if name.startswith("distilled:"):  # splits and scaling come from the recorded source spec
        _resolve(name)  # (takes no options)
        return distilled.load_distilled(name.partition(":")[2], load_dataset)
    base, subset = _subset(name)
    loader, path, options = _resolve(base)
    raw = loader(path, seed, options)
    text_meta = (raw.meta or {}).get("text")
    is_retrieval = retrieval.is_retrieval(raw)
    regression = (raw.meta or {}).get("task") == "regression"
    if subset is not None:
        meta = raw.meta
        raw = (retrieval.subset if is_retrieval else loaders.subset)(raw, subset, seed)
        if regression or text_meta:
            raw.meta = meta
    n = len(raw.y_train)
    if n == 0 or len(raw.y_test) == 0:
        raise UserError(
            f"dataset {name!r} is empty ({n} train, {len(raw.y_test)} test examples); "
            "check the files"
        )
    if is_retrieval:  # test labels are identities, not classes: -1 allowed, not counted
        retrieval.check(raw, name)
        num_classes = raw.num_classes or int(raw.y_train.max()) + 1
    elif text_meta:  # token ids; labels (N, L) with IGNORE_INDEX, or (N,): checked by the loader
        num_classes = len(text_meta["labels"])
    elif regression:  # float targets (N, K): K outputs
        if raw.y_train.ndim != 2 or raw.y_test.shape[1:] != raw.y_train.shape[1:]:
            raise UserError(f"dataset {name!r}: regression targets must have shape (N, K), got "
                            f"{raw.y_train.shape} and {raw.y_test.shape}")
        num_classes = int(raw.y_train.shape[1])
    else:
        labels = np.concatenate([raw.y_train, raw.y_test])
        if labels.min() < 0:
            raise UserError(f"dataset {name!r} has negative labels (min {labels.min()}); use 0..K-1")
        num_classes = max(int(labels.max()) + 1, raw.num_classes or 0)

    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if raw.y_val is not None:  # the files' own validation split: nothing carved from train
        n_val = 0
    if n_val >= n:
        raise UserError(
            f"dataset {name!r}: val_fraction {val_fraction} of {n} train examples leaves "
            "none to train on; lower val_fraction"
        )
    keep, val = loaders.carve(n, n_val, seed)
    if isinstance(raw.x_train, stream.LazyImages):  # training images stay on disk
        return stream.dataset(name, raw, keep, val, num_classes)
    source = np.int64 if text_meta else np.float32  # text: token ids, never standardised
    x = torch.from_numpy(np.ascontiguousarray(raw.x_train, dtype=source))
    target = np.float32 if regression else np.int64
    y = torch.from_numpy(np.ascontiguousarray(raw.y_train, dtype=target))
    x_test = torch.from_numpy(np.ascontiguousarray(raw.x_test, dtype=source))
    y_test = torch.from_numpy(np.ascontiguousarray(raw.y_test, dtype=target))
    keep_t, val_t = torch.from_numpy(keep), torch.from_numpy(val)
    x_val, y_val = x[val_t], y[val_t]
    if raw.y_val is not None:
        x_val = torch.from_numpy(np.ascontiguousarray(raw.x_val, dtype=source))
        y_val = torch.from_numpy(np.ascontiguousarray(raw.y_val, dtype=target))
    if text_meta or (raw.meta or {}).get("normalised") == "per-example":  # e.g. min-max per patch: kept as is
        x_train = x[keep_t]
    else:
        x_train, x_val, x_test = _standardise(x[keep_t], x_val, x_test)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y[keep_t],
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        notes=list(raw.notes),
        meta=_tensors(raw.meta or {}),
    )


def _tensors(meta: dict) -> dict:
    """``meta`` with every numpy array (in nested dicts too) as a tensor (integers as int64)."""
    def convert(v):
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, np.ndarray):
            return torch.tensor(v, dtype=torch.int64 if v.dtype.kind in "iu" else None)
        return v

    return convert(meta)
