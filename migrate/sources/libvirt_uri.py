"""VMs from a live libvirt connection (``qemu:///system``, ``qemu+ssh://…``, ``test:///…``, ``esx://…``).

One connection per URI, opened read-only: scanning must never change a source host.
The number of calls per domain is kept to one ``XMLDesc``: run states and snapshot
presence come from a few filtered ``listAllDomains`` calls, storage volumes are listed
once per connection and reused, and ``qemu-img`` runs only for local files that exist.

Credentials (``esx://``, ``vpx://``, ``hyperv://``, password-protected TCP): libvirt's own
``auth.conf`` is read first (``$LIBVIRT_AUTH_FILE`` or ``~/.config/libvirt/auth.conf``);
otherwise the user name comes from the URI (``esx://root@host``) or
``$VMMOVE_LIBVIRT_USER`` and the password from ``$VMMOVE_LIBVIRT_PASSWORD``.  Nothing is
ever prompted for: a missing credential is a clean "authentication failed" line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from migrate.clients import libvirt as client
from migrate.clients.libvirt import (
    DEFAULT_TIMEOUT,
    LibvirtCallError,
    is_local,
    open_readonly,
)
from migrate.core.model import VM, Disk, PowerState, ScanError, Source, SourceKind
from migrate.core.progress import trace_call, without_password
from migrate.core.errors import SourceError
from migrate.sources.diskprobe import probe_disks, size_problem
from migrate.sources.domxml import parse_domain_xml, parse_xml

# --------------------------------------------------------------------------- volumes


@dataclass
class VolumeFacts:
    capacity: int
    allocation: int
    format: str | None
    backing: str | None = None


@dataclass
class _Volumes:
    """Storage volumes of one connection, listed once and looked up by path or pool/name."""

    conn: Any
    by_path: dict[str, Any] = field(default_factory=dict)
    by_name: dict[tuple[str, str], Any] = field(default_factory=dict)
    facts: dict[int, VolumeFacts] = field(default_factory=dict)
    unindexed: bool = False  # some volume's path is unknown: ask libvirt on a miss
    built: bool = False

    def _build(self) -> None:
        self.built = True
        for pool_name, vol in client.pool_volumes(self.conn):
            self.by_name[(pool_name, vol.name())] = vol
            key = vol.key()  # known locally; it is the path for file-based pools
            if key.startswith("/"):
                self.by_path[key] = vol
            else:
                self.unindexed = True

    def lookup(self, disk: Disk) -> Any:
        if not self.built:
            self._build()
        if disk.source_type == "volume":
            return self.by_name.get((disk.pool or "", disk.volume or ""))
        if not disk.path:
            return None
        vol = self.by_path.get(disk.path)
        if vol is None and self.unindexed:
            vol = client.volume_by_path(self.conn, disk.path)
            self.by_path[disk.path] = vol
        return vol

    def facts_of(self, vol: Any, need_format: bool) -> VolumeFacts | None:
        """Capacity and allocation (one call); format and backing file from the volume XML,
        parsed only when the domain did not declare the format or a backing store exists."""
        cached = self.facts.get(id(vol))
        if cached is not None and (cached.format or not need_format):
            return cached
        info = client.volume_info(vol)
        if info is None:
            return None
        capacity, allocation, xml = info
        facts = VolumeFacts(capacity=int(capacity), allocation=int(allocation), format=None)
        if need_format or "<backingStore>" in xml:
            try:
                root = parse_xml(xml, f"volume {vol.name()}")
            except SourceError:
                root = None
            if root is not None:
                fmt = root.find("target/format")
                backing = root.find("backingStore/path")
                facts.format = fmt.get("type") if fmt is not None else None
                if backing is not None and backing.text:
                    facts.backing = backing.text.strip()
        self.facts[id(vol)] = facts
        return facts


def _apply_volume(disk: Disk, facts: VolumeFacts) -> None:
    from migrate.core.model import BackingFile

    disk.virtual_size = facts.capacity
    disk.allocated_size = facts.allocation
    if facts.format and facts.format not in ("none", "unknown"):
        disk.format = facts.format
    if facts.backing and not disk.backing_chain:
        disk.backing_chain = [BackingFile(path=facts.backing)]


# ------------------------------------------------------------------------------ scan


def scan_connection(
    conn: Any, uri: str, jobs: int | None = None
) -> tuple[list[VM], list[ScanError]]:
    """Every domain (defined and running) of an open connection."""
    local = is_local(conn.getURI() or uri)
    test_driver = client.driver(conn.getURI() or uri) == "test"
    trace_call(f"listAllDomains(0) on {without_password(uri)}")
    domains = sorted(conn.listAllDomains(0), key=lambda d: d.name())
    states = client.power_states(conn, domains)
    snapshots = client.snapshot_counts(conn, domains)
    volumes = _Volumes(conn)
    source = Source(SourceKind.LIBVIRT, uri)

    vms: list[VM] = []
    errors: list[ScanError] = []
    to_probe: list[tuple[VM, Disk, bool]] = []
    for dom in domains:
        try:
            xml = client.inactive_xml(dom)
        except LibvirtCallError as exc:
            errors.append(ScanError(uri, f"domain '{dom.name()}': {exc}"))
            continue
        if xml is None:
            continue  # undefined while we were scanning
        try:
            vm = parse_domain_xml(xml, source)
        except SourceError as exc:
            errors.append(ScanError(uri, str(exc).removeprefix(f"{uri}: ")))
            continue
        key = dom.UUIDString()
        vm.power_state = states.get(key, PowerState.UNKNOWN)
        vm.snapshots = snapshots.get(key, 0)
        active = dom.ID() != -1
        for disk in vm.disks:
            vol = volumes.lookup(disk) if (disk.path or disk.volume) else None
            facts = volumes.facts_of(vol, not disk.format) if vol is not None else None
            if facts is not None:
                _apply_volume(disk, facts)
                problem = size_problem(disk)
                if problem:
                    errors.append(ScanError(uri, f"domain '{vm.name}': {problem}"))
            elif local:
                to_probe.append((vm, disk, active))
            elif disk.source_type in ("file", "block") and disk.path:
                _block_info(dom, disk)
        vms.append(vm)

    # The test driver's files are make-believe: a missing one there is not a problem.
    for vm, problem in probe_disks(to_probe, jobs=jobs, missing_is_error=not test_driver):
        errors.append(ScanError(uri, f"domain '{vm.name}': {problem}"))
    return vms, errors


def _block_info(dom: Any, disk: Disk) -> None:
    """Sizes of a remote host's file through libvirt (virDomainGetBlockInfo), when it can."""
    # A target shared by two buses is qualified (``sata:sda``, see domxml): libvirt
    # knows that disk by its source path instead.
    device = disk.path if ":" in disk.target and disk.path else disk.target
    sizes = client.block_info(dom, device)
    if sizes is not None:
        disk.virtual_size, disk.allocated_size = sizes


def scan_uri(
    uri: str, jobs: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[list[VM], list[ScanError]]:
    """Every VM behind one libvirt URI; a host that cannot be read is one ScanError."""
    try:
        conn = open_readonly(uri, timeout)
    except SourceError as exc:
        return [], [ScanError(uri, str(exc).removeprefix(f"{uri}: ")
                              .removeprefix(f"{without_password(uri)}: "))]
    try:
        with client.translated():
            return scan_connection(conn, uri, jobs)
    except LibvirtCallError as exc:  # the connection dropped half-way
        return [], [ScanError(uri, f"scan failed: {exc}")]
    finally:
        client.close_quietly(conn)
