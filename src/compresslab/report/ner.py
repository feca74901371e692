"""The HTML report of a ``ner-distill`` study: entity F1 of teacher and students per seed,
cost against F1, F1 per entity type, agreement with the teacher, and the tests."""
from __future__ import annotations

from pathlib import Path

from compresslab.report.page import as_stored, esc, page, plots, table, write_page
from compresslab.report.svg import Plot, series_color

LABEL = {"teacher": "teacher", "student-ce": "student (CE)", "student-kd": "student (KD)"}


def _ci(s: dict | None) -> str:
    if not s:
        return "–"
    return f"{100 * s['mean']:.2f} [{100 * s['ci_low']:.2f}, {100 * s['ci_high']:.2f}]"


def f1_plot(roles: list[dict]) -> str:
    """Micro entity F1 per seed (points) with the mean's 95% CI (bars), one column per model."""
    p = Plot("entity F1 per seed (micro)", "", "entity F1 (%)", width=420, height=300,
             xticks=[(i, LABEL.get(r["role"], r["role"])) for i, r in enumerate(roles)])
    for i, r in enumerate(roles):
        vals = [100 * v for v in r["f1"]["values"]]
        p.points([i] * len(vals), vals, color=series_color(i),
                 titles=[f"{LABEL.get(r['role'], r['role'])}, seed {k}: {v:.2f}%" for k, v in enumerate(vals)])
        p.errorbars([i + 0.12], [100 * r["f1"]["ci_low"]], [100 * r["f1"]["ci_high"]], color=series_color(i))
    p._keep([-0.5, len(roles) - 0.5])
    return p.svg()


def cost_plot(roles: list[dict]) -> str:
    """Mean entity F1 against parameters (log scale)."""
    p = Plot("entity F1 against size", "parameters", "entity F1 (%)", width=420, height=300, xscale="log")
    for i, r in enumerate(roles):
        name = LABEL.get(r["role"], r["role"])
        p.points([r["params"]], [100 * r["f1"]["mean"]], color=series_color(i), label=name,
                 titles=[f"{name}: {r['params']:,} params, F1 {100 * r['f1']['mean']:.2f}%"])
    return p.svg()


def write_ner_report(results: dict, path: str | Path) -> Path:
    results = as_stored(results)
    spec = results["spec"]
    roles = results["roles"]
    types = results["types"]
    rows = []
    for r in roles:
        lat = r.get("latency_ms") or {}
        rows.append([LABEL.get(r["role"], esc(r["role"])), f"{r['params']:,}",
                     f"{r['macs']:,}" if r.get("macs") else "–",
                     *(f"{v:.3f}" if (v := lat.get(f"batch{b}")) else "–" for b in (1, 64)),
                     _ci(r["f1"]), _ci(r["macro_f1"]),
                     _ci(r["token_accuracy"]), _ci(r["agreement"])])
    sections = ["<h2>Entity F1 and size</h2>", plots(f1_plot(roles), cost_plot(roles)),
                table(["model", "params", f"MACs (L = {results['sequence_length']})",
                       "ms batch 1", "ms batch 64", "micro F1 %", "macro F1 %",
                       "token acc %", "agreement %"], rows,
                      caption=f"mean [95% CI] over seeds; ms: first seed, {results.get('latency_threads', 1)} "
                              "CPU thread")]
    sections += ["<h2>F1 per entity type</h2>",
                 table(["model", *[esc(t) for t in types]],
                       [[LABEL.get(r["role"], esc(r["role"])), *(_ci(r["per_type"].get(t)) for t in types)]
                        for r in roles], caption="entity F1 % by exact span, mean [95% CI] over seeds")]
    if results["tests"]:
        sections += ["<h2>Tests on micro F1</h2>",
                     table(["a", "b", "alternative", "Δ F1 (points)", "t", "p (Welch)", "significant"],
                           [[LABEL.get(t["a"]), LABEL.get(t["b"]), esc(t["alternative"]), f"{100 * t['diff']:+.2f}",
                             "–" if t["t"] is None else f"{t['t']:.2f}", f"{t['p']:.3g}",
                             "yes" if t["significant"] else "no"] for t in results["tests"]])]
    sections += ["<h2>Every model</h2>",
                 table(["model", "seed", "precision %", "recall %", "micro F1 %", "macro F1 %", "token acc %",
                        "agreement %"],
                       [[esc(m["name"]), str(m["seed"]), f"{100 * m['micro']['precision']:.2f}",
                         f"{100 * m['micro']['recall']:.2f}", f"{100 * m['micro']['f1']:.2f}",
                         f"{100 * m['macro']['f1']:.2f}", f"{100 * m['token_accuracy']:.2f}",
                         "–" if m["agreement"] is None else f"{100 * m['agreement']:.2f}"] for m in results["models"]])]
    arch = {r["role"]: f"<code>{esc(r['model']['name'])}</code> <small>{esc(r['model']['options'])}</small>"
            for r in roles}
    intro = (f"<p>A teacher tagger ({arch.get('teacher', '–')}) and a smaller student "
             f"({arch.get('student-ce', arch.get('student-kd', '–'))}) on <code>{esc(spec['data'])}</code>: the "
             "student fine-tuned "
             f"on the gold tags alone (CE), and distilled from the teacher of the same seed with "
             f"{1 - spec['alpha']:g}·CE + {spec['alpha']:g}·KD per token (T = {spec['temperature']:g}), after "
             "Atuhurra et al. 2024. Entity scores are exact-span matches as seqeval's default mode; positions "
             f"labelled -100 never count. {len(spec['seeds'])} seeds; latency is measured side by side when the "
             "results are collected.</p>")
    return write_page(path, page(results, "NER: student against teacher", results["claims"], sections,
                                 results["data"].get("notes") or [], intro))
