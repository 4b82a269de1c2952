"""libvirt's backup API: point-in-time NBD exports of a running domain's disks.

A pull-mode backup job (``virDomainBackupBegin``, libvirt ≥ 6.0; QEMU's block layer, so
TCG guests too) exports each chosen disk over NBD *as it was when the job began*, while
the guest keeps writing (QEMU copies a block to the job's scratch file before the guest
overwrites it).  The export is read-only; the source disk is never written.  The job ends
with ``virDomainAbortJob`` (:meth:`BackupJob.abort`), which also removes the scratch
files and the socket.  Shapes follow libvirt's ``formatbackup`` and ``formatcheckpoint``
pages (../shared/design/warm-migration.md).

For later incremental rounds (warm migration) :func:`backup_xml` takes an optional
``incremental`` checkpoint name and :meth:`BackupJob.begin` an optional checkpoint to
create with the job; :attr:`BackupJob.exports` reports, per disk, the export name libvirt
chose (and the dirty-bitmap name when incremental).

Filesystem freeze: with the QEMU guest agent answering, filesystems are frozen just
around the job's start (``virDomainFSFreeze``/``Thaw``) so the copy is also consistent
for the guest's filesystems; without an agent the copy is crash-consistent (what a power
cut leaves) and :attr:`BackupJob.frozen` says so.

Errors are :class:`BackupError`, one line naming the VM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

import libvirt
from defusedxml import ElementTree

from migrate.core.errors import VmmoveError

AGENT_TIMEOUT = 5  # seconds libvirt waits for the guest agent (fsfreeze)


class BackupError(VmmoveError):
    """A backup job could not be started, or ended under the copy."""


class NoBackupSupport(BackupError):
    """The host's libvirt/QEMU cannot run a backup job for this domain."""


@dataclass(frozen=True)
class DiskExport:
    """One disk of a pull job: the NBD export name on the job's socket."""

    disk: str  # target, e.g. vda
    export: str
    bitmap: str | None = None  # incremental: the export's dirty bitmap


def backup_xml(disks: list[str], socket: str, incremental: str | None = None,
               scratch_dir: str | None = None) -> str:
    """``<domainbackup mode='pull'>`` exporting ``disks`` (targets) on UNIX ``socket``.

    ``incremental``: the checkpoint name the export's dirty bitmaps start from (omitted:
    a full backup).  ``scratch_dir``: where QEMU keeps the old blocks (default: libvirt's
    per-domain folder).
    """
    parts = ["<domainbackup mode='pull'>"]
    if incremental:
        parts.append(f"<incremental>{_text(incremental)}</incremental>")
    parts.append(f"<server transport='unix' socket={quoteattr(socket)}/>")
    parts.append("<disks>")
    for disk in disks:
        scratch = (f"<scratch file={quoteattr(f'{scratch_dir}/{disk}.scratch.qcow2')}/>"
                   if scratch_dir else "")
        bitmap = f" exportbitmap={quoteattr(f'vmmove-{disk}')}" if incremental else ""
        parts.append(f"<disk name={quoteattr(disk)} backup='yes' type='file' "
                     f"exportname={quoteattr(disk)}{bitmap}>{scratch}</disk>")
    parts.append("</disks></domainbackup>")
    return "".join(parts)


def checkpoint_xml(name: str, disks: list[str], skip: tuple[str, ...] = ()) -> str:
    """``<domaincheckpoint>`` named ``name``: a bitmap on ``disks``, none on ``skip``."""
    rows = [f"<disk name={quoteattr(d)} checkpoint='bitmap'/>" for d in disks]
    rows += [f"<disk name={quoteattr(d)} checkpoint='no'/>" for d in skip]
    return (f"<domaincheckpoint><name>{_text(name)}</name><disks>{''.join(rows)}</disks>"
            "</domaincheckpoint>")


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def qemu_owner(dom: Any) -> tuple[int, int] | None:
    """The uid:gid QEMU runs as for this domain (live XML's DAC seclabel), so a socket
    folder can be given to it; None when libvirt does not say."""
    root = ElementTree.fromstring(dom.XMLDesc(0))
    for label in root.iterfind("seclabel"):
        if label.get("model") != "dac":
            continue
        text = (label.findtext("label") or "").replace("+", "")
        try:
            uid, gid = (int(x) for x in text.split(":"))
        except ValueError:
            return None
        return uid, gid
    return None


def _msg(exc: libvirt.libvirtError) -> str:
    return " ".join((exc.get_error_message() or str(exc)).split())


@dataclass
class BackupJob:
    """A running pull backup of one domain; end it with :meth:`abort`."""

    dom: Any
    name: str
    socket: str  # on the host
    exports: list[DiskExport] = field(default_factory=list)
    frozen: bool = False  # filesystems were frozen around the start (guest agent)
    note: str = ""

    @classmethod
    def begin(cls, dom: Any, disks: list[str], socket: str, *, incremental: str | None = None,
              checkpoint: str | None = None, freeze: bool = True,
              scratch_dir: str | None = None, xml: str | None = None) -> BackupJob:
        """Start the job; raise :class:`NoBackupSupport` or :class:`BackupError`.

        ``xml``: a ready ``<domainbackup>`` instead of :func:`backup_xml`'s (warm rounds
        choose full or incremental per disk: :func:`migrate.clients.checkpoint.
        round_backup_xml`)."""
        name = dom.name()
        job = cls(dom, name, socket)
        xml = xml or backup_xml(disks, socket, incremental, scratch_dir)
        if freeze:
            job.frozen, job.note = _freeze(dom)
        try:
            dom.backupBegin(xml, checkpoint, 0)
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
                raise NoBackupSupport(f"{name}: the host cannot run a backup job: "
                                      f"{_msg(exc)}") from None
            raise BackupError(f"{name}: cannot start the backup job: {_msg(exc)}") from None
        finally:
            if job.frozen:
                try:
                    dom.fsThaw(None, 0)
                except libvirt.libvirtError:
                    pass
        try:
            job.exports = job.describe()
        except BackupError:
            job.abort()
            raise
        return job

    def describe(self) -> list[DiskExport]:
        """Per-disk exports as libvirt reports them (``virDomainBackupGetXMLDesc``)."""
        try:
            xml = self.dom.backupGetXMLDesc(0)
        except libvirt.libvirtError as exc:
            raise BackupError(f"{self.name}: the backup job is gone: {_msg(exc)}") from None
        root = ElementTree.fromstring(xml)
        out = []
        for disk in root.iterfind("disks/disk"):
            if disk.get("backup", "yes") != "yes":
                continue
            target = disk.get("name") or ""
            out.append(DiskExport(target, disk.get("exportname") or target,
                                  disk.get("exportbitmap")))
        return out

    def running(self) -> bool:
        """The job still runs (the domain is up and libvirt still describes it)."""
        try:
            self.dom.backupGetXMLDesc(0)
            return True
        except libvirt.libvirtError:
            return False

    def abort(self) -> None:
        """End the job (``virDomainAbortJob``); a job already gone is not an error."""
        try:
            self.dom.abortJob()
        except libvirt.libvirtError:
            pass


def abort_stale(dom: Any, marker: str = "/vmmove.") -> bool:
    """End a pull job an earlier vmmove run left behind (its socket path holds ``marker``:
    the run's SSH connection was cut before it could end the job); True when one was."""
    try:
        xml = dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return False
    server = ElementTree.fromstring(xml).find("server")
    if server is None or marker not in (server.get("socket") or ""):
        return False
    BackupJob(dom, dom.name(), server.get("socket") or "").abort()
    return True


def _freeze(dom: Any) -> tuple[bool, str]:
    """Freeze the guest's filesystems when its agent answers; (frozen, note)."""
    try:
        dom.agentSetResponseTimeout(AGENT_TIMEOUT, 0)
    except (libvirt.libvirtError, AttributeError):
        pass
    try:
        dom.fsFreeze(None, 0)
        return True, "filesystems frozen at the job's start (guest agent)"
    except libvirt.libvirtError as exc:
        return False, f"crash-consistent: no fsfreeze ({_msg(exc)})"


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection to a remote host broke (libvirt's RPC through
    its SSH tunnel, or ssh itself) rather than the host refusing something."""
    text = str(exc).lower()
    if "ssh failed" in text:  # migrate.clients.ssh: ssh itself (exit 255)
        return True
    if isinstance(exc, libvirt.libvirtError):
        return exc.get_error_code() in (libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT,
                                        libvirt.VIR_ERR_SYSTEM_ERROR) and \
            any(w in text for w in ("closed", "end of file", "broken pipe", "reset"))
    return any(w in text for w in ("client socket is closed", "end of file while reading"))


def domain(conn: Any, ref: str) -> Any:
    """The domain with UUID ``ref`` (or named ``ref``) on ``conn``; :class:`BackupError`
    when absent."""
    try:
        try:
            return conn.lookupByUUIDString(ref)
        except libvirt.libvirtError:
            return conn.lookupByName(ref)
    except libvirt.libvirtError as exc:
        raise BackupError(f"{ref}: not on the host: {_msg(exc)}") from None


def is_active(dom: Any) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False


def open_rw(uri: str) -> Any:
    """A read-write connection (the backup API needs one; scanning stays read-only)."""
    from migrate.clients.libvirt import connect

    return connect(uri, readonly=False)


class NoSuchDomain(VmmoveError):
    """The domain is not defined on the host (by UUID, else by name)."""


def open_domain(uri: str, uuid: str | None, name: str) -> tuple[Any, Any]:
    """A read-write connection to ``uri`` and the domain with ``uuid`` (else ``name``).

    Raises the connection's :class:`VmmoveError`, or :class:`NoSuchDomain` (the connection
    is closed then).  The caller closes the connection.
    """
    conn = open_rw(uri)
    try:
        return conn, (conn.lookupByUUIDString(uuid) if uuid else conn.lookupByName(name))
    except libvirt.libvirtError:
        conn.close()
        raise NoSuchDomain(f"no such domain {name!r} on {uri}") from None
