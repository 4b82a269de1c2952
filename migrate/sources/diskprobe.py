"""Disk sizes and formats from the images themselves (``qemu-img info``).

A domain XML says where a disk lives and, at best, its format; only the image knows
its virtual size, how much of it is allocated and what backing chain it has.  Both the
libvirt source (local URIs) and offline domain XML files use this; the libvirt source
asks storage volumes first and comes here only for files that are not in a pool.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from migrate.errors import VmmoveError
from migrate.imageinfo import image_info
from migrate.model import VM, Disk

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


def size_problem(disk: Disk) -> str | None:
    """One line when a disk claims an absurd size; also recorded in ``disk.error``."""
    for what, value in (("virtual size", disk.virtual_size), ("allocated size", disk.allocated_size)):
        if value is not None and (value < 0 or value > MAX_DISK):
            disk.error = f"{what} of {value} bytes is absurd"
            return f"disk {disk.target} ({disk.path or disk.volume}): {disk.error}"
    return None


def probe_disk(disk: Disk, force_share: bool, missing_is_error: bool = True) -> str | None:
    """Fill a disk's format, sizes and backing chain from its local image.

    Returns one line describing the problem when the image is missing or unreadable
    (the same text is kept in ``disk.error``); ``None`` when all went well or there is
    nothing local to read.  A missing CD-ROM/floppy medium only sets ``disk.error``:
    install media are routinely deleted and are not migrated.
    """
    path = local_path(disk)
    if path is None:
        return None
    if not os.path.exists(path):
        disk.error = "no such file or device"
        if missing_is_error and disk.device in DATA_DEVICES:
            return f"disk {disk.target}: {path}: {disk.error}"
        return None
    fmt = disk.format if disk.format in QEMU_FORMATS else None
    try:
        info = image_info(path, force_share=force_share, fmt=fmt)
    except VmmoveError as exc:
        disk.error = str(exc).removeprefix(f"{path}: ")
        if disk.device in DATA_DEVICES:
            return f"disk {disk.target}: {exc}"
        return None
    disk.format = info.format
    disk.virtual_size = info.virtual_size
    disk.allocated_size = info.actual_size
    if info.backing_chain:
        disk.backing_chain = info.backing_chain
    return size_problem(disk)


def probe_disks(
    items: Iterable[tuple[VM, Disk, bool]], jobs: int | None = None, missing_is_error: bool = True
) -> list[tuple[VM, str]]:
    """Probe many ``(vm, disk, force_share)`` at once (qemu-img in threads); the problems."""
    found: list[tuple[int, VM, str]] = []
    work: list[tuple[int, VM, Disk, bool]] = []
    for index, (vm, disk, share) in enumerate(items):
        path = local_path(disk)
        if path is None:
            continue
        if not os.path.exists(path):  # settled here: no thread, no subprocess
            problem = probe_disk(disk, share, missing_is_error)
            if problem:
                found.append((index, vm, problem))
            continue
        work.append((index, vm, disk, share))

    def one(item: tuple[int, VM, Disk, bool]) -> str | None:
        _, _, disk, share = item
        return probe_disk(disk, share, missing_is_error)

    workers = max(1, min(jobs or 4, len(work)))
    if workers == 1:
        results = [one(item) for item in work]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qemu-img") as pool:
            results = list(pool.map(one, work))
    found.extend((index, vm, problem) for (index, vm, _, _), problem in zip(work, results) if problem)
    return [(vm, problem) for _, vm, problem in sorted(found, key=lambda f: f[0])]
