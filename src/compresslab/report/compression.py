"""The HTML report and the fidelity plot of a ``compression-functional`` study."""
from __future__ import annotations

from pathlib import Path

from compresslab.figures import save_png
from compresslab.report import svg
from compresslab.report.html import badge, inheritance_section
from compresslab.report.kd import _ci
from compresslab.report.page import BAND_LEGEND, as_stored, closeness, esc, legend, page, plots, table, write_page
from compresslab.report.svg import COLORS

FAMILY_STYLE = {"distillation": ("^", "C3"), "pruning": ("o", "C0"), "quantization": ("s", "C2"),
                "pruning+quantization": ("D", "C4"), "scratch": ("v", "C1")}
PANELS = (("agreement", "top-1 agreement with the parent (%)", 100), ("js_divergence", "JS divergence (nats)", 1))


def _figure(results: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    summ = results["summaries"]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 4.6))
    for ax, (metric, label, k) in zip(axes, PANELS):
        ind = (summ.get("independent") or {}).get(metric)
        if ind:
            ax.axhspan(k * ind["ci_low"], k * ind["ci_high"], color="0.6", alpha=0.35, lw=0,
                       label="independent retrain (95% CI)")
            ax.axhline(k * ind["mean"], color="0.4", lw=1, ls="--")
        for fam, (marker, color) in FAMILY_STYLE.items():
            pts = [(n, s) for n, s in summ.items() if s["family"] == fam and s.get(metric)]
            if not pts:
                continue
            xs = [s["compression_ratio"] for _, s in pts]
            ys = [k * s[metric]["mean"] for _, s in pts]
            err = [[k * (s[metric]["mean"] - s[metric]["ci_low"]) for _, s in pts],
                   [k * (s[metric]["ci_high"] - s[metric]["mean"]) for _, s in pts]]
            ax.errorbar(xs, ys, yerr=err, fmt=marker, color=color, ms=6, capsize=2, label=fam, zorder=3)
            if len(pts) > 1:  # the family as a series, in order of compression
                order = sorted(range(len(xs)), key=xs.__getitem__)
                ax.plot([xs[i] for i in order], [ys[i] for i in order], color=color, lw=0.8, alpha=0.5, zorder=2)
            for (n, _), x, y in zip(pts, xs, ys):
                ax.annotate(n, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        if metric == "js_divergence":  # most children sit near 0: linear below 1e-3, log above
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
        ax.set_xlabel("compression ratio (parent's nonzero weight bits / model's)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{results['study']}: which compressions keep the parent's function? "
                 f"(mean, 95% CI over {len(results['spec']['seeds'])} replicates, {results['split']} split)", fontsize=10)
    fig.tight_layout()
    return fig


SHAPES = {"distillation": "triangle", "pruning": "circle", "quantization": "square", "pruning+quantization": "diamond",
          "scratch": "down"}


def plot_fidelity(results: dict, path: str | Path | None = None) -> str:
    """The fidelity panels as inline SVG (shape = family, colour = inside or beyond the
    independent retrains' 95% CI); also the matplotlib figure as PNG at ``path`` when given."""
    if path is not None:
        import matplotlib.pyplot as plt

        fig = _figure(results)
        save_png(fig, path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    summ = results["summaries"]
    ind = summ.get("independent") or {}
    out = []
    for metric, label, k in PANELS:
        js = metric == "js_divergence"
        p = svg.Plot(label, "compression ratio (parent's nonzero weight bits / model's, log)", label, width=560,
                     height=360, xscale="log", yscale="symlog" if js else "linear", yfmt=(lambda v: f"{v:g}"))
        band = ind.get(metric)
        if band:
            p.band(k * band["ci_low"], k * band["ci_high"], label="independent retrain (95% CI)",
                   title=f"independent retrain: {k * band['mean']:.4g} [{k * band['ci_low']:.4g}, {k * band['ci_high']:.4g}]")
        for fam, shape in SHAPES.items():
            pts = [(n, s) for n, s in summ.items() if s["family"] == fam and s.get(metric)]
            if not pts:
                continue
            pts.sort(key=lambda t: t[1]["compression_ratio"])
            xs = [s["compression_ratio"] for _, s in pts]
            ys = [k * s[metric]["mean"] for _, s in pts]
            if len(pts) > 1:
                p.line(xs, ys, color="#bbb", width=1)
            p.errorbars(xs, [k * s[metric]["ci_low"] for _, s in pts], [k * s[metric]["ci_high"] for _, s in pts],
                        color="#666")
            band_mm = {"min": band["ci_low"], "max": band["ci_high"]} if band else None
            cls = [closeness(s[metric]["mean"], band_mm, lower_is_closer=js) for _, s in pts]
            p.points(xs, ys, shape=shape, r=5.5, color=[COLORS[c] for c in cls], labels=[n for n, _ in pts],
                     titles=[f"{n} ({fam}, {s['compression_ratio']:.3g}x): {k * s[metric]['mean']:.4g} "
                             f"[{k * s[metric]['ci_low']:.4g}, {k * s[metric]['ci_high']:.4g}]" for n, s in pts])
            p.legend(fam, "#777", shape)
        out.append(p.svg())
    return plots(*out)


def _fmt_cost(c: dict) -> list[str]:
    lat = (c.get("latency_ms") or {}).get("batch256")
    return [f"{c['params']:,}", f"{c['nonzero_bytes']:,}", f"{c['bops']:.3g}", "–" if lat is None else f"{lat:.2f}"]


def render_cf(results: dict) -> str:
    spec = results["spec"]
    ind = (results["summaries"].get("independent") or {}).get("agreement")
    band = {"min": ind["ci_low"], "max": ind["ci_high"]} if ind else None
    rows = []
    for name, s in results["summaries"].items():
        cls = ("parent" if s["family"] == "parent" else "control" if s["family"] in ("independent", "siddo", "disdo") else
               closeness((s.get("agreement") or {}).get("mean"), band, lower_is_closer=False))
        rows.append([esc(name), esc(s["family"]), badge(cls, cls if cls in ("parent", "control") else None),
                     f"{s['compression_ratio']:.2f}", *_fmt_cost(s["cost"]), _ci(s["accuracy"], True),
                     _ci(s["agreement"], True), _ci(s["js_divergence"]), _ci(s["activation_distance"]),
                     _ci(s["output_cosine"]), _ci(s["cka"])])
    tests = [[esc(t["label_a"]), esc(t["metric"]), f"{t['mean_a']:.4f}", f"{t['mean_b']:.4f}", f"{t['p_holm']:.2g}",
              f"{t['p_perm_holm']:.2g}", '<b class="sig">yes</b>' if t["significant"] else '<span class="ns">no</span>']
             for t in results["tests"]]
    intro = (f"<p>{len(spec['seeds'])} replicates (seeds {', '.join(map(str, spec['seeds']))}): each trains a parent, "
             "builds every child from it, and retrains the parent architecture from another seed "
             "(<em>independent</em>). Every model is compared with its own replicate's parent on the "
             f"{esc(results['split'])} split. Cells: mean [95% bootstrap CI] over replicates.</p>")
    sections = [
        "<h2>Which compressions keep the parent's function?</h2>",
        "<p>Shape: the family of compression. Colour: green when the mean is inside the independent retrains' 95% CI "
        "(the grey band) or closer to the parent, red when farther.</p>",
        legend(BAND_LEGEND[1:3]),
        plot_fidelity(results),
        "<h2>Every model</h2>",
        "<p>Cost columns: params, nonzero weight bytes at the model's bit widths, BOPs per example, latency at batch "
        "256 in ms (first replicate, measured side by side; fake-quantised models run fp32 kernels, so they are not "
        "faster). \"vs retrain\" judges mean agreement against the independent retrains' 95% CI.</p>",
        table(["model", "family", "vs retrain", "ratio", "params", "bytes", "BOPs", "ms@256", "acc (%)", "agree (%)",
               "JS", "act. dist", "out. cos", "CKA"], rows),
        "<h2>More similar to the parent than an independent retrain?</h2>",
        f"<p>One-sided Welch test per model and metric, Holm-adjusted across all {len(results['tests'])} tests; the "
        "exact permutation p (Holm) is shown as a check.</p>",
        table(["model", "metric", "mean", "independent", "p (Welch, Holm)", "p (perm., Holm)", "significant"], tests),
        inheritance_section(results["correctness"], results["asymmetry"], results["control"], "parent")
        if results.get("correctness") else "",
    ]
    return page(results, f"Compression, the functional perspective: <code>{esc(spec['parent']['name'])}</code> on "
                f"<code>{esc(results['data']['name'])}</code>", results["headline"], sections,
                [*results["notes"], *results["data"]["notes"]], intro)


def write_cf_report(results: dict, path: str | Path) -> Path:
    """``report.html``, and ``fidelity.png`` beside it."""
    results = as_stored(results)
    plot_fidelity(results, Path(path).with_name("fidelity.png"))
    return write_page(path, render_cf(results))
