"""What a convert or an upload run did, as table rows and plain data (``-o``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrate.core.output import human_size

if TYPE_CHECKING:
    from converters.convert import DiskResult
    from converters.transfer.base import TransferResult


def convert_rows(results: list[DiskResult]) -> list[list[Any]]:
    rows = []
    for r in results:
        detail = r.error or (Path(r.output).name if r.output else "") or r.note or ""
        if r.ok and r.note and r.output:
            detail = f"{Path(r.output).name} ({r.note})"
        rows.append([
            r.vm, r.disk, r.status, r.format if r.status != "ignored" else "-",
            human_size(r.virtual_size), human_size(r.allocated),
            {True: "yes", False: "no", None: "-"}[r.verified],
            f"{r.seconds:.2f}s" if r.seconds is not None else "-", detail])
    return rows


def convert_data(r: DiskResult) -> dict[str, Any]:
    return asdict(r)


def destination(r: TransferResult) -> str:
    if r.url:
        return r.url
    if r.dv:
        return f"{r.namespace}/{r.dv}"
    return "-"


def transfer_rows(results: list[TransferResult]) -> list[list[Any]]:
    return [[r.item, r.backend, r.status, human_size(r.size), human_size(r.sent),
             f"{r.seconds:.1f}s", r.error or destination(r)] for r in results]


def transfer_data(r: TransferResult) -> dict[str, Any]:
    return {"item": r.item, "status": r.status, "checksum": r.checksum,
            "seconds": round(r.seconds, 3), "error": r.error, **r.journal_data()}
