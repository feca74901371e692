"""``distilled:DIR``: a synthetic training set made by a ``distill-data`` step, as a dataset.

DIR is the step's directory; it holds ``distilled.npz`` (``x`` float32 ``(N, C, *spatial)`` in
the standardised input space of the source dataset, ``y`` int64) and ``distilled.json``
(``format: compresslab-distilled/1``, the source's data spec ``{"name", "val_fraction",
"seed"}``, ``method``, ``ipc``, ``input_shape``, ``num_classes`` ...).

The train split is the synthetic set; the val and test splits are the source dataset's,
loaded from the recorded data spec and so standardised exactly as the distillation saw them
(nothing is re-standardised, no validation split is carved from the synthetic images). The
caller's ``val_fraction`` and ``seed`` are therefore ignored. This module reads files only.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compresslab.data.core import Dataset
from compresslab.errors import UserError

FORMAT = "compresslab-distilled/1"


def read_info(directory: str | Path) -> dict:
    """``distilled.json`` of a distill-data step directory, or a :class:`UserError`."""
    d = Path(directory)
    info_file, arrays = d / "distilled.json", d / "distilled.npz"
    if not d.is_dir():
        raise UserError(f"distilled:{directory}: no such directory; give a distill-data step directory "
                        "(compresslab distill-data prints it)")
    if not info_file.is_file() or not arrays.is_file():
        raise UserError(f"distilled:{directory} is not a distill-data step (no distilled.json / distilled.npz); "
                        "give the directory compresslab distill-data printed")
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{info_file}: malformed JSON ({e.msg}); re-run compresslab distill-data") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UserError(f"{info_file}: not a {FORMAT} file")
    return info


def load_distilled(directory: str | Path, load_source: Callable[..., Dataset]) -> Dataset:
    """The synthetic set of ``directory`` as train split, the source's val/test splits.

    ``load_source(name, val_fraction=..., seed=...)`` loads the recorded source dataset
    (:func:`compresslab.data.load_dataset`)."""
    info = read_info(directory)
    src = info["data"]
    source = load_source(src["name"], val_fraction=src["val_fraction"], seed=src["seed"])
    with np.load(Path(directory) / "distilled.npz") as z:
        x = torch.from_numpy(np.ascontiguousarray(z["x"], dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(z["y"], dtype=np.int64))
    if tuple(x.shape[1:]) != source.input_shape or len(x) != len(y):
        raise UserError(f"distilled:{directory}: synthetic inputs {tuple(x.shape[1:])} do not match the source "
                        f"{src['name']} inputs {source.input_shape}; the step directory is damaged")
    note = (f"train split: {len(y)} synthetic examples ({info.get('method')}, {info.get('ipc')} per class) "
            f"distilled from {src['name']}; val/test splits are {src['name']}'s")
    return Dataset(name=f"distilled:{directory}", x_train=x, y_train=y, x_val=source.x_val, y_val=source.y_val,
                   x_test=source.x_test, y_test=source.y_test, num_classes=source.num_classes,
                   notes=[note, *source.notes], meta={**source.meta, "distilled": {k: v for k, v in info.items() if k != "losses"}})


def not_raw(path: str | None, seed: int):
    """Registry placeholder: :func:`compresslab.data.load_dataset` loads ``distilled:DIR`` whole
    with :func:`load_distilled` (its splits must not be carved or re-standardised)."""
    raise UserError(f"distilled:{path}: load it with compresslab.data.load_dataset")
