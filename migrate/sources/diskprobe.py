"""Disk sizes and formats from the images themselves (``qemu-img info``).

A domain XML says where a disk lives and, at best, its format; only the image knows
its virtual size, how much of it is allocated and what backing chain it has.  Both the
libvirt source (local URIs) and offline domain XML files use this; the libvirt source
asks storage volumes first and comes here only for files that are not in a pool.

Images are read through :mod:`migrate.sources.containment`: one layer at a time, format
pinned, every file a header names checked before it is opened.  For an offline domain
XML every file must lie inside the XML's folder; for a live libvirt host the headers
must agree with the backing chain libvirt reports.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from migrate.core.errors import VmmoveError
from migrate.core.model import VM, Disk, Source, SourceKind
from migrate.sources.containment import (
    Export,
    MissingFile,
    check_agreement,
    open_path,
    protocol_of,
)

MAX_DISK = 1024**5  # 1 PiB: no real guest disk is that large; a larger value is a broken header
# Formats qemu-img reads; a declared format outside this set is left for qemu-img to probe.
QEMU_FORMATS = {
    "raw", "qcow2", "qcow", "vmdk", "vdi", "vhdx", "vpc", "qed", "parallels", "bochs",
    "cloop", "dmg", "luks",
}
DATA_DEVICES = ("disk", "lun")  # cdrom/floppy media are not migrated data


def local_path(disk: Disk) -> str | None:
    """The file or block device behind a disk when it can exist on this machine."""
    if disk.source_type in ("file", "block") and disk.path and os.path.isabs(disk.path):
        return disk.path
    return None


def offline_reference(disk: Disk) -> str | None:
    """A disk path of an offline descriptor that is not an absolute file name (relative,
    or with a protocol such as ``json:``/``nbd:``): vmmove opens none of those."""
    if disk.source_type in ("file", "block") and disk.path and not os.path.isabs(disk.path):
        return disk.path
    return None


def size_problem(disk: Disk) -> str | None:
    """One line when a disk claims an absurd size; also recorded in ``disk.error``."""
    for what, value in (("virtual size", disk.virtual_size), ("allocated size", disk.allocated_size)):
        if value is not None and (value < 0 or value > MAX_DISK):
            disk.error = f"{what} of {value} bytes is absurd"
            return f"disk {disk.target} ({disk.path or disk.volume}): {disk.error}"
    return None


def probe_disk(disk: Disk, force_share: bool, missing_is_error: bool = True,
               source: Source | None = None) -> str | None:
    """Fill a disk's format, sizes and backing chain from its local image.

    ``source`` is the VM's source: an offline one (domain XML file) confines every file
    to its export, a live libvirt one requires the headers to agree with the chain libvirt
    reported (``disk.backing_chain`` as read from libvirt).  Returns one line describing
    the problem when the image is missing, unreadable or refused (the same text is kept in
    ``disk.error``); ``None`` when all went well or there is nothing local to read.  A
    missing CD-ROM/floppy medium only sets ``disk.error``: install media are routinely
    deleted and are not migrated.
    """
    source = source or Source(SourceKind.LIBVIRT, "")
    trusted = source.kind == SourceKind.LIBVIRT
    path = local_path(disk)
    if path is None:
        odd = None if trusted else offline_reference(disk)
        if odd is not None:
            kind = f"a {protocol_of(odd)}: name" if protocol_of(odd) else "not an absolute path"
            disk.error = f"{odd[:80]!r} is {kind}, not a file in the export; refused"
            return f"disk {disk.target}: {disk.error}" if disk.device in DATA_DEVICES else None
        return None
    export = Export.of(source, disk)
    fmt = disk.format if disk.format in QEMU_FORMATS else None
    try:
        if trusted and not os.path.exists(path):
            raise MissingFile("", path)
        chain = open_path(export, path, fmt, force_share=force_share)
        if trusted:
            check_agreement(chain, disk.backing_chain, path)
    except MissingFile as exc:
        if exc.path != os.path.normpath(path):
            disk.error = str(exc)
            return f"disk {disk.target}: {exc}" if disk.device in DATA_DEVICES else None
        disk.error = "no such file or device"
        if missing_is_error and disk.device in DATA_DEVICES:
            return f"disk {disk.target}: {path}: {disk.error}"
        return None
    except VmmoveError as exc:
        disk.error = str(exc).removeprefix(f"{path}: ")
        if disk.device in DATA_DEVICES:
            return f"disk {disk.target}: {exc}"
        return None
    disk.format = chain.format
    disk.virtual_size = chain.virtual_size
    disk.allocated_size = chain.actual_size
    # The checked header chain (which agreed with libvirt's, if libvirt gave one) replaces
    # whatever the XML claimed: an offline XML's <backingStore> is not evidence.
    disk.backing_chain = chain.backing_files
    return size_problem(disk)


def probe_disks(
    items: Iterable[tuple[VM, Disk, bool]], jobs: int | None = None, missing_is_error: bool = True
) -> list[tuple[VM, str]]:
    """Probe many ``(vm, disk, force_share)`` at once (qemu-img in threads); the problems."""
    found: list[tuple[int, VM, str]] = []
    work: list[tuple[int, VM, Disk, bool]] = []
    for index, (vm, disk, share) in enumerate(items):
        path = local_path(disk)
        if path is None or not os.path.exists(path):  # settled here: no thread, no qemu-img
            problem = probe_disk(disk, share, missing_is_error, vm.source)
            if problem:
                found.append((index, vm, problem))
            continue
        work.append((index, vm, disk, share))

    def one(item: tuple[int, VM, Disk, bool]) -> str | None:
        _, vm, disk, share = item
        return probe_disk(disk, share, missing_is_error, vm.source)

    workers = max(1, min(jobs or 4, len(work)))
    if workers == 1:
        results = [one(item) for item in work]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qemu-img") as pool:
            results = list(pool.map(one, work))
    found.extend((index, vm, problem) for (index, vm, _, _), problem in zip(work, results) if problem)
    return [(vm, problem) for _, vm, problem in sorted(found, key=lambda f: f[0])]
