"""The dataset-distillation study's report: accuracy per method x ipc with CIs, the tests
against random real subsets, and the synthetic images as grids (inline SVG, 8 grey levels)."""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from compresslab.report import svg
from compresslab.report.page import as_stored, esc, page, plots, table, write_page


def grid_pixels(x: np.ndarray, ipc: int, pad: int = 1) -> np.ndarray:
    """``x`` (N, C, H, W), class-major with ``ipc`` per class, as one uint8 image: a row per
    class, a column per image (``ipc`` 1: one row of all classes), each image min-max scaled on
    its own (the sets live in a standardised space), ``pad`` white pixels between."""
    n, c, h, w = x.shape
    if ipc == 1:
        ipc = n
    rows = n // ipc
    out = np.full((rows * (h + pad) + pad, ipc * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        img = x[i].transpose(1, 2, 0).astype(np.float64)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        r, k = divmod(i, ipc)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = img * 255
    return out[..., 0] if c == 1 else out


LEVELS = 8  #: grey levels of the report's image grids


def image_grid(x: np.ndarray, ipc: int, max_per_class: int = 5) -> dict:
    """At most ``max_per_class`` images per class as a :func:`grid_pixels` grid quantised to
    :data:`LEVELS` grey levels: ``{"width", "height", "levels", "pixels"}`` (``pixels``: base64
    of one byte per pixel, row-major), small enough for results.json."""
    n = x.shape[0]
    keep = min(ipc, max_per_class)
    idx = [r * ipc + k for r in range(n // ipc) for k in range(keep)]
    g = grid_pixels(x[idx], keep)
    if g.ndim == 3:  # colour: its luminance
        g = (g @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    q = np.minimum((g.astype(np.int64) * LEVELS) // 256, LEVELS - 1).astype(np.uint8)
    return {"width": int(q.shape[1]), "height": int(q.shape[0]), "levels": LEVELS,
            "pixels": base64.b64encode(q.tobytes()).decode()}


def grid_svg(grid: dict, *, scale: int, title: str) -> str:
    """An :func:`image_grid` as inline SVG: a black background and, per grey level, one path of
    horizontal runs of that level (``M x y h n v 1 h -n z``)."""
    w, h, levels = grid["width"], grid["height"], grid["levels"]
    q = np.frombuffer(base64.b64decode(grid["pixels"]), dtype=np.uint8).reshape(h, w)
    runs: dict[int, list[str]] = {v: [] for v in range(1, levels)}
    for y in range(h):
        row, x = q[y], 0
        while x < w:
            v, start = int(row[x]), x
            while x < w and row[x] == v:
                x += 1
            if v:
                runs[v].append(f"M{start} {y}h{x - start}v1h{start - x}z")
    paths = "".join(f'<path fill="rgb({g},{g},{g})" d="{"".join(d)}"/>'
                    for v, d in runs.items() if d for g in [round(255 * v / (levels - 1))])
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{scale * w}" '
            f'height="{scale * h}" shape-rendering="crispEdges" role="img"><title>{esc(title)}</title>'
            f'<rect width="{w}" height="{h}" fill="#000"/>{paths}</svg>')


def _grid_scale(row: dict) -> int:
    """Screen pixels per image pixel: 3 for images under 16 px (digits), else 2."""
    return 3 if row["image_shape"][-1] < 16 else 2


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def verdict(results: dict) -> list[str]:
    out = []
    for c in results["tests"]:
        w = c["welch"]
        sig = w is not None and w["p"] is not None and w["p"] < 0.05
        p = "" if w is None or w["p"] is None else f" (one-sided Welch p = {w['p']:.3g})"
        word = "beats" if sig and c["difference"] > 0 else "does not beat"
        out.append(f"{c['method']} {word} random real images at {c['ipc']} per class: "
                   f"{100 * c['difference']:+.2f} points{p}.")
    return out


def plot_accuracy(results: dict) -> str:
    """Mean test accuracy with its 95% CI against images per class, one series per method."""
    p = svg.Plot("test accuracy (mean, 95% CI over seeds)", "images per class", "test accuracy", width=420,
                 height=300, xscale="log" if len({r["ipc"] for r in results["rows"]}) > 1 else "linear")
    for i, method in enumerate(dict.fromkeys(r["method"] for r in results["rows"])):
        rows = sorted((r for r in results["rows"] if r["method"] == method), key=lambda r: r["ipc"])
        c = svg.series_color(i)
        xs, ys = [r["ipc"] for r in rows], [r["summary"]["mean"] for r in rows]
        p.line(xs, ys, color=c)
        p.points(xs, ys, color=c, r=3.5, label=method,
                 titles=[f"{method} ipc {r['ipc']}: {_pct(r['summary']['mean'])}% "
                         f"[{_pct(r['summary']['ci_low'])}, {_pct(r['summary']['ci_high'])}]" for r in rows])
        for r in rows:
            p.line([r["ipc"], r["ipc"]], [r["summary"]["ci_low"], r["summary"]["ci_high"]], color=c, width=1)
    return p.svg()


def write_dataset_distillation_report(results: dict, path: str | Path) -> Path:
    results = as_stored(results)
    rows = [[esc(r["method"]), r["ipc"], f"<b>{_pct(r['summary']['mean'])}</b>",
             f"{_pct(r['summary']['ci_low'])}–{_pct(r['summary']['ci_high'])}", r["summary"]["n"], r["sets"],
             "–" if r["paper"] is None else f"{r['paper']:.1f}", f"{r['distill_seconds']:.1f}",
             f"{r['train_points_seen']:,}"] for r in results["rows"]]
    tests = [[esc(c["method"]), c["ipc"], f"{100 * c['difference']:+.2f}",
              "–" if c["welch"] is None else f"{c['welch']['t']:.2f}",
              "–" if c["welch"] is None or c["welch"]["p"] is None else f"{c['welch']['p']:.3g}"]
             for c in results["tests"]]
    grids = "".join('<figure style="display:inline-block;margin:6px 14px 6px 0;vertical-align:top">'
                    + grid_svg(r["grid"], scale=_grid_scale(r), title=f"{r['method']}, {r['ipc']} per class")
                    + f'<figcaption>{esc(r["method"])}, {r["ipc"]} per class</figcaption></figure>'
                    for r in results["rows"])
    m = results["eval_model"]
    intro = (f"<p>Each set trains fresh <code>{esc(m['name'])}</code> networks "
             f"(<code>{esc(str(m['options']))}</code>, {results['eval_epochs']} epochs) from "
             f"{len(results['eval_seeds'])} seeds; the accuracy is on the source's test split. "
             "Paper figures are on full MNIST (60,000 training images), as reported by Zhao, Mopuri &amp; Bilen "
             "(ICLR 2021) and Zhao &amp; Bilen (WACV 2023).</p>")
    sections = [
        "<h2>Test accuracy (%)</h2>",
        table(["method", "ipc", "mean", "95% CI", "seeds", "sets", "paper (MNIST)", "distil s", "real examples read"],
              rows),
        plots(plot_accuracy(results)),
        "<h2>Against random real images (one-sided Welch t-test)</h2>",
        table(["method", "ipc", "difference (points)", "t", "p"], tests),
        "<h2>The sets</h2><p>One row per class (1 per class: one row of all classes), at most 5 images "
        "per class, each scaled to its own min–max, in 8 grey levels.</p>", grids,
    ]
    return write_page(path, page(results, f"Dataset distillation: <code>{esc(results['study'])}</code>",
                                 verdict(results), sections, [], intro))
