"""The self-contained HTML report of a ``moonshine`` study: Pareto plot and tables."""
from __future__ import annotations

import html
from pathlib import Path

from compresslab.report.html import _png, write_page

MODE_STYLE = {"scratch": ("o", "C0"), "at": ("s", "C3"), "at+kd": ("^", "C2"), "teacher": ("*", "k")}


def plot_pareto(results: dict) -> str:
    """Params against test error, one series per training mode, the frontier as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    rows = [results["teacher"], *results["students"]]
    for mode, (marker, color) in MODE_STYLE.items():
        pts = [r for r in rows if r["mode"] == mode]
        if pts:
            ax.scatter([r["cost"]["params"] for r in pts], [100 * r["error"] for r in pts], marker=marker,
                       color=color, s=60 if mode == "teacher" else 30, label=mode, zorder=3)
    for r in results["students"]:
        ax.annotate(r["block"], (r["cost"]["params"], 100 * r["error"]), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    front = sorted((r for r in results["students"] if r["pareto"]), key=lambda r: r["cost"]["params"])
    ax.plot([r["cost"]["params"] for r in front], [100 * r["error"] for r in front], color="0.4", lw=1,
            ls="--", label="Pareto frontier", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"{results['split']} error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _row(r: dict) -> str:
    c, f = r["cost"], r["function"]
    lat = (c.get("latency_ms") or {}).get("batch256")
    cells = [html.escape(r["block"]), html.escape(r["mode"]), f"{c['params']:,}", f"{c['macs']:,}",
             "–" if lat is None else f"{lat:.2f}", f"{100 * r['error']:.2f}", "★" if r.get("pareto") else "",
             f"{100 * f['agreement']:.2f}", f"{f['js_divergence']:.4f}", f"{f['activation_distance']:.4f}"]
    return "<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>"


def write_moonshine_report(results: dict, path: str | Path) -> Path:
    spec = results.get("moonshine_spec") or results["spec"]  # a linear-substitution study runs a Moonshine one
    rows = _row(results["teacher"]) + "".join(_row(r) for r in sorted(results["students"],
                                                                        key=lambda r: r["cost"]["params"]))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in results["data"]["notes"]) or "<li>none</li>"
    fitted = "".join(f"<tr><td>{html.escape(f['block'])}</td><td>{html.escape(f['kind'])}</td><td>{f['budget']:,}</td>"
                     f"<td>{html.escape(str(f['hp']))}</td><td>{f['params']:,}</td></tr>"
                     for f in results.get("substitutes", []))
    if fitted:
        fitted = ("<h2>Structured pointwise substitutes fitted to the budgets</h2><table><tr><th>block</th><th>kind</th>"
                  f"<th>budget</th><th>setting</th><th>params</th></tr>{fitted}</table>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(results['study'])}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
th{{background:#f3f3f3}}</style></head><body>
<h1>Moonshine: cheap-convolution students of <code>{html.escape(spec['teacher']['name'])}</code></h1>
<p>Every 3x3 convolution of the teacher's residual blocks replaced by a cheap block; same recipe. Modes:
scratch = CE only; at = CE + attention transfer (β = {spec['beta']:g} on {', '.join(spec['at_points'])});
at+kd adds Hinton KD (α = {spec['kd']['alpha']:g}, T = {spec['kd']['temperature']:g}). Data
<code>{html.escape(results['data']['name'])}</code>, {html.escape(results['split'])} split. Latency: batch 256,
measured side by side in one process. ★ = on the params/error Pareto frontier. Agreement, JS and activation
distance compare each student's outputs with the teacher's.</p>
<img alt="params against error" src="{plot_pareto(results)}">
<table><tr><th>block</th><th>mode</th><th>params</th><th>MACs</th><th>ms @256</th><th>error (%)</th><th>Pareto</th>
<th>agree (%)</th><th>JS</th><th>act. dist</th></tr>{rows}</table>
{fitted}
<p>Notes on the data:</p><ul>{notes}</ul>
<p>Steps run: {len(results['steps']['ran'])}, reused: {len(results['steps']['reused'])}.
Wall time {results.get('seconds', 0):.1f} s.</p></body></html>
"""
    return write_page(path, page)
