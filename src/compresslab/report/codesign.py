"""The HTML report of a codesign pipeline run (``compresslab codesign``)."""
from __future__ import annotations

from pathlib import Path

from compresslab.report.page import as_stored, esc, page, plots, table, write_page
from compresslab.report.svg import COLORS, Plot


def _fmt(results: dict):
    if results["score"] == "accuracy":
        return lambda v: f"{100 * v:.2f}%"
    return lambda v: f"{v:.4f}"


def plot_pipeline(results: dict) -> str:
    """Metric against BOPs (log): every search trial, the search front, every local-search
    child, its front, the baseline and the winner."""
    fmt, rows = _fmt(results), results["local"]["rows"]
    unit = "" if results["score"] == "accuracy" else " (px)"
    p = Plot("Both stages against the baseline", "BOPs per example", f"{results['score']}{unit}, {results['split']}",
             xscale="log")
    front = results["search"]["front"]
    metric = results["search"]["objectives"][0]
    p.points([r["bops"] for r in front], [r["test"] for r in front], color=COLORS["control"],
             titles=[f"search trial {r['trial']}: {fmt(r['test'])} (test), {r['bops']:.3g} BOPs" for r in front],
             label=f"global search front (by {metric} on val)")
    kids = [r for r in rows if r["name"] != "candidate"]
    p.points([r["bops"] for r in kids], [r["metric"] for r in kids], color=COLORS["child"], hollow=[True] * len(kids),
             titles=[f"{r['name']} of candidate {r['candidate']}: {fmt(r['metric'])}, {r['bops']:.3g} BOPs" for r in kids],
             label="local search (QAT, pruning)")
    f2 = [rows[i] for i in results["local"]["front2"]]
    p.line([r["bops"] for r in f2], [r["metric"] for r in f2], color=COLORS["close"], label="final front")
    b, w = results["baseline"], results["winner"]
    p.points([b["bops"]], [b["metric"]], color=COLORS["far"], shape="star",
             titles=[f"baseline: {fmt(b['metric'])}, {b['bops']:.3g} BOPs"], label="baseline")
    p.points([w["bops"]], [w["metric"]], color=COLORS["close"], shape="square",
             titles=[f"winner {w['label']}: {fmt(w['metric'])}, {w['bops']:.3g} BOPs"], label="winner")
    return p.svg()


def render_codesign(results: dict) -> str:
    results = as_stored(results)
    fmt, rows = _fmt(results), results["local"]["rows"]
    front2 = set(results["local"]["front2"])
    table_rows = [["baseline", "–", esc(Path(results["baseline"]["checkpoint"]).name), fmt(results["baseline"]["metric"]),
                   f"{results['baseline']['bops']:.3g}", f"{results['baseline']['params']:,}", "1"]]
    for r in sorted(rows, key=lambda r: r["bops"]):
        star = " ★" if r["checkpoint"] == results["winner"]["checkpoint"] else ""
        table_rows.append([esc(r["name"]) + star, str(r["candidate"]), esc(Path(r["checkpoint"]).name), fmt(r["metric"]),
                           f"{r['bops']:.3g}", f"{r['nonzero_params']:,}",
                           f"{results['baseline']['bops'] / r['bops']:,.0f}" if r["bops"] else "–"])
    on_front = [rows[i]["checkpoint"] for i in front2]
    sections = [
        "<h2>BOPs against quality</h2>",
        f"<p>Grey: the global search's Pareto front (its models chosen on the validation split, shown on "
        f"{esc(results['split'])}). Hollow: every QAT and pruning child of the top front members; the line is the final "
        "front. Star: the hand-designed baseline; square: the winner (fewest BOPs at least as good as the baseline, "
        "else the best model).</p>",
        plots(plot_pipeline(results)),
        "<h2>Every model of the local search</h2>",
        table(["model", "candidate", "step", results["score"], "BOPs", "nonzero params", "BOPs reduction vs baseline"],
              table_rows, caption=f"{sum(1 for r in rows if r['checkpoint'] in on_front)} on the final front; ★ the winner."),
    ]
    if "pseudo_voigt" in results:
        pv = results["pseudo_voigt"]
        sections += ["<h2>The classical method</h2>", table(
            ["method", "mean centre error (px)", "median (px)", "seconds per patch", "patches"],
            [["pseudo-Voigt least squares (scipy)", fmt(pv["centre_error_px"]), fmt(pv["median_error_px"]),
              f"{pv['seconds_per_patch']:.2e}", str(pv["n"])],
             [esc(results["winner"]["label"]), fmt(results["winner"]["metric"]), "–",
              f"{results['winner_seconds_per_example']:.2e}", "batch 256"]])]
    if "error" in results.get("hls4ml", {}):
        sections += ["<h2>hls4ml export of the winner</h2>", f"<p>Failed: {esc(results['hls4ml']['error'])}</p>"]
    elif "hls4ml" in results:
        h = results["hls4ml"]
        sections += ["<h2>hls4ml export of the winner</h2>", table(
            ["key", "value"], [["project", f"<code>{esc(h['hls4ml'])}</code>"], ["precision", esc(h["precision"])],
                               ["C simulation compile", f"{h['compile_seconds']:.1f} s"],
                               ["test examples compared", str(h["examples"])],
                               *[[esc(k), esc(f"{v:.4g}")] for k, v in h["parity"].items()],
                               ["resources, latency", esc(h["estimates_note"])]])]
    title = f"Codesign: <code>{esc(results['study'])}</code> on <code>{esc(results['data'])}</code>"
    return page(results, title, results["verdict"], sections)


def write_codesign_report(results: dict, path: str | Path) -> Path:
    return write_page(path, render_codesign(results))
