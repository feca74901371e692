"""The HTML report of a ``blockswap`` study: the Pareto plot, the students and their searches."""
from __future__ import annotations

from pathlib import Path

from compresslab.report.moonshine import plot_pareto
from compresslab.report.page import as_stored, esc, page, table, write_page


def verdict(results: dict) -> list[str]:
    t = results["teacher"]
    return [f"{r['name']}: {r['cost']['params']:,} params ({100 * r['cost']['params'] / t['cost']['params']:.0f}% of "
            f"the teacher's), error {100 * r['error']:.2f}% against the teacher's {100 * t['error']:.2f}%, agreement "
            f"with the teacher {100 * r['function']['agreement']:.1f}%" for r in results["students"]]


def write_blockswap_report(results: dict, path: str | Path) -> Path:
    results = as_stored(results)
    spec = results["spec"]
    rows = []
    for r in [results["teacher"], *results["students"]]:
        s = r.get("search") or {}
        rows.append([esc(r["name"]), f"{r['cost']['params']:,}", f"{r['cost']['macs']:,}", f"{100 * r['error']:.2f}",
                     f"{100 * r['function']['agreement']:.2f}", f"{s['seconds']['total']:.1f}" if s else "–",
                     f"{s['candidates']:,}" if s else "–",
                     f"<code>{esc('-'.join(s['best']))}</code>" if s else "teacher"])
    intro = (f"<p>For each budget, {spec['samples']:,} block mixes within 2.5% of it were scored by Fisher potential "
             f"at initialisation on one minibatch of {spec['batch']}; the best was trained with attention transfer "
             f"(β = {spec['beta']:g}) from the teacher, with the teacher's recipe.</p>")
    sections = ["<h2>Parameters against error</h2>", plot_pareto(results),
                "<h2>Students and their searches</h2>",
                table(["model", "params", "MACs", "error (%)", "agreement (%)", "search (s)", "candidates", "blocks"],
                      rows)]
    title = f"BlockSwap students of <code>{esc(spec['teacher']['name'])}</code>"
    return write_page(path, page(results, title, verdict(results), sections, results["data"].get("notes") or [], intro))
