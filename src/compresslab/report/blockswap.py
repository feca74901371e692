"""The HTML report of a ``blockswap`` study: the Pareto plot, the students and their searches."""
from __future__ import annotations

import html
from pathlib import Path

from compresslab.report.html import write_page
from compresslab.report.moonshine import plot_pareto


def write_blockswap_report(results: dict, path: str | Path) -> Path:
    spec = results["spec"]
    rows = []
    for r in [results["teacher"], *results["students"]]:
        s = r.get("search") or {}
        cells = [html.escape(r["name"]), f"{r['cost']['params']:,}", f"{r['cost']['macs']:,}",
                 f"{100 * r['error']:.2f}", f"{100 * r['function']['agreement']:.2f}",
                 f"{s['seconds']['total']:.1f}" if s else "–", f"{s['candidates']:,}" if s else "–",
                 html.escape("-".join(s["best"])) if s else "teacher"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(results['study'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,td:last-child{{text-align:left}}
td:last-child{{font-family:monospace;font-size:80%}}</style></head><body>
<h1>BlockSwap students of <code>{html.escape(spec['teacher']['name'])}</code></h1>
<p>For each budget, {spec['samples']:,} block mixes within 2.5% of it were scored by Fisher potential at
initialisation on one minibatch of {spec['batch']}; the best was trained with attention transfer
(&beta; = {spec['beta']:g}) from the teacher, with the teacher's recipe. Data: {html.escape(results['data']['name'])},
{results['split']} split.</p>
<img alt="params against error" src="{plot_pareto(results)}">
<table><tr><th>model</th><th>params</th><th>MACs</th><th>error %</th><th>agreement %</th><th>search s</th>
<th>candidates</th><th>blocks</th></tr>{''.join(rows)}</table>
</body></html>
"""
    return write_page(path, page)
