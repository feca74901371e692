"""The kurtosis study's report: correlations, one row per parent, and the figure."""
from __future__ import annotations

import json
from pathlib import Path

from compresslab.report import svg
from compresslab.report.page import as_stored, esc, page, plots, table, write_page
from compresslab.report.svg import COLORS


def plot_kurtosis(results: dict) -> str:
    """Three SVG panels: measured prunability vs K², vs safe amount (with y = x), and test
    accuracy against sparsity per parent (dotted: its accuracy minus the tolerance)."""
    rows = results["parents"]
    y = [r["measured_prunability"] for r in rows]
    out = []
    k2 = [r["kurtosis_of_kurtoses"] for r in rows]
    for key, label in (("kurtosis_of_kurtoses", "K² (kurtosis of kurtoses)"),
                       ("safe_amount", "safe amount (from weights)")):
        x = [r[key] for r in rows]
        c = results["correlations"][key]["spearman"]
        log = key == "kurtosis_of_kurtoses" and min(k2) > 0 and max(k2) > 10 * min(k2)
        p = svg.Plot(f"Spearman ρ = {c:.2f}" if c is not None else "Spearman ρ undefined", label,
                     "measured prunability", width=360, height=300, xscale="log" if log else "linear")
        if key == "safe_amount":
            p.line([0, 1], [0, 1], color="#999", dash=True, width=1, label="y = x")
        p.points(x, y, color=COLORS["parent"], labels=[r["name"] for r in rows],
                 titles=[f"{r['name']}: {label} {r[key]:.3g}, measured prunability {r['measured_prunability']:.2f}"
                         for r in rows])
        out.append(p.svg())
    p = svg.Plot("dotted: parent accuracy − tolerance", "sparsity", "test accuracy after fine-tuning", width=360,
                 height=300)
    for i, r in enumerate(rows):
        c = svg.series_color(i)
        if r["sweep"]:
            s, acc = zip(*r["sweep"])
            p.line(s, acc, color=c)
            p.points(s, acc, color=c, r=3.5, label=r["name"],
                     titles=[f"{r['name']} at sparsity {a:g}: accuracy {b:.4f}" for a, b in r["sweep"]])
        p.rule(r["accuracy"] - results["tolerance"], color=c, title=f"{r['name']}: accuracy − tolerance")
    out.append(p.svg())
    return plots(*out)


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else esc(str(v))


def verdict(results: dict) -> list[str]:
    names = {"kurtosis_of_kurtoses": "K² (kurtosis of kurtoses)", "p_star": "p*", "safe_amount": "the safe amount"}
    return [f"Spearman correlation of measured prunability with {names.get(k, k)}: "
            + ("undefined (a constant column)" if v["spearman"] is None else
               f"ρ = {v['spearman']:.2f}" + (f", p = {v['p_value']:.3g}" if v["p_value"] is not None else ""))
            + f" over {len(results['parents'])} parents" for k, v in results["correlations"].items()]


def write_kurtosis_report(results: dict, path: str | Path) -> Path:
    """A self-contained HTML page: correlations, per-parent table, inline figures."""
    results = as_stored(results)
    corr = [[esc(k), _fmt(v["spearman"]), _fmt(v["p_value"])] for k, v in results["correlations"].items()]
    rows = [[esc(r["name"]), f"<code>{esc(json.dumps(r['model'], sort_keys=True))}</code>", r["seed"],
             _fmt(r["accuracy"]), _fmt(r["kurtosis_of_kurtoses"]), _fmt(r["p_star"]), _fmt(r["safe_amount"]),
             f"<b>{_fmt(r['measured_prunability'])}</b>"] for r in results["parents"]]
    intro = ("<p>Does weight kurtosis (Mason-Williams &amp; Dahlqvist, ICLR 2024) predict prunability? Measured "
             "prunability: the largest swept sparsity whose fine-tuned accuracy stays within the tolerance "
             f"({results['tolerance']:g}) of the parent's.</p>")
    sections = ["<h2>Correlations</h2>", table(["statistic", "Spearman ρ", "p-value"], corr),
                "<h2>Every parent</h2>",
                table(["parent", "model", "seed", "test acc", "K²", "p*", "safe", "measured prunability"], rows),
                plot_kurtosis(results)]
    return write_page(path, page(results, f"Kurtosis study: <code>{esc(results['study'])}</code>", verdict(results),
                                 sections, [results["note"]] if results.get("note") else [], intro))
