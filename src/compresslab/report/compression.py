"""The HTML report and the fidelity plot of a ``compression-functional`` study."""
from __future__ import annotations

import html
from pathlib import Path

from compresslab.report.html import _png, inheritance_section, write_page
from compresslab.report.kd import _ci

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


def plot_fidelity(results: dict, path: str | Path | None = None) -> str:
    """The fidelity plot as a data URI; also saved as PNG at ``path`` when given."""
    fig = _figure(results)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return _png(fig)


def _fmt_cost(c: dict) -> list[str]:
    lat = (c.get("latency_ms") or {}).get("batch256")
    return [f"{c['params']:,}", f"{c['nonzero_bytes']:,}", f"{c['bops']:.3g}", "–" if lat is None else f"{lat:.2f}"]


def render_cf(results: dict) -> str:
    spec = results["spec"]
    rows = []
    for name, s in results["summaries"].items():
        cells = [html.escape(name), html.escape(s["family"]), f"{s['compression_ratio']:.2f}", *_fmt_cost(s["cost"]),
                 _ci(s["accuracy"], True), _ci(s["agreement"], True), _ci(s["js_divergence"]),
                 _ci(s["activation_distance"]), _ci(s["output_cosine"]), _ci(s["cka"])]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    tests = "".join(
        f"<tr><td>{html.escape(t['label_a'])}</td><td>{html.escape(t['metric'])}</td><td>{t['mean_a']:.4f}</td>"
        f"<td>{t['mean_b']:.4f}</td><td>{t['p_holm']:.2g}</td><td>{t['p_perm_holm']:.2g}</td>"
        f"<td>{'yes' if t['significant'] else 'no'}</td></tr>" for t in results["tests"])
    head = "".join(f"<li>{html.escape(h)}</li>" for h in results["headline"])
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in results["notes"] + results["data"]["notes"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(results['study'])}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1250px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
th{{background:#f3f3f3}}</style></head><body>
<h1>Compression, the functional perspective: <code>{html.escape(spec['parent']['name'])}</code> on
<code>{html.escape(results['data']['name'])}</code></h1>
<p>{len(spec['seeds'])} replicates (seeds {', '.join(map(str, spec['seeds']))}): each trains a parent, builds every child
from it, and retrains the parent architecture from another seed (<em>independent</em>). Every model is compared with
its own replicate's parent on the {html.escape(results['split'])} split. Cells: mean [95% bootstrap CI] over replicates.
Cost columns: params, nonzero weight bytes at the model's bit widths, BOPs per example, latency at batch 256 in ms
(first replicate, measured side by side; fake-quantised models run fp32 kernels, so they are not faster).</p>
<img alt="fidelity against compression ratio" style="max-width:100%" src="{plot_fidelity(results)}">
<ul>{head}</ul>
<table><tr><th>model</th><th>family</th><th>ratio</th><th>params</th><th>bytes</th><th>BOPs</th><th>ms@256</th>
<th>acc (%)</th><th>agree (%)</th><th>JS</th><th>act. dist</th><th>out. cos</th><th>CKA</th></tr>{''.join(rows)}</table>
<h2>More similar to the parent than an independent retrain?</h2>
<p>One-sided Welch test per model and metric, Holm-adjusted across all {len(results['tests'])} tests; the exact
permutation p (Holm) is shown as a check.</p>
<table><tr><th>model</th><th>metric</th><th>mean</th><th>independent</th><th>p (Welch, Holm)</th><th>p (perm., Holm)</th>
<th>significant</th></tr>{tests}</table>
{inheritance_section(results["correctness"], results["asymmetry"], results["control"], "parent")
 if results.get("correctness") else ""}
<ul>{notes}</ul>
<p>Steps run: {len(results['steps']['ran'])}, reused: {len(results['steps']['reused'])}.
Wall time {results.get('seconds', 0):.1f} s on {results['num_threads']} threads.</p></body></html>
"""


def write_cf_report(results: dict, path: str | Path) -> Path:
    return write_page(path, render_cf(results))
