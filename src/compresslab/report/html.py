"""A self-contained HTML report of a study's ``results.json``."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

ROLE_COLORS = {"parent": "#1f77b4", "child": "#d62728", "control": "#7f7f7f"}
FUNCTION_COLUMNS = [("agreement", "agree"), ("kappa", "kappa"), ("js_divergence", "JS"),
                    ("activation_distance", "act. dist"), ("output_cosine", "cos"),
                    ("kl_ab", "KL(p‖c)"), ("kl_ba", "KL(c‖p)")]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_cost_accuracy(results: dict) -> str:
    """Accuracy against BOPs per example (log x), one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    markers = {"parent": "*", "child": "o", "control": "^"}
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(results["models"]):  # one legend entry per model: labels never overprint
        ax.scatter(m["cost"]["bops"], 100 * m["accuracy"], marker=markers[m["role"]], color=cmap(i % 10),
                   s=150 if m["role"] == "parent" else 45, zorder=4 if m["role"] == "parent" else 3,
                   label=f"{m['name']} ({m['role']})", edgecolor="black", linewidth=0.4)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("BOPs per example (log scale; M = 10^6)")
    ax.set_ylabel(f"{results['split']} accuracy (%)")
    ax.set_title("Cost against accuracy")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_disagreement(results: dict) -> str:
    """Disagreement with the parent per model, with the independent-retrain range as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in results["models"] if m["role"] != "parent"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = [m["name"] for m in models]
    vals = [100 * m["function"]["disagreement"] for m in models]
    ax.barh(names, vals, color=[ROLE_COLORS[m["role"]] for m in models])
    base = results.get("independent_baseline", {}).get("disagreement")
    if base:
        ax.axvspan(100 * base["min"], 100 * base["max"], color="#7f7f7f", alpha=0.25, zorder=0,
                   label="independent retrains (range)")
        ax.axvline(100 * base["mean"], color="#555", linestyle="--", linewidth=1, zorder=0)
        ax.legend(fontsize=8, loc="lower right")
    ax.invert_yaxis()
    ax.set_xlabel("top-1 disagreement with the parent (%)")
    ax.set_title("Which children still compute the parent's function?")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_prune_sweep(results: dict) -> str | None:
    """Accuracy, disagreement and parameter cosine against sparsity, p* and the safe amount marked."""
    pruned = [m for m in results["models"] if "sparsity" in m]
    if len(pruned) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parent = results["models"][0]
    base = results.get("independent_baseline", {}).get("disagreement")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = [("accuracy", "accuracy (%)", lambda m: 100 * m["accuracy"]),
              ("disagreement", "disagreement with parent (%)", lambda m: 100 * m["function"]["disagreement"]),
              ("param_cosine", "parameter cosine to parent", lambda m: m["param_cosine"])]
    criteria = sorted({m["criterion"] for m in pruned})
    for ax, (key, label, get) in zip(axes, panels):
        for i, crit in enumerate(criteria):
            ms = sorted((m for m in pruned if m["criterion"] == crit), key=lambda m: m["sparsity"])
            ax.plot([100 * m["sparsity"] for m in ms], [get(m) for m in ms], marker="o", ms=4, label=crit,
                    color=plt.get_cmap("tab10")(i))
        for m in pruned:
            rule = m.get("amount_rule", {}).get("rule")
            if rule:
                ax.axvline(100 * m["sparsity"], color="black" if rule == "p_star" else "#2ca02c",
                           linestyle="--", linewidth=1, label="p*" if rule == "p_star" else "safe amount")
        if key == "accuracy":
            ax.axhline(100 * parent["accuracy"], color="#1f77b4", linewidth=1, linestyle=":", label="parent")
        if key == "disagreement" and base:
            ax.axhspan(100 * base["min"], 100 * base["max"], color="#7f7f7f", alpha=0.25,
                       label="independent retrains")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    uniq = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            uniq.setdefault(label, handle)
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=len(uniq), fontsize=8,
               bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("Pruning sweep (after fine-tuning)")
    fig.tight_layout()
    return _png(fig)


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


def render(results: dict) -> str:
    e = html.escape
    rows = []
    for m in results["models"]:
        c, f = m["cost"], m["function"]
        lat = c.get("latency_ms") or {}
        cells = [e(m["name"]), e(m["role"]), e(m["method"]), _fmt(m["accuracy"], "pct"),
                 _fmt(c["params"], "int"), _fmt(c["nonzero_params"], "int"), _fmt(c["macs"], "int"),
                 _fmt(c["bops"], "sci"), _fmt(c["bytes"], "int"),
                 _fmt(lat.get("batch1")), _fmt(lat.get("batch256")),
                 *[_fmt(f[k]) for k, _ in FUNCTION_COLUMNS]]
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    head = ["model", "role", "method", "acc (%)", "params", "nonzero", "MACs", "BOPs", "bytes",
            "ms @1", "ms @256", *[h for _, h in FUNCTION_COLUMNS]]
    base = results.get("independent_baseline") or {}
    base_rows = "".join(
        f"<tr><td>{e(k)}</td><td>{_fmt(v['mean'])}</td><td>{_fmt(v['min'])}</td><td>{_fmt(v['max'])}</td>"
        f"<td>{v['n']}</td></tr>" for k, v in base.items())
    d = results["data"]
    notes = "".join(f"<li>{e(n)}</li>" for n in d["notes"]) or "<li>none</li>"
    steps = results.get("steps", {})
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>compresslab: {e(results['study'])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
td:first-child, th:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
th {{ background: #f3f3f3; }} .plots img {{ max-width: 49%; }}
</style></head><body>
<h1>Study <code>{e(results['study'])}</code></h1>
{_failed_section(results)}
<p>Data <code>{e(d['name'])}</code>: {', '.join(f'{k} {v}' for k, v in d['sizes'].items())} examples,
{d['num_classes']} classes, input {tuple(d['input_shape'])}. Metrics on the <b>{e(results['split'])}</b> split.
Latency measured with {results['num_threads']} threads, every model in one process at report time.</p>
<p>Notes on the data:</p><ul>{notes}</ul>
<h2>Models</h2>
<p>Function metrics compare each model's outputs with the parent's (agreement = same top-1 class;
JS and KL in nats; act. dist = mean L2 between softmax vectors; cos = mean cosine of softmax vectors).
BOPs follow m·n·((1−s)·b<sub>a</sub>·b<sub>w</sub> + b<sub>a</sub> + b<sub>w</sub> + log<sub>2</sub> n) per layer.</p>
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{''.join(rows)}</table>
<h2>Independent-retrain baseline</h2>
<p>The parent's architecture retrained from other seeds: how similar two independently trained
models are. A child is only "functionally close" if it beats this.</p>
<table><tr><th>metric</th><th>mean</th><th>min</th><th>max</th><th>n</th></tr>{base_rows}</table>
<div class="plots"><img alt="cost against accuracy" src="{plot_cost_accuracy(results)}">
<img alt="disagreement with the parent" src="{plot_disagreement(results)}"></div>
{_sweep_section(results)}
<p>Steps run: {len(steps.get('ran', []))}, reused from the run store: {len(steps.get('reused', []))}.
Wall time {results.get('seconds', 0):.1f} s.</p>
</body></html>
"""


def _failed_section(results: dict) -> str:
    failed = results.get("failed") or {}
    if not failed:
        return ""
    rows = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in failed.items())
    return (f'<div style="border:2px solid #c00;padding:0 1em;margin:1em 0"><h2>Incomplete: {len(failed)} step(s) '
            f"failed</h2><ul>{rows}</ul><p>Every other step finished. The tables below leave the failed models "
            "out; fix the cause and run the study again (finished steps are reused).</p></div>")


def _sweep_section(results: dict) -> str:
    png = plot_prune_sweep(results)
    if png is None:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(m['name'])}</td><td>{html.escape(m['criterion'])}</td><td>{_fmt(m['sparsity'], 'pct')}</td>"
        f"<td>{_fmt(m['accuracy'], 'pct')}</td><td>{_fmt(m['function']['disagreement'], 'pct')}</td>"
        f"<td>{_fmt(m['param_cosine'])}</td></tr>"
        for m in sorted((m for m in results["models"] if "sparsity" in m), key=lambda m: (m["criterion"], m["sparsity"])))
    r = next((m["amount_rule"] for m in results["models"] if "amount_rule" in m), None)
    rule_text = ""
    if r:
        rule_text = (f"<p>From the parent's weights alone: p* = {r['p_star']:.3f}, kurtosis of kurtoses "
                     f"K² = {r['kurtosis_of_kurtoses']:.3g}, safe amount = {r['safe_amount']:.3f} "
                     "(p*/ln K² if K² ≥ e, else p*/log2 K², clamped to [0, p*]).</p>")
    return (f"<h2>Pruning sweep</h2>{rule_text}<table><tr><th>model</th><th>criterion</th><th>sparsity (%)</th>"
            f"<th>acc (%)</th><th>disagree (%)</th><th>param cos</th></tr>{rows}</table>"
            f'<img alt="pruning sweep" style="max-width:100%" src="{png}">')


def inheritance_section(correctness: dict, asymmetry: dict, control: str, reference: str) -> str:
    """Agreement with the ``reference`` (teacher, parent) split by its correctness, and the
    asymmetry tests against ``control``: "does the model copy the reference's mistakes?"."""
    e = html.escape

    def ci(s: dict | None) -> str:
        return "–" if not s else (f"{100 * s['mean']:.1f} <small>[{100 * s['ci_low']:.1f}, "
                                  f"{100 * s['ci_high']:.1f}]</small>")

    keys = ("agree_right", "agree_wrong", "other_wrong_given_wrong", "same_error_given_both_wrong")
    rows = "".join(f"<tr><td>{e(n)}</td>" + "".join(f"<td>{ci(v.get(k))}</td>" for k in keys) + "</tr>"
                   for n, v in correctness.items())
    tests = "".join(
        f"<tr><td>{e(n)}</td><td>{100 * a['gain_right']:+.2f}</td><td>{100 * a['gain_wrong']:+.2f}</td>"
        f"<td>{ci({'mean': a['asymmetry'], 'ci_low': a['ci_low'], 'ci_high': a['ci_high']})}</td>"
        f"<td>{a['p_t']:.3g}</td><td>{a['p_perm']:.3g}</td><td>{a['p_t_holm']:.3g}</td>"
        f"<td>{'yes' if a['significant'] else 'no'}</td></tr>" for n, a in asymmetry.items())
    return f"""<h2>Does it copy the {e(reference)}'s mistakes?</h2>
<p>Agreement with the {e(reference)} on the examples it gets <b>right</b> and on those it gets <b>wrong</b> (where
agreeing means making the {e(reference)}'s own wrong prediction: error inheritance), the share of its errors the
model also gets wrong, and, among examples both get wrong, the share with the same label. Mean [95% CI], in %.</p>
<table><tr><th>model</th><th>agree, {e(reference)} right</th><th>agree, {e(reference)} wrong</th><th>also wrong</th>
<th>same label when both wrong</th></tr>{rows}</table>
<p>Asymmetry: per seed, the agreement gain over <code>{e(control)}</code> on the {e(reference)}'s wrong examples
minus the gain on its right ones, in points. Positive: its errors are transferred more than its correct
predictions. One-sided paired t-test and exact sign-flip test; Holm across models.</p>
<table><tr><th>model</th><th>gain, right</th><th>gain, wrong</th><th>asymmetry [95% CI]</th><th>p (t)</th>
<th>p (sign-flip)</th><th>p (t, Holm)</th><th>significant</th></tr>{tests}</table>
"""


def write_page(path: str | Path, page: str) -> Path:
    """Write ``page`` to ``path`` atomically (a temporary sibling, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path


def write_report(results: dict, path: str | Path) -> Path:
    return write_page(path, render(results))
