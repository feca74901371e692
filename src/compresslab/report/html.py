"""The self-contained HTML report of a plain study's ``results.json`` (kind ``study``), and
the error-inheritance section the KD and compression reports share."""
from __future__ import annotations

import html
from pathlib import Path

from compresslab.report import svg
from compresslab.report.page import BAND_LEGEND, as_stored, closeness, esc, page, plots, table, write_page
from compresslab.report.svg import COLORS

FUNCTION_COLUMNS = [("agreement", "agree"), ("kappa", "kappa"), ("js_divergence", "JS"),
                    ("activation_distance", "act. dist"), ("output_cosine", "cos"),
                    ("kl_ab", "KL(p‖c)"), ("kl_ba", "KL(c‖p)")]
SHAPES = {"parent": "star", "child": "circle", "control": "triangle"}
CLASS_TEXT = {"close": "as close as a retrain", "far": "farther than a retrain", "child": "no band to judge"}


def model_class(m: dict, band: dict | None) -> str:
    """The colour class of a model: ``parent``, ``control``, or a child's :func:`closeness`
    (its disagreement with the parent against the independent retrains' range)."""
    if m["role"] in ("parent", "control"):
        return m["role"]
    return closeness(m["function"]["disagreement"], band)


def _band(results: dict) -> dict | None:
    return (results.get("independent_baseline") or {}).get("disagreement")


def plot_cost_accuracy(results: dict) -> str:
    """Accuracy against BOPs per example (log x), a labelled point per model, coloured by class."""
    band = _band(results)
    ms = results["models"]
    p = svg.Plot("Cost against accuracy", "BOPs per example (log scale)", f"{results['split']} accuracy (%)",
                 xscale="log")
    for role in ("control", "child", "parent"):
        sub = [m for m in ms if m["role"] == role]
        if sub:
            p.points([m["cost"]["bops"] for m in sub], [100 * m["accuracy"] for m in sub],
                     titles=[f"{m['name']} ({m['role']}): {100 * m['accuracy']:.2f}% at {svg.short(m['cost']['bops'])} "
                             "BOPs" for m in sub], color=[COLORS[model_class(m, band)] for m in sub],
                     shape=SHAPES[role], r=7 if role == "parent" else 5, labels=[m["name"] for m in sub])
        p.legend(role, "#777", SHAPES[role])
    return p.svg()


def plot_disagreement(results: dict) -> str:
    """Disagreement with the parent per model, over the independent retrains' range as a band.
    A child's bar is green inside or below the band, red above it; controls grey."""
    band = _band(results)
    models = [m for m in results["models"] if m["role"] != "parent"]
    vals = [100 * m["function"]["disagreement"] for m in models]
    cls = [model_class(m, band) for m in models]
    titles = [f"{m['name']} ({m['role']}): {v:.2f}% disagreement, {CLASS_TEXT.get(c, c)}"
              for m, v, c in zip(models, vals, cls)]
    leg = [(t, c, "square") for c, t in BAND_LEGEND[1:]]
    if band:
        leg.append(("independent retrains (range)", COLORS["control"], "band"))
    return svg.hbars([m["name"] for m in models], vals, colors=[COLORS[c] for c in cls], titles=titles,
                     title="Which children still compute the parent's function?",
                     xlabel="top-1 disagreement with the parent (%)",
                     band=(100 * band["min"], 100 * band["max"]) if band else None,
                     band_title=(f"independent retrains: {100 * band['min']:.2f}–{100 * band['max']:.2f}% "
                                 f"(n = {band['n']})") if band else "",
                     mean=100 * band["mean"] if band else None, legend=leg)


def plot_prune_sweep(results: dict) -> str | None:
    """Accuracy, disagreement and parameter cosine against sparsity, one line per criterion,
    p* and the safe amount marked."""
    pruned = [m for m in results["models"] if "sparsity" in m]
    if len(pruned) < 2:
        return None
    parent = results["models"][0]
    base = _band(results)
    panels = [("accuracy", "accuracy (%)", lambda m: 100 * m["accuracy"]),
              ("disagreement", "disagreement with parent (%)", lambda m: 100 * m["function"]["disagreement"]),
              ("param_cosine", "parameter cosine to parent", lambda m: m["param_cosine"])]
    criteria = sorted({m["criterion"] for m in pruned})
    out = []
    for key, label, get in panels:
        p = svg.Plot(label, "sparsity (%)", label, width=360, height=300)
        if key == "disagreement" and base:
            p.band(100 * base["min"], 100 * base["max"], title="independent retrains (range)",
                   label="independent retrains")
        if key == "accuracy":
            p.rule(100 * parent["accuracy"], color=COLORS["parent"], title=f"parent: {100 * parent['accuracy']:.2f}%",
                   label="parent")
        for i, crit in enumerate(criteria):
            ms = sorted((m for m in pruned if m["criterion"] == crit), key=lambda m: m["sparsity"])
            xs, ys = [100 * m["sparsity"] for m in ms], [get(m) for m in ms]
            p.line(xs, ys, color=svg.series_color(i + 1))
            p.points(xs, ys, color=svg.series_color(i + 1), label=crit,
                     titles=[f"{m['name']} ({crit}, {100 * m['sparsity']:.1f}% sparse): {get(m):.4g}" for m in ms])
        for m in pruned:
            rule = (m.get("amount_rule") or {}).get("rule")
            if rule:
                p.rule(100 * m["sparsity"], axis="x", color="#222" if rule == "p_star" else COLORS["close"],
                       label="p*" if rule == "p_star" else "safe amount",
                       title=f"{m['name']}: {rule} = {100 * m['sparsity']:.1f}%")
        out.append(p.svg())
    return plots(*out)


def _fmt(v, kind: str = "") -> str:
    if v is None:
        return "–"
    if kind == "pct":
        return f"{100 * v:.2f}"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "sci":
        return f"{v:.3g}"
    return f"{v:.4f}"


def badge(cls: str, text: str | None = None) -> str:
    """A coloured dot and its meaning, for a table cell."""
    return (f'<span class="swatch" style="background:{COLORS[cls]}"></span>'
            f"{esc(text or CLASS_TEXT.get(cls, cls))}")


def verdict(results: dict) -> list[str]:
    """One line per class of child: which are as close to the parent as an independent retrain."""
    band = _band(results)
    kids = [m for m in results["models"] if m["role"] == "child"]
    if not kids:
        return ["No children to judge."]

    def names(ms):
        return ", ".join(f"{m['name']} ({100 * m['function']['disagreement']:.1f}%)" for m in ms)

    if not band:
        return [f"No independent retrain to judge by; disagreement with the parent: {names(kids)}."]
    rng = f"{100 * band['min']:.1f}–{100 * band['max']:.1f}%"
    close = [m for m in kids if model_class(m, band) == "close"]
    far = [m for m in kids if model_class(m, band) == "far"]
    lines = []
    if close:
        lines.append(f"{len(close)} of {len(kids)} children disagree with the parent no more than an independent "
                     f"retrain does ({rng}): {names(close)}.")
    if far:
        lines.append(f"Farther from the parent than an independent retrain ({rng}): {names(far)}.")
    return lines


def render(results: dict) -> str:
    band = _band(results)
    rows = []
    for m in results["models"]:
        c, f = m["cost"], m["function"]
        lat = c.get("latency_ms") or {}
        rows.append([esc(m["name"]), esc(m["role"]), esc(m["method"]),
                     badge(model_class(m, band), "" if m["role"] != "child" else None), _fmt(m["accuracy"], "pct"),
                     _fmt(c["params"], "int"), _fmt(c["nonzero_params"], "int"), _fmt(c["macs"], "int"),
                     _fmt(c["bops"], "sci"), _fmt(c["bytes"], "int"), _fmt(lat.get("batch1")),
                     _fmt(lat.get("batch256")), *[_fmt(f[k]) for k, _ in FUNCTION_COLUMNS]])
    head = ["model", "role", "method", "vs retrain", "acc (%)", "params", "nonzero", "MACs", "BOPs", "bytes",
            "ms @1", "ms @256", *[h for _, h in FUNCTION_COLUMNS]]
    base = results.get("independent_baseline") or {}
    base_rows = [[esc(k), _fmt(v["mean"]), _fmt(v["min"]), _fmt(v["max"]), v["n"]] for k, v in base.items()]
    d = results["data"]
    intro = (f"<p>Every model compared with the parent on the <b>{esc(results['split'])}</b> split "
             f"({d['sizes'].get(results['split'], '?')} examples of <code>{esc(d['name'])}</code>). The independent "
             "retrains are the parent's architecture trained from other seeds: a child counts as computing the "
             "parent's function only if it is at least as close to the parent as they are.</p>")
    sections = [
        "<h2>Which children still compute the parent's function?</h2>",
        plots(plot_disagreement(results), plot_cost_accuracy(results)),
        "<h2>Models</h2>",
        "<p>Function metrics compare each model's outputs with the parent's (agreement = same top-1 class; JS and "
        "KL in nats; act. dist = mean L2 between softmax vectors; cos = mean cosine of softmax vectors). BOPs follow "
        "m·n·((1−s)·b<sub>a</sub>·b<sub>w</sub> + b<sub>a</sub> + b<sub>w</sub> + log<sub>2</sub> n) per layer. "
        f"Latency with {results.get('num_threads', '?')} threads, every model in one process at report time.</p>",
        table(head, rows),
        "<h2>Independent-retrain baseline</h2>",
        "<p>How similar two independently trained models of the parent's architecture are (the band above).</p>",
        table(["metric", "mean", "min", "max", "n"], base_rows),
        _sweep_section(results),
    ]
    return page(results, f"Study <code>{esc(results['study'])}</code>: which children keep the parent's function?",
                verdict(results), sections, d.get("notes") or [], intro)


def _sweep_section(results: dict) -> str:
    figs = plot_prune_sweep(results)
    if figs is None:
        return ""
    rows = [[esc(m["name"]), esc(m["criterion"]), _fmt(m["sparsity"], "pct"), _fmt(m["accuracy"], "pct"),
             _fmt(m["function"]["disagreement"], "pct"), _fmt(m["param_cosine"])]
            for m in sorted((m for m in results["models"] if "sparsity" in m),
                            key=lambda m: (m["criterion"], m["sparsity"]))]
    r = next((m["amount_rule"] for m in results["models"] if "amount_rule" in m), None)
    rule_text = ""
    if r:
        rule_text = (f"<p>From the parent's weights alone: p* = {r['p_star']:.3f}, kurtosis of kurtoses "
                     f"K² = {r['kurtosis_of_kurtoses']:.3g}, safe amount = {r['safe_amount']:.3f} "
                     "(p*/ln K² if K² ≥ e, else p*/log2 K², clamped to [0, p*]).</p>")
    return ("<h2>Pruning sweep</h2><p>After fine-tuning; one line per pruning criterion.</p>" + rule_text + figs
            + table(["model", "criterion", "sparsity (%)", "acc (%)", "disagree (%)", "param cos"], rows))


def inheritance_section(correctness: dict, asymmetry: dict, control: str, reference: str) -> str:
    """Agreement with the ``reference`` (teacher, parent) split by its correctness, and the
    asymmetry tests against ``control``: "does the model copy the reference's mistakes?"."""
    e = html.escape

    def ci(s: dict | None) -> str:
        return "–" if not s else (f"{100 * s['mean']:.1f} <small>[{100 * s['ci_low']:.1f}, "
                                  f"{100 * s['ci_high']:.1f}]</small>")

    keys = ("agree_right", "agree_wrong", "other_wrong_given_wrong", "same_error_given_both_wrong")
    rows = [[e(n), *[ci(v.get(k)) for k in keys]] for n, v in correctness.items()]
    tests = [[e(n), f"{100 * a['gain_right']:+.2f}", f"{100 * a['gain_wrong']:+.2f}",
              ci({"mean": a["asymmetry"], "ci_low": a["ci_low"], "ci_high": a["ci_high"]}), f"{a['p_t']:.3g}",
              f"{a['p_perm']:.3g}", f"{a['p_t_holm']:.3g}",
              '<b class="sig">yes</b>' if a["significant"] else '<span class="ns">no</span>']
             for n, a in asymmetry.items()]
    r = e(reference)
    return (f"<h2>Does it copy the {r}'s mistakes?</h2>"
            f"<p>Agreement with the {r} on the examples it gets <b>right</b> and on those it gets <b>wrong</b> "
            f"(where agreeing means making the {r}'s own wrong prediction: error inheritance), the share of its "
            "errors the model also gets wrong, and, among examples both get wrong, the share with the same label. "
            "Mean [95% CI], in %.</p>"
            + table(["model", f"agree, {r} right", f"agree, {r} wrong", "also wrong", "same label when both wrong"],
                    rows)
            + f"<p>Asymmetry: per seed, the agreement gain over <code>{e(control)}</code> on the {r}'s wrong "
            "examples minus the gain on its right ones, in points. Positive: its errors are transferred more than "
            "its correct predictions. One-sided paired t-test and exact sign-flip test; Holm across models.</p>"
            + table(["model", "gain, right", "gain, wrong", "asymmetry [95% CI]", "p (t)", "p (sign-flip)",
                     "p (t, Holm)", "significant"], tests))


def write_report(results: dict, path: str | Path) -> Path:
    results = as_stored(results)
    return write_page(path, render(results))


__all__ = ["inheritance_section", "render", "write_page", "write_report"]
