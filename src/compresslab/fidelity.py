"""``compresslab fidelity``: a parent, its compressed child and the exported ONNX file, side by side.

The parent and the child run as PyTorch runs their checkpoints (transforms applied), the
exported file in ONNX Runtime, all on the same split. The numbers come from
:func:`compresslab.measure.fidelity.fidelity_report`: every output metric per pair with
bootstrap CIs over the examples, CKA per feature point for the PyTorch pair, accuracy per
class, and the disagreeing inputs. When the parent's run store holds independent retrains
(steps with the parent's spec except the seed), their agreement with the parent is the band
the child is judged against.
"""
from __future__ import annotations

import json
import math
import shlex
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from compresslab.errors import UserError
from compresslab.measure.fidelity import fidelity_report, retrain_band
from compresslab.runs.checkpoint import read_model_json
from compresslab.runs.store import read_json, write_json

#: Spec keys that hold a seed: a retrain differs from the parent in these alone.
SEED_KEYS = ("seed", "data_seed")
PNG_NAME = "fidelity-disagreements.png"
CKA_NOTE = ("CKA compares activations at feature points: n/a for the ONNX file and for a child without "
            "the parent's feature points (e.g. an int8 model that ONNX Runtime runs)")


def _task(progress, label: str):
    return progress.task(label) if progress else nullcontext()


def _spec_doc(checkpoint: Path) -> dict | None:
    """The run store's spec.json of a step directory, or None (not a store step, or unreadable)."""
    path = Path(checkpoint) / "spec.json"
    try:
        doc = read_json(path) if path.is_file() else None
    except UserError:
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("spec"), dict) else None


def _without_seeds(spec: dict) -> dict:
    out = {k: v for k, v in spec.items() if k not in SEED_KEYS}
    if isinstance(out.get("data"), dict):
        out["data"] = {k: v for k, v in out["data"].items() if k != "seed"}
    return out


def find_retrains(parent: Path) -> list[Path]:
    """Other finished steps in the parent's run store with the parent's kind, parents and
    spec except the seed (``seed``, ``data_seed``, ``data.seed``), sorted by directory name."""
    parent = Path(parent)
    doc = _spec_doc(parent)
    if doc is None:
        return []
    want = (doc.get("kind"), doc.get("parents"), _without_seeds(doc["spec"]))
    found = []
    for d in sorted(parent.parent.iterdir()):  # paths as the user spelled the parent's
        if d.name.startswith(".") or not d.is_dir() or d.resolve() == parent.resolve():
            continue
        other = _spec_doc(d)
        if other and (other.get("kind"), other.get("parents"), _without_seeds(other["spec"])) == want \
                and (d / "model.json").is_file():
            found.append(d)
    return found


def retrain_command(parent: Path) -> str | None:
    """The ``compresslab train`` command that would add an independent retrain of ``parent``
    (its spec with the next seed) to its run store; None when the parent is not a train step
    the command line can reproduce."""
    from compresslab.train import Recipe

    doc = _spec_doc(parent)
    if doc is None or doc.get("kind") != "train":
        return None
    s = doc["spec"]
    if set(s) - {"data", "model", "recipe", "seed", "data_seed", "nproc", "sync_bn"} or s["data"].get("val_fraction") != 0.1:
        return None  # keys (loss, val_fraction) the train command does not set
    args = ["compresslab", "train", "--model", s["model"]["name"], "--data", s["data"]["name"]]
    for key, value in s["model"].get("options", {}).items():
        args += ["--option", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    defaults = Recipe().model_dump()
    changed = {k: v for k, v in s["recipe"].items() if defaults.get(k) != v}
    for key, flag in (("epochs", "--epochs"), ("lr", "--lr"), ("batch_size", "--batch-size")):
        if key in changed:
            args += [flag, str(changed.pop(key))]
    if changed:
        args += ["--recipe", "recipe.yaml"]
    if s.get("nproc", 1) > 1:
        args += ["--nproc", str(s["nproc"])] + (["--sync-bn"] if s.get("sync_bn") else [])
    args += ["--seed", str(max(s["seed"], s.get("data_seed", 0)) + 1), "--runs", str(Path(parent).parent)]
    command = shlex.join(args)
    if changed:
        command += "  # recipe.yaml: " + json.dumps(changed)
    return command


def onnx_logits(path: Path, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Logits of the ONNX file at ``path`` on ``x`` in ONNX Runtime; UserError when its input
    or output shape does not fit the data."""
    from compresslab.export import run_session, session

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; give the .onnx file `compresslab export` wrote")
    try:
        sess = session(path)
    except UserError:  # onnxruntime is missing
        raise
    except Exception as e:  # ORT raises its own exception types for files it cannot read
        raise UserError(f"{path}: ONNX Runtime cannot load it ({str(e).strip().splitlines()[0][:160]})") from None
    shape = sess.get_inputs()[0].shape
    want = x.shape[1:]
    if len(shape) != len(want) + 1 or any(isinstance(d, int) and d != w for d, w in zip(shape[1:], want)):
        raise UserError(f"{path} takes inputs of shape {shape[1:]}, the data has {list(want)}; "
                        "export the child for this dataset")
    out = sess.get_outputs()[0].shape
    if out and isinstance(out[-1], int) and out[-1] != num_classes:
        raise UserError(f"{path} outputs {out[-1]} classes, the checkpoints {num_classes}; export the child")
    try:
        return run_session(sess, np.ascontiguousarray(x, dtype=np.float32))
    except Exception as e:
        raise UserError(f"{path} failed in ONNX Runtime on the data ({str(e).strip().splitlines()[0][:160]})") from None


def _check_pair(parent: Path, child: Path, ds) -> None:
    p, c = read_model_json(parent)["model"], read_model_json(child)["model"]
    for name, m in (("parent", p), ("child", c)):
        shape, k = tuple(m.get("input_shape") or ()), m.get("num_classes")
        if shape != tuple(ds.input_shape) or k != ds.num_classes:
            raise UserError(f"the {name} was built for inputs {list(shape)} and {k} classes; dataset {ds.name} has "
                            f"{list(ds.input_shape)} and {ds.num_classes}; give the dataset the parent was trained on")


def _cka(parent: Path, child: Path, x) -> dict | None:
    from compresslab.measure.cka import cka_between
    from compresslab.steps.common import load_model

    try:
        res = cka_between(load_model(parent), load_model(child), x)
    except UserError:  # no shared feature point
        return None
    return {point: r["cka"] for point, r in res.items()}


def disagreement_figure(x: np.ndarray, report: dict, n: int = 16):
    """A grid of the first ``n`` disagreeing inputs (images, or line plots for 1-D signals),
    titled with the index, the true label and each model's prediction; None when there is no
    disagreement or the inputs are neither (C, H, W) images with 1 or 3 channels nor (C, L)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_ = report["disagreements"][:n]
    shape = x.shape[1:]
    image = len(shape) == 3 and shape[0] in (1, 3)
    if not rows_ or not (image or len(shape) == 2):
        return None
    cols = min(8, len(rows_))
    lines = math.ceil(len(rows_) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(1.35 * cols, 1.55 * lines + 0.35), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    short = {name: name[0] for name in report["names"]}
    for ax, d in zip(axes.ravel(), rows_):
        v = x[d["index"]]
        if image:
            img = np.moveaxis(v, 0, -1)
            img = (img - img.min()) / max(float(np.ptp(img)), 1e-12)
            ax.imshow(img[..., 0] if shape[0] == 1 else img, cmap="gray" if shape[0] == 1 else None,
                      interpolation="nearest")
        else:
            for channel in v:
                ax.plot(channel, linewidth=0.8)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
        preds = " ".join(f"{short[k]}{p}" for k, p in d["predictions"].items())
        ax.set_title(f"#{d['index']} y={d['label']}\n{preds}", fontsize=7)
    legend = ", ".join(f"{s}=prediction of the {name}" for name, s in short.items())
    fig.suptitle(f"first {len(rows_)} of {len(report['disagreements'])} disagreements; y=true label; {legend}",
                 fontsize=7)
    fig.tight_layout()
    return fig


def fidelity_checkpoints(parent: str | Path, child: str | Path, exported: str | Path | None, data: str, *,
                         split: str = "test", seed: int | None = None, val_fraction: float = 0.1,
                         n_boot: int = 1000, confidence: float = 0.95, out: str | Path | None = None,
                         grid: int = 16, progress=None) -> dict:
    """The fidelity report of ``child`` (and the ONNX file ``exported``) to ``parent`` on a
    split of ``data``, with the independent-retrain band when the parent's store has one.

    ``seed`` is the seed of the validation split (default: the parent's, from its spec.json,
    else 0). With ``out``, writes ``out/fidelity.json`` and, for image or 1-D signal data with
    disagreements, ``out/fidelity-disagreements.png`` (the first ``grid`` of them); every input
    is checked before anything is written.
    """
    from compresslab.figures import save_png
    from compresslab.steps import dataset
    from compresslab.steps.common import checkpoint_logits

    parent, child = Path(parent), Path(child)
    if grid < 0 or n_boot < 1:
        raise UserError("--grid must be >= 0 and --n-boot >= 1")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    for path in (parent, child):
        read_model_json(path)  # a clear error for a missing or foreign directory
    doc = _spec_doc(parent)
    if seed is None:
        seed = int(doc["spec"].get("data", {}).get("seed", 0)) if doc else 0
    ds = dataset(data, val_fraction, seed)
    _check_pair(parent, child, ds)
    x, y = ds.split(split)
    logits = {}
    with _task(progress, "run parent and child"):
        logits["parent"] = checkpoint_logits(parent, ds, split).numpy()
        logits["child"] = checkpoint_logits(child, ds, split).numpy()
    if exported is not None:
        with _task(progress, "run the ONNX file"):
            logits["exported"] = onnx_logits(Path(exported), x.numpy(), ds.num_classes)
    with _task(progress, "CKA parent vs child"):
        cka = _cka(parent, child, x)
    retrains = find_retrains(parent)
    with _task(progress, f"run {len(retrains)} retrain(s)") if retrains else nullcontext():
        retrain_logits = {str(r): checkpoint_logits(r, ds, split).numpy() for r in retrains}
    with _task(progress, "bootstrap"):
        report = fidelity_report(logits, y.numpy(), cka={("parent", "child"): cka} if cka else None,
                                 n_boot=n_boot, confidence=confidence, seed=0)
    report.update(data=data, split=split, data_seed=seed, cka_note=CKA_NOTE,
                  checkpoints={"parent": str(parent), "child": str(child),
                               **({"exported": str(exported)} if exported is not None else {})})
    if retrain_logits:
        report["retrain_band"] = retrain_band(logits["parent"], retrain_logits, report)
    else:
        command = retrain_command(parent)
        report["retrain_band"] = None
        report["retrain_note"] = "no independent retrain in the store" + (
            f"; make one with: {command}" if command else
            "; retrain the parent's step with another seed (its spec is in spec.json) in the same store")
        report["retrain_command"] = command
    report["written"] = []
    if out is not None:
        out = Path(out)
        fig = disagreement_figure(x.numpy(), report, grid) if grid else None
        out.mkdir(parents=True, exist_ok=True)
        if fig is not None:
            import matplotlib.pyplot as plt

            save_png(fig, out / PNG_NAME)
            plt.close(fig)
            report["written"].append(str(out / PNG_NAME))
        report["written"].insert(0, str(out / "fidelity.json"))
        write_json(out / "fidelity.json", report)
    return report
