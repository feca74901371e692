"""A training split that stays on disk, read by a torch ``DataLoader`` with worker processes.

For image sets too large for memory (``imagefolder:DIR?stream=1&workers=4``) the training
split is a :class:`LazyImages`: a list of files and a picklable ``decode(file) -> uint8
(C, H, W)``. It looks enough like a tensor (``shape``, ``dim()``, ``len``, ``device``,
``to()``) for the code that only inspects ``data.x_train``, and indexing it with a torch
index, a slice or an int decodes those images (in this process). The validation and test
splits are ordinary tensors in memory.

Training reads it through :func:`loader_batches`, which yields ``(idx, x, y)`` like
:func:`compresslab.data.core.batches`: the batch order is the same seeded
``torch.randperm`` (so, on the CPU, a streamed run sees exactly the batches of an
in-memory run with the same seed), and each batch's images are decoded by the
``DataLoader``'s ``workers`` processes, ahead of the training step.

Standardisation uses the training split's per-channel mean and std, computed from exact
integer sums of the decoded 8-bit pixels (one pass at load time, which also finds the
unreadable files). The in-memory path computes the same statistics in float32 over the
whole tensor, so the two agree to about 1e-7, not bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from compresslab.data.core import Dataset

Decode = Callable[[str], np.ndarray]


def scale(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1] (the one conversion every image path uses)."""
    return x.float() / 255


class _Files(torch.utils.data.Dataset):
    """``files[i]`` through ``fn``: what the ``DataLoader`` workers run."""

    def __init__(self, files: list[str], fn: Callable[[str], object]):
        self.files, self.fn = files, fn

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.fn(self.files[i])


def _as_list(batch: list) -> list:
    return batch


def map_files(fn: Callable[[str], object], files: list[str], workers: int = 0, chunk: int = 64) -> list:
    """``[fn(f) for f in files]``, computed by ``workers`` processes (0: in this one), in order."""
    if workers <= 0 or len(files) < 2:
        return [fn(f) for f in files]
    loader = torch.utils.data.DataLoader(_Files(files, fn), batch_size=chunk, num_workers=workers,
                                         collate_fn=_as_list)
    return [r for part in loader for r in part]


def pixel_sums(x: np.ndarray) -> np.ndarray:
    """Per channel ``[sum, sum of squares]`` of one uint8 image ``(C, H, W)``, int64 ``(C, 2)``."""
    v = x.reshape(x.shape[0], -1).astype(np.int64)
    return np.stack([v.sum(1), (v * v).sum(1)], axis=1)


class LazyImages:
    """Image files decoded on demand: ``shape`` ``(N, C, H, W)``, float32 values after
    :func:`scale` and, once :meth:`standardised`, ``(x - mean) / std``.

    ``sums`` are :func:`pixel_sums` per file (for the split's statistics); ``workers`` is
    how many ``DataLoader`` processes :func:`loader_batches` uses. Indexing with a numpy
    index array gives a lazy view (how loaders carve splits); with a torch index, a list,
    a slice or an int it decodes those images now.
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, files: list[str], decode: Decode, example_shape: tuple[int, ...], sums: np.ndarray,
                 workers: int = 0, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        self.files, self.decode, self.example_shape = list(files), decode, tuple(example_shape)
        self.sums, self.workers, self.mean, self.std = sums, workers, mean, std

    # -- tensor look-alike
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), *self.example_shape))

    def __len__(self) -> int:
        return len(self.files)

    def dim(self) -> int:
        return 1 + len(self.example_shape)

    @property
    def ndim(self) -> int:
        return self.dim()

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def is_floating_point(self) -> bool:
        return True

    def to(self, *args, **kwargs) -> LazyImages:
        """Itself: the files stay where they are; :func:`loader_batches` moves each batch."""
        return self

    def cpu(self) -> LazyImages:
        return self

    def _view(self, idx: np.ndarray) -> LazyImages:
        return LazyImages([self.files[i] for i in idx], self.decode, self.example_shape, self.sums[idx],
                          self.workers, self.mean, self.std)

    def __getitem__(self, idx) -> LazyImages | torch.Tensor:
        if isinstance(idx, np.ndarray):
            return self._view(idx)
        if isinstance(idx, (int, np.integer)):
            return self.load([int(idx)])[0]
        if isinstance(idx, slice):
            return self.load(range(len(self.files))[idx])
        return self.load(torch.as_tensor(idx).reshape(-1).tolist())

    # -- decoding
    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` (on any device) as the float32 inputs the model sees."""
        x = scale(pixels)
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x

    def load(self, indices=None, workers: int = 0) -> torch.Tensor:
        """The images at ``indices`` (default: all) decoded in memory, ``(n, C, H, W)`` float32."""
        files = self.files if indices is None else [self.files[i] for i in indices]
        arrays = map_files(self.decode, files, workers)
        pixels = (torch.from_numpy(np.stack(arrays)) if arrays
                  else torch.zeros((0, *self.example_shape), dtype=torch.uint8))
        return self.normalise(pixels)

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (population) of the scaled pixels, ``(1, C, 1, 1)`` float32,
        from the exact integer sums; a constant channel gets std 1 (centred only)."""
        count = len(self.files) * int(np.prod(self.example_shape[1:]))
        total = self.sums.sum(axis=0).astype(np.float64)  # (C, 2)
        mean = total[:, 0] / count
        var = np.maximum(total[:, 1] / count - mean * mean, 0.0)
        shape = (1, -1) + (1,) * (len(self.example_shape) - 1)
        mean_t = torch.from_numpy(mean / 255).float().reshape(shape)
        std_t = torch.from_numpy(np.sqrt(var) / 255).float().reshape(shape)
        return mean_t, torch.where(std_t > 0, std_t, torch.ones_like(std_t))

    def standardised(self, mean: torch.Tensor, std: torch.Tensor) -> LazyImages:
        """This split with ``(x - mean) / std`` applied to every image it yields."""
        return LazyImages(self.files, self.decode, self.example_shape, self.sums, self.workers, mean, std)


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays))


def loader_batches(x: LazyImages, y: torch.Tensor, batch_size: int, device: torch.device | str, *,
                   generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled ``(idx, x[idx], y[idx])`` on ``device``, the images decoded by a ``DataLoader``
    with ``x.workers`` processes.

    The order is ``torch.randperm(len(x), generator=generator)`` cut into ``batch_size``
    runs, exactly as :func:`compresslab.data.core.batches` draws it for CPU tensors
    (give a CPU generator). The uint8 pixels travel to ``device`` and are scaled and
    standardised there.
    """
    device = torch.device(device)
    order = torch.randperm(len(x), generator=generator)
    chunks = list(order.split(batch_size))
    loader = torch.utils.data.DataLoader(_Files(x.files, x.decode), batch_sampler=[c.tolist() for c in chunks],
                                         num_workers=x.workers, collate_fn=_stack,
                                         pin_memory=device.type == "cuda")
    for idx, pixels in zip(chunks, loader):
        xb = x.normalise(pixels.to(device, non_blocking=True))
        yield idx.to(device), xb, y[idx.to(y.device)].to(device)


def dataset(name: str, raw, keep: np.ndarray, val: np.ndarray, num_classes: int) -> Dataset:
    """``load_dataset``'s end for a lazy training split: the kept files stream, the carved
    (or given) validation split and the test split are decoded into memory, and all three
    are standardised by the kept files' statistics."""
    train: LazyImages = raw.x_train[keep]
    mean, std = train.statistics()
    if raw.y_val is not None:
        x_val, y_val = torch.from_numpy(np.asarray(raw.x_val, dtype=np.float32)), torch.from_numpy(raw.y_val)
    else:
        x_val, y_val = raw.x_train[val].load(workers=train.workers), torch.from_numpy(raw.y_train[val])
    x_test = torch.from_numpy(np.asarray(raw.x_test, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(raw.y_train, dtype=np.int64))
    notes = [*raw.notes, f"training split streams from disk: {len(train)} images decoded by "
                         f"{train.workers} DataLoader worker(s) per epoch"]
    return Dataset(name=name, x_train=train.standardised(mean, std), y_train=y[torch.from_numpy(keep)],
                   x_val=(x_val - mean) / std, y_val=y_val.long(), x_test=(x_test - mean) / std,
                   y_test=torch.from_numpy(np.ascontiguousarray(raw.y_test, dtype=np.int64)),
                   num_classes=num_classes, notes=notes, meta=dict(raw.meta or {}))
