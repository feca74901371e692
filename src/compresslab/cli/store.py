"""Browsing and cleaning a run store: `ls`, `show`, `pin` and `gc` (see docs/run-store.md)."""

import json
import time
from typing import Optional

import typer
from rich import box

from compresslab.cli.common import Json, Quiet, app, emit
from compresslab.console import console, echo, num, print_pairs, short, table
from compresslab.errors import UserError

StoreArg = typer.Argument(..., help="A run store directory (the --runs of your commands).")
StepArg = typer.Argument(..., help="A step directory (runs/train-1a2b...), or with --runs its dir name, or a "
                         "unique prefix of its dir name or hash.")
RunsOpt = typer.Option("runs", "--runs", help="Run store to look STEP up in when STEP is not a path.")


def _size(n: int) -> str:
    return f"{short(n)}B"


def _n(count: int, word: str) -> str:
    """3 steps, 1 step, 1 study, 2 studies."""
    return f"{count} {word if count == 1 else word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _warn(found: list[dict]) -> list[str]:
    warnings = [st["warning"] for st in found if st["warning"]]
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    return warnings


@app.command("ls")
def ls(
    runs: str = StoreArg,
    kind: Optional[str] = typer.Option(None, "--kind", help="Only steps of this kind (train, distill, prune, quantize, ...)."),
    studies_only: bool = typer.Option(False, "--studies", help="Only the studies table."),
    as_json: Json = False,
):
    """List a run store's steps (newest first) and its studies.

    A step row: its directory, label, parents (role=dir), test accuracy, parameters,
    size on disk, when it finished, and what keeps it through `compresslab gc`: `pin`
    when it or a descendant is pinned, and how many studies use it (directly or as an
    ancestor of one of their steps). A study row: its directory, kind, number of steps
    and when its results.json was written.

    JSON keys: root, steps [{dir, kind, label, parents, test_acc, val_acc, params,
    nonzero_params, bytes, time, date, pinned, kept_by_pin, studies}], studies [{dir, name, kind,
    steps, source, date, time, warning}], bytes, warnings.

    \b
    Examples:
      compresslab ls runs
      compresslab ls runs --kind distill
      compresslab ls runs --studies
      compresslab ls runs --json | jq '.steps[] | select(.studies == 0) | .dir'
    """
    from compresslab.runs.browse import Parents, closure, list_steps, pins, store_root
    from compresslab.study.references import studies

    root = store_root(runs)
    found = studies(root)
    steps = list_steps(root, kind)
    parents = Parents(root)
    uses = [closure(root, st["steps"].values(), parents) for st in found]
    pinned = closure(root, pins(root), parents)
    for s in steps:
        s["studies"], s["kept_by_pin"] = sum(s["dir"] in u for u in uses), s["dir"] in pinned
    report = {"root": str(root), "steps": steps, "studies": found, "bytes": sum(s["bytes"] for s in steps),
              "warnings": _warn(found)}

    def human(r):
        c = console()
        if not studies_only:
            t = table(f"steps in {r['root']}", ["step", "label", "parents", "acc %", "params", "size",
                                                "finished", "kept by"], left=3)
            t.box, t.collapse_padding, t.columns[1].max_width = box.SIMPLE_HEAD, True, 16
            for s in r["steps"]:
                kept = " + ".join(["pin"] * s["kept_by_pin"] + [_n(s["studies"], "study")] * bool(s["studies"]))
                t.add_row(s["dir"], s["label"], ", ".join(f"{k}={v[:-8]}" for k, v in sorted(s["parents"].items())),
                          _pct(s["test_acc"]), "–" if s["params"] is None else short(s["params"]),
                          _size(s["bytes"]), s["date"][5:16], kept or "–")
            c.print(t)
        t = table(f"studies in {r['root']}", ["study", "kind", "steps", "finished"], left=2)
        t.box = box.SIMPLE_HEAD
        for st in r["studies"]:
            t.add_row(st["dir"], st["kind"] or "?", str(len(st["steps"])), st["date"][:16])
        c.print(t)
        echo(f"{_n(len(r['steps']), 'step')}{f' of kind {kind}' if kind else ''}, {_size(r['bytes'])}; "
             f"{_n(len(r['studies']), 'study')}")

    emit(report, as_json, human)


@app.command()
def show(
    step: str = StepArg,
    runs: str = RunsOpt,
    as_json: Json = False,
):
    """Show one step: its record, lineage (parents, recursively), studies using it, metrics.

    A parent recorded as checkpoint-<hash> (a single-step command given a checkpoint
    directory) is matched to the step whose model.json + model.safetensors have that hash.

    JSON keys: root, dir, kind, label, hash, spec, parents, lineage {dir, kind, label,
    in_store, recorded_as, parents}, studies, pinned, bytes, date, metrics, files,
    warnings.

    \b
    Examples:
      compresslab show runs/train-1a2b3c4d5e6f7a8b
      compresslab show 1a2b --runs runs
      compresslab show train-1a2b --runs runs --json
    """
    from compresslab.runs.browse import dir_bytes, lineage, pins, resolve_step
    from compresslab.runs.store import read_json
    from compresslab.study.references import studies, studies_of

    root, name = resolve_step(step, runs)
    d = root / name
    rec = read_json(d / "spec.json")
    found = studies(root)
    metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
    mtime = (d / "spec.json").stat().st_mtime
    report = {"root": str(root), "dir": name, "kind": rec.get("kind"), "label": rec.get("label"),
              "hash": rec.get("hash"), "spec": rec.get("spec"), "parents": rec.get("parents") or {},
              "lineage": lineage(root, name), "studies": studies_of(root, name, found), "pinned": name in pins(root),
              "bytes": dir_bytes(d), "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime)),
              "metrics": metrics, "files": {p.name: p.stat().st_size for p in sorted(d.iterdir()) if p.is_file()},
              "warnings": _warn(found)}

    def human(r):
        from rich.tree import Tree

        print_pairs(f"step {r['dir']}", [("kind", r["kind"]), ("label", r["label"] or ""), ("hash", r["hash"]),
                                         ("finished", r["date"]), ("size", _size(r["bytes"])),
                                         ("pinned", "yes" if r["pinned"] else "no"),
                                         ("studies", ", ".join(r["studies"]) or "none")])
        echo("spec:", *("  " + line for line in json.dumps(r["spec"], indent=2, sort_keys=True).splitlines()))

        def add(tree, node, role=None):
            text = f"{role}: " if role else ""
            text += node["dir"]
            if node.get("recorded_as") and node["recorded_as"] != node["dir"]:
                text += f" (recorded as {node['recorded_as']})"
            text += f" [{node['label']}]" if node["label"] else ""
            text += "" if node["in_store"] else " (not in this store)"
            branch = tree.add(text) if tree is not None else Tree(text)
            for k, child in sorted(node["parents"].items()):
                add(branch, child, k)
            return branch

        echo("lineage (parents below their child):")
        console().print(add(None, r["lineage"]), highlight=False, markup=False)
        m = r["metrics"]
        rows = [(f"accuracy {k}", f"{100 * v:.2f} %") for k, v in sorted((m.get("accuracy") or {}).items())]
        rows += [(k, num(v)) for k, v in sorted((m.get("cost") or {}).items())]
        rows += [(k, num(v)) for k, v in sorted(m.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if m.get("history"):
            rows.append(("epochs", str(len(m["history"]))))
        if rows:
            print_pairs("metrics", rows)

    emit(report, as_json, human)


@app.command()
def pin(
    step: str = StepArg,
    runs: str = RunsOpt,
    unpin: bool = typer.Option(False, "--unpin", help="Remove the pin instead."),
    as_json: Json = False,
):
    """Pin a step so that `compresslab gc` keeps it and its ancestors (or --unpin it).

    The pin is a marker file <store>/.pins/<step dir>.json. Pin the outputs of
    single-step commands (train, prune, distill, ...) that no study references.

    JSON keys: root, step, pinned, changed.

    \b
    Examples:
      compresslab pin runs/prune-1a2b3c4d5e6f7a8b
      compresslab pin 1a2b --runs runs --unpin
    """
    from compresslab.runs.browse import pin as set_pin
    from compresslab.runs.browse import resolve_step

    root, name = resolve_step(step, runs)
    changed = set_pin(root, name, not unpin)
    report = {"root": str(root), "step": name, "pinned": not unpin, "changed": changed}
    emit(report, as_json, lambda r: echo(f"{'pinned' if r['pinned'] else 'unpinned'} {r['step']}"
                                         f"{'' if r['changed'] else ' (already)'}"))


@app.command()
def gc(
    runs: str = StoreArg,
    keep_studies: bool = typer.Option(False, "--keep-studies", help="Required: keep every step a study references, every pinned step, and their ancestors; delete the rest."),
    min_age: float = typer.Option(60.0, "--min-age", min=0, help="Also keep steps that finished less than this many minutes ago (a study still running has not written its results.json yet)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Delete the steps that no study and no pinned step references (through parents).

    Lists the steps it would delete and the bytes freed, then asks. Each step is
    deleted under its store lock: a step another process holds is skipped, and the
    temp area of steps being written is never touched. A study's references come from
    its results.json (older ones: its spec, expanded again). Local stores only.

    JSON keys (with --dry-run or --yes): root, steps, delete, sizes, bytes, kept,
    recent, pinned, writers, warnings; after deleting also deleted, skipped
    [{step, reason}], bytes_freed.

    \b
    Examples:
      compresslab gc runs --keep-studies --dry-run
      compresslab gc runs --keep-studies            # asks first
      compresslab gc runs --keep-studies --min-age 0 --yes
    """
    from compresslab.progress import RichProgress
    from compresslab.runs.browse import delete_steps, plan, store_root
    from compresslab.study.references import referenced, studies

    if not keep_studies:
        raise UserError("gc deletes what nothing keeps: pass --keep-studies (keep the steps of every study and "
                        "every pinned step, with their ancestors), and --dry-run to look first")
    if as_json and not (yes or dry_run):
        raise UserError("gc --json cannot ask before deleting: add --dry-run or --yes")
    root = store_root(runs)
    found = studies(root)
    warnings = _warn(found)
    p = plan(root, referenced(root, found), min_age * 60)
    p["warnings"] = warnings
    if p["writers"]:
        typer.echo(f"warning: {len(p['writers'])} steps are being written now ({', '.join(p['writers'][:3])}); "
                   "steps they read may be deleted unless a study, a pin or --min-age keeps them", err=True)
    if not as_json:
        t = table(f"{len(p['delete'])} of {p['steps']} steps to delete from {root}", ["step", "label", "size"], left=2)
        labels = {n: json.loads((root / n / "spec.json").read_text()).get("label", "") for n in p["delete"]}
        for n in p["delete"]:
            t.add_row(n, labels[n], _size(p["sizes"][n]))
        if p["delete"]:
            console().print(t)
        echo(f"{_n(len(p['delete']), 'step')}, {_size(p['bytes'])} to free; keeping {p['kept']}: the steps of "
             f"{_n(len(found), 'study')}, {len(p['pinned'])} pinned, {len(p['recent'])} newer than {min_age:g} min, "
             "and their ancestors")
    if dry_run or not p["delete"]:
        if as_json:
            typer.echo(json.dumps(p, indent=2, sort_keys=True))
        return 0
    if not yes and not typer.confirm(f"Delete {_n(len(p['delete']), 'step')} ({_size(p['bytes'])})?", default=False):
        echo("nothing deleted")
        return 1
    with RichProgress(quiet=quiet) as progress, progress.task(f"delete {len(p['delete'])} steps"):
        p.update(delete_steps(root, p["delete"]))

    def human(r):
        echo(f"deleted {_n(len(r['deleted']), 'step')}, freed {_size(r['bytes_freed'])}")
        for s in r["skipped"]:
            echo(f"  skipped {s['step']}: {s['reason']}")

    emit(p, as_json, human)
    return 0
