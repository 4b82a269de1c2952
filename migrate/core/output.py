"""Rendering results for people (tables) and for programs (JSON, YAML).

Text meant for a terminal (tables, log lines, error lines, progress bars) goes through
:func:`escape`: names and descriptions come from untrusted descriptors, and a newline,
carriage return, ESC/CSI/OSC sequence or C1 control in a VM name must neither forge an
error line nor drive the terminal.  JSON and YAML keep the text exact (they quote it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from migrate.core.serialize import dumps

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


#: C0 controls, DEL, C1 controls, and the Unicode line/paragraph separators.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100
                                else f"\\u{ord(char):04x}")


def escape(text: Any) -> str:
    """``text`` for a terminal: every control character shown as an escape.

    ``\\n``, ``\\r``, ``\\t``, ``\\e`` (ESC) and ``\\xNN`` / ``\\uNNNN`` for the other C0, DEL, C1
    (0x80-0x9f: CSI, OSC…) and U+2028/U+2029 characters; everything else is unchanged.
    """
    return _CONTROL_RE.sub(_escaped, str(text))


def error_line(message: Any) -> str:
    """The one line an error is printed as: ``vmmove: error: <message>``, escaped."""
    return f"vmmove: error: {escape(message)}"


def error_lines(exc: Any) -> list[str]:
    """How an error is printed: one escaped line, or — for an error listing problems
    (``head`` and ``problems``, as :class:`migrate.core.errors.ProblemsError` and plan errors
    carry them) — the head line and one ``  - problem`` line each, every one escaped, so
    no problem can forge a line of its own."""
    head, problems = getattr(exc, "head", None), getattr(exc, "problems", None)
    if head is None or not problems:
        return [error_line(exc)]
    return [error_line(f"{head}:")] + [f"  - {escape(p)}" for p in problems]


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
    """One table cell on one line: control characters escaped (:func:`escape`: a line
    break shows as ``\\n``), and no cell wider than the terminal (cut with …; ``-o yaml``
    shows all)."""
    text = "" if value is None else escape(value)
    if width is not None and len(text) > width:
        text = text[: max(1, width - 1)] + "…"
    return text


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain, aligned text table like kubectl's (two spaces between columns); each cell
    on one line, escaped and, on a terminal, no wider than it (see :func:`_cell`)."""
    width = terminal_width()
    cells = [[escape(h) for h in headers]] + [[_cell(c, width) for c in r] for r in rows]
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
