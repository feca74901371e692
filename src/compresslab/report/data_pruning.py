"""The HTML report of a ``data-pruning`` study: accuracy over (f, α) per score method, the
best α per f, KD against CE alone, the teacher-size sweep and agreement with the teacher."""
from __future__ import annotations

from pathlib import Path

from compresslab.report.page import as_stored, esc, page, table, write_page
from compresslab.report.svg import Plot, ramp, series_color


def _ci(s: dict) -> str:
    return f"{100 * s['mean']:.2f} [{100 * s['ci_low']:.2f}, {100 * s['ci_high']:.2f}]"


def grid(cells: list[dict], method: str) -> str:
    """Accuracy over keep fraction (rows) and α (columns) as a shaded table (dark = high)."""
    here = [c for c in cells if c["method"] == method and c["teacher"] in (None, c.get("main"))]
    fs = sorted({c["f"] for c in here})
    alphas = sorted({c["alpha"] for c in here})
    acc = {(c["f"], c["alpha"]): c["accuracy"]["mean"] for c in here}
    lo, hi = min(acc.values()), max(acc.values())
    rows = []
    for f in fs:
        row = [f"{f:g}"]
        for a in alphas:
            v = acc.get((f, a))
            if v is None:
                row.append("–")
                continue
            t = (v - lo) / ((hi - lo) or 1.0)
            fg = "#fff" if t > 0.55 else "#111"
            row.append(f'<span style="background:{ramp(t)};color:{fg};padding:2px 6px;display:inline-block">'
                       f"{100 * v:.2f}</span>")
        rows.append(row)
    return table(["f \\ α", *[f"{a:g}" for a in alphas]], rows, caption=f"{esc(method)}: test accuracy (%)")


def curves(cells: list[dict], main: str) -> str:
    """Test accuracy against keep fraction per method: CE alone (dashed) and the best α > 0 (solid)."""
    p = Plot("solid: best α > 0 (KD), dashed: α = 0 (CE alone)", "keep fraction f", "test accuracy (%)",
             width=520, height=320)
    for i, m in enumerate(dict.fromkeys(c["method"] for c in cells)):
        here = [c for c in cells if c["method"] == m and c["teacher"] in (None, main)]
        fs = sorted({c["f"] for c in here})
        for kd in (False, True):
            ys = []
            for f in fs:
                vals = [c["accuracy"]["mean"] for c in here if c["f"] == f and (c["alpha"] > 0) == kd]
                ys.append(100 * max(vals) if vals else None)
            pts = [(f, y) for f, y in zip(fs, ys) if y is not None]
            if pts:
                p.line([f for f, _ in pts], [y for _, y in pts], color=series_color(i), dash=not kd)
                p.points([f for f, _ in pts], [y for _, y in pts], color=series_color(i),
                         titles=[f"{m}, f = {f:g}, {'KD' if kd else 'CE'}: {y:.2f}%" for f, y in pts],
                         label=m if kd else None, hollow=[not kd] * len(pts))
    return p.svg()


def write_data_pruning_report(results: dict, path: str | Path) -> Path:
    results = as_stored(results)
    spec = results["spec"]
    main = results["main_teacher"]
    cells = [{**c, "main": main} for c in results["cells"]]
    methods = list(dict.fromkeys(c["method"] for c in cells))
    sections = ["<h2>Accuracy against keep fraction</h2>", curves(cells, main),
                "<h2>Accuracy over (keep fraction, α)</h2>", *[grid(cells, m) for m in methods],
                "<h2>Best α per keep fraction</h2>",
                table(["method", "f", "best α", "accuracy (%) [95% CI]"],
                      [[esc(b["method"]), f"{b['f']:g}", f"{b['alpha']:g}", _ci(b["accuracy"])]
                       for b in results["best_alpha"]])]
    if results["kd_vs_ce"]:
        sections += ["<h2>KD against cross-entropy alone</h2>",
                     table(["method", "f", "KD α", "Δ accuracy (points)", "p (Welch)", "p (Holm)", "significant"],
                           [[esc(t["method"]), f"{t['f']:g}", f"{t['alpha']:g}", f"{100 * t['diff']:+.2f}",
                             f"{t['p']:.3g}", f"{t['p_holm']:.3g}", "yes" if t["significant"] else "no"]
                            for t in results["kd_vs_ce"]])]
    sections += ["<h2>Teachers</h2>",
                 table(["teacher", "params", "test accuracy (%)"],
                       [[esc(t["teacher"]) + (" (main)" if t["teacher"] == main else ""), f"{t['params']:,}",
                         f"{100 * t['accuracy']:.2f}"] for t in results["teachers"]])]
    if results["teacher_sweep"]:
        sections += ["<h2>Teacher size at small keep fractions</h2>",
                     table(["method", "f", "α", "teacher", "accuracy (%) [95% CI]", "agreement (%)"],
                           [[esc(r["method"]), f"{r['f']:g}", f"{r['alpha']:g}", esc(r["teacher"]),
                             _ci(r["accuracy"]), f"{100 * r['agreement']['mean']:.1f}"]
                            for r in sorted(results["teacher_sweep"], key=lambda r: (r["method"], r["f"],
                                                                                     r["alpha"], r["teacher"]))])]
    sections += ["<h2>Agreement with the teacher</h2>",
                 table(["method", "f", "α", "teacher", "agreement (%) [95% CI]"],
                       [[esc(c["method"]), f"{c['f']:g}", f"{c['alpha']:g}", esc(c["teacher"] or "– (CE)"),
                         _ci(c["agreement"])] for c in cells])]
    intro = (f"<p>Students <code>{esc(spec['student']['name'])}</code> trained on the kept {esc(spec['keep'])} "
             f"examples of each score with (1-α)·CE + α·KD (T = {spec['temperature']:g}) from teachers trained on "
             "the full data (Ben-Baruch et al. 2024). Means and 95% bootstrap CIs over "
             f"{len(spec['seeds'])} seeds.</p>")
    title = "Data pruning with knowledge distillation"
    return write_page(path, page(results, title, results["claims"], sections,
                                 results["data"].get("notes") or [], intro))
