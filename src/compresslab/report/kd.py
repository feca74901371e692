"""The self-contained HTML report of a ``kd-functional`` study's ``results.json``."""
from __future__ import annotations

import math
from pathlib import Path

from compresslab.report import svg
from compresslab.report.html import inheritance_section
from compresslab.report.page import as_stored, bullets, esc, page, plots, table, write_page
from compresslab.report.svg import COLORS

LABELS = {"accuracy": "accuracy", "agreement": "agreement", "kappa": "kappa", "js_divergence": "JS (nats)",
          "activation_distance": "act. distance", "output_cosine": "output cos", "kl": "KL(t‖s)",
          "cka": "CKA (unbiased)", "cka_biased": "CKA (biased)", "adversarial_transfer": "adv. transfer"}
LOWER_IS_CLOSER = {"js_divergence", "activation_distance", "kl"}


def _num(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _ci(s: dict | None, pct: bool = False) -> str:
    if not s:
        return "–"
    k = 100 if pct else 1
    d = 1 if pct else 3
    return f"{k * s['mean']:.{d}f} <small>[{k * s['ci_low']:.{d}f}, {k * s['ci_high']:.{d}f}]</small>"


def _color(name: str, i: int) -> str:
    """Reference groups (a teacher retrained) grey, conditions a colour each."""
    return COLORS["control"] if name.startswith("teacher ") else svg.series_color(i)


def plot_strips(results: dict, metrics: list[str]) -> str:
    """One panel per metric: a dot per seed, the mean and its 95% CI per condition; the
    teacher retrained (how close an independent teacher is) shaded across the panel."""
    conditions = list(results["summaries"])
    groups = {c: [m for m in results["models"] if m.get("condition") == c] for c in conditions}
    retrained = [m for m in results["models"] if m["role"] == "other-teacher" and m["name"].startswith("teacher-seed")]
    if retrained:
        groups["teacher retrained"] = retrained
    names = list(groups)
    summaries = {**results["summaries"], **results["reference_groups"]}
    ticks = [(i, n) for i, n in enumerate(names)]
    out = []
    for metric in metrics:
        arrow = " (lower = closer)" if metric in LOWER_IS_CLOSER else ""
        p = svg.Plot(LABELS.get(metric, metric) + arrow, "", LABELS.get(metric, metric), width=360, height=300,
                     xticks=ticks)
        ref = (summaries.get("teacher retrained") or {}).get(metric)
        if ref:
            p.band(ref["ci_low"], ref["ci_high"], title=f"teacher retrained: {ref['mean']:.4g} "
                   f"[{ref['ci_low']:.4g}, {ref['ci_high']:.4g}]")
        for i, name in enumerate(names):
            ms = [m for m in groups[name] if m.get(metric) is not None]
            if not ms:
                continue
            color = _color(name, i)
            p.points([i - 0.16 + 0.08 * ((k % 5) - 2) for k in range(len(ms))], [m[metric] for m in ms], r=3.5,
                     color=color, titles=[f"{m['name']} ({name}): {m[metric]:.4g}" for m in ms])
            s = summaries.get(name, {}).get(metric)
            if s:
                p.errorbars([i + 0.22], [s["ci_low"]], [s["ci_high"]], color="#222")
                p.points([i + 0.22], [s["mean"]], shape="square", r=3, color="#222",
                         titles=[f"{name}: mean {s['mean']:.4g} [{s['ci_low']:.4g}, {s['ci_high']:.4g}], n = {s['n']}"])
        out.append(p.svg())
    return plots(*out)


def plot_pairwise(results: dict) -> str:
    """Disagreement between every pair of models (teacher, other teachers, students)."""
    pw = results["pairwise"]
    m = [[100 * v for v in row] for row in pw["disagreement"]]
    return svg.heatmap(pw["names"], m, title="Disagreement between every pair of models", unit="%")


def plot_sweeps(results: dict) -> str | None:
    """Per swept axis, agreement with the teacher, JS and accuracy against the axis value, one
    line per condition (mean and 95% CI), the control's band (at the study's own settings)
    shaded; widths on the student/teacher parameter ratio (log x) with the fitted line."""
    sweeps = results.get("sweeps") or {}
    if not sweeps:
        return None
    metrics = ("agreement", "js_divergence", "accuracy")
    out = []
    for axis, sw in sweeps.items():
        widths = axis == "student_widths"
        by_ratio = widths and all("param_ratio" in pt for line in sw["series"].values() for pt in line)
        for metric in metrics:
            p = svg.Plot(f"{LABELS.get(metric, metric)} vs {axis.replace('_', ' ')}",
                         "student / teacher params" if widths else axis, LABELS.get(metric, metric),
                         width=360, height=290, xscale="log" if by_ratio else "linear")
            band = None if widths else (sw.get("band") or {}).get(metric)  # the band holds at the base width only
            if band:
                p.band(band["ci_low"], band["ci_high"], label=f"{sw['band_condition']} (base)",
                       title=f"{sw['band_condition']} at the study's own settings: [{band['ci_low']:.4g}, "
                             f"{band['ci_high']:.4g}]")
            for i, (cond, line) in enumerate(sw["series"].items()):
                xs = [pt["param_ratio"] if by_ratio else pt["value"] if not widths else k for k, pt in enumerate(line)]
                ys = [pt[metric]["mean"] for pt in line]
                color = svg.series_color(i)
                p.line(xs, ys, color=color)
                p.errorbars(xs, [pt[metric]["ci_low"] for pt in line], [pt[metric]["ci_high"] for pt in line],
                            color=color)
                p.points(xs, ys, color=color, label=cond, r=3.5,
                         titles=[f"{cond} at {axis} = {pt.get('value')}: {pt[metric]['mean']:.4g} "
                                 f"[{pt[metric]['ci_low']:.4g}, {pt[metric]['ci_high']:.4g}]" for pt in line])
                fit = (sw.get("fits") or {}).get(cond)
                if fit and metric == "agreement" and by_ratio and min(xs) > 0:
                    grid = [min(xs) * (max(xs) / min(xs)) ** (k / 20) for k in range(21)]
                    p.line(grid, [fit["intercept"] + fit["slope"] * math.log10(g) for g in grid], color=color,
                           dash=True, width=1, title=f"{cond}: fitted line")
            out.append(p.svg())
    return plots(*out)


def _transfer_sections(results: dict) -> str:
    """The correctness split, the asymmetry tests and the sweep figures (empty for results
    written before they existed)."""
    if not results.get("correctness"):
        return ""
    control = results.get("control") or "–"
    figs = plot_sweeps(results)
    sweep = ""
    if figs:
        fits = [f"{c}: agreement = {f['intercept']:.3f} + {f['slope']:.3f} · log10(params ratio)"
                + (f", r = {f['r']:.2f}" if f["r"] is not None else "")
                for sw in results["sweeps"].values() for c, f in (sw.get("fits") or {}).items()]
        rows = [[esc(axis), esc(c), *[f"{_num(t[m]['rho'], 2)} <small>p={_num(t[m]['p'], 3)}</small>"
                                      for m in ("accuracy", "agreement")]]
                for axis, sw in results["sweeps"].items() for c, t in sw.get("trends", {}).items()]
        sweep = ("<h2>Sweeps</h2><p>Each point: mean [95% CI] over seeds; the shaded band is the "
                 f"<code>{esc(control)}</code> students at the study's own settings; dashed: the fitted line. Trend: "
                 "Spearman's rank correlation of every student's value with the axis (widths: parameter count), "
                 "two-sided p.</p>" + figs + bullets(fits)
                 + table(["axis", "condition", "accuracy trend", "agreement trend"], rows))
    return inheritance_section(results["correctness"], results.get("asymmetry", {}), control, "teacher") + sweep


def render_kd(results: dict) -> str:
    spec = results["spec"]
    tested = spec["metrics"]
    shown = ["accuracy", *[m for m in LABELS if m != "accuracy" and any(
        (s or {}).get(m) for s in results["summaries"].values())]]

    def row(name: str, summ: dict) -> list[str]:
        n = next((s["n"] for s in summ.values() if s), 0)
        return [esc(name), str(n), *[_ci(summ.get(m), pct=m in ("accuracy", "agreement", "adversarial_transfer"))
                                     for m in shown]]

    summary = [row(c, s) for c, s in results["summaries"].items()]
    summary += [row(f"({c})", s) for c, s in results["reference_groups"].items()]
    verdicts = "".join(f"<li class='{'sig' if t['significant'] else 'ns'}'>{esc(t['verdict'])}</li>"
                       for t in results["tests"])
    effects = [[esc(c), f"{100 * f['mean_a']:.2f}", f"{100 * f['mean_b']:.2f}",
                f"{100 * f['diff']:+.2f} <small>[{100 * f['ci_low']:+.2f}, {100 * f['ci_high']:+.2f}]</small>",
                f"{f['p']:.3g}", _num(f["cohens_d"], 2)] for c, f in results["accuracy_effects"].items()]
    same_seed = [[esc(c), f"{100 * v['same_seed']:.2f}", f"{100 * v['other_seeds']:.2f}", f"{100 * v['with_teacher']:.2f}"]
                 for c, v in results.get("same_seed", {}).items()]
    within = [[esc(c), f"{100 * w['agreement']:.2f}", f"{w['js_divergence']:.4f}"]
              for c, w in results["within_condition"].items()]
    t = results["teacher"]
    model_keys = ("agreement", "js_divergence", "activation_distance", "output_cosine", "cka", "cka_biased",
                  "adversarial_transfer")
    models = [[esc(m["name"]), esc(m.get("condition") or m["role"]), f"{100 * m['accuracy']:.2f}",
               *[_num(m.get(k), 4) for k in model_keys]] for m in results["models"]]
    adv = spec.get("adversarial")
    adv_text = (f"{adv['attack'].upper()} with ε = {adv['eps']:g}" + (f", {adv['steps']} steps" if adv["attack"] == "pgd" else "")
                if adv else "off")
    intro = (f"<p>Teacher <code>{esc(spec['teacher']['name'])} {esc(str(spec['teacher']['options']))}</code> "
             f"(test accuracy {100 * t['accuracy']:.2f}%), student <code>{esc(spec['student']['name'])} "
             f"{esc(str(spec['student']['options']))}</code>; loss {esc(str(spec['loss']))}, T = {spec['temperature']:g}; "
             f"{len(spec['seeds'])} student seeds per condition. Metrics on the <b>{esc(results['split'])}</b> split "
             f"({results['data']['sizes'][results['split']]} examples). Every similarity compares a student with the "
             f"<i>reference teacher</i>. Adversarial examples: {esc(adv_text)}, crafted on the teacher.</p>")
    sections = [
        "<h2>Per condition: mean [95% bootstrap CI] over seeds</h2>",
        "<p>Agreement, accuracy and adversarial transfer in %. Lower JS, activation distance and KL mean closer to "
        "the teacher; higher for the rest. \"(teacher retrained)\" is the teacher's own architecture from other "
        "seeds: how similar two independently trained teachers are (grey, and the grey band in the plots). In the "
        "plots a dot is one student, the black square and bar the condition's mean and 95% CI.</p>",
        table(["condition", "n", *[esc(LABELS.get(m, m)) for m in shown]], summary),
        plot_strips(results, ["accuracy", *tested]),
        "<h2>Verdicts</h2>",
        "<p>Each line tests whether students of the <code>teacher</code> condition are closer to the teacher than "
        f"those of another condition (one-sided Welch t-test, Holm-adjusted over all {len(results['tests'])} tests; "
        "the exact permutation test and Cohen's d alongside). Green: significant.</p>",
        f"<ul>{verdicts}</ul>" if verdicts else "<p>No tests (see the notes).</p>",
        "<h2>Accuracy effect of each teacher kind against independent training</h2>",
        table(["condition", "acc (%)", "independent (%)", "difference [95% CI]", "p (two-sided Welch)",
               "Cohen's d"], effects),
        "<h2>How consistent are the students of one condition with each other?</h2>",
        table(["condition", "mean pairwise agreement (%)", "mean pairwise JS"], within),
        "<h2>Teacher or seed: which shapes a student more?</h2>",
        "<p>Mean agreement of each condition's students with the CE-only (independent) student of the <i>same</i> "
        "seed (same initialisation and batch order, no teacher), with independent students of other seeds, and "
        "with the teacher. If the first column beats the last, the student's own seed shaped its function more "
        "than its teacher.</p>",
        table(["condition", "with independent, same seed (%)", "with independent, other seeds (%)",
               "with the teacher (%)"], same_seed),
        _transfer_sections(results),
        "<h2>Every pair of models</h2>",
        plots(plot_pairwise(results)),
        "<details><summary>Every model</summary>"
        + table(["model", "condition", "acc (%)", "agree", "JS", "act. dist", "cos", "CKA", "CKA biased",
                 "adv. transfer"], models) + "</details>",
    ]
    return page(results, f"KD, the functional perspective: <code>{esc(results['study'])}</code>",
                results["headline"] or ["No tests (see the notes)."], sections,
                [*results["notes"], *results["data"]["notes"]], intro)


def write_kd_report(results: dict, path: str | Path) -> Path:
    results = as_stored(results)
    return write_page(path, render_kd(results))
