"""The self-contained HTML report of a ``kd-functional`` study's ``results.json``."""
from __future__ import annotations

import html
from pathlib import Path

from compresslab.report.html import _png, inheritance_section, write_page

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


def plot_strips(results: dict, metrics: list[str]) -> str:
    """One panel per metric: a dot per seed, the mean and its 95% CI per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(results["summaries"])
    groups = {c: [m for m in results["models"] if m.get("condition") == c] for c in conditions}
    retrained = [m for m in results["models"] if m["role"] == "other-teacher" and m["name"].startswith("teacher-seed")]
    if retrained:
        groups["teacher retrained"] = retrained
    names = list(groups)
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for i, name in enumerate(names):
            vals = [m[metric] for m in groups[name] if m.get(metric) is not None]
            if not vals:
                continue
            color = "0.55" if name == "teacher retrained" else f"C{i % 10}"
            jitter = [i + 0.08 * ((k % 5) - 2) for k in range(len(vals))]
            ax.scatter(jitter, vals, s=14, color=color, alpha=0.8, zorder=3)
            s = {**results["summaries"], **results["reference_groups"]}.get(name, {}).get(metric)
            if s:
                ax.errorbar([i + 0.3], [s["mean"]], yerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]],
                            fmt="_", color="k", capsize=3, lw=1, zorder=4)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        arrow = " (lower = closer)" if metric in LOWER_IS_CLOSER else ""
        ax.set_title(LABELS.get(metric, metric) + arrow, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def plot_pairwise(results: dict) -> str:
    """Disagreement between every pair of models (teacher, other teachers, students)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pw = results["pairwise"]
    m = np.asarray(pw["disagreement"]) * 100
    n = len(pw["names"])
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.28 * n), min(10, 1.6 + 0.25 * n)))
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(pw["names"], rotation=90, fontsize=6)
    ax.set_yticklabels(pw["names"], fontsize=6)
    fig.colorbar(im, ax=ax, label="disagreement (%)")
    fig.tight_layout()
    return _png(fig)


def plot_sweeps(results: dict) -> str | None:
    """Per swept axis, agreement with the teacher, JS and accuracy against the axis value, one
    line per condition (mean and 95% CI), the control's band (at the study's own settings)
    shaded; widths on the student/teacher parameter ratio (log x) with the fitted line."""
    sweeps = results.get("sweeps") or {}
    if not sweeps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = ("agreement", "js_divergence", "accuracy")
    fig, axes = plt.subplots(len(sweeps), len(metrics), figsize=(4.4 * len(metrics), 3.2 * len(sweeps)),
                             squeeze=False)
    for row, (axis, sw) in zip(axes, sweeps.items()):
        widths = axis == "student_widths"
        for ax, metric in zip(row, metrics):
            for i, (cond, line) in enumerate(sw["series"].items()):
                xs = [pt["param_ratio"] if widths else pt["value"] for pt in line] if not widths or all(
                    "param_ratio" in pt for pt in line) else list(range(len(line)))
                ys = [pt[metric]["mean"] for pt in line]
                err = [[pt[metric]["mean"] - pt[metric]["ci_low"] for pt in line],
                       [pt[metric]["ci_high"] - pt[metric]["mean"] for pt in line]]
                ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, color=f"C{i % 10}", label=cond)
                fit = (sw.get("fits") or {}).get(cond)
                if fit and metric == "agreement":
                    grid = np.linspace(min(xs), max(xs), 50)
                    ax.plot(grid, fit["intercept"] + fit["slope"] * np.log10(grid), ls=":", color=f"C{i % 10}")
            band = None if widths else (sw.get("band") or {}).get(metric)  # the band holds at the base width only
            if band:
                ax.axhspan(band["ci_low"], band["ci_high"], color="0.6", alpha=0.25,
                           label=f"{sw['band_condition']} (base)")
            if widths:
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("student / teacher params" if widths else axis)
            ax.set_title(f"{LABELS.get(metric, metric)} vs {axis.replace('_', ' ')}", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _transfer_sections(results: dict) -> str:
    """The correctness split, the asymmetry tests and the sweep figure (empty for results
    written before they existed)."""
    if not results.get("correctness"):
        return ""
    control = results.get("control") or "–"
    fig = plot_sweeps(results)
    sweep = ""
    if fig:
        e = html.escape
        fits = "".join(f"<li>{e(c)}: agreement = {f['intercept']:.3f} + {f['slope']:.3f} · log10(params ratio)"
                       + (f", r = {f['r']:.2f}" if f["r"] is not None else "") + "</li>"
                       for sw in results["sweeps"].values() for c, f in (sw.get("fits") or {}).items())
        rows = "".join(
            f"<tr><td>{e(axis)}</td><td>{e(c)}</td>" + "".join(
                f"<td>{_num(t[m]['rho'], 2)} <small>p={_num(t[m]['p'], 3)}</small></td>" for m in ("accuracy", "agreement"))
            + "</tr>" for axis, sw in results["sweeps"].items() for c, t in sw.get("trends", {}).items())
        sweep = (f"<h2>Sweeps</h2><p>Each point: mean [95% CI] over seeds; the shaded band is the "
                 f"<code>{e(control)}</code> students at the study's own settings. Trend: Spearman's rank "
                 "correlation of every student's value with the axis (widths: parameter count), two-sided p.</p>"
                 f"<img alt='sweeps' src='{fig}'>" + (f"<ul>{fits}</ul>" if fits else "")
                 + f"<table><tr><th>axis</th><th>condition</th><th>accuracy trend</th><th>agreement trend</th></tr>"
                 f"{rows}</table>")
    return inheritance_section(results["correctness"], results.get("asymmetry", {}), control, "teacher") + sweep


def render_kd(results: dict) -> str:
    e = html.escape
    spec = results["spec"]
    tested = spec["metrics"]
    shown = ["accuracy", *[m for m in LABELS if m != "accuracy" and any(
        (s or {}).get(m) for s in results["summaries"].values())]]
    head = "".join(f"<th>{e(LABELS.get(m, m))}</th>" for m in shown)

    def row(name: str, summ: dict) -> str:
        cells = [_ci(summ.get(m), pct=m in ("accuracy", "agreement", "adversarial_transfer")) for m in shown]
        n = next((s["n"] for s in summ.values() if s), 0)
        return f"<tr><td>{e(name)}</td><td>{n}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    table = "".join(row(c, s) for c, s in results["summaries"].items())
    table += "".join(row(f"({c})", s) for c, s in results["reference_groups"].items())
    verdicts = "".join(f"<li class='{'sig' if t['significant'] else 'ns'}'>{e(t['verdict'])}</li>"
                       for t in results["tests"]) or "<li>no tests (see notes)</li>"
    headline = "".join(f"<li><b>{e(h)}</b></li>" for h in results["headline"])
    effects = "".join(
        f"<tr><td>{e(c)}</td><td>{100 * f['mean_a']:.2f}</td><td>{100 * f['mean_b']:.2f}</td>"
        f"<td>{100 * f['diff']:+.2f} <small>[{100 * f['ci_low']:+.2f}, {100 * f['ci_high']:+.2f}]</small></td>"
        f"<td>{f['p']:.3g}</td><td>{_num(f['cohens_d'], 2)}</td></tr>"
        for c, f in results["accuracy_effects"].items())
    same_seed = "".join(
        f"<tr><td>{e(c)}</td><td>{100 * v['same_seed']:.2f}</td><td>{100 * v['other_seeds']:.2f}</td>"
        f"<td>{100 * v['with_teacher']:.2f}</td></tr>" for c, v in results.get("same_seed", {}).items())
    within = "".join(f"<tr><td>{e(c)}</td><td>{100 * w['agreement']:.2f}</td><td>{w['js_divergence']:.4f}</td></tr>"
                     for c, w in results["within_condition"].items())
    t = results["teacher"]
    models = "".join(
        f"<tr><td>{e(m['name'])}</td><td>{e(m.get('condition') or m['role'])}</td><td>{100 * m['accuracy']:.2f}</td>"
        + "".join(f"<td>{_num(m.get(k), 4)}</td>" for k in ("agreement", "js_divergence", "activation_distance",
                                                           "output_cosine", "cka", "cka_biased", "adversarial_transfer"))
        + "</tr>" for m in results["models"])
    notes = "".join(f"<li>{e(n)}</li>" for n in [*results["notes"], *results["data"]["notes"]]) or "<li>none</li>"
    adv = spec.get("adversarial")
    adv_text = (f"{adv['attack'].upper()} with ε = {adv['eps']:g}" + (f", {adv['steps']} steps" if adv["attack"] == "pgd" else "")
                if adv else "off")
    strip_metrics = ["accuracy", *tested]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>compresslab: {e(results['study'])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} th {{ background: #f3f3f3; }}
li.sig {{ color: #0a5d00; }} li.ns {{ color: #555; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>KD, the functional perspective: <code>{e(results['study'])}</code></h1>
<p>Teacher <code>{e(spec['teacher']['name'])} {e(str(spec['teacher']['options']))}</code>
(test accuracy {100 * t['accuracy']:.2f}%), student <code>{e(spec['student']['name'])}
{e(str(spec['student']['options']))}</code>; loss {e(str(spec['loss']))}, T = {spec['temperature']:g};
{len(spec['seeds'])} student seeds per condition. Data <code>{e(results['data']['name'])}</code>, metrics on the
<b>{e(results['split'])}</b> split ({results['data']['sizes'][results['split']]} examples).
Every similarity compares a student with the <i>reference teacher</i>. Adversarial examples: {e(adv_text)},
crafted on the teacher.</p>
<h2>Answer</h2><ul>{headline or '<li>no tests</li>'}</ul>
<h2>Per condition: mean [95% bootstrap CI] over seeds</h2>
<p>Agreement, accuracy and adversarial transfer in %. Lower JS, activation distance and KL mean closer to the
teacher; higher for the rest. "(teacher retrained)" is the teacher's own architecture from other seeds:
how similar two independently trained teachers are.</p>
<table><tr><th>condition</th><th>n</th>{head}</tr>{table}</table>
<img alt="strip plots per metric" src="{plot_strips(results, strip_metrics)}">
<h2>Verdicts</h2>
<p>Each line tests whether students of the <code>teacher</code> condition are closer to the teacher than those of
another condition (one-sided Welch t-test, Holm-adjusted over all {len(results['tests'])} tests; the exact
permutation test and Cohen's d alongside).</p>
<ul>{verdicts}</ul>
<h2>Accuracy effect of each teacher kind against independent training</h2>
<table><tr><th>condition</th><th>acc (%)</th><th>independent (%)</th><th>difference [95% CI]</th>
<th>p (two-sided Welch)</th><th>Cohen's d</th></tr>{effects}</table>
<h2>How consistent are the students of one condition with each other?</h2>
<table><tr><th>condition</th><th>mean pairwise agreement (%)</th><th>mean pairwise JS</th></tr>{within}</table>
<h2>Teacher or seed: which shapes a student more?</h2>
<p>Mean agreement of each condition's students with the CE-only (independent) student of the <i>same</i> seed
(same initialisation and batch order, no teacher), with independent students of other seeds, and with the
teacher. If the first column beats the last, the student's own seed shaped its function more than its teacher.</p>
<table><tr><th>condition</th><th>with independent, same seed (%)</th><th>with independent, other seeds (%)</th>
<th>with the teacher (%)</th></tr>{same_seed}</table>
{_transfer_sections(results)}
<img alt="pairwise disagreement" src="{plot_pairwise(results)}">
<details><summary>Every model</summary>
<table><tr><th>model</th><th>condition</th><th>acc (%)</th><th>agree</th><th>JS</th><th>act. dist</th><th>cos</th>
<th>CKA</th><th>CKA biased</th><th>adv. transfer</th></tr>{models}</table></details>
<h2>Notes</h2><ul>{notes}</ul>
<p>Steps run: {len(results['steps']['ran'])}, reused from the run store: {len(results['steps']['reused'])}.
Wall time {results.get('seconds', 0):.1f} s.</p>
</body></html>
"""


def write_kd_report(results: dict, path: str | Path) -> Path:
    return write_page(path, render_kd(results))
