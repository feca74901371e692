"""The ``compresslab`` command line: a thin layer over the Python API (:mod:`compresslab.api`).

Commands live by group in :mod:`~compresslab.cli.models` (train, info, evaluate,
compare), :mod:`~compresslab.cli.compress` (prune, quantize, export, distill, substitute,
blockswap, prunability, lottery), :mod:`~compresslab.cli.data` (distill-data),
:mod:`~compresslab.cli.ner` (ner generate, annotate, verify, evaluate), :mod:`~compresslab.cli.study` (study, doctor) and :mod:`~compresslab.cli.store` (ls, show, pin,
gc); one module each for report, fidelity, search, local-search, sensitivity, landscape and codesign.
"""

import typer  # noqa: I001  (the command modules below are imported in --help order)
from typer.exceptions import Abort, Exit, TyperException

from compresslab.cli import (  # noqa: F401  (in the order `compresslab --help` lists their commands)
    models,
    compress,
    data,
    ner,
    fidelity,
    sensitivity,
    landscape,
    search,
    local_search,
    codesign,
    study,
    report,
    store,
)
from compresslab.cli.common import app
from compresslab.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and exit code 2 for anything the user can fix."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        return getattr(e, "exit_code", 2)
    except Exit as e:
        return e.exit_code
    except Abort:
        typer.echo("error: aborted", err=True)
        return 130
    except TyperException as e:
        msg = " ".join(e.format_message().split())
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
        typer.echo(f"error: {msg}{hint}", err=True)
        return 2
    return rv if isinstance(rv, int) else 0
