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
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from compresslab.data import bragg, distilled, loaders, retrieval
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
    for datasets that take no path.
    """

    load: Callable[[str | None, int], loaders.Raw]
    arg: str | None = None

    def __call__(self, path: str | None, seed: int) -> loaders.Raw:
        return self.load(path, seed)


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
}


def list_datasets() -> list[str]:
    """The accepted dataset names, e.g. ``["mnist1d", ..., "mnist:DIR", ...]``."""
    return [f"{n}:{l.arg}" if l.arg else n for n, l in DATASETS.items()]


def _resolve(name: str) -> tuple[Loader, str | None]:
    """Split ``name`` into its registered loader and path, or raise a UserError."""
    prefix, sep, path = name.partition(":")
    known = ", ".join(list_datasets())
    loader = DATASETS.get(prefix)
    if loader is None:
        raise UserError(f"unknown dataset {name!r}; known: {known}")
    if loader.arg is None and sep:
        raise UserError(f"dataset {prefix!r} takes no path; use {prefix!r} (known: {known})")
    if loader.arg is not None and not path:
        raise UserError(f"dataset {prefix!r} needs a path: use {prefix}:{loader.arg}")
    return loader, (path if loader.arg else None)


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
        _resolve(name)
        return distilled.load_distilled(name.partition(":")[2], load_dataset)
    base, subset = _subset(name)
    loader, path = _resolve(base)
    raw = loader(path, seed)
    is_retrieval = retrieval.is_retrieval(raw)
    regression = (raw.meta or {}).get("task") == "regression"
    if subset is not None:
        meta = raw.meta
        raw = (retrieval.subset if is_retrieval else loaders.subset)(raw, subset, seed)
        if regression:
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
    if n_val >= n:
        raise UserError(
            f"dataset {name!r}: val_fraction {val_fraction} of {n} train examples leaves "
            "none to train on; lower val_fraction"
        )
    keep, val = loaders.carve(n, n_val, seed)
    x = torch.from_numpy(np.ascontiguousarray(raw.x_train, dtype=np.float32))
    target = np.float32 if regression else np.int64
    y = torch.from_numpy(np.ascontiguousarray(raw.y_train, dtype=target))
    x_test = torch.from_numpy(np.ascontiguousarray(raw.x_test, dtype=np.float32))
    y_test = torch.from_numpy(np.ascontiguousarray(raw.y_test, dtype=target))
    keep_t, val_t = torch.from_numpy(keep), torch.from_numpy(val)
    if (raw.meta or {}).get("normalised") == "per-example":  # e.g. min-max per patch: kept as is
        x_train, x_val = x[keep_t], x[val_t]
    else:
        x_train, x_val, x_test = _standardise(x[keep_t], x[val_t], x_test)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y[keep_t],
        x_val=x_val,
        y_val=y[val_t],
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
