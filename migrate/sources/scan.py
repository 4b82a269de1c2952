"""``vmmove scan``'s engine: every URI and file in, one :class:`Inventory` out.

Sources are read concurrently (threads: the work is waiting on libvirt daemons, ssh and
qemu-img, not Python), yet the inventory lists them in the order they were given, folder
contents sorted, so two scans of the same things produce the same file.  A source that
fails becomes one :class:`ScanError` line and never stops the others.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from migrate import __version__
from migrate.core.errors import VmmoveError
from migrate.core.model import VM, Inventory, ScanError, SourceKind, distinguish
from migrate.core.progress import Subscriber, without_password
from migrate.core.errors import SourceError
from migrate.sources.containment import inside

DESCRIPTORS = (".xml", ".ovf", ".ova", ".vmx")
Result = tuple[list[VM], list[ScanError]]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(location: str, exc: BaseException) -> ScanError:
    """A ScanError from any exception, without repeating the location it names."""
    if isinstance(exc, VmmoveError):
        message = str(exc)
    else:  # a reader bug: still one line, never a traceback
        message = f"unexpected {type(exc).__name__}: {exc}"
    message = _one_line(message)
    for prefix in (f"{location}: ", f"{without_password(location)}: ",
                   f"{os.path.basename(location)}: "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
            break
    return ScanError(location, message or type(exc).__name__)


def read_file(path: str, pve_storage: dict[str, str] | None = None,
              ovf_configuration: str | None = None) -> Result:
    """The VMs of one descriptor file, chosen by extension (``<vmid>.conf``: Proxmox VE,
    its disks found through ``pve_storage``, storage ID → local folder).

    ``ovf_configuration`` names the DeploymentOptionSection configuration OVF/OVA
    descriptors are read with (default: the one they mark default).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext == ".conf":
        from migrate.sources.diskprobe import probe_disks
        from migrate.sources.pve import read_pve_config

        vm = read_pve_config(path, pve_storage)
        # The Proxmox host may still run the VM: read images shared (-U), as for domain XML;
        # a failed probe is kept in disk.error, which _with_disk_errors reports.
        probe_disks((vm, d, True) for d in vm.disks if not d.error)
        return _with_disk_errors(path, [vm])
    if ext == ".xml":
        from migrate.sources.diskprobe import probe_disks
        from migrate.sources.domxml import read_domain_xml

        vm = read_domain_xml(path)
        # An offline XML does not say whether the VM runs: read images shared (-U).
        problems = probe_disks((vm, d, True) for d in vm.disks)
        return [vm], [ScanError(path, _one_line(f"VM '{v.name}': {p}")) for v, p in problems]
    if ext == ".ovf":
        from migrate.sources.ovf import read_ovf

        return _with_disk_errors(path, list(read_ovf(path, ovf_configuration)))
    if ext == ".ova":
        from migrate.sources.ova import read_ova

        return _with_disk_errors(path, list(read_ova(path, ovf_configuration)))
    if ext == ".vmx":
        from migrate.sources.vmx import read_vmx

        return _with_disk_errors(path, [read_vmx(path)])
    raise SourceError(
        f"{path}: unknown kind of file (expected a domain .xml, .ovf, .ova, .vmx or a "
        "Proxmox VE <vmid>.conf)"
    )


def _with_disk_errors(path: str, vms: list[VM]) -> Result:
    """The VMs, and one error line per data disk the reader could not read (missing vmdk…).

    The VM stays in the inventory (assessment flags the disk critical); the line makes the
    scan's exit status say that something is missing, as for domain XML.
    """
    errors = []
    for vm in vms:
        for disk in vm.disks:
            if not disk.error or disk.device not in ("disk", "lun"):
                continue
            # an OVA disk's path is vmmove's json: window: the error names the member instead
            where = (f"{disk.path}: " if disk.path and disk.path not in disk.error
                     and not disk.path.startswith("json:") else "")
            errors.append(ScanError(path, _one_line(f"VM '{vm.name}': disk {disk.target}: {where}{disk.error}")))
    problems = next((vm.metadata["ova.manifest.problems"] for vm in vms
                     if vm.metadata.get("ova.manifest.problems")), "")
    errors.extend(ScanError(path, _one_line(line)) for line in problems.splitlines() if line)
    return vms, errors


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))


def special_kind(path: str) -> str | None:
    """``"a FIFO"``, ``"a socket"``, ``"a … device"`` for a special file (after symlinks),
    else ``None``.  Opening one could block for ever (a FIFO) or read a device."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((what for test, what in _SPECIAL if test(mode)), None)


def _pve_config(folder: str, name: str) -> bool:
    """A Proxmox VE VM configuration in a folder walk: ``<vmid>.conf``, not under ``lxc/``
    (containers' configurations have the same names)."""
    from migrate.sources.pve import CONF_NAME

    return bool(CONF_NAME.match(name)) and os.path.basename(folder) != "lxc"


def walk(path: str) -> Iterator[tuple[str, ScanError | None]]:
    """Descriptor files under ``path`` (sorted, recursive); other files are skipped.

    An explicit file is always yielded, whatever its extension, so that an unknown one is
    reported; a missing path yields its error, and so does a descriptor found in the
    folder that is a link to a file outside it (containment: docs/security.md).  Special
    files (FIFOs, sockets, devices) named like descriptors are never opened: each yields one
    error line saying it was skipped.
    """
    abspath = os.path.abspath(path)
    kind = special_kind(abspath)
    if kind:
        yield abspath, ScanError(abspath, f"{kind}, not a file: skipped")
        return
    if os.path.isfile(abspath):
        yield abspath, None
        return
    if not os.path.isdir(abspath):
        yield abspath, ScanError(abspath, "no such file or directory")
        return

    def onerror(exc: OSError) -> None:
        raise exc

    real_top = os.path.realpath(abspath)

    try:
        for root, dirs, files in os.walk(abspath, onerror=onerror):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue  # editor and partial-write files
                if os.path.splitext(name)[1].lower() in DESCRIPTORS or _pve_config(root, name):
                    found = os.path.join(root, name)
                    if not inside(real_top, os.path.realpath(found)):
                        # e.g. evil.vmx -> /etc/shadow: never read, never quoted
                        yield found, ScanError(found, "a link to a file outside the scanned "
                                                      "folder; not read")
                        continue
                    kind = special_kind(found)
                    yield found, (ScanError(found, f"{kind}, not a file: skipped")
                                  if kind else None)
    except OSError as exc:
        where = exc.filename or abspath
        yield where, ScanError(where, exc.strerror or str(exc))


def _guard(location: str, work: Callable[[], Result]) -> Result:
    try:
        return work()
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        return [], [_error(location, exc)]


@dataclass(frozen=True)
class _ScanItem:
    item: str = "scan"
    label: str = "scan"


#: The one progress item of a scan (the sources read).
SCAN = _ScanItem()

def scan(
    uris: list[str],
    paths: list[str],
    jobs: int | None = None,
    timeout: float | None = None,
    pve_storage: dict[str, str] | None = None,
    ovf_configuration: str | None = None,
    progress: Subscriber | None = None,
) -> Inventory:
    """Read every libvirt URI and every file (folders recursively) into one inventory;
    ``pve_storage`` maps Proxmox VE storage IDs to local folders (``--pve-storage``);
    ``ovf_configuration``: see :func:`read_file`; ``progress`` (closed here) hears one
    item, ``scan``, queued with the number of sources and advanced by one per source."""
    from migrate.clients.libvirt import DEFAULT_TIMEOUT
    from migrate.sources.libvirt_uri import scan_uri

    limit = timeout or DEFAULT_TIMEOUT
    slots: list[Result | None] = []
    tasks: list[tuple[int, str, Callable[[], Result]]] = []
    for uri in uris:
        tasks.append((len(slots), uri, lambda u=uri: scan_uri(u, jobs=jobs, timeout=limit)))
        slots.append(None)
    for path in paths:
        for found, error in walk(path):
            if error is not None:
                slots.append(([], [error]))
            else:
                tasks.append((len(slots), found,
                              lambda f=found: read_file(f, pve_storage, ovf_configuration)))
                slots.append(None)

    workers = max(1, min(jobs or 8, len(tasks) or 1))
    progress = progress or Subscriber()
    progress.on_queued(SCAN, len(tasks), 0)
    try:
        if workers == 1:
            for slot, location, work in tasks:
                slots[slot] = _guard(location, work)
                progress.on_progress(SCAN, 1)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan") as pool:
                futures = {slot: pool.submit(_guard, location, work) for slot, location, work in tasks}
                for slot, future in futures.items():
                    slots[slot] = future.result()
                    progress.on_progress(SCAN, 1)
    finally:
        progress.close()

    inventory = Inventory(
        scanned_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        vmmove_version=__version__,
    )
    for result in slots:
        assert result is not None
        vms, errors = result
        inventory.vms.extend(vms)
        # a URI's password (user:password@host) is never printed nor written
        inventory.errors.extend(ScanError(without_password(e.source), _one_line(e.message))
                                for e in errors)
    distinguish(inventory.vms)
    return inventory


def source_labels(vms: Sequence[VM]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Short names for the places VMs were read from, so a table need not repeat them.

    A libvirt URI is named by its host (``kvm1``; ``local`` for this machine, with the
    URI's path when two local URIs differ, e.g. ``local/session``), a ``test:///`` node
    by its file name; an offline descriptor by its path relative to the current folder
    (``#member`` inside an OVA).  Returns (label by VM key, [(label, full location)] for
    the labels that differ from their location, in first-seen order).
    """
    def libvirt_label(uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme == "test":
            return os.path.basename(parts.path) or "test"
        host = parts.hostname or "local"
        return "local" if host in ("localhost", "127.0.0.1", "::1") else host

    def file_label(vm: VM) -> str:
        location = vm.source.location
        if location.startswith("/"):
            rel = os.path.relpath(location)
            location = rel if not rel.startswith("..") else location
        return f"{location}#{vm.source.member}" if vm.source.member else location

    uris = sorted({vm.source.location for vm in vms if vm.source.kind == SourceKind.LIBVIRT})
    first = {uri: libvirt_label(uri) for uri in uris}
    clashes = {label for label in first.values() if list(first.values()).count(label) > 1}
    for uri in uris:
        if first[uri] in clashes:
            parts = urlsplit(uri)
            first[uri] = f"{first[uri]}{parts.path}" if parts.scheme != "test" else \
                f"{first[uri]}@{os.path.dirname(parts.path)}"
    labels: dict[str, str] = {}
    legend: list[tuple[str, str]] = []
    for vm in vms:
        if vm.source.kind == SourceKind.LIBVIRT:
            label = first[vm.source.location]
            if (label, vm.source.location) not in legend:
                legend.append((label, vm.source.location))
        else:
            label = file_label(vm)
        labels[vm.key] = label
    return labels, legend
