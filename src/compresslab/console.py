"""Terminal output for the command line and the study kinds' printers (rich tables on stdout).

Library code never prints; these helpers are for the functions the CLI calls to show a
result (``compresslab <command>`` without ``--json``).
"""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def console(width: int = 120) -> Console:
    """stdout console; when piped, ``width`` columns wide so that tables are not truncated."""
    c = Console()
    return c if c.is_terminal else Console(width=width)


def table(title: str, columns: list[str], *, left: int = 1) -> Table:
    """A table whose first ``left`` columns are left-aligned and the rest right-aligned."""
    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < left else "right", no_wrap=True)
    return t


def print_pairs(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column key/value table."""
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, v)
    console().print(t)


def echo(*lines: str) -> None:
    """Plain lines on stdout (paths, headlines): never wrapped or highlighted."""
    for line in lines:
        print(line)


def num(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def short(v: float) -> str:
    """1234 -> 1.23k, 3.9e8 -> 390M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"
