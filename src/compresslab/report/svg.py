"""Small hand-written SVG plots for the reports.

Text stays text (crisp, searchable) and every mark carries a ``<title>`` (hover text naming
the model and its value). One :class:`Plot` draws points, lines, error bars, bands and
reference lines on linear, log or symlog axes; :func:`hbars` and :func:`heatmap` cover the
rest. Colours that carry meaning live in :data:`COLORS`; :data:`SERIES` colours categories.
"""
from __future__ import annotations

import hashlib
import html
import math

#: What a colour means, everywhere: the reference model, children as close as an independent
#: retrain (or closer), children farther than that, controls, and children with no band to judge.
COLORS = {"parent": "#1f5fbf", "close": "#1a9850", "far": "#d73027", "control": "#8c8c8c", "child": "#e08214"}
#: Categorical colours (conditions, families), none of them red, green or grey.
SERIES = ["#1f5fbf", "#e08214", "#7b3fb4", "#0f8b8d", "#c2185b", "#8c6d31", "#5e7ce2", "#b35806", "#4d9221",
          "#6a3d9a"]
FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"


def series_color(i: int) -> str:
    return SERIES[i % len(SERIES)]


def esc(s) -> str:
    return html.escape(str(s))


def short(v: float) -> str:
    """1.5k, 2M, 0.001: compact tick labels."""
    a = abs(v)
    for k, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= k:
            return f"{v / k:.3g}{unit}"
    return f"{v:g}"


class Scale:
    """Maps data values to [0, 1] on a linear, log or symlog (linear below ``linthresh``) axis."""

    def __init__(self, lo: float, hi: float, kind: str = "linear", linthresh: float = 1e-3):
        self.kind, self.c = kind, linthresh
        if kind == "log":
            lo, hi = max(lo, 1e-300), max(hi, 1e-300)
        if hi <= lo:  # one value: widen around it
            d = abs(lo) * 0.1 or 1.0
            lo, hi = (lo / 2, lo * 2) if kind == "log" else (lo - d, hi + d)
        t0, t1 = self.t(lo), self.t(hi)
        pad = 0.05 * (t1 - t0)
        self.t0, self.t1 = t0 - pad, t1 + pad
        self.lo, self.hi = self.inv(self.t0), self.inv(self.t1)

    def t(self, v: float) -> float:
        if self.kind == "log":
            return math.log10(max(v, 1e-300))
        if self.kind == "symlog":
            return math.copysign(math.log10(1 + abs(v) / self.c), v)
        return v

    def inv(self, t: float) -> float:
        if self.kind == "log":
            return 10 ** t
        if self.kind == "symlog":
            return math.copysign(self.c * (10 ** abs(t) - 1), t)
        return t

    def __call__(self, v: float) -> float:
        return (self.t(v) - self.t0) / (self.t1 - self.t0)

    def ticks(self) -> list[float]:
        lo, hi = self.lo, self.hi
        if self.kind == "linear":
            span = hi - lo
            step = 10 ** math.floor(math.log10(span / 5))
            step *= next(m for m in (1, 2, 2.5, 5, 10) if span / (step * m) <= 6)
            first = math.ceil(lo / step)
            return [round(k * step, 12) for k in range(first, int(math.floor(hi / step)) + 1)]
        if self.kind == "symlog":
            top = math.floor(math.log10(max(hi, self.c)))
            return [v for v in [0.0, *(10.0 ** k for k in range(math.floor(math.log10(self.c)), top + 1))]
                    if lo <= v <= hi]
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        for mults in ((1,), (1, 2, 5), (1, 2, 3, 5, 7)):
            ticks = [m * 10.0 ** d for d in decades for m in mults if lo <= m * 10.0 ** d <= hi]
            if len(ticks) >= 3:
                return ticks
        span = hi - lo  # less than a decade: evenly spaced round values
        step = 10 ** math.floor(math.log10(span / 4))
        step *= next(m for m in (1, 2, 2.5, 5, 10) if span / (step * m) <= 5)
        return [round(k * step, 12) for k in range(math.ceil(lo / step), int(math.floor(hi / step)) + 1)]


MARKERS = {"circle", "square", "triangle", "diamond", "star", "down"}


def marker(shape: str, x: float, y: float, r: float, color: str, title: str = "", hollow: bool = False,
           stroke: str = "#222") -> str:
    """One marker centred at (x, y) with hover ``title``."""
    fill = "#fff" if hollow else color
    style = f'fill="{fill}" stroke="{color if hollow else stroke}" stroke-width="{1.5 if hollow else 0.6}"'
    tip = f"<title>{esc(title)}</title>" if title else ""
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {style}>{tip}</circle>'
    if shape == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" {style}>{tip}</rect>'
    if shape == "star":
        pts = [(x + (r * 1.5 if k % 2 == 0 else r * 0.65) * math.sin(k * math.pi / 5),
                y - (r * 1.5 if k % 2 == 0 else r * 0.65) * math.cos(k * math.pi / 5)) for k in range(10)]
    elif shape == "diamond":
        pts = [(x, y - 1.3 * r), (x + r, y), (x, y + 1.3 * r), (x - r, y)]
    elif shape == "down":
        pts = [(x - 1.2 * r, y - r), (x + 1.2 * r, y - r), (x, y + 1.2 * r)]
    else:  # triangle
        pts = [(x, y - 1.2 * r), (x + 1.2 * r, y + r), (x - 1.2 * r, y + r)]
    return f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}" {style}>{tip}</polygon>'


def _legend(items: list[tuple], x0: float, y0: float, width: float) -> tuple[str, float]:
    """Legend entries ``(label, color, kind)`` (kind: a marker shape, ``line``, ``dash`` or
    ``band``), flowed in rows from (x0, y0) within ``width``. Returns the SVG and its height."""
    out, x, y = [], x0, y0
    for label, color, kind in items:
        w = 26 + 6.4 * len(label)
        if x + w > x0 + width and x > x0:
            x, y = x0, y + 17
        if kind == "band":
            out.append(f'<rect x="{x:.1f}" y="{y - 5:.1f}" width="16" height="10" fill="{color}" opacity="0.3"/>')
        elif kind in ("line", "dash"):
            dash = ' stroke-dasharray="4 3"' if kind == "dash" else ""
            out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 16:.1f}" y2="{y:.1f}" stroke="{color}" '
                       f'stroke-width="2"{dash}/>')
        else:
            out.append(marker(kind, x + 8, y, 4.5, color))
        out.append(f'<text x="{x + 21:.1f}" y="{y + 4:.1f}">{esc(label)}</text>')
        x += w + 10
    return "".join(out), (y - y0 + 17) if items else 0


class Plot:
    """An x/y panel. Add marks, then :meth:`svg`. Axis ranges cover every mark added.

    >>> p = Plot("Cost against accuracy", "BOPs", "accuracy (%)", xscale="log")
    >>> p.points([1e6, 2e6], [90, 85], titles=["parent: 90%", "child: 85%"], color=COLORS["parent"])
    >>> page_fragment = p.svg()
    """

    def __init__(self, title: str = "", xlabel: str = "", ylabel: str = "", *, width: int = 560,
                 height: int = 330, xscale: str = "linear", yscale: str = "linear", linthresh: float = 1e-3,
                 xticks: list[tuple[float, str]] | None = None, xfmt=short, yfmt=short):
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.width, self.height = width, height
        self.xscale, self.yscale, self.linthresh = xscale, yscale, linthresh
        self.xticks, self.xfmt, self.yfmt = xticks, xfmt, yfmt
        self.marks: list[tuple] = []
        self.legend_items: list[tuple] = []
        self.xs: list[float] = []
        self.ys: list[float] = []

    def _keep(self, xs=(), ys=()):
        self.xs += [float(v) for v in xs if v is not None and math.isfinite(v)]
        self.ys += [float(v) for v in ys if v is not None and math.isfinite(v)]

    def legend(self, label: str, color: str, kind: str = "circle") -> Plot:
        if (label, color, kind) not in self.legend_items:
            self.legend_items.append((label, color, kind))
        return self

    def points(self, xs, ys, *, titles, color: str | list[str], shape: str = "circle", r: float = 4.5,
               labels=None, hollow=None, label: str | None = None) -> Plot:
        """Markers; ``color`` one colour or one per point; ``labels`` drawn beside each point."""
        self._keep(xs, ys)
        self.marks.append(("points", list(xs), list(ys), list(titles), color, shape, r, labels, hollow))
        return self.legend(label, color if isinstance(color, str) else "#555", shape) if label else self

    def line(self, xs, ys, *, color: str, dash: bool = False, width: float = 1.6, title: str = "",
             label: str | None = None) -> Plot:
        self._keep(xs, ys)
        self.marks.append(("line", list(xs), list(ys), color, dash, width, title))
        return self.legend(label, color, "dash" if dash else "line") if label else self

    def errorbars(self, xs, lo, hi, *, color: str) -> Plot:
        self._keep(xs, [*lo, *hi])
        self.marks.append(("err", list(xs), list(lo), list(hi), color))
        return self

    def band(self, lo: float, hi: float, *, axis: str = "y", color: str = COLORS["control"], title: str = "",
             label: str | None = None) -> Plot:
        """A shaded range across the plot (``axis="y"``: horizontal; ``"x"``: vertical)."""
        self._keep(*(((), (lo, hi)) if axis == "y" else ((lo, hi), ())))
        self.marks.insert(0, ("band", axis, lo, hi, color, title))
        return self.legend(label, color, "band") if label else self

    def rule(self, v: float, *, axis: str = "y", color: str = "#555", dash: bool = True, title: str = "",
             label: str | None = None) -> Plot:
        """A reference line at ``v`` (``axis="y"``: horizontal)."""
        self._keep(*(((), (v,)) if axis == "y" else ((v,), ())))
        self.marks.append(("rule", axis, v, color, dash, title))
        return self.legend(label, color, "dash" if dash else "line") if label else self

    @staticmethod
    def _label(text: str, x: float, y: float, r: float, boxes: list) -> str:
        """A point's label beside it, in the first of four places that overlaps no earlier
        label; none when all four do (the point's hover text still names it)."""
        w, h = 5.6 * len(text), 11
        for dx, dy in ((r + 3, -r), (r + 3, r + 9), (-r - 3 - w, -r), (-r - 3 - w, r + 9)):
            box = (x + dx, y + dy - h + 2, x + dx + w, y + dy + 2)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                boxes.append(box)
                return f'<text x="{box[0]:.1f}" y="{y + dy:.1f}" font-size="10" fill="#333">{esc(text)}</text>'
        return ""

    def svg(self) -> str:
        W, H = self.width, self.height
        legend_w = W - 70
        _, leg_h = _legend(self.legend_items, 0, 0, legend_w)
        labelled = any(m[0] == "points" and m[7] for m in self.marks)
        left, right, top = 62, 70 if labelled else 14, 28 if self.title else 12
        bottom = (70 if self.xticks and any(len(t) > 3 for _, t in self.xticks) else 40) + (8 if self.xlabel else 0)
        ph = H - top - bottom
        pw = W - left - right
        xs = self.xs or [0.0, 1.0]
        ys = self.ys or [0.0, 1.0]
        if self.xscale == "log":
            xs = [v for v in xs if v > 0] or [1.0]
        if self.yscale == "log":
            ys = [v for v in ys if v > 0] or [1.0]
        sx = Scale(min(xs), max(xs), self.xscale, self.linthresh)
        sy = Scale(min(ys), max(ys), self.yscale, self.linthresh)

        def X(v):
            return left + pw * sx(v)

        def Y(v):
            return top + ph * (1 - sy(v))

        total_h = H + leg_h + (6 if leg_h else 0)
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {W} {total_h:.0f}" '
               f'width="{W}" height="{total_h:.0f}" font-family="{FONT}" font-size="11" role="img">',
               f"<title>{esc(self.title or self.ylabel)}</title>"]
        if self.title:
            out.append(f'<text x="{left}" y="17" font-size="13" font-weight="600">{esc(self.title)}</text>')
        out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#bbb"/>')
        for v in sy.ticks():
            y = Y(v)
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                       f'<text x="{left - 5}" y="{y + 3.5:.1f}" text-anchor="end" fill="#444">{esc(self.yfmt(v))}</text>')
        xticks = self.xticks or [(v, self.xfmt(v)) for v in sx.ticks()]
        rotate = self.xticks is not None and any(len(t) > 3 for _, t in xticks)
        for v, label in xticks:
            x = X(v)
            out.append(f'<line y1="{top}" y2="{top + ph}" x1="{x:.1f}" x2="{x:.1f}" stroke="#eee"/>')
            if rotate:
                out.append(f'<text transform="translate({x + 3:.1f},{top + ph + 10}) rotate(-35)" text-anchor="end" '
                           f'fill="#444">{esc(label)}</text>')
            else:
                out.append(f'<text x="{x:.1f}" y="{top + ph + 14}" text-anchor="middle" fill="#444">{esc(label)}</text>')
        out.append("<g>")
        labels_out, boxes = [], []
        for mark in self.marks:
            kind = mark[0]
            if kind == "band":
                _, axis, lo, hi, color, title = mark
                tip = f"<title>{esc(title)}</title>" if title else ""
                if axis == "y":
                    out.append(f'<rect x="{left}" width="{pw}" y="{Y(hi):.1f}" height="{max(Y(lo) - Y(hi), 1):.1f}" '
                               f'fill="{color}" opacity="0.3">{tip}</rect>')
                else:
                    out.append(f'<rect y="{top}" height="{ph}" x="{X(lo):.1f}" width="{max(X(hi) - X(lo), 1):.1f}" '
                               f'fill="{color}" opacity="0.3">{tip}</rect>')
            elif kind == "rule":
                _, axis, v, color, dash, title = mark
                d = ' stroke-dasharray="5 3"' if dash else ""
                tip = f"<title>{esc(title)}</title>" if title else ""
                if axis == "y":
                    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="{color}" '
                               f'stroke-width="1.2"{d}>{tip}</line>')
                else:
                    out.append(f'<line y1="{top}" y2="{top + ph}" x1="{X(v):.1f}" x2="{X(v):.1f}" stroke="{color}" '
                               f'stroke-width="1.2"{d}>{tip}</line>')
            elif kind == "line":
                _, xs_, ys_, color, dash, width, title = mark
                pts = " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b in zip(xs_, ys_) if a is not None and b is not None)
                d = ' stroke-dasharray="5 3"' if dash else ""
                tip = f"<title>{esc(title)}</title>" if title else ""
                out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}"{d}>'
                           f"{tip}</polyline>")
            elif kind == "err":
                _, xs_, lo, hi, color = mark
                for a, b, c in zip(xs_, lo, hi):
                    x = X(a)
                    out.append(f'<path d="M{x:.1f},{Y(b):.1f}V{Y(c):.1f}M{x - 3:.1f},{Y(b):.1f}h6M{x - 3:.1f},'
                               f'{Y(c):.1f}h6" stroke="{color}" stroke-width="1.1" fill="none"/>')
            else:
                _, xs_, ys_, titles, color, shape, r, labels, hollow = mark
                for i, (a, b) in enumerate(zip(xs_, ys_)):
                    if a is None or b is None:
                        continue
                    c = color if isinstance(color, str) else color[i]
                    out.append(marker(shape, X(a), Y(b), r, c, titles[i], bool(hollow and hollow[i])))
                    if labels:
                        labels_out.append(self._label(labels[i], X(a), Y(b), r, boxes))
        out.append("</g>")
        out += labels_out
        out.append(f'<text transform="translate(14,{top + ph / 2:.0f}) rotate(-90)" text-anchor="middle">'
                   f"{esc(self.ylabel)}</text>")
        xl_y = top + ph + (bottom - 6 if rotate else 32)
        out.append(f'<text x="{left + pw / 2:.0f}" y="{xl_y:.0f}" text-anchor="middle">{esc(self.xlabel)}</text>')
        if self.legend_items:
            leg, _ = _legend(self.legend_items, left, H + 4, legend_w)
            out.append(leg)
        out.append("</svg>")
        return "".join(out)


def hbars(names: list[str], values: list[float], *, colors: list[str], titles: list[str], title: str = "",
          xlabel: str = "", band: tuple[float, float] | None = None, band_title: str = "",
          mean: float | None = None, legend: list[tuple] = (), width: int = 560) -> str:
    """Horizontal bars, one per name, optionally over a shaded ``band`` (lo, hi) with a ``mean`` line."""
    row = 22
    label_w = min(200, 16 + 6.6 * max((len(n) for n in names), default=4))
    top = 28 if title else 10
    ph = row * len(names) + 8
    _, leg_h = _legend(list(legend), 0, 0, width - label_w)
    H = top + ph + 42 + leg_h
    left, pw = label_w, width - label_w - 20
    hi_v = max([*values, *(band or ()), 0.0]) or 1.0
    s = Scale(0, hi_v)
    s.t0 = 0.0  # bars start at zero

    def X(v):
        return left + pw * s(v)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {H}" width="{width}" '
           f'height="{H}" font-family="{FONT}" font-size="11" role="img"><title>{esc(title)}</title>']
    if title:
        out.append(f'<text x="8" y="17" font-size="13" font-weight="600">{esc(title)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#bbb"/>')
    for v in [t for t in s.ticks() if t >= 0]:
        out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{top}" y2="{top + ph}" stroke="#eee"/>'
                   f'<text x="{X(v):.1f}" y="{top + ph + 14}" text-anchor="middle" fill="#444">{v:g}</text>')
    if band:
        out.append(f'<rect x="{X(band[0]):.1f}" y="{top}" width="{max(X(band[1]) - X(band[0]), 1.5):.1f}" height="{ph}" '
                   f'fill="{COLORS["control"]}" opacity="0.3"><title>{esc(band_title)}</title></rect>')
    if mean is not None:
        out.append(f'<line x1="{X(mean):.1f}" x2="{X(mean):.1f}" y1="{top}" y2="{top + ph}" stroke="#555" '
                   f'stroke-dasharray="5 3"/>')
    for i, (n, v, c, t) in enumerate(zip(names, values, colors, titles)):
        y = top + 4 + i * row
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{esc(n)}</text>'
                   f'<rect x="{left}" y="{y + 3}" width="{max(X(v) - left, 1):.1f}" height="{row - 7}" fill="{c}">'
                   f"<title>{esc(t)}</title></rect>")
    out.append(f'<text x="{left + pw / 2:.0f}" y="{top + ph + 32}" text-anchor="middle">{esc(xlabel)}</text>')
    if legend:
        leg, _ = _legend(list(legend), left, top + ph + 50, width - label_w)
        out.append(leg)
    out.append("</svg>")
    return "".join(out)


def heatmap(names: list[str], matrix: list[list[float]], *, title: str = "", unit: str = "", width: int = 640) -> str:
    """A square matrix as coloured cells (light = low, dark = high), hover text per cell."""
    n = len(names)
    label_w = min(170, 12 + 6 * max((len(s) for s in names), default=4))
    cell = max(6.0, min(26.0, (width - label_w - 70) / max(n, 1)))
    size = cell * n
    W = label_w + size + 70
    H = 30 + size + label_w
    flat = [v for row in matrix for v in row if v is not None]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    span = (hi - lo) or 1.0

    def color(v):  # white -> deep blue
        t = (v - lo) / span
        r, g, b = (int(247 - t * (247 - 8)), int(251 - t * (251 - 48)), int(255 - t * (255 - 107)))
        return f"rgb({r},{g},{b})"

    fs = max(6, min(11, cell * 0.8))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {W:.0f} {H:.0f}" width="{W:.0f}" '
           f'height="{H:.0f}" font-family="{FONT}" font-size="{fs:.0f}" role="img"><title>{esc(title)}</title>',
           f'<text x="4" y="17" font-size="13" font-weight="600">{esc(title)}</text>']
    top = 30
    for i, (a, row) in enumerate(zip(names, matrix)):
        y = top + i * cell
        out.append(f'<text x="{label_w - 4}" y="{y + cell * 0.7:.1f}" text-anchor="end">{esc(a)}</text>')
        for j, v in enumerate(row):
            if v is None:
                continue
            out.append(f'<rect x="{label_w + j * cell:.1f}" y="{y:.1f}" width="{cell:.1f}" height="{cell:.1f}" '
                       f'fill="{color(v)}"><title>{esc(a)} vs {esc(names[j])}: {v:.2f}{esc(unit)}</title></rect>')
    for j, b in enumerate(names):
        x = label_w + j * cell + cell * 0.65
        out.append(f'<text transform="translate({x:.1f},{top + size + 4:.1f}) rotate(-90)" text-anchor="end">'
                   f"{esc(b)}</text>")
    # the colour scale (its id from the content: the same page renders byte for byte)
    gid = "hm" + hashlib.sha1(repr((names, lo, hi)).encode()).hexdigest()[:10]
    gx = label_w + size + 14
    out.append(f'<defs><linearGradient id="{gid}" x1="0" y1="1" x2="0" y2="0"><stop offset="0" '
               f'stop-color="{color(lo)}"/><stop offset="1" stop-color="{color(hi)}"/></linearGradient></defs>'
               f'<rect x="{gx}" y="{top}" width="12" height="{size:.1f}" fill="url(#{gid})" stroke="#bbb"/>'
               f'<text x="{gx + 16}" y="{top + 9}" font-size="10">{hi:.1f}{esc(unit)}</text>'
               f'<text x="{gx + 16}" y="{top + size:.1f}" font-size="10">{lo:.1f}{esc(unit)}</text>')
    out.append("</svg>")
    return "".join(out)


#: A perceptually ordered colour ramp (dark blue-purple = low, yellow = high), for scalar fields.
RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def ramp(t: float) -> str:
    """The :data:`RAMP` colour at ``t`` in [0, 1] (clamped), linearly between its stops."""
    t = min(1.0, max(0.0, t)) * (len(RAMP) - 1)
    i = min(int(t), len(RAMP) - 2)
    f = t - i
    return "rgb({},{},{})".format(*(round(a + f * (b - a)) for a, b in zip(RAMP[i], RAMP[i + 1])))


def field(xs: list[float], ys: list[float], z: list[list[float]], *, title: str = "", xlabel: str = "",
          ylabel: str = "", label: str = "value", log: bool = False, centre: tuple[float, float] | None = (0.0, 0.0),
          centre_title: str = "centre", width: int = 560) -> str:
    """A 2-D scalar field as coloured cells: ``z[i][j]`` is the value at ``(xs[i], ys[j])``
    (x to the right, y up), each cell hovering its coordinates and value; a colour bar
    (``log``: coloured by log10, for values that rise over decades; non-positive values then
    take the lowest colour) and a star at ``centre`` (None: none)."""
    nx, ny = len(xs), len(ys)
    flat = [v for row in z for v in row if v is not None and math.isfinite(v)]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    if log:
        pos = [v for v in flat if v > 0] or [1.0]
        lo, hi = min(pos), max(max(pos), min(pos))
    tr = (lambda v: math.log10(max(v, lo))) if log else (lambda v: v)
    t0, t1 = tr(lo), tr(hi)
    span = (t1 - t0) or 1.0
    left, top, bar = 62, 28 if title else 12, 70
    pw = width - left - bar - 14
    ph = min(pw, 420)
    H = top + ph + 48

    def edges(cs):  # cell boundaries: halfway between neighbouring coordinates
        mids = [(a + b) / 2 for a, b in zip(cs, cs[1:])]
        first = cs[0] - (mids[0] - cs[0]) if mids else cs[0] - 0.5
        last = cs[-1] + (cs[-1] - mids[-1]) if mids else cs[-1] + 0.5
        return [first, *mids, last]

    ex, ey = edges(list(xs)), edges(list(ys))
    sx, sy = Scale(ex[0], ex[-1]), Scale(ey[0], ey[-1])
    sx.t0, sx.t1, sy.t0, sy.t1 = ex[0], ex[-1], ey[0], ey[-1]  # no padding: cells fill the panel

    def X(v):
        return left + pw * sx(v)

    def Y(v):
        return top + ph * (1 - sy(v))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {H:.0f}" width="{width}" '
           f'height="{H:.0f}" font-family="{FONT}" font-size="11" role="img"><title>{esc(title or label)}</title>']
    if title:
        out.append(f'<text x="{left}" y="17" font-size="13" font-weight="600">{esc(title)}</text>')
    out.append('<g shape-rendering="crispEdges">')  # no anti-aliased seams between cells
    for i in range(nx):
        for j in range(ny):
            v = z[i][j]
            if v is None or not math.isfinite(v):
                continue
            x0, x1, y0, y1 = X(ex[i]), X(ex[i + 1]), Y(ey[j + 1]), Y(ey[j])
            out.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0 + 0.4:.1f}" height="{y1 - y0 + 0.4:.1f}" '
                       f'fill="{ramp((tr(v) - t0) / span)}"><title>{esc(xlabel or "x")} {xs[i]:.3g}, '
                       f'{esc(ylabel or "y")} {ys[j]:.3g}: {esc(label)} {v:.4g}</title></rect>')
    out.append("</g>")
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    for v in Scale(min(xs), max(xs)).ticks():
        if ex[0] <= v <= ex[-1]:
            out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#666"/>'
                       f'<text x="{X(v):.1f}" y="{top + ph + 15}" text-anchor="middle" fill="#444">{v:g}</text>')
    for v in Scale(min(ys), max(ys)).ticks():
        if ey[0] <= v <= ey[-1]:
            out.append(f'<line x1="{left - 4}" x2="{left}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#666"/>'
                       f'<text x="{left - 6}" y="{Y(v) + 3.5:.1f}" text-anchor="end" fill="#444">{v:g}</text>')
    if centre is not None:
        out.append(marker("star", X(centre[0]), Y(centre[1]), 5, "#fff", centre_title, stroke="#111"))
    out.append(f'<text x="{left + pw / 2:.0f}" y="{top + ph + 34}" text-anchor="middle">{esc(xlabel)}</text>'
               f'<text transform="translate(14,{top + ph / 2:.0f}) rotate(-90)" text-anchor="middle">'
               f"{esc(ylabel)}</text>")
    # the colour bar (its gradient id from the content: the same page renders byte for byte)
    gid = "fd" + hashlib.sha1(repr((title, lo, hi, nx, ny)).encode()).hexdigest()[:10]
    gx = left + pw + 14
    stops = "".join(f'<stop offset="{k / (len(RAMP) - 1):.2f}" stop-color="{ramp(k / (len(RAMP) - 1))}"/>'
                    for k in range(len(RAMP)))
    out.append(f'<defs><linearGradient id="{gid}" x1="0" y1="1" x2="0" y2="0">{stops}</linearGradient></defs>'
               f'<rect x="{gx}" y="{top}" width="12" height="{ph:.1f}" fill="url(#{gid})" stroke="#bbb">'
               f"<title>{esc(label)}{' (log colour scale)' if log else ''}</title></rect>")
    for k in range(3):  # low, middle (in colour space), high
        t = t0 + span * k / 2 if t1 > t0 else t0
        v = 10 ** t if log else t
        out.append(f'<text x="{gx + 16}" y="{top + ph * (1 - k / 2) + (0 if k else -1) + (9 if k == 2 else 3):.1f}" '
                   f'font-size="10">{esc(short(v) if abs(v) >= 1000 else f"{v:.3g}")}</text>')
    out.append(f'<text x="{gx}" y="{top + ph + 15}" font-size="10" fill="#444">{esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)
