"""The HTML report of an ``embedding-compression`` study's ``results.json``."""
from __future__ import annotations

from pathlib import Path

from compresslab.figures import save_png
from compresslab.report import svg
from compresslab.report.page import as_stored, esc, page, plots, table, write_page
from compresslab.report.svg import COLORS


def _ci(s: dict | None, pct: bool = True) -> str:
    if not s:
        return "–"
    k, d = (100, 1) if pct else (1, 3)
    return f"{k * s['mean']:.{d}f} <small>[{k * s['ci_low']:.{d}f}, {k * s['ci_high']:.{d}f}]</small>"


def _figure(results: dict):
    """The matplotlib version of the mAP plot, for ``map_ratio.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = results["summaries"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ind = (summ.get("independent") or {}).get("mAP")
    if ind:
        ax.axhspan(100 * ind["ci_low"], 100 * ind["ci_high"], color="0.6", alpha=0.3,
                   label="independent retrains (95% CI)")
    p = summ["parent"]["mAP"]
    ax.errorbar([1], [100 * p["mean"]], yerr=[[100 * (p["mean"] - p["ci_low"])], [100 * (p["ci_high"] - p["mean"])]],
                fmt="k*", ms=11, capsize=3, label="parent")
    for i, (fam, pts) in enumerate(_families(summ).items()):
        xs, ys = [s["ratio"] for _, s in pts], [100 * s["mAP"]["mean"] for _, s in pts]
        err = [[100 * (s["mAP"]["mean"] - s["mAP"]["ci_low"]) for _, s in pts],
               [100 * (s["mAP"]["ci_high"] - s["mAP"]["mean"]) for _, s in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, color=svg.series_color(i), label=fam)
    ax.axvline(96, color="0.4", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (parent bytes / model bytes per embedding)")
    ax.set_ylabel("mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _families(summ: dict) -> dict[str, list]:
    fams = sorted({s["family"] for n, s in summ.items() if n not in ("parent", "independent")})
    return {f: sorted(((n, s) for n, s in summ.items() if s["family"] == f), key=lambda t: (t[1]["ratio"], t[0]))
            for f in fams}


def plot_map_ratio(results: dict, path: str | Path | None = None) -> str:
    """mAP against the compression ratio (log x) as inline SVG, one line per method family, the
    parent at 1x and the independent retrains' 95% CI as a band; also a PNG at ``path``."""
    if path is not None:
        import matplotlib.pyplot as plt

        fig = _figure(results)
        save_png(fig, path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    summ = results["summaries"]
    p = svg.Plot("mAP against compression ratio", "compression ratio (parent bytes / model bytes per embedding, log)",
                 "mAP (%)", width=760, height=380, xscale="log")
    ind = (summ.get("independent") or {}).get("mAP")
    if ind:
        p.band(100 * ind["ci_low"], 100 * ind["ci_high"], label="independent retrains (95% CI)",
               title=f"independent retrains: {100 * ind['mean']:.2f} [{100 * ind['ci_low']:.2f}, {100 * ind['ci_high']:.2f}]")
    p.rule(96, axis="x", color="#555", title="96x", label="96x")
    for i, (fam, pts) in enumerate(_families(summ).items()):
        xs, ys = [s["ratio"] for _, s in pts], [100 * s["mAP"]["mean"] for _, s in pts]
        c = svg.series_color(i + 1)
        p.line(xs, ys, color=c)
        p.errorbars(xs, [100 * s["mAP"]["ci_low"] for _, s in pts], [100 * s["mAP"]["ci_high"] for _, s in pts], color=c)
        p.points(xs, ys, color=c, label=fam, titles=[f"{n} ({fam}, {s['ratio']:.1f}x): mAP {100 * s['mAP']['mean']:.2f}% "
                                                      f"[{100 * s['mAP']['ci_low']:.2f}, {100 * s['mAP']['ci_high']:.2f}]"
                                                      for n, s in pts])
    par = summ["parent"]["mAP"]
    p.errorbars([1], [100 * par["ci_low"]], [100 * par["ci_high"]], color=COLORS["parent"])
    p.points([1], [100 * par["mean"]], shape="star", r=7, color=COLORS["parent"], label="parent",
             titles=[f"parent: mAP {100 * par['mean']:.2f}% [{100 * par['ci_low']:.2f}, {100 * par['ci_high']:.2f}]"])
    return plots(p.svg())


def render_embedding(results: dict, figure: str) -> str:
    spec = results["spec"]
    rows = []
    for name, s in sorted(results["summaries"].items(), key=lambda kv: kv[1]["ratio"]):
        lat = s.get("search_ms_per_query")
        rows.append([esc(name), esc(s["family"]), str(s["dims"]), str(s["bits"]), f"{s['bytes']:.1f}",
                     f"{s['ratio']:.1f}x", _ci(s["mAP"]), _ci(s["rank1"]), f"{s['drop_points']:+.1f}",
                     _ci(s.get("rank_correlation"), False), _ci(s.get("neighbour_overlap"), False),
                     _ci(s.get("cka"), False), "–" if lat is None else f"{lat:.4f}"])
    first = next((m for m in results["models"] if m["name"] == "parent"), {})

    def onset(t):
        return "never (in this study)" if t is None else f"{t[0]:.0f}x ({esc(t[1])})"

    fams = [[esc(f), onset(t.get("1")), onset(t.get("5"))] for f, t in results.get("thresholds", {}).items()]
    intro = (f"<p>{len(spec['seeds'])} seeds; per seed a parent embedder, an independent retrain and every method. "
             f"Retrieval on the test split: {first.get('n_queries', '?')} queries (plus "
             f"{first.get('n_queries_excluded', 0)} without a match in another camera, excluded as standard) against "
             f"the gallery, {esc(spec['metric'])} distance, same-identity same-camera gallery items excluded.</p>")
    sections = [
        "<h2>mAP against compression</h2>", figure,
        "<h2>Every method</h2>",
        "<p>Bytes: what one stored embedding takes (packed codes for QAT). Ratio: the parent's bytes over the "
        "model's. Geometry on the gallery against the parent's embeddings: Spearman correlation of pairwise "
        "distances, mean overlap of the 10 nearest neighbours, linear CKA. Latency: exact search (distances + "
        f"top-10) per query at a gallery of {spec['gallery_size']:,}, first seed. Cells: mean [95% bootstrap CI] "
        "over seeds; mAP and rank-1 in %.</p>",
        table(["model", "family", "dims", "bits", "bytes", "ratio", "mAP", "rank-1", "drop (points)",
               "dist. rank corr.", "10-NN overlap", "CKA", "ms/query"], rows),
        "<h2>Where does each method start to cost mAP?</h2>",
        table(["family", "first ratio losing more than 1 point", "first ratio losing more than 5 points"], fams),
    ]
    return page(results, f"Embedding compression: <code>{esc(results['data']['name'])}</code>", results["headline"],
                sections, results["data"].get("notes") or [], intro)


def write_embedding_report(results: dict, path: str | Path) -> Path:
    """``report.html``, and ``map_ratio.png`` beside it."""
    results = as_stored(results)
    figure = plot_map_ratio(results, Path(path).with_name("map_ratio.png"))
    return write_page(path, render_embedding(results, figure))
