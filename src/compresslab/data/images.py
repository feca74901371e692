"""``imagefolder:DIR``: class-per-folder images, read with PIL.

Layouts (class names are the sub-folder names of the training folder, sorted; id = index):

- ``DIR/train/<class>/*``, with optional ``DIR/val/<class>/*`` (the validation split) and
  ``DIR/test/<class>/*`` (the test split). Without ``test/`` a seeded fifth of train is the
  test split; without ``val/``, ``load_dataset`` carves the validation split from train.
- ``DIR/<class>/*``: test and validation splits both carved from it.

Every image is converted to RGB (``channels=1``: grayscale ``L``), resized so its shorter
side is ``size`` (default 32, bilinear) and centre-cropped to ``size x size``, then scaled
to [0, 1]; ``load_dataset`` standardises per channel with the training split's statistics,
as for every image dataset. Files whose extension is not an image's are ignored.

Unreadable images (``bad=`` option): ``skip`` (default) leaves them out and says so in
``Dataset.notes`` ("skipped 2 unreadable images: train/cat/a.png, ..."); ``fail`` stops with
a one-line :class:`UserError` naming the first one.

Training augmentation is the recipe's (``augment: crop-flip``: a random crop after
``crop_padding`` zero padding, and a horizontal flip), applied to each batch in ``fit``;
:func:`compresslab.data.core.random_resized_crop` is the batched random-resized-crop, not yet
a recipe option.

``stream=1`` keeps the training split on disk and trains from a ``DataLoader`` with
``workers=N`` processes (default 2; see :mod:`compresslab.data.stream`); the validation and
test splits are decoded into memory. ``workers`` also parallelises decoding at load time.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from compresslab.data import stream as streaming
from compresslab.data.loaders import Raw, carve_test
from compresslab.errors import UserError

OPTIONS = ("size", "channels", "bad", "stream", "workers")
DEFAULT_SIZE = 32
DEFAULT_WORKERS = 2
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SHOWN = 5
"""How many skipped file names a note lists."""


def to_array(img, size: int, channels: int = 3) -> np.ndarray:
    """A PIL image as uint8 ``(channels, size, size)``: converted to RGB or L, shorter side
    resized to ``size`` (bilinear), centre crop."""
    from PIL import Image

    img = img.convert("RGB" if channels == 3 else "L")
    w, h = img.size
    ratio = size / min(w, h)
    new = (max(size, round(w * ratio)), max(size, round(h * ratio)))
    if new != (w, h):
        img = img.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    a = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(a.transpose(2, 0, 1) if a.ndim == 3 else a[None])


def scale(x: np.ndarray) -> np.ndarray:
    """uint8 images as float32 in [0, 1] (:func:`compresslab.data.stream.scale`, so that the
    in-memory and streamed paths agree bit for bit)."""
    import torch

    return streaming.scale(torch.from_numpy(x)).numpy()


def decode_file(path: str, size: int, channels: int) -> np.ndarray:
    """The image file at ``path`` through :func:`to_array`; raises what PIL raises."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return to_array(img, size, channels)


def _try(key: str, decode: streaming.Decode, sums: bool):
    """``(pixels or their sums, None)``, or ``(None, reason)`` when ``decode(key)`` fails."""
    try:
        x = decode(key)
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file
        return None, (str(e).splitlines() or [type(e).__name__])[0][:120]
    return (streaming.pixel_sums(x) if sums else x), None


def image_options(where: str, size: str | None, channels: str | None, bad: str | None, stream: str | None,
                  workers: str | None) -> tuple[int, int, str, bool, int]:
    """The image options checked: ``(size, channels, bad, stream, workers)``."""
    from compresslab.data.text import int_option

    side = int_option(where, "size", size, DEFAULT_SIZE)
    chans = int_option(where, "channels", channels, 3)
    if chans not in (1, 3):
        raise UserError(f"{where}: option channels={chans} must be 1 or 3")
    if bad not in (None, "skip", "fail"):
        raise UserError(f"{where}: option bad={bad!r} must be skip or fail")
    if stream not in (None, "0", "1"):
        raise UserError(f"{where}: option stream={stream!r} must be 0 or 1")
    lazy = stream == "1"
    return side, chans, bad or "skip", lazy, int_option(where, "workers", workers,
                                                        DEFAULT_WORKERS if lazy else 0, minimum=0)


def read_split(where: str, keys: list[str], names: list[str], labels: np.ndarray, decode: streaming.Decode,
               shape: tuple[int, int, int], *, bad: str, lazy: bool, workers: int,
               skipped: list[str]) -> tuple[np.ndarray | streaming.LazyImages, np.ndarray]:
    """Decode the images ``keys`` (shown to the user as ``names``) with ``workers`` processes:
    ``(x, labels)`` without the unreadable ones (each appended to ``skipped``, or, with
    ``bad="fail"``, a UserError). ``x`` is float32 in [0, 1], or with ``lazy`` a
    :class:`~compresslab.data.stream.LazyImages` holding each image's pixel sums."""
    results = streaming.map_files(functools.partial(_try, decode=decode, sums=lazy), keys, workers)
    ok = []
    for i, (_, reason) in enumerate(results):
        if reason is None:
            ok.append(i)
        elif bad == "fail":
            raise UserError(f"{where}: unreadable image {names[i]} ({reason}); remove it, or load with "
                            "?bad=skip to leave unreadable images out")
        else:
            skipped.append(names[i])
    values = [results[i][0] for i in ok]
    if lazy:
        sums = np.stack(values) if values else np.zeros((0, shape[0], 2), np.int64)
        return streaming.LazyImages([keys[i] for i in ok], decode, shape, sums, workers), labels[ok]
    return (scale(np.stack(values)) if values else np.zeros((0, *shape), np.float32)), labels[ok]


def finish(where: str, arrays: dict, seed: int, skipped: list[str], workers: int, meta: dict | None,
           num_classes: int | None) -> Raw:
    """A :class:`Raw` from ``{split: (x, labels)}``: a test split carved from train when there
    is none, notes for it and for ``skipped`` images."""
    if len(arrays["train"][1]) == 0:
        raise UserError(f"{where}: no readable training images")
    notes = []
    if skipped:
        shown = ", ".join(skipped[:SHOWN]) + (f" and {len(skipped) - SHOWN} more" if len(skipped) > SHOWN else "")
        notes.append(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}: {shown}")
    if "test" not in arrays:
        x, y = arrays["train"]
        try:
            keep, test = carve_test(len(y), seed)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        x_test = x[test].load(workers=workers).numpy() if isinstance(x, streaming.LazyImages) else x[test]
        arrays["train"], arrays["test"] = (x[keep], y[keep]), (x_test, y[test])
        notes.append(f"no test split in {where}: test split ({len(test)} images) carved from train with seed {seed}")
    val = {"x_val": arrays["val"][0], "y_val": arrays["val"][1]} if "val" in arrays else {}
    return Raw(*arrays["train"], *arrays["test"], num_classes=num_classes, notes=notes, meta=meta, **val)


def _classes(root: Path, where: str) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UserError(f"{where}: no class folders in {root}; expected {root}/<class>/<image files>")
    return names


def _files(root: Path, classes: list[str], where: str, base: Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(paths, paths relative to DIR, labels)`` of the images under ``root/<class>/``."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise UserError(f"{where}: {root.name}/ has class folder(s) {', '.join(unknown)} that train does not; "
                        "use the same class names in every split")
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix.lower() in EXTENSIONS and not f.name.startswith("."):
                paths.append(str(f))
                labels.append(label)
    return paths, [str(Path(p).relative_to(base)) for p in paths], np.asarray(labels, dtype=np.int64)


def load_imagefolder(path: str | None, seed: int, *, size: str | None = None, channels: str | None = None,
                     bad: str | None = None, stream: str | None = None, workers: str | None = None) -> Raw:
    """``imagefolder:DIR`` (see the module docstring for layouts and options)."""
    where = f"imagefolder:{path}"
    base = Path(path).expanduser()
    if not base.is_dir():
        raise UserError(f"{where}: no such directory; expected DIR/train/<class>/* or DIR/<class>/*")
    side, chans, bad, lazy, procs = image_options(where, size, channels, bad, stream, workers)
    train_root = base / "train" if (base / "train").is_dir() else base
    classes = _classes(train_root, where)
    roots = {"train": train_root}
    for split in ("val", "test"):
        if train_root != base and (base / split).is_dir():
            roots[split] = base / split
    decode = functools.partial(decode_file, size=side, channels=chans)
    skipped: list[str] = []
    arrays = {}
    for split, root in roots.items():
        paths, names, labels = _files(root, classes, where, base)
        arrays[split] = read_split(where, paths, names, labels, decode, (chans, side, side), bad=bad,
                                   lazy=lazy and split == "train", workers=procs, skipped=skipped)
    return finish(where, arrays, seed, skipped, procs, {"classes": classes}, len(classes))
