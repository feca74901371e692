"""The HTML report of an ``embedding-compression`` study's ``results.json``."""
from __future__ import annotations

import html
from pathlib import Path

from compresslab.report.html import _png, write_page


def _ci(s: dict | None, pct: bool = True) -> str:
    if not s:
        return "–"
    k, d = (100, 1) if pct else (1, 3)
    return f"{k * s['mean']:.{d}f} <small>[{k * s['ci_low']:.{d}f}, {k * s['ci_high']:.{d}f}]</small>"


def plot_map_ratio(results: dict, path: str | Path | None = None) -> str:
    """mAP against the compression ratio (log x), one line per method family, the parent at
    1x with the independent retrains' 95% CI as a band. Also saved as PNG at ``path``."""
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
    families = sorted({s["family"] for n, s in summ.items() if n not in ("parent", "independent")})
    for i, fam in enumerate(families):
        pts = sorted(((s["ratio"], s["mAP"], n) for n, s in summ.items() if s["family"] == fam), key=lambda t: (t[0], t[2]))
        xs, ys = [r for r, _, _ in pts], [100 * m["mean"] for _, m, _ in pts]
        err = [[100 * (m["mean"] - m["ci_low"]) for _, m, _ in pts], [100 * (m["ci_high"] - m["mean"]) for _, m, _ in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, color=f"C{i % 10}", label=fam)
    ax.axvline(96, color="0.4", ls=":", lw=1)
    ax.text(96, ax.get_ylim()[0], " 96x", fontsize=8, color="0.3", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (parent bytes / model bytes per embedding)")
    ax.set_ylabel("mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return _png(fig)


def render_embedding(results: dict, figure: str) -> str:
    e = html.escape
    spec = results["spec"]
    rows = []
    for name, s in sorted(results["summaries"].items(), key=lambda kv: kv[1]["ratio"]):
        lat = s.get("search_ms_per_query")
        cells = [e(name), e(s["family"]), str(s["dims"]), str(s["bits"]), f"{s['bytes']:.1f}", f"{s['ratio']:.1f}x",
                 _ci(s["mAP"]), _ci(s["rank1"]), f"{s['drop_points']:+.1f}", _ci(s.get("rank_correlation"), False),
                 _ci(s.get("neighbour_overlap"), False), _ci(s.get("cka"), False), "–" if lat is None else f"{lat:.4f}"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    first = next((m for m in results["models"] if m["name"] == "parent"), {})
    notes = "".join(f"<li>{e(n)}</li>" for n in results["data"]["notes"])

    def onset(t):
        return "never (in this study)" if t is None else f"{t[0]:.0f}x ({e(t[1])})"

    fams = "".join(f"<tr><td>{e(f)}</td><td>X</td></tr>"
                   for f, t in results.get("thresholds", {}).items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(results['study'])}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1250px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
th{{background:#f3f3f3}}</style></head><body>
<h1>Embedding compression: <code>{e(results['data']['name'])}</code></h1>
<ul>{''.join(f'<li><b>{e(h)}</b></li>' for h in results['headline'])}</ul>
<p>{len(spec['seeds'])} seeds; per seed a parent embedder, an independent retrain and every method. Retrieval on the
test split: {first.get('n_queries', '?')} queries (plus {first.get('n_queries_excluded', 0)} without a match in
another camera, excluded as standard) against the gallery, {e(spec['metric'])} distance, same-identity same-camera
gallery items excluded. Bytes: what one stored embedding takes (packed codes for QAT). Ratio: the parent's bytes over
the model's. Geometry on the gallery against the parent's embeddings: Spearman correlation of pairwise distances, mean
overlap of the 10 nearest neighbours, linear CKA. Latency: exact search (distances + top-10) per query at a gallery of
{spec['gallery_size']:,}, first seed. Cells: mean [95% bootstrap CI] over seeds; mAP and rank-1 in %.</p>
<img alt="mAP against compression ratio" style="max-width:100%" src="{figure}">
<table><tr><th>model</th><th>family</th><th>dims</th><th>bits</th><th>bytes</th><th>ratio</th><th>mAP</th>
<th>rank-1</th><th>drop (points)</th><th>dist. rank corr.</th><th>10-NN overlap</th><th>CKA</th><th>ms/query</th></tr>
{''.join(rows)}</table>
<h2>Where does each method start to cost mAP?</h2>
<table><tr><th>family</th><th>first ratio losing more than 1 point</th><th>first ratio losing more than 5 points</th></tr>
{fams}</table>
<ul>{notes}</ul>
<p>Steps run: {len(results['steps']['ran'])}, reused: {len(results['steps']['reused'])}.
Wall time {results.get('seconds', 0):.1f} s.</p></body></html>
"""


def write_embedding_report(results: dict, path: str | Path) -> Path:
    """``report.html``, and ``map_ratio.png`` beside it."""
    figure = plot_map_ratio(results, Path(path).with_name("map_ratio.png"))
    return write_page(path, render_embedding(results, figure))
