"""`fidelity`: how closely a compressed child (and its exported ONNX file) reproduces the parent."""

from pathlib import Path
from typing import Optional

import typer

from compresslab.cli.common import Device, Json, Quiet, app, data_option, emit, on
from compresslab.console import console, echo, table

_LABELS = {"agreement": "agreement %", "kappa": "Cohen's kappa", "js_divergence": "JS divergence (nats)",
           "kl_ab": "KL(a‖b) (nats)", "kl_ba": "KL(b‖a) (nats)", "activation_distance": "‖p_a - p_b‖",
           "output_cosine": "output cosine"}


def _cell(m: dict, percent: bool = False) -> str:
    if percent:
        return f"{100 * m['value']:.2f} [{100 * m['ci_low']:.2f}, {100 * m['ci_high']:.2f}]"
    return f"{m['value']:.3g} [{m['ci_low']:.3g}, {m['ci_high']:.3g}]"


def print_fidelity(r: dict, title: str, *, show: int = 10) -> None:
    """The rich tables of a fidelity report: pairs, accuracy per class, the retrain band and
    the first ``show`` disagreements (``export`` prints its own block with this too)."""
    c = console()
    b = r["bootstrap"]
    t = table(title, ["metric", *(f"{p['a']} vs {p['b']}" for p in r["pairs"])])
    t.caption = (f"{r['examples']:,} examples; [{100 * b['confidence']:g}% CI] from {b['n_boot']:,} bootstrap "
                 "resamples of the examples")
    t.add_row("inputs that differ", *(f"{p['disagreeing']:,}" for p in r["pairs"]))
    for key, label in _LABELS.items():
        t.add_row(label, *(_cell(p["metrics"][key], key == "agreement") for p in r["pairs"]))
    points = list(dict.fromkeys(k for p in r["pairs"] for k in (p["cka"] or {})))
    for point in points:
        t.add_row(f"CKA {point}", *("n/a" if (p["cka"] or {}).get(point) is None else f"{p['cka'][point]:.4f}"
                                    for p in r["pairs"]))
    if not points:
        t.add_row("CKA", *("n/a" for _ in r["pairs"]))
    c.print(t)
    names = r["names"]
    t = table("accuracy % per class (recall)", ["class", "n", *names])
    t.add_row("all", f"{r['examples']:,}", *(_cell(r["models"][n]["accuracy"], True) for n in names))
    for i, row in enumerate(r["models"][names[0]]["per_class"]):
        cells = [r["models"][n]["per_class"][i]["accuracy"] for n in names]
        t.add_row(str(row["class"]), str(row["support"]), *("–" if v is None else f"{100 * v:.2f}" for v in cells))
    c.print(t)
    band = r.get("retrain_band")
    if band:
        a, j = band["agreement"], band["js_divergence"]
        echo(f"independent retrains ({len(band['retrains'])}): agreement with the parent "
             f"{100 * a['low']:.2f}-{100 * a['high']:.2f}%, JS {j['low']:.3g}-{j['high']:.3g} nats")
        echo(*(v["verdict"] for v in band["judged"].values()))
    elif r.get("retrain_note"):
        echo(r["retrain_note"])
    d = r["disagreements"]
    if d and show:
        t = table(f"first {min(show, len(d))} of {len(d)} inputs where the models disagree", ["index", "label", *names])
        for row in d[:show]:
            t.add_row(str(row["index"]), str(row["label"]), *(str(row["predictions"][n]) for n in names))
        c.print(t)
    elif not d:
        echo("the models agree on every input")


@app.command()
def fidelity(
    parent: Path = typer.Argument(..., help="The parent checkpoint directory (a run-store step)."),
    child: Path = typer.Argument(..., help="Its compressed child's checkpoint directory (pruned, quantised, distilled...)."),
    exported: Optional[Path] = typer.Argument(None, help="Optional: the .onnx file `compresslab export` wrote, run in ONNX Runtime."),
    data: data_option("Dataset the parent was trained on.") = ...,
    split: str = typer.Option("test", "--split", help="Split to measure on: test or val."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**32 - 1,
                                       help="Seed of the validation split (default: the parent's, from its spec.json)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples of the examples for each CI."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence level of the CIs, in (0, 1)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory to write fidelity.json and the PNG grid of disagreeing inputs into."),
    grid: int = typer.Option(16, "--grid", help="With --out: how many disagreeing inputs the PNG shows (0: no PNG)."),
    show: int = typer.Option(10, "--show", help="How many disagreeing inputs the table lists (JSON has all)."),
    quiet: Quiet = False,
    device: Device = "auto",
    as_json: Json = False,
):
    """Measure how closely a compressed child, and its exported ONNX file, reproduce the parent.

    Runs the parent and the child (as PyTorch runs their checkpoints) and the ONNX file (in
    ONNX Runtime) on the same split and reports, for each pair: agreement, kappa, JS and KL
    divergence, output cosine (with bootstrap CIs over the examples) and CKA per feature point
    (n/a for ONNX); accuracy per class for each model; every input where they disagree; and,
    when the parent's run store holds independent retrains (the parent's spec with another
    seed), whether the child is as close to the parent as a retrain is.

    JSON keys: names, examples, classes, pairs [{a, b, disagreeing, metrics {agreement, kappa,
    js_divergence, kl_ab, kl_ba, activation_distance, output_cosine: {value, ci_low, ci_high}},
    cka}], models {name: {accuracy, per_class}}, disagreements [{index, label, predictions}],
    retrain_band {retrains, agreement, js_divergence, judged} or null with retrain_note and
    retrain_command, bootstrap, checkpoints, written.

    \b
    Examples:
      compresslab fidelity runs/train-1a2b... runs/prune-3c4d... --data digits
      compresslab fidelity runs/train-1a2b... runs/prune-3c4d... child.onnx --data digits --out fid/
      compresslab fidelity runs/train-1a2b... runs/quantize-5e6f... --data mnist1d --split val --json
    """
    from compresslab.fidelity import fidelity_checkpoints
    from compresslab.progress import RichProgress

    with on(device), RichProgress(quiet=quiet or as_json) as progress:
        result = fidelity_checkpoints(parent, child, exported, data, split=split, seed=seed, n_boot=n_boot,
                                      confidence=confidence, out=out, grid=grid, progress=progress)

    def human(r):
        print_fidelity(r, f"fidelity to {parent.name} on {data} {split}", show=show)
        if r["written"]:
            echo(*(f"wrote {p}" for p in r["written"]))

    emit(result, as_json, human)
