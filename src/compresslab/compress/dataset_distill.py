"""Dataset distillation: learn a few synthetic images per class that train a network well.

Two learned methods and two selection baselines, all giving ``ipc`` images per class:

* ``dm`` -- distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution
  Matching", WACV 2023). Each iteration draws a freshly initialised network ``psi`` and, per
  class ``c``, a batch of real images; the synthetic images ``S_c`` are moved by SGD on

      L = sum_c || mean_{x in real_c} psi(x) - mean_{s in S_c} psi(s) ||^2     (:func:`dm_loss`)

  where ``psi`` is the network's embedding (features before the classifier).
* ``dc`` -- gradient matching (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient
  Matching", ICLR 2021). Per class, the gradients of the cross-entropy w.r.t. the network's
  weights on a real batch and on ``S_c`` are matched layer by layer with
  :func:`dc_distance`; the outer loop updates the images, the inner loop trains the network on
  the synthetic set, and a fresh network is drawn every iteration.
* ``random`` -- ``ipc`` real images per class drawn at random (:func:`random_subset`).
* ``herding`` -- per class, greedy herding (Welling, ICML 2009) on the embedding of a network
  trained on the real data (:func:`herding`), the papers' coreset baseline.

The synthetic images live in the same standardised input space as the dataset they came
from. Default hyper-parameters are the authors' (``lr_img`` 1.0 for DM and 0.1 for DC, SGD
with momentum 0.5 on the images, real batch 256 per class, DC's outer/inner loops per ipc).
Differentiable siamese augmentation (DSA, Zhao & Bilen, ICML 2021) is optional: one
transform family and one parameter draw per class and iteration, applied identically to the
real and the synthetic batch (:func:`siamese_augment`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from compresslab.data import Dataset
from compresslab.errors import UserError

METHODS = ("dm", "dc", "random", "herding")
INITS = ("real", "noise")
#: The authors' image learning rates (main_DM.py: 1.0, main.py: 0.1).
LR_IMG = {"dm": 1.0, "dc": 0.1}
#: DSA's transform families (the authors' default strategy minus nothing).
DSA_STRATEGY = ("color", "crop", "cutout", "flip", "scale", "rotate")


class Distilled(NamedTuple):
    """A synthetic set: ``x`` (N, C, *spatial) float32, ``y`` (N,) int64 (class-major: ``ipc``
    images of class 0, then class 1, ...), how many real examples were read, and the loss
    per iteration (empty for the selection baselines)."""

    x: torch.Tensor
    y: torch.Tensor
    train_points_seen: int
    losses: list[float]


# -- the losses ---------------------------------------------------------------------------------


def dm_loss(embed_real: Sequence[torch.Tensor], embed_syn: Sequence[torch.Tensor]) -> torch.Tensor:
    """Distribution matching: ``sum_c || mean(embed_real[c]) - mean(embed_syn[c]) ||^2``.

    ``embed_real[c]`` is ``(n_c, d)`` (or any ``(n_c, ...)``, flattened), the embeddings of
    class ``c``'s real batch; ``embed_syn[c]`` those of its synthetic images."""
    if len(embed_real) != len(embed_syn):
        raise ValueError(f"dm_loss: {len(embed_real)} real classes vs {len(embed_syn)} synthetic")
    total = embed_syn[0].new_zeros(())
    for r, s in zip(embed_real, embed_syn):
        total = total + (r.flatten(1).mean(0) - s.flatten(1).mean(0)).pow(2).sum()
    return total


def _layer_distance(gr: torch.Tensor, gs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``sum_i (1 - <gr_i, gs_i> / (|gr_i| |gs_i| + eps))`` over output nodes ``i`` (rows after
    flattening all but the first dim); 1-D tensors (biases, norm scales) count 0, as in the
    authors' code."""
    if gr.dim() == 1:
        return gs.new_zeros(())
    gr, gs = gr.flatten(1), gs.flatten(1)
    cos = (gr * gs).sum(1) / (gr.norm(dim=1) * gs.norm(dim=1) + eps)
    return (1 - cos).sum()


def dc_distance(grads_real: Sequence[torch.Tensor], grads_syn: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gradient matching distance: the sum over layers of :func:`_layer_distance`.

    For a weight of shape ``(out, ...)`` each output node's gradient row is compared by
    ``1 - cosine`` (Zhao, Mopuri & Bilen 2021, eq. 6 with the layer-wise distance of their
    code, ``eps`` = 1e-6 in the denominator); biases and other 1-D parameters add nothing."""
    if len(grads_real) != len(grads_syn):
        raise ValueError(f"dc_distance: {len(grads_real)} real vs {len(grads_syn)} synthetic gradients")
    total = grads_syn[0].new_zeros(())
    for r, s in zip(grads_real, grads_syn):
        total = total + _layer_distance(r, s)
    return total


# -- selection baselines ------------------------------------------------------------------------


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding: indices of ``k`` rows of ``features`` (n, d) whose running mean tracks
    the mean ``mu`` of all rows. Step ``t`` (1-based) picks the unselected ``i`` minimising
    ``|| mu - (sum_{j selected} f_j + f_i) / t ||`` (Welling 2009; the iCaRL form)."""
    if not 0 < k <= features.shape[0]:
        raise ValueError(f"herding: k must be in 1..{features.shape[0]}, got {k}")
    f = features.flatten(1).double()
    mu = f.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    free = torch.ones(f.shape[0], dtype=torch.bool)
    for t in range(1, k + 1):
        dist = (mu - (total + f) / t).norm(dim=1)
        dist[~free] = math.inf
        i = int(dist.argmin())
        chosen.append(i)
        free[i] = False
        total += f[i]
    return torch.tensor(chosen, dtype=torch.int64)


def class_indices(y: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """The positions of each class's examples in ``y``."""
    return [torch.nonzero(y == c).flatten() for c in range(num_classes)]


def random_subset(y: torch.Tensor, ipc: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``ipc`` positions per class drawn without replacement, class-major."""
    out = []
    for idx in class_indices(y, num_classes):
        out.append(idx[torch.randperm(len(idx), generator=generator)[:ipc]])
    return torch.cat(out)


def check_ipc(y: torch.Tensor, ipc: int, num_classes: int) -> None:
    """A :class:`UserError` unless every class has at least ``ipc`` >= 1 training examples."""
    if ipc < 1:
        raise UserError(f"--ipc {ipc}: images per class must be at least 1")
    sizes = [len(i) for i in class_indices(y, num_classes)]
    small = min(range(num_classes), key=lambda c: sizes[c])
    if sizes[small] < ipc:
        raise UserError(f"--ipc {ipc} is larger than class {small}'s {sizes[small]} training examples; "
                        f"use --ipc {max(sizes[small], 1)} or less")


# -- differentiable siamese augmentation --------------------------------------------------------


def siamese_augment(batches: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """DSA: one transform family of :data:`DSA_STRATEGY` and one parameter draw, applied to
    every tensor in ``batches`` alike (real and synthetic), differentiably. Parameters follow
    the authors' ``ParamDiffAug``: scale 1/1.2..1.2, rotation +-15 degrees, crop shift 1/8,
    cutout 1/2, brightness +-0.5, saturation 0..2, contrast 0.5..1.5, flip p=0.5."""
    op = DSA_STRATEGY[int(torch.randint(len(DSA_STRATEGY), (1,), generator=generator))]
    u = torch.rand(4, generator=generator).tolist()
    x0 = batches[0]
    h, w = x0.shape[-2:]
    if op in ("scale", "rotate"):
        if op == "scale":
            sx, sy = (1 / 1.2 + u[0] * (1.2 - 1 / 1.2)), (1 / 1.2 + u[1] * (1.2 - 1 / 1.2))
            theta = [[sx, 0.0, 0.0], [0.0, sy, 0.0]]
        else:
            a = (u[0] - 0.5) * 2 * 15 / 180 * math.pi
            theta = [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]
        t = torch.tensor([theta], dtype=x0.dtype, device=x0.device)
        out = []
        for x in batches:
            grid = F.affine_grid(t.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
            out.append(F.grid_sample(x, grid, align_corners=False))
        return out
    if op == "crop":
        dy = int(round((u[0] - 0.5) * 2 * int(h * 0.125 + 0.5)))
        dx = int(round((u[1] - 0.5) * 2 * int(w * 0.125 + 0.5)))
        p = max(abs(dx), abs(dy))
        return [F.pad(x, [p] * 4)[..., p + dy : p + dy + h, p + dx : p + dx + w] for x in batches]
    if op == "cutout":
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        cy, cx = int(u[0] * h), int(u[1] * w)
        mask = torch.ones(h, w, dtype=x0.dtype, device=x0.device)
        mask[max(0, cy - ch // 2): cy - ch // 2 + ch, max(0, cx - cw // 2): cx - cw // 2 + cw] = 0
        return [x * mask for x in batches]
    if op == "flip":
        return [x.flip(-1) for x in batches] if u[0] < 0.5 else list(batches)
    # color: brightness, saturation, contrast, each with one shared draw
    out = []
    for x in batches:
        x = x + (u[0] - 0.5)
        m = x.mean(1, keepdim=True)
        x = (x - m) * (u[1] * 2) + m
        m = x.mean((1, 2, 3), keepdim=True)
        out.append((x - m) * (u[2] + 0.5) + m)
    return out


# -- the distillation loop ----------------------------------------------------------------------


def dc_loops(ipc: int) -> tuple[int, int]:
    """DC's (outer, inner) loop counts per ipc, as the authors' ``get_loops`` (1: 1/1, 10:
    10/50, 20: 20/25, 30: 20/20, ..., 50: 50/10); other ipc use the nearest one below."""
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    return table[max(k for k in table if k <= ipc)]


def _build(model: dict, data: Dataset) -> torch.nn.Module:
    from compresslab.models import create_model

    return create_model(model["name"], num_classes=data.num_classes, in_channels=data.in_channels,
                        input_shape=data.input_shape, **model.get("options", {}))


def _embed(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not hasattr(net, "embed"):
        raise UserError(f"distribution matching needs a model with an embed() method (e.g. convnet), "
                        f"not {type(net).__name__}")
    return net.embed(x)


def distill_dataset(data: Dataset, *, method: str, ipc: int, init: str = "real", model: dict | None = None,
                    iterations: int = 1000, lr_img: float | None = None, batch_real: int = 256, dsa: bool = False,
                    seed: int = 0, herding_epochs: int = 1,
                    callback: Callable[[dict], None] | None = None) -> Distilled:
    """``ipc`` synthetic (``dm``, ``dc``) or selected (``random``, ``herding``) images per class
    of ``data``'s train split. ``model`` is a ``{"name", "options"}`` spec (default ConvNet-3);
    ``callback`` receives ``fit``-style ``start`` / ``step`` events. Runs where ``data`` is
    (random draws on the CPU, so a seed gives the same draws anywhere); returns CPU tensors."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    if init not in INITS:
        raise UserError(f"--init {init!r}: use one of {', '.join(INITS)}")
    if data.task != "classification":
        raise UserError(f"dataset {data.name}: dataset distillation needs class labels")
    k = data.num_classes
    check_ipc(data.y_train, ipc, k)
    model = model or {"name": "convnet", "options": {}}
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dev = data.x_train.device
    x_all, y_all = data.x_train, data.y_train.cpu()
    y_syn = torch.arange(k).repeat_interleave(ipc)
    if method == "random":
        idx = random_subset(y_all, ipc, k, gen)
        return Distilled(x_all[idx.to(dev)].cpu().clone(), y_syn, len(idx), [])
    if method == "herding":
        return _herding(data, ipc, model, seed, herding_epochs)

    classes = class_indices(y_all, k)
    if init == "real":
        x_syn = x_all[random_subset(y_all, ipc, k, gen).to(dev)].clone()
    else:
        x_syn = torch.randn((k * ipc, *data.input_shape), generator=gen).to(dev)
    x_syn.requires_grad_(True)
    y_dev = y_syn.to(dev)
    opt = torch.optim.SGD([x_syn], lr=lr_img if lr_img is not None else LR_IMG[method], momentum=0.5)
    seen = k * ipc if init == "real" else 0
    losses: list[float] = []
    outer, inner = dc_loops(ipc) if method == "dc" else (1, 0)
    if callback:
        callback({"event": "start", "epochs": 1, "steps_per_epoch": iterations, "total_steps": iterations})
    t0 = time.perf_counter()

    def real_batch(c: int) -> torch.Tensor:
        pick = classes[c][torch.randperm(len(classes[c]), generator=gen)[:batch_real]]
        return x_all[pick.to(dev)]

    for it in range(1, iterations + 1):
        net = _build(model, data).to(dev)
        net.train()
        total = 0.0
        if method == "dm":
            for p in net.parameters():
                p.requires_grad_(False)
            real, syn = [], []
            for c in range(k):
                xr, xs = real_batch(c), x_syn[c * ipc:(c + 1) * ipc]
                if dsa:
                    xr, xs = siamese_augment([xr, xs], gen)
                seen += len(xr)
                real.append(_embed(net, xr).detach())
                syn.append(_embed(net, xs))
            loss = dm_loss(real, syn)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total = float(loss.detach())
        else:
            params = [p for p in net.parameters() if p.requires_grad]
            net_opt = torch.optim.SGD(params, lr=0.01)
            for ol in range(outer):
                loss = x_syn.new_zeros(())
                for c in range(k):
                    xr, xs = real_batch(c), x_syn[c * ipc:(c + 1) * ipc]
                    if dsa:
                        xr, xs = siamese_augment([xr, xs], gen)
                    seen += len(xr)
                    yr = torch.full((len(xr),), c, dtype=torch.int64, device=dev)
                    gr = torch.autograd.grad(F.cross_entropy(net(xr), yr), params)
                    gs = torch.autograd.grad(F.cross_entropy(net(xs), y_dev[c * ipc:(c + 1) * ipc]), params,
                                             create_graph=True)
                    loss = loss + dc_distance([g.detach() for g in gr], gs)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) / outer
                if ol == outer - 1:
                    break
                xs_all = x_syn.detach()
                for _ in range(inner):  # train the network on the synthetic set (batches of 256)
                    order = torch.randperm(len(xs_all), generator=gen).to(dev)
                    for start in range(0, len(order), 256):
                        b = order[start:start + 256]
                        net_opt.zero_grad()
                        F.cross_entropy(net(xs_all[b]), y_dev[b]).backward()
                        net_opt.step()
        losses.append(total)
        if callback:
            callback({"event": "step", "epoch": 1, "step": it, "loss": total, "acc": float("nan"),
                      "samples_per_s": seen / max(time.perf_counter() - t0, 1e-9)})
    return Distilled(x_syn.detach().cpu().clone(), y_syn, seen, losses)


def _herding(data: Dataset, ipc: int, model: dict, seed: int, epochs: int) -> Distilled:
    """Herding per class on the embedding of ``model`` trained ``epochs`` on the real train split."""
    from compresslab.train import Recipe, fit

    k = data.num_classes
    torch.manual_seed(seed)
    net = _build(model, data).to(data.x_train.device)
    if epochs > 0:
        fit(net, data, Recipe(epochs=epochs, lr=0.01, batch_size=256, schedule="constant"), seed=seed)
    net.eval()
    picks = []
    with torch.no_grad():
        for idx in class_indices(data.y_train.cpu(), k):
            idx_dev = idx.to(data.x_train.device)
            feats = torch.cat([_embed(net, data.x_train[idx_dev[s:s + 512]]).cpu() for s in range(0, len(idx), 512)])
            picks.append(idx[herding(feats, ipc)])
    idx = torch.cat(picks)
    seen = len(data.y_train) * (epochs + 1)
    x = data.x_train[idx.to(data.x_train.device)].cpu().clone()
    return Distilled(x, torch.arange(k).repeat_interleave(ipc), seen, [])
