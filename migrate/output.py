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


def duration(seconds: float | None) -> str:
    """Seconds as a short duration (``4.2s``, ``3m05s``, ``1h02m``), ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def rfc3339(epoch: float | None) -> str | None:
    """Epoch seconds as an RFC 3339 UTC time with milliseconds (``2026-11-30T00:31:02.125Z``),
    the form programs reading ``-o json|yaml`` parse; None stays None."""
    if epoch is None:
        return None
    from datetime import datetime, timezone

    when = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain, aligned text table like kubectl's (two spaces between columns)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
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
