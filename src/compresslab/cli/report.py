"""`report`: rebuild a study's report.html from its results.json."""
import json
from pathlib import Path
from typing import Optional

import typer

from compresslab.cli.common import Json, app, emit
from compresslab.errors import UserError


def rebuild_report(study: Path, out: Optional[Path] = None) -> dict:
    """Write ``out`` (default ``study/report.html``, PNGs beside it) from ``study/results.json``
    with the report writer its kind registered. ``study`` may also name the results.json."""
    from compresslab.study import study_kind

    results_path = study if study.is_file() else study / "results.json"
    if not results_path.is_file():
        raise UserError(f"no results.json in {study}; pass a study directory (runs/studies/<name>-<hash>)")
    try:
        results = json.loads(results_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{results_path} is not JSON ({e}); rerun the study to rewrite it") from None
    if not isinstance(results, dict) or not isinstance(results.get("kind"), str):
        raise UserError(f"{results_path} has no study `kind`; it was not written by `compresslab study`")
    kind = study_kind(results["kind"])
    out = out or results_path.with_name("report.html")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; pass a file name such as {out / 'report.html'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        kind.report(results, out)
    except (KeyError, TypeError, IndexError) as e:
        raise UserError(f"{results_path} lacks what a {results['kind']} report needs ({type(e).__name__}: {e}); "
                        "it may come from an older version: rerun the study") from None
    return {"report": str(out), "kind": results["kind"]}


@app.command()
def report(
    study: Path = typer.Argument(..., help="A study directory (runs/studies/<name>-<hash>) or its results.json."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the report here (default: report.html beside "
                                                         "results.json); its PNGs go beside it."),
    as_json: Json = False,
):
    """Rebuild a study's report.html (and the PNGs beside it) from its results.json.

    Uses the report writer of the study's kind, so a report can be redesigned, or fixed,
    without rerunning the study. Nothing is trained or measured.

    JSON keys: report (the path written), kind.

    \b
    Examples:
      compresslab report runs/studies/default-3f2a9c1b7e4d
      compresslab report runs/studies/default-3f2a9c1b7e4d --out /tmp/default.html
      compresslab report runs/studies/default-3f2a9c1b7e4d/results.json --json
    """
    emit(rebuild_report(study, out), as_json, lambda r: typer.echo(f"report ({r['kind']}): {r['report']}"))
