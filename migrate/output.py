"""Rendering results for people (tables) and for programs (JSON, YAML)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from migrate.serialize import dumps

FORMATS = ("table", "json", "yaml")


def human_size(n: int | None) -> str:
    """Bytes as a short binary size (``1.5G``), ``-`` when unknown."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if abs(size) < 1024 or unit == "P":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}P"


def terminal_width() -> int | None:
    """Columns of the terminal a table goes to: ``$COLUMNS``, else stdout's terminal;
    None when stdout is no terminal (a file or pipe gets every character)."""
    import os

    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else None
    except (OSError, ValueError, AttributeError):
        return None


def _cell(value: Any, width: int | None) -> str:
    """One table cell on one line: a multi-line text shows its first line and how many
    more there are; no cell is wider than the terminal (cut with …; -o yaml shows all)."""
    text = "" if value is None else str(value)
    if "\n" in text:
        first, *rest = [line for line in text.splitlines() if line.strip()] or [""]
        text = f"{first} (+{len(rest)} more line(s), -o yaml shows all)" if rest else first
    if width is not None and len(text) > width:
        text = text[: max(1, width - 1)] + "…"
    return text


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain, aligned text table like kubectl's (two spaces between columns); each cell
    on one line and, on a terminal, none wider than it (see :func:`_cell`)."""
    width = terminal_width()
    cells = [[str(h) for h in headers]] + [[_cell(c, width) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def emit(
    data: Any,
    fmt: str,
    headers: Sequence[str] | None = None,
    rows: Iterable[Sequence[Any]] | None = None,
    out: TextIO | None = None,
) -> None:
    """Print ``data`` as JSON/YAML, or ``rows`` under ``headers`` as a table."""
    out = out or sys.stdout
    if fmt == "table":
        assert headers is not None and rows is not None
        out.write(table(headers, rows))
    else:
        out.write(dumps(data, fmt))
