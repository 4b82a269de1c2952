"""``vmmove convert --status``: what a work folder's convert records say, read-only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from migrate.core.output import human_size, rfc3339

STATUS_HEADERS = ["VM", "DISK", "STATUS", "FORMAT", "ALLOCATED", "VERIFIED", "CHECKSUM",
                  "FINISHED", "OUTPUT/ERROR"]


def convert_records(workdir: Path, inventory: str | None,
                    vms: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Each convert record of ``workdir`` (only ``vms`` of ``inventory`` when both are
    given) as plain data — item, VM, disk, status, output, format, sizes, verified,
    checksum, times (RFC 3339), seconds, error — and as :data:`STATUS_HEADERS` rows."""
    from converters.convert import convert_status
    from migrate.core.serialize import load_inventory

    prefixes: list[str] | None = None
    if inventory and vms:
        prefixes = list(dict.fromkeys(vm.key for vm in load_inventory(inventory).select(vms)))
    steps = convert_status(workdir, prefixes)
    data = [
        {"item": s.item, "vm": s.vm, "disk": s.disk, "status": s.status,
         "output": s.output, "format": s.format,
         "virtual_size": s.virtual_size, "allocated": s.allocated,
         "verified": s.verified, "checksum": s.checksum,
         "started": rfc3339(s.started), "finished": rfc3339(s.finished),
         "seconds": s.seconds,
         "error": s.error}
        for s in steps
    ]
    rows = [
        [d["vm"] or d["item"], d["disk"] or "", d["status"], d["format"] or "-",
         human_size(d["allocated"]), {True: "yes", False: "no", None: "-"}[d["verified"]],
         (d["checksum"] or "-")[:19],
         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.finished)) if s.finished
         else "-", d["error"] or (Path(d["output"]).name if d["output"] else "")]
        for d, s in zip(data, steps)
    ]
    return data, rows
