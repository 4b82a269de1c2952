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

import os
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from migrate.model import VM, Disk, PowerState, ScanError, Source, SourceKind
from migrate.sources import SourceError
from migrate.progress import trace_call, without_password
from migrate.sources.diskprobe import probe_disks, size_problem
from migrate.sources.domxml import parse_domain_xml, parse_xml

DEFAULT_TIMEOUT = 30.0
USER_ENV = "VMMOVE_LIBVIRT_USER"
PASSWORD_ENV = "VMMOVE_LIBVIRT_PASSWORD"
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}

_silenced = False


def _libvirt() -> Any:
    """Import libvirt lazily and stop it printing its own errors on stderr (we report them)."""
    global _silenced
    import libvirt

    if not _silenced:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _silenced = True
    return libvirt


def one_line(exc: BaseException) -> str:
    """A libvirt error as one line, without libvirt's own API-name prefix."""
    msg = exc.get_error_message() if hasattr(exc, "get_error_message") else None
    text = (msg or str(exc) or type(exc).__name__).strip()
    return " ".join(text.split())


# ------------------------------------------------------------------------ connection


def _driver(uri: str) -> str:
    return urlsplit(uri).scheme.split("+", 1)[0]


def is_local(uri: str) -> bool:
    """True when the URI's files are this machine's files (no host, or a local transport)."""
    parts = urlsplit(uri)
    transport = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else ""
    return transport in ("", "unix") and (parts.hostname or "") in LOCAL_HOSTS


def _noninteractive(uri: str) -> str:
    """``no_tty=1`` on ssh transports, so ssh fails instead of prompting inside a scan."""
    parts = urlsplit(uri)
    if not parts.scheme.endswith("+ssh"):
        return uri
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "no_tty" for k, _ in query):
        return uri
    query.append(("no_tty", "1"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _credentials(uri: str) -> Any:
    """The openAuth callback: fill user and password from the URI/environment, never prompt."""
    libvirt = _libvirt()
    user = urlsplit(uri).username or os.environ.get(USER_ENV)
    password = os.environ.get(PASSWORD_ENV)

    def callback(creds: list[list[Any]], _data: Any) -> int:
        for cred in creds:
            if cred[0] in (libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_USERNAME):
                value = user or cred[3]
            elif cred[0] in (libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT):
                value = password
            else:
                value = cred[3]
            if not value:
                return -1
            cred[4] = value
        return 0

    types = [
        libvirt.VIR_CRED_AUTHNAME,
        libvirt.VIR_CRED_USERNAME,
        libvirt.VIR_CRED_PASSPHRASE,
        libvirt.VIR_CRED_NOECHOPROMPT,
        libvirt.VIR_CRED_ECHOPROMPT,
    ]
    return [types, callback, None]


def _readonly_refused(exc: Any) -> bool:
    libvirt = _libvirt()
    text = one_line(exc).lower()
    return exc.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED or "read-only" in text or "readonly" in text


#: libvirt's hypervisor drivers (the part of a URI's scheme before ``+transport``), from
#: https://libvirt.org/uri.html and the driver pages; anything else is a typo.
DRIVERS = ("qemu", "test", "esx", "vpx", "gsx", "xen", "libxl", "lxc", "vbox", "vmwareplayer",
           "vmwarews", "vmwarefusion", "hyperv", "bhyve", "ch", "openvz", "vz", "parallels")
TRANSPORTS = ("", "ssh", "libssh", "libssh2", "tcp", "tls", "unix", "ext")


def check_uri(uri: str) -> None:
    """Refuse, before libvirt sees it, a URI whose mistake libvirt reports misleadingly.

    An unknown scheme (``bogus://x``) would be tried as a remote TLS connection and fail
    on a missing CA certificate; ``test://x/node.xml`` (two slashes) reads ``x`` as a
    host and looks for ``/node.xml``.  Raises :class:`SourceError` naming the URI.
    """
    parts = urlsplit(uri)
    uri = without_password(uri)
    if not parts.scheme:
        raise SourceError(f"{uri}: cannot connect: not a libvirt URI (expected e.g. "
                          "qemu:///system, qemu+ssh://root@host/system, test:///path/node.xml)")
    driver, _, transport = parts.scheme.partition("+")
    if driver not in DRIVERS:
        raise SourceError(f"{uri}: cannot connect: unknown libvirt driver {driver!r} "
                          f"(known: {', '.join(DRIVERS)}); for a local KVM host use "
                          "qemu:///system")
    if transport not in TRANSPORTS:
        raise SourceError(f"{uri}: cannot connect: unknown libvirt transport {transport!r} "
                          f"(known: {', '.join(t for t in TRANSPORTS if t)})")
    if driver == "test" and parts.netloc:
        raise SourceError(
            f"{uri}: cannot connect: test URIs take no host: {parts.netloc!r} was read as a "
            f"host name; write the node file's absolute path after three slashes, "
            f"test:///{parts.netloc}{parts.path} (or test://$PWD/{parts.netloc}{parts.path} "
            "for a path relative to this folder)")


def open_readonly(uri: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """A read-only libvirt connection, or SourceError naming the URI within ``timeout`` s.

    Read-only where the driver allows it; a driver that refuses read-only connections is
    opened normally (vmmove issues only reads).

    libvirt has no connect timeout of its own (an ssh or TCP connect to a dead host can
    hang for minutes), so the open runs in a daemon thread that is abandoned, and its
    connection closed if it ever arrives, when time runs out.
    """
    check_uri(uri)
    shown = without_password(uri)  # errors name the URI, never its password
    parts = urlsplit(uri)
    if parts.scheme == "test" and parts.path not in ("", "/default"):
        # The test driver's own parse error comes with libxml2 noise on stderr: check first.
        if not os.path.isfile(parts.path):
            raise SourceError(f"{shown}: cannot connect: no such node file {parts.path}")
    libvirt = _libvirt()
    target_uri = _noninteractive(uri)
    outcome: dict[str, Any] = {}
    lock = threading.Lock()

    trace_call(f"libvirt.openAuth({without_password(target_uri)!r}, VIR_CONNECT_RO)")

    def opener() -> None:
        try:
            try:
                conn = libvirt.openAuth(target_uri, _credentials(uri), libvirt.VIR_CONNECT_RO)
            except libvirt.libvirtError as exc:
                if not _readonly_refused(exc):
                    raise
                # a driver without read-only connections: vmmove still only reads
                conn = libvirt.openAuth(target_uri, _credentials(uri), 0)
        except libvirt.libvirtError as exc:
            outcome["error"] = one_line(exc)
            return
        except Exception as exc:  # noqa: BLE001 - reported as one line below
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            return
        with lock:
            if outcome.get("abandoned"):
                conn.close()
            else:
                outcome["conn"] = conn

    thread = threading.Thread(target=opener, name=f"libvirt-open {uri}", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        if "conn" in outcome:
            return outcome["conn"]
        if "error" in outcome:
            raise SourceError(f"{shown}: cannot connect: {outcome['error']}")
        outcome["abandoned"] = True
    raise SourceError(f"{shown}: cannot connect: no answer within {timeout:g} s")


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
        libvirt = _libvirt()
        self.built = True
        try:
            pools = self.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        except libvirt.libvirtError:
            return  # driver without storage API: sizes come from elsewhere
        for pool in pools:
            try:
                volumes = pool.listAllVolumes(0)
                pool_name = pool.name()
            except libvirt.libvirtError:
                continue
            for vol in volumes:
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
            libvirt = _libvirt()
            try:
                vol = self.conn.storageVolLookupByPath(disk.path)
            except libvirt.libvirtError:
                vol = None
            self.by_path[disk.path] = vol
        return vol

    def facts_of(self, vol: Any, need_format: bool) -> VolumeFacts | None:
        """Capacity and allocation (one call); format and backing file from the volume XML,
        parsed only when the domain did not declare the format or a backing store exists."""
        cached = self.facts.get(id(vol))
        if cached is not None and (cached.format or not need_format):
            return cached
        libvirt = _libvirt()
        try:
            _type, capacity, allocation = vol.info()
            xml = vol.XMLDesc(0)
        except libvirt.libvirtError:
            return None
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
    from migrate.model import BackingFile

    disk.virtual_size = facts.capacity
    disk.allocated_size = facts.allocation
    if facts.format and facts.format not in ("none", "unknown"):
        disk.format = facts.format
    if facts.backing and not disk.backing_chain:
        disk.backing_chain = [BackingFile(path=facts.backing)]


# ------------------------------------------------------------------------------ scan


def _states(conn: Any, domains: list[Any]) -> dict[str, PowerState]:
    """Run state of every domain from filtered listings, not one call per domain."""
    libvirt = _libvirt()
    states: dict[str, PowerState] = {}
    for dom in domains:
        states[dom.UUIDString()] = PowerState.SHUTOFF if dom.ID() == -1 else PowerState.RUNNING
    try:
        paused = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED)
        other = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_OTHER)
    except libvirt.libvirtError:  # driver without filters: ask each active domain
        paused, other = [], [d for d in domains if d.ID() != -1]
    for dom in paused:
        states[dom.UUIDString()] = PowerState.PAUSED
    mapping = {
        libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
        libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
        libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
        libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTDOWN,
        libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTOFF,
        libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
        libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
    }
    for dom in other:
        try:
            state, _reason = dom.state()
        except libvirt.libvirtError:
            continue
        states[dom.UUIDString()] = mapping.get(state, PowerState.UNKNOWN)
    return states


def _snapshot_counts(conn: Any, domains: list[Any]) -> dict[str, int]:
    libvirt = _libvirt()
    try:
        with_snapshots = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT)
    except libvirt.libvirtError:
        with_snapshots = domains
    counts: dict[str, int] = {}
    for dom in with_snapshots:
        try:
            counts[dom.UUIDString()] = dom.snapshotNum(0)
        except libvirt.libvirtError:
            pass
    return counts


def scan_connection(
    conn: Any, uri: str, jobs: int | None = None
) -> tuple[list[VM], list[ScanError]]:
    """Every domain (defined and running) of an open connection."""
    libvirt = _libvirt()
    local = is_local(conn.getURI() or uri)
    test_driver = _driver(conn.getURI() or uri) == "test"
    trace_call(f"listAllDomains(0) on {without_password(uri)}")
    domains = sorted(conn.listAllDomains(0), key=lambda d: d.name())
    states = _states(conn, domains)
    snapshots = _snapshot_counts(conn, domains)
    volumes = _Volumes(conn)
    source = Source(SourceKind.LIBVIRT, uri)

    vms: list[VM] = []
    errors: list[ScanError] = []
    to_probe: list[tuple[VM, Disk, bool]] = []
    for dom in domains:
        try:
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue  # undefined while we were scanning
            errors.append(ScanError(uri, f"domain '{dom.name()}': {one_line(exc)}"))
            continue
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
    libvirt = _libvirt()
    try:
        # A target shared by two buses is qualified (``sata:sda``, see domxml): libvirt
        # knows that disk by its source path instead.
        device = disk.path if ":" in disk.target and disk.path else disk.target
        capacity, allocation, _physical = dom.blockInfo(device, 0)
    except libvirt.libvirtError:
        return
    disk.virtual_size = int(capacity)
    disk.allocated_size = int(allocation)


def scan_uri(
    uri: str, jobs: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[list[VM], list[ScanError]]:
    """Every VM behind one libvirt URI; a host that cannot be read is one ScanError."""
    try:
        conn = open_readonly(uri, timeout)
    except SourceError as exc:
        return [], [ScanError(uri, str(exc).removeprefix(f"{uri}: ")
                              .removeprefix(f"{without_password(uri)}: "))]
    libvirt = _libvirt()
    try:
        return scan_connection(conn, uri, jobs)
    except libvirt.libvirtError as exc:  # the connection dropped half-way
        return [], [ScanError(uri, f"scan failed: {one_line(exc)}")]
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
