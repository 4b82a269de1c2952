"""click parameter types: sizes and rates (``50MB/s``, ``20Gi``) and times (``--at``).

A value that is not one fails as every vmmove usage error does: one line naming the
value (``vmmove: error: 50XB/s: not a size or rate …``), exit status 2.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import click

from migrate.core.errors import UsageError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)(?:/s)?\s*$", re.I)


def parse_rate(text: str | None) -> int | None:
    """``50MB/s``, ``100M``, ``1.5GiB`` → bytes (binary units, as the aws cli reads them)."""
    if not text:
        return None
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"{text}: not a size or rate (examples: 50MB/s, 100M, 1G)")
    scale = 1024 ** " kmgt".index((m.group(2) or " ").lower())
    return int(float(m.group(1)) * scale)


class ByteSize(click.ParamType):
    """A size or a rate in bytes (binary units): ``50MB/s``, ``100M``, ``20Gi``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | None:
        if isinstance(value, int) or value is None:
            return value
        return parse_rate(str(value))


class AtTime(click.ParamType):
    """``--at TIME``: ISO 8601, or ``HH:MM`` today (the next such time)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime.datetime | None:
        if isinstance(value, datetime.datetime) or value is None:
            return value
        from migrate.pipeline.cutover import parse_at

        return parse_at(str(value))


class Quantity(click.ParamType):
    """A Kubernetes quantity in bytes: ``500Gi``, ``2Ti``, ``750G`` (``--max-size``)."""

    name = "quantity"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | None:
        if isinstance(value, int) or value is None or value == "":
            return value or None
        from migrate.clients.cluster import parse_quantity

        try:
            return int(parse_quantity(str(value)))
        except ValueError:
            raise UsageError(f"--max-size {value!r}: not a size (examples: 500Gi, 2Ti)") from None


SIZE = ByteSize()
QUANTITY = Quantity()
AT = AtTime()
