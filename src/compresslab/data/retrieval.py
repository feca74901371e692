"""Re-identification (retrieval) datasets: ``identities:synthetic`` and ``market1501:DIR``.

A retrieval dataset trains a classifier over the *training identities* (softmax ID loss)
and is evaluated by retrieval on *disjoint test identities*. It comes back from
``load_dataset`` as an ordinary :class:`~compresslab.data.Dataset`:

* train (and the val carved from it): training-identity images, labels ``0..P-1``, and
  ``num_classes == P`` (the number of training identities, never inferred from test labels);
* test: the **query images followed by the gallery images** of the test identities;
  ``y_test`` holds their identity labels, which live in a space of their own (they are not
  class indices: they may exceed ``num_classes`` and may be ``-1``), so **test-split
  accuracy (and a test cross-entropy) is meaningless** for these datasets;
* ``meta["retrieval"] = {"n_query": int, "cams_test": LongTensor (N_test,),
  "ids_test": LongTensor (N_test,), "train_pids": LongTensor (P,)}``: query rows are
  ``x_test[:n_query]``, the gallery is the rest; ``ids_test`` repeats the identity labels
  (``y_test`` may be remapped by later code, these are not); ``cams_test`` are camera labels
  (only equality matters); ``train_pids[k]`` is the original identity of class ``k``.

The usual protocol (Market-1501): for each query, rank the gallery by feature distance,
ignoring gallery images of the same identity *and* camera, and gallery images with id
``-1`` (junk); id ``0`` (Market distractors) never matches a query. Inputs are
standardised with the train split's statistics like every other dataset.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from compresslab.data.loaders import Raw, carve
from compresslab.errors import UserError

KEY = "retrieval"

TEST_NOTE = ("retrieval dataset: the test split is {q:,} query + {g:,} gallery images of {k:,} "
             "identities disjoint from training; test accuracy is meaningless, evaluate by "
             "retrieval (mAP / CMC) with meta['retrieval']")


def is_retrieval(raw: Raw) -> bool:
    """Whether ``raw`` is a retrieval dataset (has ``meta["retrieval"]``)."""
    return bool(raw.meta) and KEY in raw.meta


def check(raw: Raw, name: str) -> None:
    """Check a retrieval Raw's labels and meta; one-line UserError naming ``name``."""
    info = raw.meta[KEY]
    n_test, n_query = len(raw.y_test), int(info["n_query"])
    if len(raw.y_train) and raw.y_train.min() < 0:
        raise UserError(f"dataset {name!r} has negative training labels (min {raw.y_train.min()}); use 0..P-1")
    if n_test and raw.y_test.min() < -1:
        raise UserError(f"dataset {name!r} has test identity labels below -1 (min {raw.y_test.min()})")
    if not 0 < n_query < n_test:
        raise UserError(f"dataset {name!r}: needs query and gallery images, found {n_query} query "
                        f"and {n_test - n_query} gallery")
    for key in ("cams_test", "ids_test"):
        if len(info[key]) != n_test:
            raise UserError(f"dataset {name!r}: meta {key} has {len(info[key])} entries for {n_test} test images")


def subset(raw: Raw, n: int, seed: int) -> Raw:
    """A smoke-run subset of a retrieval Raw: ``n`` seeded training examples (as
    :func:`loaders.subset`) and whole test identities (each with its query and gallery
    images, in query-then-gallery order) drawn in seeded order while they fit in ``n``
    (at least one identity); junk and distractor gallery images are dropped."""
    info = raw.meta[KEY]
    _, train = carve(len(raw.y_train), min(n, len(raw.y_train)), seed)
    ids, n_query = np.asarray(info["ids_test"]), int(info["n_query"])
    people = np.unique(ids[:n_query])
    order = np.random.default_rng(seed + 1).permutation(len(people))
    counts = {int(p): int(c) for p, c in zip(*np.unique(ids, return_counts=True))}
    chosen, total = [], 0
    for p in people[order]:
        if chosen and total + counts[int(p)] > n:
            break
        chosen.append(p)
        total += counts[int(p)]
    test = np.flatnonzero(np.isin(ids, chosen))  # sorted: queries stay ahead of the gallery
    meta = {**raw.meta, KEY: {**info, "n_query": int((test < n_query).sum()),
                              "cams_test": np.asarray(info["cams_test"])[test], "ids_test": ids[test]}}
    note = (f"subset: {len(train):,} of {len(raw.y_train):,} training examples and {len(chosen):,} of "
            f"{len(people):,} test identities ({len(test):,} of {len(raw.y_test):,} test images; smoke run)")
    notes = [TEST_NOTE.format(q=int((test < n_query).sum()), g=int((test >= n_query).sum()), k=len(chosen))
             if n.startswith(TEST_NOTE[:18]) else n for n in raw.notes]
    return Raw(raw.x_train[train], raw.y_train[train], raw.x_test[test], raw.y_test[test],
               num_classes=raw.num_classes, notes=[*notes, note], meta=meta)


def _owned(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` itself when it is a writable array of ``dtype``, else a copy (cached arrays are read-only)."""
    return a if a.dtype == dtype and a.flags.writeable else np.array(a, dtype=dtype)


def _retrieval_raw(x_train, y_train, train_pids, x_test, ids_test, cams_test, n_query, notes=()) -> Raw:
    n_ids = len(np.unique(ids_test[:n_query]))
    note = TEST_NOTE.format(q=n_query, g=len(ids_test) - n_query, k=n_ids)
    meta = {KEY: {"n_query": int(n_query), "cams_test": np.array(cams_test, dtype=np.int64),
                  "ids_test": np.array(ids_test, dtype=np.int64), "train_pids": np.array(train_pids, dtype=np.int64)}}
    return Raw(_owned(x_train, np.float32), np.array(y_train, dtype=np.int64),
               _owned(x_test, np.float32), np.array(ids_test, dtype=np.int64),
               num_classes=len(train_pids), notes=[*notes, note], meta=meta)


# ------------------------------------------------------------ identities:synthetic

SYNTHETIC_SEED = 1501  # fixed: the dataset is the same everywhere, whatever the split seed


@functools.cache
def synthetic_arrays(n_train_ids: int = 500, n_test_ids: int = 300, size: int = 16, channels: int = 3,
                     cameras: int = 6, noise: float = 0.35, jitter: float = 0.6, gain: float = 0.4,
                     mix: float = 0.0, shift: float = 2.0, occlusion: float = 0.75, seed: int = SYNTHETIC_SEED) -> dict[str, np.ndarray]:
    """The synthetic identities, generated once per process (read-only arrays, ~1 s).

    Identity ``i`` is a smooth ``channels x size x size`` template: a base colour, 5
    Gaussian blobs with random centres, widths and per-channel amplitudes, and a faint
    low-frequency grating. Each of its 8-12 observations jitters every blob (position sd
    ``jitter`` px, amplitude sd 20%, width sd 10%), shifts the whole image by up to
    ``shift`` px, scales its contrast (x0.7-1.3) and brightness (sd 0.15), applies its
    camera's fixed colour transform (per-channel gain in ``1 +- gain``, offset sd
    ``0.75 * gain``, cross-channel mixing sd ``mix``), covers a random 4-7 px square with
    a random colour (with probability ``occlusion``) and adds pixel noise (sd ``noise``);
    lengths are for 16x16 and scale with ``size``. Every identity has a home camera with
    2-4 observations; the others come from the other ``cameras - 1`` cameras.

    Identities ``0..n_train_ids-1`` train; the rest are test identities, each with 1-2
    query images from its home camera (at least one home-camera image left in the gallery)
    and the rest in the gallery. Returns ``x_train, y_train, x_test, ids_test, cams_test``
    (query images first) and ``n_query`` (a 0-d array).
    """
    rng = np.random.default_rng(seed)
    n_ids, k, s, c = n_train_ids + n_test_ids, 5, size, channels
    # identity templates
    u = s / 16  # lengths below are for 16x16 images
    centres = rng.uniform(2.0 * u, s - 2.0 * u, (n_ids, k, 2))
    widths = rng.uniform(1.2 * u, 3.0 * u, (n_ids, k))
    amps = rng.normal(0.0, 1.0, (n_ids, k, c))
    base = rng.normal(0.0, 0.3, (n_ids, c))
    freq = rng.uniform(-1.5, 1.5, (n_ids, 2)) / s
    phase = rng.uniform(0.0, 2 * np.pi, (n_ids, c))
    grating = rng.normal(0.0, 0.3, (n_ids, c))
    # observations and their cameras
    n_obs = rng.integers(8, 13, n_ids)
    home = rng.integers(0, cameras, n_ids)
    n_home = rng.integers(2, 5, n_ids)
    owner = np.repeat(np.arange(n_ids), n_obs)
    j = np.arange(len(owner)) - np.repeat(np.cumsum(n_obs) - n_obs, n_obs)  # index within identity
    other = (home[owner] + rng.integers(1, cameras, len(owner))) % cameras
    cam = np.where(j < n_home[owner], home[owner], other)
    m = len(owner)
    # render each observation
    moved = rng.uniform(-shift * u, shift * u, (m, 1, 2))
    pos = centres[owner] + moved + rng.normal(0.0, jitter * u, (m, k, 2))
    width = widths[owner] * np.exp(rng.normal(0.0, 0.1, (m, k)))
    amp = amps[owner] * (1.0 + rng.normal(0.0, 0.2, (m, k, 1)))
    grid = np.arange(s, dtype=np.float64)
    dy = (grid[None, None, :] - pos[..., 0:1]) ** 2  # (m, k, s)
    dx = (grid[None, None, :] - pos[..., 1:2]) ** 2
    blobs = np.exp(-(dy[..., :, None] + dx[..., None, :]) / (2 * width[..., None, None] ** 2))
    img = np.einsum("mkc,mkhw->mchw", amp, blobs)
    yy, xx = grid[None, :, None] - moved[:, 0, 0, None, None], grid[None, None, :] - moved[:, 0, 1, None, None]
    wave = 2 * np.pi * (freq[owner, 0, None, None] * yy + freq[owner, 1, None, None] * xx)  # (m, s, s)
    img += grating[owner][..., None, None] * np.cos(wave[:, None] + phase[owner][..., None, None])
    img += base[owner][..., None, None]
    img = img * rng.uniform(0.7, 1.3, (m, 1, 1, 1)) + rng.normal(0.0, 0.15, (m, 1, 1, 1))
    gains, offset = rng.uniform(1 - gain, 1 + gain, (cameras, c)), rng.normal(0.0, 0.75 * gain, (cameras, c))
    colour = np.eye(c) * gains[:, None, :] + rng.normal(0.0, mix, (cameras, c, c)) * (1 - np.eye(c))
    img = np.einsum("mij,mjhw->mihw", colour[cam], img) + offset[cam][..., None, None]
    side = rng.integers(round(4 * u), round(8 * u), m)
    top, left = rng.integers(0, s - side + 1), rng.integers(0, s - side + 1)
    rows = (grid[None, :] >= top[:, None]) & (grid[None, :] < (top + side)[:, None])
    cols = (grid[None, :] >= left[:, None]) & (grid[None, :] < (left + side)[:, None])
    occluded = (rows[:, :, None] & cols[:, None, :]) & (rng.random(m) < occlusion)[:, None, None]
    fill = rng.normal(0.0, 0.7, (m, c))
    img = np.where(occluded[:, None], fill[..., None, None], img)
    img += rng.normal(0.0, noise, img.shape)
    img = img.astype(np.float32)
    # splits: train identities; test queries (1-2 home-camera images) then gallery
    n_query_of = np.minimum(rng.integers(1, 3, n_ids), n_home - 1)
    train = owner < n_train_ids
    query = ~train & (j < n_query_of[owner])
    gallery = ~train & ~query
    test = np.concatenate([np.flatnonzero(query), np.flatnonzero(gallery)])
    out = {"x_train": img[train], "y_train": owner[train].astype(np.int64), "x_test": img[test],
           "ids_test": owner[test].astype(np.int64), "cams_test": cam[test].astype(np.int64),
           "n_query": np.array(int(query.sum()))}
    for a in out.values():
        a.setflags(write=False)
    return out


def load_identities(path: str | None, seed: int) -> Raw:
    """``identities:synthetic``: 500 training and 300 test synthetic identities, 3x16x16
    images seen by 6 cameras (see :func:`synthetic_arrays`); ``seed`` does not change it."""
    if path != "synthetic":
        raise UserError(f"identities:{path}: unknown identity generator {path!r}; use identities:synthetic")
    a = synthetic_arrays()
    n_train_ids = int(a["y_train"].max()) + 1
    return _retrieval_raw(a["x_train"], a["y_train"], np.arange(n_train_ids), a["x_test"], a["ids_test"],
                          a["cams_test"], int(a["n_query"]),
                          notes=["identities:synthetic: generated offline (fixed seed), 3x16x16, 6 cameras; "
                                 "test identity labels are 500..799"])


# --------------------------------------------------------------------- market1501

MARKET_SIZE = (64, 32)  # (H, W) every image is resized to, bilinear, RGB in [0, 1]
MARKET_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
#: ``PID_cC[sS]_FRAME[_BOX]``: Market-1501 ``0002_c1s1_000451_03``; PID -1 is junk, 0000 a distractor.
MARKET_NAME = re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)(?:s\d+)?_\d+(?:_\d+)?$")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def parse_market_name(file: Path) -> tuple[int, int]:
    """``(person id, camera)`` from a Market-1501 file name, or a one-line UserError."""
    match = MARKET_NAME.match(file.stem)
    if match is None:
        raise UserError(f"{file}: not a Market-1501 image name; expected PID_cCsS_FRAME_BOX.jpg "
                        "(e.g. 0002_c1s1_000451_03.jpg, PID -1 for junk)")
    return int(match["pid"]), int(match["cam"])


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    """``(file name, pid, cam)`` of every image in ``folder``, by name; other files are skipped."""
    names = sorted(f.name for f in folder.iterdir()
                   if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file())
    return [(n, *parse_market_name(folder / n)) for n in names]


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise UserError("market1501 reads JPEGs with Pillow, which is not installed: pip install pillow") from None
    return Image


def _read_images(folder: Path, names: list[str], size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(N, 3, H, W)`` of the named images, RGB, resized to ``size`` (H, W)."""
    image = _pil()
    out = np.empty((len(names), 3, *size), dtype=np.uint8)
    for i, name in enumerate(names):
        try:
            with image.open(folder / name) as im:
                rgb = im.convert("RGB").resize((size[1], size[0]), image.BILINEAR)
        except Exception as e:
            raise UserError(f"{folder / name}: not a readable image ({type(e).__name__}: {e})") from None
        out[i] = np.asarray(rgb).transpose(2, 0, 1)
    return out


@functools.lru_cache(maxsize=2)
def _market_arrays(root: str, size: tuple[int, int], stamp: tuple[int, ...]) -> tuple:
    """The parsed lists and uint8 images of the three folders (``stamp``: their mtimes,
    so adding or renaming files reloads)."""
    del stamp
    lists = {f: _listing(Path(root) / f) for f in MARKET_FOLDERS}  # parse every name before reading any
    for f, items in lists.items():
        if not items:
            raise UserError(f"market1501:{root}: {f}/ has no images")
    _pil()
    images = {f: _read_images(Path(root) / f, [n for n, _, _ in items], size) for f, items in lists.items()}
    for a in images.values():
        a.setflags(write=False)
    return lists, images


def load_market1501(path: str | None, seed: int, size: tuple[int, int] = MARKET_SIZE) -> Raw:
    """Market-1501: ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` in ``path``.

    Images are resized to ``size`` (default 3x64x32, H x W) in [0, 1]. Training person
    ids become classes ``0..P-1`` by increasing id (``train_pids`` keeps them; junk ``-1``
    and distractor ``0000`` training images, absent from the real set, are skipped). The
    test split is ``query/`` (ids <= 0 skipped) then ``bounding_box_test/`` with the
    *original* person ids: ``-1`` junk (to be excluded by the metric), ``0`` distractors
    (never a match). Cameras are the ``cN`` of the name. Non-image files are skipped; an
    image file whose name does not parse is a one-line UserError naming it.
    """
    folder = Path(path).expanduser()
    expected = f"expected the Market-1501 folders {', '.join(f + '/' for f in MARKET_FOLDERS)}"
    if not folder.is_dir():
        raise UserError(f"market1501:{path}: no such directory; {expected}")
    missing = [f for f in MARKET_FOLDERS if not (folder / f).is_dir()]
    if missing:
        raise UserError(f"market1501:{path}: missing {', '.join(f + '/' for f in missing)}; {expected}")
    stamp = tuple((folder / f).stat().st_mtime_ns for f in MARKET_FOLDERS)
    lists, images = _market_arrays(str(folder.resolve()), tuple(size), stamp)
    notes = []
    pid = {f: np.array([p for _, p, _ in lists[f]], dtype=np.int64) for f in MARKET_FOLDERS}
    cam = {f: np.array([c for _, _, c in lists[f]], dtype=np.int64) for f in MARKET_FOLDERS}
    keep = {"bounding_box_train": pid["bounding_box_train"] > 0, "query": pid["query"] > 0,
            "bounding_box_test": np.ones(len(pid["bounding_box_test"]), dtype=bool)}
    for f in ("bounding_box_train", "query"):
        if not keep[f].all():
            notes.append(f"market1501: skipped {int((~keep[f]).sum())} junk/distractor images (id <= 0) in {f}/")
        if not keep[f].any():
            raise UserError(f"market1501:{path}: {f}/ has no images of real identities (all ids <= 0)")
    train_pids, y_train = np.unique(pid["bounding_box_train"][keep["bounding_box_train"]], return_inverse=True)
    q, g = keep["query"], keep["bounding_box_test"]
    as_float = lambda f: images[f][keep[f]].astype(np.float32) / 255.0
    x_test = np.concatenate([as_float("query"), as_float("bounding_box_test")])
    ids_test = np.concatenate([pid["query"][q], pid["bounding_box_test"][g]])
    cams_test = np.concatenate([cam["query"][q], cam["bounding_box_test"][g]])
    return _retrieval_raw(as_float("bounding_box_train"), y_train.reshape(-1), train_pids, x_test, ids_test,
                          cams_test, int(q.sum()), notes=notes)
