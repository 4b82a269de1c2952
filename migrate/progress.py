"""Progress reporting: tqdm bars on a terminal, plain log lines otherwise.

Long work (conversion, upload, import watching) reports through :func:`bar`; when the
stream is not a TTY the bar is disabled and :func:`log` lines carry the news instead, so
CI logs and pipes stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from migrate.output import escape


def interactive(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def bar(total: float | None, desc: str, unit: str = "B", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, disabled (silent) when stderr is not a terminal."""
    byte_units = unit == "B"
    return tqdm(
        total=total,
        desc=escape(desc),
        unit=unit,
        unit_scale=byte_units,
        unit_divisor=1024 if byte_units else 1000,
        disable=not interactive(),
        dynamic_ncols=True,
        leave=kwargs.pop("leave", True),
        **kwargs,
    )


def log(message: str) -> None:
    """A timestamped line on stderr when no bar is shown (non-TTY), nothing otherwise;
    control characters escaped (:func:`migrate.output.escape`)."""
    if not interactive():
        stamp = time.strftime("%H:%M:%S")
        # one write per line: print() writes the text and the newline separately, so lines
        # logged from several threads (parallel cutover) could interleave
        sys.stderr.write(f"{stamp} {escape(message)}\n")
        sys.stderr.flush()
