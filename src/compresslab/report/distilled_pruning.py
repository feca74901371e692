"""The distilled-pruning study's report: ticket accuracy against sparsity for real IMP,
distilled IMP and the random re-init control (mean, 95% CI over seeds), the search cost,
the stability numbers (LMC barrier, Hessian trace), the Holm-adjusted tests and the verdicts."""
from __future__ import annotations

from pathlib import Path

from compresslab.report import svg
from compresslab.report.page import as_stored, esc, page, plots, table, write_page

ARMS = (("real", "real-IMP"), ("distilled", "distilled-IMP"), ("control", "random re-init"))
CLAIMS = {1: "Distilled-IMP tickets match real IMP at far fewer training points",
          2: "Distilled-IMP masks are more stable (lower LMC barrier) than the dense init and real-IMP masks",
          3: "Distilled-IMP masks reach higher sparsities"}


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _ci(s) -> str:
    return "–" if s is None else f"{_pct(s['mean'])} [{_pct(s['ci_low'])}, {_pct(s['ci_high'])}]"


def _points(x: float) -> str:
    return f"{x:g} point" + ("" if x == 1 else "s")


def verdicts(results: dict) -> list[dict]:
    """One ``{"claim", "outcome", "text"}`` per claim, from the Holm-adjusted ``tests``:
    1 reproduced when at every pruned round real IMP is neither significantly better nor
    ahead by more than ``tolerance`` and the search used fewer points (partly: some rounds);
    2 when both barrier comparisons are significant (partly: one); 3 when either is."""
    tests, tol = results["tests"], results["tolerance"]
    out = []
    if not tests:
        return [{"claim": c, "outcome": "untested", "text": f"{CLAIMS[c]}: untested (needs at least 2 seeds)."}
                for c in CLAIMS]
    last = results["rows"][-1]
    ratio = (last["search_points_real"] / last["search_points_distilled"]
             if last["search_points_distilled"] else float("inf"))
    one = [t for t in tests if t["claim_id"] == 1]
    matched = [t for t in one if not t["significant"] and t["diff"] <= tol]
    outcome = ("reproduced" if len(matched) == len(one) and ratio > 1 else
               "partly" if matched and ratio > 1 else "not reproduced")
    gaps = ", ".join(f"{100 * t['diff']:+.2f} (p_holm {t['p_holm']:.2g})" for t in one)
    out.append({"claim": 1, "outcome": outcome,
                "text": f"{CLAIMS[1]}: {outcome}. Search points {ratio:.1f}x fewer by the final round; real minus "
                        f"distilled accuracy per pruned round, points: {gaps}; matched (not significant and within "
                        f"{_points(100 * tol)}) at {len(matched)} of {len(one)} rounds."})
    two = [t for t in tests if t["claim_id"] == 2 and t["metric"] == "LMC barrier"]
    sig = [t for t in two if t["significant"]]
    outcome = "reproduced" if len(sig) == len(two) else "partly" if sig else "not reproduced"
    b = results["barrier"]
    hess = next(t for t in tests if t["claim_id"] == 2 and t["metric"] == "Hessian trace")
    out.append({"claim": 2, "outcome": outcome,
                "text": f"{CLAIMS[2]}: {outcome}. Barrier (error points) dense {_ci(b['dense'])}, real mask "
                        f"{_ci(b['real'])}, distilled mask {_ci(b['distilled'])} (p_holm vs dense "
                        f"{two[0]['p_holm']:.2g}, vs real {two[1]['p_holm']:.2g}); Hessian trace distilled "
                        f"{hess['mean_a']:.3g} vs real {hess['mean_b']:.3g} (p_holm {hess['p_holm']:.2g})."})
    three = [t for t in tests if t["claim_id"] == 3]
    outcome = "reproduced" if any(t["significant"] for t in three) else "not reproduced"
    m = results["max_sparsity"]
    out.append({"claim": 3, "outcome": outcome,
                "text": f"{CLAIMS[3]}: {outcome}. Highest sparsity within {_points(100 * tol)} of dense: "
                        f"distilled {_ci(m['distilled'])} %, real {_ci(m['real'])} % (p_holm "
                        f"{three[0]['p_holm']:.2g}); accuracy at the highest sparsity distilled minus real "
                        f"{100 * three[1]['diff']:+.2f} points (p_holm {three[1]['p_holm']:.2g})."})
    return out


def plot_accuracy(results: dict) -> str:
    """Mean test accuracy with its 95% CI against sparsity, one series per arm."""
    p = svg.Plot("ticket test accuracy (mean, 95% CI over seeds)", "sparsity %", "test accuracy", width=440,
                 height=300)
    for i, (key, label) in enumerate(ARMS):
        rows = [r for r in results["rows"] if r[key] is not None]
        if not rows:
            continue
        c = svg.series_color(i)
        xs, ys = [100 * r["sparsity"] for r in rows], [r[key]["mean"] for r in rows]
        p.line(xs, ys, color=c, dash=key == "control")
        p.points(xs, ys, color=c, r=3.5, label=label,
                 titles=[f"{label} at {100 * r['sparsity']:.1f}%: {_ci(r[key])}" for r in rows])
        for x, r in zip(xs, rows, strict=True):
            p.line([x, x], [r[key]["ci_low"], r[key]["ci_high"]], color=c, width=1)
    return p.svg()


def plot_landscape(results: dict) -> str | None:
    """Train loss of the first seed's final tickets along a filter-normalised direction, or
    (2-D) over the plane of two such directions, one field per arm."""
    scan = results.get("landscape")
    if not scan:
        return None
    if scan["real"].get("dims") == 2:
        return "".join(svg.field(scan[key]["coords"], scan[key]["coords"], scan[key]["loss"], log=True,
                                 title=f"2-D loss landscape, {label}, seed {scan['seed']}", xlabel="a (direction 1)",
                                 ylabel="b (direction 2)", label="train loss", centre_title="the ticket", width=440)
                       for key, label in ARMS[:2])
    p = svg.Plot(f"1-D loss landscape, final tickets, seed {scan['seed']}", "step a along d", "train loss",
                 width=440, height=300)
    for i, (key, label) in enumerate(ARMS[:2]):
        c = svg.series_color(i)
        p.line(scan[key]["coords"], scan[key]["loss"], color=c, label=label)
    return p.svg()


def write_distilled_pruning_report(results: dict, path: str | Path) -> Path:
    results = as_stored(results)
    acc = [[r["round"], f"{100 * r['sparsity']:.1f}", _ci(r["real"]), _ci(r["distilled"]), _ci(r["control"]),
            f"{r['search_points_real']:,.0f}", f"{r['search_points_distilled']:,.0f}", f"{r['ticket_points']:,.0f}",
            f"{r['seconds_real']:.1f}", f"{r['seconds_distilled']:.1f}"] for r in results["rows"]]
    b, h = results["barrier"], results["hessian"]
    scan = results.get("landscape") or {}

    def sharp(key):
        return f"{scan[key]['summary']['sharpness']:.3g}" if scan.get(key) else "–"

    stab = [["dense init", _ci(b["dense"]), "–", "–"],
            ["real-IMP final mask", _ci(b["real"]), f"{h['real']['mean']:.3g}", sharp("real")],
            ["distilled-IMP final mask", _ci(b["distilled"]), f"{h['distilled']['mean']:.3g}", sharp("distilled")]]
    tests = [[esc(f"{t['label_a']} vs {t['label_b']}: {t['metric']}"), f"{t['mean_a']:.4g}", f"{t['mean_b']:.4g}",
              f"{t['diff']:+.4g}", f"{t['p_holm']:.3g}", "yes" if t["significant"] else "no"]
             for t in results["tests"]]
    m = results["model"]
    inner = results.get("inner") or {}
    intro = (f"<p>{len(results['seeds'])} seeds; <code>{esc(m['name'])}</code> "
             f"(<code>{esc(str(m['options']))}</code>), {results['epochs']} real epochs per training, "
             f"{results['rounds']} rounds pruning {100 * results['rate']:g}% of the kept weights, rewinding to "
             f"the initialisation. Distilled IMP's search loop trains {results['inner_epochs']} epochs per round "
             f"on <code>{esc(str(inner.get('name', '–')))}</code> ({inner.get('examples', '–')} examples); "
             "every ticket is then trained once on the real data. Search points: training examples x epochs "
             "spent before the round's mask exists. Seconds: cumulative, ticket training included, control "
             "and LMC excluded.</p>")
    along = ("one filter-normalised direction" if (scan.get("real") or {}).get("dims", 1) == 1
             else "a circle in the plane of two filter-normalised directions")
    sections = [
        "<h2>Ticket test accuracy (%)</h2>",
        table(["round", "sparsity %", "real-IMP", "distilled-IMP", "random re-init", "search pts real",
               "search pts distilled", "ticket pts", "real s", "distilled s"], acc),
        plots(plot_accuracy(results), plot_landscape(results)),
        "<h2>Stability</h2><p>LMC barrier: test error (%) rise between two copies of θ₀ with the mask, "
        "trained under data orders s+1 and s+2. Hessian trace: Hutchinson estimate on the final ticket "
        "(kept weights). Landscape sharpness: mean train-loss rise over the ticket at radius 0.5 along "
        f"{along} (Li et al. 2018), first seed only.</p>",
        table(["network", "LMC barrier % (mean [CI])", "Hessian trace (mean)", "landscape sharpness (first seed)"],
              stab),
        "<h2>Tests (one-sided Welch, Holm-adjusted as one family)</h2>",
        table(["comparison", "mean a", "mean b", "diff", "p (Holm)", "significant"], tests),
    ]
    return write_page(path, page(results, f"Distilled pruning: <code>{esc(results['study'])}</code>",
                                 [v["text"] for v in results["verdicts"]], sections, [], intro))
