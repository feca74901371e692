"""The kurtosis study's report: correlations, one row per parent, and the figure."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from compresslab.report.html import write_page


def plot_kurtosis(results: dict) -> str:
    """Three panels as a ``data:`` PNG URI: measured prunability vs K², vs safe amount
    (with y = x), and test accuracy against sparsity per parent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["parents"]
    y = [r["measured_prunability"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in ((axes[0], "kurtosis_of_kurtoses", "K² (kurtosis of kurtoses)"),
                           (axes[1], "safe_amount", "safe amount (from weights)")):
        x = [r[key] for r in rows]
        ax.scatter(x, y)
        for xi, yi, r in zip(x, y, rows):
            ax.annotate(r["name"], (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
        c = results["correlations"][key]["spearman"]
        ax.set_title(f"Spearman ρ = {c:.2f}" if c is not None else "Spearman ρ undefined", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel("measured prunability")
    k2 = [r["kurtosis_of_kurtoses"] for r in rows]
    if min(k2) > 0 and max(k2) > 10 * min(k2):
        axes[0].set_xscale("log")
    axes[0].set_ylim(-0.03, 1.03)
    axes[1].set_ylim(-0.03, 1.03)
    axes[1].plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8, label="y = x")
    axes[1].legend(fontsize=7)
    for i, r in enumerate(rows):
        s, acc = zip(*r["sweep"]) if r["sweep"] else ((), ())
        axes[2].plot(s, acc, marker="o", ms=3, color=f"C{i % 10}", label=r["name"])
        axes[2].axhline(r["accuracy"] - results["tolerance"], color=f"C{i % 10}", ls=":", lw=0.6)
    axes[2].set_xlabel("sparsity")
    axes[2].set_ylabel("test accuracy after fine-tuning")
    axes[2].set_title("dotted: parent accuracy − tolerance", fontsize=9)
    axes[2].legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else html.escape(str(v))


def write_kurtosis_report(results: dict, path: str | Path) -> Path:
    """A small self-contained HTML page: correlations, per-parent table, inline figure."""
    path = Path(path)
    corr = "".join(f"<tr><td>{k}</td><td>{_fmt(v['spearman'])}</td><td>{_fmt(v['p_value'])}</td></tr>"
                   for k, v in results["correlations"].items())
    rows = "".join(
        f"<tr><td>{html.escape(r['name'])}</td><td>{html.escape(json.dumps(r['model'], sort_keys=True))}</td>"
        f"<td>{r['seed']}</td><td>{_fmt(r['accuracy'])}</td><td>{_fmt(r['kurtosis_of_kurtoses'])}</td>"
        f"<td>{_fmt(r['p_star'])}</td><td>{_fmt(r['safe_amount'])}</td>"
        f"<td><b>{_fmt(r['measured_prunability'])}</b></td></tr>" for r in results["parents"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(results['study'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Kurtosis study: {html.escape(results['study'])}</h1>
<p>Does weight kurtosis (Mason-Williams &amp; Dahlqvist, ICLR 2024) predict prunability?
Tolerance: {results['tolerance']:g} accuracy. {html.escape(results['note'])}</p>
<table><tr><th>statistic</th><th>Spearman ρ</th><th>p-value</th></tr>{corr}</table>
<table><tr><th>parent</th><th>model</th><th>seed</th><th>test acc</th><th>K²</th><th>p*</th><th>safe</th>
<th>measured prunability</th></tr>{rows}</table>
<img alt="prunability figure" src="{plot_kurtosis(results)}">
</body></html>
"""
    return write_page(path, page)
