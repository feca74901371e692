"""The self-contained HTML report of a ``moonshine`` study: Pareto plot and tables."""
from __future__ import annotations

from pathlib import Path

from compresslab.report import svg
from compresslab.report.page import as_stored, esc, page, plots, table, write_page
from compresslab.report.svg import COLORS

MODE_STYLE = {"scratch": ("circle", svg.series_color(1)), "at": ("square", svg.series_color(2)),
              "at+kd": ("triangle", svg.series_color(3)), "teacher": ("star", COLORS["parent"])}


def plot_pareto(results: dict) -> str:
    """Params (log) against test error, one series per training mode, the frontier dashed."""
    p = svg.Plot("Parameters against error", "parameters (log scale)", f"{results['split']} error (%)", width=760,
                 height=380, xscale="log")
    rows = [results["teacher"], *results["students"]]
    front = sorted((r for r in results["students"] if r.get("pareto")), key=lambda r: r["cost"]["params"])
    if front:
        p.line([r["cost"]["params"] for r in front], [100 * r["error"] for r in front], color="#555", dash=True,
               width=1.2, label="Pareto frontier")
    for mode, (shape, color) in MODE_STYLE.items():
        pts = [r for r in rows if r.get("mode") == mode]
        if pts:
            p.points([r["cost"]["params"] for r in pts], [100 * r["error"] for r in pts], shape=shape, color=color,
                     r=7 if mode == "teacher" else 5, label=mode,
                     labels=[r.get("block", r["name"]) for r in pts] if mode != "teacher" else None,
                     titles=[f"{r['name']}: {r['cost']['params']:,} params, error {100 * r['error']:.2f}%"
                             + (", on the frontier" if r.get("pareto") else "") for r in pts])
    return plots(p.svg())


def _row(r: dict) -> list[str]:
    c, f = r["cost"], r["function"]
    lat = (c.get("latency_ms") or {}).get("batch256")
    return [esc(r["block"]), esc(r["mode"]), f"{c['params']:,}", f"{c['macs']:,}", "–" if lat is None else f"{lat:.2f}",
            f"{100 * r['error']:.2f}", "★" if r.get("pareto") else "", f"{100 * f['agreement']:.2f}",
            f"{f['js_divergence']:.4f}", f"{f['activation_distance']:.4f}"]


def verdict(results: dict) -> list[str]:
    t = results["teacher"]
    front = sorted((r for r in results["students"] if r.get("pareto")), key=lambda r: r["cost"]["params"])
    return [f"Teacher: {t['cost']['params']:,} params, error {100 * t['error']:.2f}%.",
            "On the params/error Pareto frontier: " + ", ".join(
                f"{r['name']} ({r['cost']['params']:,} params, {100 * r['error']:.2f}%)" for r in front) + "."]


def write_moonshine_report(results: dict, path: str | Path) -> Path:
    results = as_stored(results)
    spec = results.get("moonshine_spec") or results["spec"]  # a linear-substitution study runs a Moonshine one
    rows = [_row(results["teacher"]), *[_row(r) for r in sorted(results["students"], key=lambda r: r["cost"]["params"])]]
    fitted = [[esc(f["block"]), esc(f["kind"]), f"{f['budget']:,}", esc(str(f["hp"])), f"{f['params']:,}"]
              for f in results.get("substitutes", [])]
    intro = ("<p>Every 3x3 convolution of the teacher's residual blocks replaced by a cheap block; same recipe. Modes: "
             f"scratch = CE only; at = CE + attention transfer (β = {spec['beta']:g} on {', '.join(spec['at_points'])}); "
             f"at+kd adds Hinton KD (α = {spec['kd']['alpha']:g}, T = {spec['kd']['temperature']:g}).</p>")
    sections = [
        "<h2>Parameters against error</h2>", plot_pareto(results),
        "<h2>Every student</h2>",
        f"<p>{esc(results['split'])} split. Latency: batch 256, measured side by side in one process. ★ = on the "
        "params/error Pareto frontier. Agreement, JS and activation distance compare each student's outputs with the "
        "teacher's.</p>",
        table(["block", "mode", "params", "MACs", "ms @256", "error (%)", "Pareto", "agree (%)", "JS", "act. dist"],
              rows),
    ]
    if fitted:
        sections += ["<h2>Structured pointwise substitutes fitted to the budgets</h2>",
                     table(["block", "kind", "budget", "setting", "params"], fitted)]
    title = f"Moonshine: cheap-convolution students of <code>{esc(spec['teacher']['name'])}</code>"
    return write_page(path, page(results, title, verdict(results), sections, results["data"].get("notes") or [], intro))
