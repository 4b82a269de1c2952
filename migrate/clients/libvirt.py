"""The one libvirt client: every connection vmmove opens, for the scan and the cutover alike.

One connection path (:func:`connect`): the URI is checked before libvirt sees it
(:func:`check_uri`), ssh transports get ``no_tty=1`` so ssh fails instead of prompting,
credentials come from libvirt's ``auth.conf``, the URI's user or ``$VMMOVE_LIBVIRT_USER``
and ``$VMMOVE_LIBVIRT_PASSWORD`` and are never prompted for, and the open is bounded by
a timeout (libvirt has none of its own).  A ``qemu+ssh://`` host that scans fine
therefore neither prompts nor hangs at cutover.

The other modules never import ``libvirt`` (an import-linter contract): they call the
helpers here, which translate ``libvirtError`` into :class:`LibvirtCallError` (one line)
and use libvirt's named constants rather than numbers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from migrate.core.errors import ConnectError, VmmoveError
from migrate.core.model import PowerState
from migrate.core.progress import trace_call, without_password

DEFAULT_TIMEOUT = 30.0
USER_ENV = "VMMOVE_LIBVIRT_USER"
PASSWORD_ENV = "VMMOVE_LIBVIRT_PASSWORD"
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}

_silenced = False


class LibvirtCallError(VmmoveError):
    """A libvirt call failed; ``str()`` is libvirt's message as one line, ``code`` its
    error number (``VIR_ERR_*``)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def lib() -> Any:
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


@contextmanager
def translated() -> Iterator[None]:
    """Turn a ``libvirtError`` raised inside into :class:`LibvirtCallError`."""
    libvirt = lib()
    try:
        yield
    except libvirt.libvirtError as exc:
        raise LibvirtCallError(one_line(exc), exc.get_error_code()) from None


# ------------------------------------------------------------------------ connection


def driver(uri: str) -> str:
    """The hypervisor driver of a URI (``qemu`` for ``qemu+ssh://…``)."""
    return urlsplit(uri).scheme.split("+", 1)[0]


def is_local(uri: str) -> bool:
    """True when the URI's files are this machine's files (no host, or a local transport)."""
    parts = urlsplit(uri)
    transport = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else ""
    return transport in ("", "unix") and (parts.hostname or "") in LOCAL_HOSTS


def _noninteractive(uri: str) -> str:
    """``no_tty=1`` on ssh transports, so ssh fails instead of prompting."""
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
    libvirt = lib()
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
    libvirt = lib()
    text = one_line(exc).lower()
    return (exc.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED or "read-only" in text
            or "readonly" in text)


#: libvirt's hypervisor drivers (the part of a URI's scheme before ``+transport``), from
#: https://libvirt.org/uri.html and the driver pages; anything else is a typo.
DRIVERS = ("qemu", "test", "esx", "vpx", "gsx", "xen", "libxl", "lxc", "vbox", "vmwareplayer",
           "vmwarews", "vmwarefusion", "hyperv", "bhyve", "ch", "openvz", "vz", "parallels")
TRANSPORTS = ("", "ssh", "libssh", "libssh2", "tcp", "tls", "unix", "ext")


def check_uri(uri: str) -> None:
    """Refuse, before libvirt sees it, a URI whose mistake libvirt reports misleadingly.

    An unknown scheme (``bogus://x``) would be tried as a remote TLS connection and fail
    on a missing CA certificate; ``test://x/node.xml`` (two slashes) reads ``x`` as a
    host and looks for ``/node.xml``.  Raises :class:`ConnectError` (a SourceError) naming the URI.
    """
    parts = urlsplit(uri)
    uri = without_password(uri)
    if not parts.scheme:
        raise ConnectError(uri, "not a libvirt URI (expected e.g. qemu:///system, "
                                "qemu+ssh://root@host/system, test:///path/node.xml)")
    drv, _, transport = parts.scheme.partition("+")
    if drv not in DRIVERS:
        raise ConnectError(uri, f"unknown libvirt driver {drv!r} "
                          f"(known: {', '.join(DRIVERS)}); for a local KVM host use "
                          "qemu:///system")
    if transport not in TRANSPORTS:
        raise ConnectError(uri, f"unknown libvirt transport {transport!r} "
                          f"(known: {', '.join(t for t in TRANSPORTS if t)})")
    if drv == "test" and parts.netloc:
        raise ConnectError(
            uri, f"test URIs take no host: {parts.netloc!r} was read as a "
            f"host name; write the node file's absolute path after three slashes, "
            f"test:///{parts.netloc}{parts.path} (or test://$PWD/{parts.netloc}{parts.path} "
            "for a path relative to this folder)")


def connect(uri: str, readonly: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """A libvirt connection to ``uri``, or :class:`SourceError` naming the URI within
    ``timeout`` seconds.

    ``readonly`` (the scan): read-only where the driver allows it; a driver that refuses
    read-only connections is opened normally (vmmove issues only reads).  Read-write (the
    cutover: shutdown, start) through the same checks, credentials and timeout.

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
            raise ConnectError(shown, f"no such node file {parts.path}")
    libvirt = lib()
    target_uri = _noninteractive(uri)
    outcome: dict[str, Any] = {}
    lock = threading.Lock()
    flags = libvirt.VIR_CONNECT_RO if readonly else 0

    trace_call(f"libvirt.openAuth({without_password(target_uri)!r}"
               + (", VIR_CONNECT_RO)" if readonly else ", 0)"))

    def opener() -> None:
        try:
            try:
                conn = libvirt.openAuth(target_uri, _credentials(uri), flags)
            except libvirt.libvirtError as exc:
                if not readonly or not _readonly_refused(exc):
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
            raise ConnectError(shown, outcome["error"])
        outcome["abandoned"] = True
    raise ConnectError(shown, f"no answer within {timeout:g} s")


def open_readonly(uri: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """:func:`connect` read-only (the scan)."""
    return connect(uri, readonly=True, timeout=timeout)


def close_quietly(conn: Any) -> None:
    libvirt = lib()
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


# ------------------------------------------------------------------- scan: listings


def power_states(conn: Any, domains: list[Any]) -> dict[str, PowerState]:
    """Run state of every domain (by UUID) from filtered listings, not one call per domain."""
    libvirt = lib()
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
    mapping = power_state_map()
    for dom in other:
        try:
            state, _reason = dom.state()
        except libvirt.libvirtError:
            continue
        states[dom.UUIDString()] = mapping.get(state, PowerState.UNKNOWN)
    return states


def power_state_map() -> dict[int, PowerState]:
    """libvirt's ``VIR_DOMAIN_*`` run states as :class:`PowerState`."""
    libvirt = lib()
    return {
        libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
        libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
        libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
        libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTDOWN,
        libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTOFF,
        libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
        libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
    }


def snapshot_counts(conn: Any, domains: list[Any]) -> dict[str, int]:
    """Snapshots per domain (by UUID), asking only the domains that have some."""
    libvirt = lib()
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


def inactive_xml(dom: Any) -> str | None:
    """The domain's persistent XML; None when it was undefined meanwhile; raises
    :class:`LibvirtCallError` for any other failure."""
    libvirt = lib()
    try:
        return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise LibvirtCallError(one_line(exc), exc.get_error_code()) from None


def pool_volumes(conn: Any) -> list[tuple[str, Any]]:
    """``(pool name, volume)`` of every active storage pool ([] for a driver without a
    storage API)."""
    libvirt = lib()
    try:
        pools = conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
    except libvirt.libvirtError:
        return []
    found: list[tuple[str, Any]] = []
    for pool in pools:
        try:
            volumes = pool.listAllVolumes(0)
            name = pool.name()
        except libvirt.libvirtError:
            continue
        found += [(name, vol) for vol in volumes]
    return found


def volume_by_path(conn: Any, path: str) -> Any:
    libvirt = lib()
    try:
        return conn.storageVolLookupByPath(path)
    except libvirt.libvirtError:
        return None


def volume_info(vol: Any) -> tuple[int, int, str] | None:
    """A volume's capacity, allocation (bytes) and XML; None when libvirt cannot say."""
    libvirt = lib()
    try:
        _type, capacity, allocation = vol.info()
        return int(capacity), int(allocation), str(vol.XMLDesc(0))
    except libvirt.libvirtError:
        return None


def block_info(dom: Any, device: str) -> tuple[int, int] | None:
    """Capacity and allocation of a domain's disk (virDomainGetBlockInfo), when it can."""
    libvirt = lib()
    try:
        capacity, allocation, _physical = dom.blockInfo(device, 0)
    except libvirt.libvirtError:
        return None
    return int(capacity), int(allocation)


# ------------------------------------------------------------------- cutover: a domain


class Domain:
    """One domain, for the cutover: its state, ACPI shutdown, destroy and start.

    Opened read-write through :func:`connect` (same checks, credentials, no-TTY and
    timeout as the scan); looked up by UUID, else by name.  Raises :class:`SourceError`
    (host unreachable) or :class:`LibvirtCallError` (no such domain).
    """

    def __init__(self, uri: str, uuid: str | None, name: str,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        libvirt = lib()
        self.conn = connect(uri, readonly=False, timeout=timeout)
        trace_call(f"lookupByUUIDString({uuid!r})" if uuid else f"lookupByName({name!r})")
        try:
            self.dom = self.conn.lookupByUUIDString(uuid) if uuid else \
                self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            close_quietly(self.conn)
            raise LibvirtCallError(one_line(exc), exc.get_error_code()) from None

    def close(self) -> None:
        close_quietly(self.conn)

    @property
    def state(self) -> int:
        """The ``VIR_DOMAIN_*`` run state."""
        with translated():
            return int(self.dom.state()[0])

    @property
    def state_name(self) -> str:
        return state_names().get(self.state, "unknown")

    @property
    def running(self) -> bool:
        libvirt = lib()
        return self.state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED)

    @property
    def paused(self) -> bool:
        return self.state == lib().VIR_DOMAIN_PAUSED

    def name(self) -> str:
        return str(self.dom.name())

    def shutdown(self) -> None:
        """ACPI shutdown request (returns at once)."""
        with translated():
            self.dom.shutdown()

    def destroy(self) -> None:
        """Power off at once."""
        with translated():
            self.dom.destroy()

    def create(self) -> None:
        """Start the (defined) domain."""
        with translated():
            self.dom.create()

    def wait_off(self, timeout: float, poll: float = 0.25) -> bool:
        """Poll until the domain is off or ``timeout`` passed; whether it is off."""
        started = time.monotonic()
        while self.running and time.monotonic() - started < timeout:
            time.sleep(poll)
        return not self.running


def state_names() -> dict[int, str]:
    """``VIR_DOMAIN_*`` run states in virsh's words."""
    libvirt = lib()
    return {libvirt.VIR_DOMAIN_NOSTATE: "no state", libvirt.VIR_DOMAIN_RUNNING: "running",
            libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
            libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
            libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_CRASHED: "crashed",
            libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended"}
