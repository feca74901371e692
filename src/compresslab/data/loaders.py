"""Loaders that read one dataset format into raw numpy train/test arrays.

Each loader has the signature ``loader(path, seed) -> Raw``; ``path`` is the
part after ``name:`` (``None`` for built-in datasets). Loaders do no
validation carving and no standardisation: ``load_dataset`` does that. Every
problem with the user's input is raised as a one-line :class:`UserError`.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import pickle
import random
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compresslab.errors import UserError


@dataclass
class Raw:
    """Train/test arrays as a loader returns them, before carving and scaling.

    ``x_*`` are float32 ``(N, C, *spatial)``, ``y_*`` int64 ``(N,)``.
    ``num_classes`` is the dataset's known class count, or ``None`` to infer it.
    ``meta`` is dataset-specific extras for :attr:`Dataset.meta` (numpy arrays in it become
    tensors), e.g. ``{"retrieval": ...}`` from :mod:`compresslab.data.retrieval`.
    ``x_val`` / ``y_val``: a validation split the files provide (e.g. CoNLL's ``dev.txt``);
    ``load_dataset`` then uses it instead of carving one from train.
    Text loaders return int64 token ids ``(N, L)`` and say so in ``meta["text"]``
    (see :mod:`compresslab.data.text`).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


def carve(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (kept, carved) sorted index arrays, ``count`` carved.

    The carved indices are the first ``count`` of a permutation drawn from
    ``torch.Generator().manual_seed(seed)``, so the split is reproducible.
    """
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(perm[count:]), np.sort(perm[:count])


def subset(raw: Raw, n: int, seed: int) -> Raw:
    """A seeded random ``n`` of the training examples and at most ``n`` of the test ones
    (the rest of ``raw`` unchanged, the class count kept), with a note saying so."""
    _, train = carve(len(raw.y_train), min(n, len(raw.y_train)), seed)
    _, test = carve(len(raw.y_test), min(n, len(raw.y_test)), seed + 1)
    note = (f"subset: {len(train):,} of {len(raw.y_train):,} training and {len(test):,} of "
            f"{len(raw.y_test):,} test examples (smoke run)")
    labels = np.concatenate([raw.y_train, raw.y_test])
    val = {}
    if raw.y_val is not None:  # a validation split from the files: at most n of it too
        _, keep = carve(len(raw.y_val), min(n, len(raw.y_val)), seed + 2)
        val = {"x_val": raw.x_val[keep], "y_val": raw.y_val[keep]}
    known = raw.num_classes or (int(labels.max()) + 1 if len(labels) else None)
    return Raw(raw.x_train[train], raw.y_train[train], raw.x_test[test], raw.y_test[test],
               num_classes=known, notes=[*raw.notes, note], meta=raw.meta, **val)


def carve_test(n: int, seed: int, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, test)`` index arrays: a seeded ``fraction`` of ``range(n)`` (at least one)
    as a test split, for files that come without one (:func:`carve` with ``seed``)."""
    count = max(1, round(fraction * n))
    if count >= n:
        raise UserError(f"only {n} examples, too few to carve a test split; provide a test file")
    return carve(n, count, seed)


# --------------------------------------------------------------------- mnist1d


def cache_dir() -> Path:
    """The on-disk cache directory: ``$COMPRESSLAB_CACHE`` or ``~/.cache/compresslab``."""
    env = os.environ.get("COMPRESSLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "compresslab"


def _mnist1d_key(args: dict) -> str:
    """A short hash of the generator arguments that change the data (not the URL)."""
    relevant = {k: v for k, v in sorted(args.items()) if k != "url"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, x_test, y_test)`` of the default MNIST-1D, generated once and cached.

    Generation takes seconds, so the arrays are kept in this process and in an
    ``.npz`` under :func:`cache_dir` (written atomically; an unreadable cache
    file is regenerated, an unwritable cache directory is skipped).
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args(as_dict=True)
    path = cache_dir() / f"mnist1d-{_mnist1d_key(args)}.npz"
    keys = ("x", "y", "x_test", "y_test")
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = tuple(f[k] for k in keys)
        except Exception:  # corrupt cache: fall through and regenerate
            arrays = None
        if arrays is not None:
            return _readonly(arrays)
    # make_dataset reseeds the global random/numpy RNGs; restore them so a cold
    # cache does not change the process's random streams.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = tuple(np.asarray(data[k]) for k in keys)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **dict(zip(keys, arrays)))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # caching is an optimisation only
    return _readonly(arrays)


def _readonly(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load_mnist1d(path: str | None, seed: int) -> Raw:
    """MNIST-1D with the package's default arguments: 4000 train, 1000 test, length 40."""
    x, y, x_test, y_test = mnist1d_arrays()
    return Raw(
        x[:, None, :].astype(np.float32),
        y.astype(np.int64),
        x_test[:, None, :].astype(np.float32),
        y_test.astype(np.int64),
        num_classes=10,
    )


# ---------------------------------------------------------------------- digits


def load_digits(path: str | None, seed: int) -> Raw:
    """scikit-learn's bundled 8x8 digits in [0, 1] with a fixed stratified 20% test split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    d = sk_load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    return Raw(x[tr], y[tr], x[te], y[te], num_classes=10)


# ----------------------------------------------------------------------- mnist

IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS = 0x00000801  # unsigned bytes, 1 dimension


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (raw, or gzip if the name ends in ``.gz``) as a uint8 array.

    Checks the big-endian magic number against ``magic`` and that the payload
    size matches the dimensions in the header.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        kind = "a valid gzip file" if path.name.endswith(".gz") else "readable"
        raise UserError(f"{path}: not {kind} ({e}); re-download or re-extract it") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise UserError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise UserError(
            f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}; "
            "is this the right file?"
        )
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        what = "truncated" if len(data) - header < expected else "has trailing bytes"
        raise UserError(
            f"{path}: IDX file {what}: header says {'x'.join(map(str, dims))} = {expected} "
            f"bytes of data, found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, base: str) -> Path | None:
    """``folder/base`` or ``folder/base.gz``, whichever exists (raw first)."""
    for name in (base, base + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``{prefix}-images-idx3-ubyte`` and the matching labels as (x, y)."""
    img = _find(folder, f"{prefix}-images-idx3-ubyte")
    lab = _find(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img, IDX_IMAGES), read_idx(lab, IDX_LABELS)
    if images.shape[0] != labels.shape[0]:
        raise UserError(
            f"{img} has {images.shape[0]} images but {lab} has {labels.shape[0]} labels; "
            "the two files must come from the same set"
        )
    if images.shape[0] == 0:
        raise UserError(f"{img}: contains no images")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return x, labels.astype(np.int64)


def load_mnist(path: str | None, seed: int) -> Raw:
    """MNIST-format IDX files in a directory; carves a seeded 1/6 test split if no t10k pair."""
    folder = Path(path).expanduser()
    expected = (
        "expected train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] "
        "and optionally the t10k-* pair"
    )
    if not folder.is_dir():
        raise UserError(f"mnist:{path}: no such directory; {expected}")
    for base in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        if _find(folder, base) is None:
            raise UserError(f"mnist:{path}: missing {base}[.gz]; {expected}")
    x, y = _idx_pair(folder, "train")
    test = [_find(folder, f"t10k-{k}-idx{d}-ubyte") for k, d in (("images", 3), ("labels", 1))]
    if all(test):
        x_test, y_test = _idx_pair(folder, "t10k")
        if x_test.shape[1:] != x.shape[1:]:
            raise UserError(
                f"mnist:{path}: t10k images are {x_test.shape[2]}x{x_test.shape[3]} "
                f"but train images are {x.shape[2]}x{x.shape[3]}"
            )
        return Raw(x, y, x_test, y_test)
    if any(test):
        missing = "t10k-labels-idx1-ubyte" if test[0] else "t10k-images-idx3-ubyte"
        raise UserError(f"mnist:{path}: missing {missing}[.gz]; provide both t10k files or neither")
    n_test = round(len(y) / 6)
    if n_test < 1 or n_test >= len(y):
        raise UserError(f"mnist:{path}: only {len(y)} examples, too few to carve a test split")
    keep, test_idx = carve(len(y), n_test, seed)
    note = (
        f"no t10k files in {path}: test split ({n_test} examples) "
        f"carved from train with seed {seed}"
    )
    return Raw(x[keep], y[keep], x[test_idx], y[test_idx], notes=[note])


# ----------------------------------------------------------------------- cifar


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    """The one use of ``_codecs.encode`` in protocol-2 pickles: str -> bytes via latin-1."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", errors)


def _safe_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode,
    }


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers, nothing else."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path
        self.allowed = _safe_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UserError(
                f"refusing to unpickle {module}.{name} from {self.path}: "
                "CIFAR batches contain only arrays, lists and dicts"
            ) from None


def _key(d: dict, key: str):
    """``d[key]`` accepting either a str or a bytes key; ``None`` if absent."""
    if key in d:
        return d[key]
    return d.get(key.encode())


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> x float32 (N, 3, 32, 32) in [0, 1], y int64."""
    try:
        with open(path, "rb") as f:
            d = CifarUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"{path}: not a readable CIFAR python batch ({type(e).__name__}: {e}); "
            "re-download or re-extract it"
        ) from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a dict, found {type(d).__name__}")
    data, labels = _key(d, "data"), _key(d, label_key)
    if data is None or labels is None:
        missing = [k for k, v in (("data", data), (label_key, labels)) if v is None]
        raise UserError(f"{path}: missing key(s) {', '.join(missing)}; is this the right CIFAR variant?")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise UserError(
            f"{path}: 'data' must be a uint8 array of shape (N, 3072), "
            f"found {type(data).__name__} {getattr(data, 'dtype', '')} {shape}"
        )
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: '{label_key}' must be a list of integers") from None
    if y.shape != (data.shape[0],):
        raise UserError(
            f"{path}: {data.shape[0]} images but '{label_key}' has shape {y.shape}"
        )
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, y


def _load_cifar(path: str | None, prefix: str, subdir: str, train: list[str],
                test: str, label_key: str, classes: int) -> Raw:
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / test).is_file() and (folder / subdir).is_dir():
        folder = folder / subdir  # pointed at the extracted archive's parent
    names = train + [test]
    expected = f"expected {', '.join(names)} (the python version, {subdir}/)"
    if not folder.is_dir():
        raise UserError(f"{prefix}:{path}: no such directory; {expected}")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{prefix}:{path}: missing {', '.join(missing)}; {expected}")
    parts = [read_cifar_batch(folder / n, label_key) for n in train]
    x_test, y_test = read_cifar_batch(folder / test, label_key)
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    for name, labels in (("train", y), ("test", y_test)):
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise UserError(
                f"{prefix}:{path}: {name} labels must be in 0..{classes - 1}, "
                f"found {labels.min()}..{labels.max()}"
            )
    return Raw(x, y, x_test, y_test, num_classes=classes)


def load_cifar10(path: str | None, seed: int) -> Raw:
    """CIFAR-10 python batches ``data_batch_1``..``data_batch_5`` and ``test_batch``."""
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _load_cifar(path, "cifar10", "cifar-10-batches-py", train, "test_batch", "labels", 10)


def load_cifar100(path: str | None, seed: int) -> Raw:
    """CIFAR-100 python files ``train`` and ``test`` with their fine labels."""
    return _load_cifar(path, "cifar100", "cifar-100-python", ["train"], "test", "fine_labels", 100)


# ------------------------------------------------------------------------- npz

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _with_channel(x: np.ndarray, where: str) -> np.ndarray:
    """(N, L) -> (N, 1, L); (N, H, W) -> (N, 1, H, W); (N, C, H, W) kept."""
    if x.ndim in (2, 3):
        return x[:, None]
    if x.ndim == 4:
        return x
    raise UserError(
        f"{where}: x must be (N, L), (N, H, W) or (N, C, H, W), found shape {x.shape}"
    )


def load_npz(path: str | None, seed: int) -> Raw:
    """An ``.npz`` with ``x_train, y_train, x_test, y_test`` (no pickled objects).

    A 3-d ``x`` is read as ``(N, H, W)`` images. For multi-channel 1-d signals
    ``(N, C, L)`` store an extra string array ``layout="NCL"``.
    """
    file = Path(path).expanduser()
    where = f"npz:{path}"
    if not file.is_file():
        raise UserError(f"{where}: no such file; expected an .npz with arrays {', '.join(NPZ_KEYS)}")
    try:
        with np.load(file, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise UserError(
                    f"{where}: missing array(s) {', '.join(missing)}; "
                    f"expected {', '.join(NPZ_KEYS)} (found {', '.join(f.files) or 'none'})"
                )
            arrays = {k: f[k] for k in NPZ_KEYS}
            layout = str(f["layout"]) if "layout" in f.files else None
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"{where}: not a readable .npz of plain arrays ({type(e).__name__}: {e})"
        ) from None
    if layout not in (None, "NCL"):
        raise UserError(f"{where}: layout must be 'NCL' if given, found {layout!r}")
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype.kind not in "biuf":
            raise UserError(f"{where}: x_{split} must be numeric, found dtype {x.dtype}")
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise UserError(f"{where}: y_{split} must be a 1-d integer array, found {y.dtype} {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise UserError(f"{where}: x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}")
        if layout == "NCL":
            if x.ndim != 3:
                raise UserError(f"{where}: layout 'NCL' needs 3-d x_{split}, found shape {x.shape}")
        else:
            x = _with_channel(x, f"{where} x_{split}")
        out += [x.astype(np.float32), y.astype(np.int64)]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise UserError(
            f"{where}: x_train examples are {out[0].shape[1:]} but x_test are {out[2].shape[1:]}"
        )
    return Raw(*out)
