"""In-memory datasets and tensor-indexed batching (no DataLoader on small data)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

SPLITS = ("train", "val", "test")

IGNORE_INDEX = -100
"""A token label that takes no part in any loss or metric: padding, special tokens and
every sub-token but a word's first (the Hugging Face convention)."""


def valid_tokens(outputs: torch.Tensor, labels: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-level ``outputs`` ``(N, L, ...)`` flattened to the valid positions ``(M, ...)``,
    with their labels ``(M,)``; example-level outputs ``(N, ...)`` with labels ``(N,)`` come
    back as they are.

    A position is valid where ``labels != IGNORE_INDEX`` and, when ``mask`` ``(N, L)`` is
    given (an attention mask: nonzero for real tokens), where ``mask`` is nonzero. Without
    labels, ``mask`` alone decides (labels come back None); without either, every position
    is kept. Token-level means ``labels`` has two dimensions, or (no labels) ``mask`` is given
    or ``outputs`` has three dimensions.
    """
    token = (labels is not None and labels.ndim == 2) or (labels is None and (mask is not None or outputs.ndim == 3))
    if not token:
        return outputs, labels
    keep = torch.ones(outputs.shape[:2], dtype=torch.bool, device=outputs.device)
    if labels is not None:
        if labels.shape != outputs.shape[:2]:
            raise ValueError(f"token labels {tuple(labels.shape)} do not match outputs {tuple(outputs.shape)}")
        keep &= labels.to(outputs.device) != IGNORE_INDEX
    if mask is not None:
        keep &= mask.to(outputs.device).bool()
    flat = outputs[keep]
    return flat, (labels.to(outputs.device)[keep] if labels is not None else None)


@dataclass
class Dataset:
    """A classification (or regression, see :attr:`task`) dataset held as tensors.

    ``x_*`` are float32 of shape ``(N, C, *spatial)``; ``y_*`` are int64 labels (regression:
    float32 targets ``(N, num_classes)``).
    ``notes`` records anything a report must mention (e.g. a carved test split).
    ``meta`` holds dataset-specific extras, e.g. ``meta["retrieval"]`` for re-identification
    datasets (see :mod:`compresslab.data.retrieval`); it is carried along by :meth:`to`.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        """``"regression"`` when ``meta["task"]`` says so (float targets ``(N, num_classes)``,
        e.g. ``bragg:synthetic``), else ``"classification"``."""
        return self.meta.get("task", "classification")

    @property
    def text(self) -> dict | None:
        """``meta["text"]`` for text datasets (token ids as inputs), else None. Keys: ``level``
        (``"token"``: labels ``(N, L)`` with :data:`IGNORE_INDEX` where nothing is scored;
        ``"sequence"``: labels ``(N,)``), ``pad_id``, ``vocab_size``, ``tokenizer``
        (``"word"`` or ``"hf:DIR"``), ``labels`` (tag or class names), ``max_len``."""
        return self.meta.get("text")

    @property
    def token_level(self) -> bool:
        """True when every example has one label per token (``y`` is ``(N, L)``)."""
        return self.y_train.ndim == 2 and not self.y_train.is_floating_point()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, ``(C, *spatial)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in SPLITS:
            from compresslab.errors import UserError

            raise UserError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def sizes(self) -> dict[str, int]:
        return {s: int(self.split(s)[1].shape[0]) for s in SPLITS}

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Dataset:
        """This dataset with every split on ``device`` (itself when already there). Moving
        once and indexing batches there avoids a host-to-device copy per step."""
        device, here = torch.device(device), self.x_train.device
        if here.type == device.type and device.index in (None, here.index):
            return self
        moved = {f"{a}_{s}": getattr(self, f"{a}_{s}").to(device, non_blocking=non_blocking)
                 for s in SPLITS for a in ("x", "y")}
        return Dataset(self.name, **moved, num_classes=self.num_classes, notes=list(self.notes),
                       meta=dict(self.meta))  # meta as is: its small tensors stay on their device


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(idx, x[idx], y[idx])`` by indexing a (seeded) permutation.

    ``idx`` are positions in ``x``, so per-example state (cached teacher
    logits, noise targets) can be looked up with the same indices. Everything happens
    on ``x``'s device (give a ``generator`` on that device): no host round trip per batch.
    """
    n = x.shape[0]
    order = torch.randperm(n, generator=generator, device=x.device) if shuffle else torch.arange(n, device=x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield idx, x[idx], y[idx]


def pk_order(y: torch.Tensor, batch_size: int, instances: int, steps: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices for ``steps`` batches of ``batch_size``, each made of runs of ``instances``
    examples of one class (P x K sampling for metric losses: Hermans et al. 2017).

    Every class's examples are shuffled and cut into runs of ``instances`` (a short last
    run is filled by drawing again from that class), the runs are shuffled, and the first
    ``steps * batch_size`` indices are kept (drawn again if they run short). On the CPU,
    with a CPU ``generator``."""
    y = y.cpu()
    classes, inverse = torch.unique(y, return_inverse=True)
    members = [torch.nonzero(inverse == c).flatten() for c in range(len(classes))]
    need = steps * batch_size
    runs: list[torch.Tensor] = []
    while sum(len(r) for r in runs) < need:
        for idx in members:
            idx = idx[torch.randperm(len(idx), generator=generator)]
            short = -len(idx) % instances
            if short:
                idx = torch.cat([idx, idx[torch.randint(len(idx), (short,), generator=generator)]])
            runs.extend(idx.view(-1, instances))
    order = torch.stack(runs)[torch.randperm(len(runs), generator=generator)].flatten()
    return order[:need]


def stream_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device | str,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled ``(idx, x[idx], y[idx])`` on ``device`` for ``x`` / ``y`` kept in host memory.

    The permutation is drawn on the CPU (give a CPU ``generator``) exactly as
    :func:`batches` draws it for CPU tensors, so on the CPU both yield the same batches.
    Each batch is gathered on the host and copied to ``device``; ``idx`` is copied too.
    On CUDA the gather goes into page-locked (pinned) memory, recycled by torch's caching
    host allocator, and the copy is ``non_blocking`` on a side stream. The next batch is
    gathered and its copy issued before the current one is handed over, so both overlap
    the caller's work on it; the current stream waits for a batch's copy (on the device,
    not the host) before using it.
    """
    device = torch.device(device)
    if x.device.type != "cpu" or y.device.type != "cpu":
        raise ValueError(f"stream_batches: x and y must be in host memory, got {x.device} and {y.device}")
    n = x.shape[0]
    order = torch.randperm(n, generator=generator)
    if device.type != "cuda":
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield idx.to(device), x[idx].to(device), y[idx].to(device)
        return

    order = order.pin_memory()
    side = torch.cuda.Stream(device)

    def load(start: int) -> tuple[list[torch.Tensor], torch.cuda.Event]:
        idx = order[start : start + batch_size]
        host = [idx] + [torch.index_select(t, 0, idx, out=torch.empty((idx.shape[0], *t.shape[1:]), dtype=t.dtype,
                                                                        pin_memory=True)) for t in (x, y)]
        with torch.cuda.stream(side):
            moved = [t.to(device, non_blocking=True) for t in host]
            copied = torch.cuda.Event()
            copied.record(side)
        return moved, copied

    ahead = load(0)
    for start in range(0, n, batch_size):
        batch, copied = ahead
        if start + batch_size < n:
            ahead = load(start + batch_size)
        current = torch.cuda.current_stream(device)
        current.wait_event(copied)
        for t in batch:
            t.record_stream(current)  # allocated on the side stream, used on this one
        yield batch[0], batch[1], batch[2]


def augment(
    x: torch.Tensor,
    *,
    crop_padding: int = 0,
    flip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop with zero padding (1D or 2D) and horizontal flip (2D), as tensor ops.

    Each example gets its own offset; the whole batch is gathered at once, on ``x``'s
    device (``generator`` must live there too).
    """
    dev = x.device
    if crop_padding > 0:
        p = crop_padding
        spatial = x.shape[2:]
        pad = [p] * (2 * len(spatial))
        padded = torch.nn.functional.pad(x, pad)
        n = x.shape[0]
        # one offset per example and spatial dim in [0, 2p]
        offs = torch.randint(0, 2 * p + 1, (n, len(spatial)), generator=generator, device=dev)
        if len(spatial) == 1:
            (L,) = spatial
            cols = offs[:, :1] + torch.arange(L, device=dev)  # (n, L)
            x = padded.gather(2, cols[:, None, :].expand(-1, x.shape[1], -1))
        elif len(spatial) == 2:
            H, W = spatial
            rows = offs[:, 0:1] + torch.arange(H, device=dev)  # (n, H)
            cols = offs[:, 1:2] + torch.arange(W, device=dev)  # (n, W)
            b = torch.arange(n, device=dev)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        else:
            raise ValueError(f"crop supports 1D or 2D inputs, got shape {tuple(x.shape)}")
    if flip:
        if x.dim() != 4:
            raise ValueError("flip applies to 2D images (N, C, H, W) only")
        mask = torch.rand(x.shape[0], generator=generator, device=dev) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` ``(N, C, H, W)`` cropped to its box and resized back to ``(H, W)``,
    bilinearly, as one batched ``grid_sample``.

    ``boxes`` ``(N, 4)`` are ``(cx, cy, w, h)`` in the normalised coordinates of
    ``affine_grid`` (the image spans -1..1, so ``w = h = 1`` and a zero centre is the whole
    image). Output pixel centres are sampled inside the box; samples past the image edge
    take the edge value.
    """
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = boxes[:, 2], boxes[:, 3]
    theta[:, 0, 2], theta[:, 1, 2] = boxes[:, 0], boxes[:, 1]
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(x: torch.Tensor, *, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Random-resized-crop augmentation (Szegedy et al. 2015) of images ``(N, C, H, W)``, on
    ``x``'s device (``generator`` must live there too).

    Each example gets a box covering a uniform fraction ``scale`` of the image area, with an
    aspect ratio (width / height in pixels) drawn log-uniformly from ``ratio`` and a uniform
    position, resized back to ``(H, W)`` (:func:`resized_crop`). A box that would be wider or
    taller than the image is clipped to it; torchvision redraws such boxes instead.
    """
    if x.dim() != 4:
        raise ValueError(f"random_resized_crop applies to 2D images (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, height, width = x.shape
    u = torch.rand(n, 4, generator=generator, device=x.device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    lo, hi = torch.log(torch.tensor(ratio, device=x.device))
    aspect = torch.exp(lo + (hi - lo) * u[:, 1]) * height / width  # as a ratio of normalised sides
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    boxes = torch.stack([(1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1), w, h], dim=1)
    return resized_crop(x, boxes.to(x.dtype))
