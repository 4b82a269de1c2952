"""Disks of a libvirt host reached over SSH, read as NBD exports with nothing of vmmove there.

:class:`RemoteReads` is what convert (and the ``direct`` transfer mode) asks for a disk of
a VM scanned through ``qemu+ssh://`` (or ``+libssh``/``+libssh2``).  It decides how the
disk is read *at copy time*, from the domain's live state on the host:

* running or paused: a libvirt backup job in pull mode for all of the VM's disks in the
  batch at once (one point in time for every disk), exported on a UNIX socket in a
  private folder on the host given to QEMU's user, forwarded here over SSH; filesystems
  frozen around the start when the guest agent answers.  The job ends when the last of
  the VM's disks is released (``virDomainAbortJob``).
* shut off: ``qemu-nbd --read-only`` on the host, started over SSH, one per disk, opening
  the image chain :func:`migrate.sources.host_chain.host_chain` read on the host and
  checked against libvirt's view (pinned as a ``json:`` name, never the headers' own).
* a running VM whose host cannot run a backup job: refused with the remedy, unless
  ``inconsistent=True`` (``--inconsistent-copy``): then ``qemu-nbd --read-only
  --force-share`` reads the image while the guest writes it (never one moment's state).

For ``direct`` mode, :meth:`RemoteReads.lease` with ``tls_port`` re-exports the disk on
TCP with TLS-PSK from the host itself (the bytes go host → cluster, not through here).

Everything it starts on a host lives in one ``/var/tmp/vmmove.XXXXXXXX`` folder per
lease (sockets, PID file, PSK) and is stopped and removed on release, even on errors;
see docs/remote-hosts.md.  Errors name the VM and disk in one line.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate.clients import backup, nbd, ssh
from migrate.core.errors import VmmoveError
from migrate.core.model import VM, Disk, PowerState, SourceKind

IN_USE = {PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN, PowerState.SUSPENDED}
BACKUP = "backup"  # point in time: libvirt backup job
OFFLINE = "qemu-nbd"  # shut-off VM: qemu-nbd --read-only
INCONSISTENT = "inconsistent"  # running VM read with --force-share (explicitly asked)

SETTLE = 10.0  # seconds to let libvirt notice a domain that died under the copy (a loaded host is slow to)
NO_BACKUP_HINT = ("shut the VM down for a consistent copy, or pass --inconsistent-copy to read "
                  "it while it writes (the copy is then never one moment's state)")


class RemoteDiskError(VmmoveError):
    """A remote disk could not be exported or read."""


def ssh_target(vm: VM) -> ssh.SshTarget | None:
    """The SSH side of a VM's libvirt URI; None when the VM is not on a remote host."""
    if vm.source.kind != SourceKind.LIBVIRT:
        return None
    return ssh.SshTarget.from_uri(vm.source.location)


def is_remote(vm: VM) -> bool:
    return ssh_target(vm) is not None


#: Local libvirt URIs whose running VMs are read through a backup job on this machine.
LOCAL_QEMU = {"qemu:///system", "qemu:///session", "qemu+unix:///system",
              "qemu+unix:///session"}


def reads_via_nbd(vm: VM) -> bool:
    """Whether convert reads this VM's disks through :class:`RemoteReads`: every VM of a
    remote host, and running VMs of this machine's QEMU driver (a backup job instead of
    ``qemu-img -U``)."""
    if is_remote(vm):
        return True
    return (vm.source.kind == SourceKind.LIBVIRT
            and vm.source.location.split("?", 1)[0] in LOCAL_QEMU
            and vm.power_state in IN_USE)


def host_target(vm: VM) -> ssh.HostTarget | None:
    """Where the VM's exports run: its SSH host, or this machine for a local VM."""
    target = ssh_target(vm)
    if target is not None:
        return target
    return ssh.LocalHost() if reads_via_nbd(vm) else None


@dataclass
class Lease:
    """A disk's guest view, readable while the lease is held."""

    vm: str
    disk: str
    kind: str  # BACKUP | OFFLINE | INCONSISTENT
    url: str  # local NBD URL (operator reads) or the host's nbds:// URL (direct mode)
    note: str = ""
    psk: bytes | None = None  # direct mode: the TLS key the worker needs
    export: str = ""
    session: _Session | None = None

    def failure(self, what: str) -> str:
        """Why a read of this lease failed, as one line (the state of host and job)."""
        s = self.session
        label = f"{self.vm}/{self.disk}"
        if s is not None and s.forward is not None and not s.forward.alive():
            return f"{label}: the SSH connection to {s.target.label} was lost during the copy; " \
                   "rerun to copy it again"
        if s is not None and s.dom is not None and self.kind == BACKUP:
            # libvirt learns of a QEMU that died a moment after its sockets closed
            deadline = time.monotonic() + SETTLE
            ended = False
            while True:
                if not backup.is_active(s.dom):
                    return f"{label}: the VM shut down during the copy; rerun to copy it " \
                           "again (it is then read shut off)"
                ended = ended or (s.job is not None and not s.job.running())
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
            if ended:
                return f"{label}: the backup job was ended on the host during the copy; " \
                       "rerun to copy it again"
        return f"{label}: {what}"


@dataclass
class _Session:
    """What runs for one VM (backup job) or one disk (qemu-nbd), and its cleanup."""

    target: ssh.HostTarget
    local: Path  # private local folder for forwarded sockets
    dom: Any = None
    job: backup.BackupJob | None = None
    host_folder: str | None = None
    forward: ssh.Forward | None = None
    exports: list[nbd.RemoteExport] = field(default_factory=list)
    users: int = 0

    def close(self) -> None:
        for export in self.exports:
            try:
                export.stop()
            except VmmoveError:
                pass
        if self.forward is not None:
            self.forward.close()
        if self.job is not None:
            self.job.abort()
        if self.host_folder:
            try:
                ssh.remove_dir(self.target, self.host_folder)
            except VmmoveError:
                pass


class RemoteReads:
    """Leases on remote disks for one batch; :meth:`close` ends whatever is still open.

    ``pairs``: every (VM, disk) of the batch, so one backup job serves all of a VM's disks
    and ends after the last.  Thread-safe: convert's pool leases disks concurrently.
    """

    def __init__(self, pairs: list[tuple[VM, Disk]], inconsistent: bool = False,
                 freeze: bool = True) -> None:
        self.inconsistent = inconsistent
        self.freeze = freeze
        self._lock = threading.Lock()
        self._conns: dict[str, Any] = {}
        self._vm_sessions: dict[str, _Session] = {}
        self._pending: dict[str, set[str]] = {}
        for vm, disk in pairs:
            if reads_via_nbd(vm) and disk.device in ("disk", "lun"):
                self._pending.setdefault(vm.key, set()).add(disk.target)
        self._local = Path(tempfile.mkdtemp(prefix="vmmove-nbd-"))

    # -- libvirt ------------------------------------------------------------------------
    def _domain(self, vm: VM) -> Any:
        uri = vm.source.location
        conn = self._conns.get(uri)
        if conn is None:
            try:
                conn = backup.open_rw(uri)
            except VmmoveError as exc:
                raise RemoteDiskError(f"{vm.name}: {exc}") from None
            self._conns[uri] = conn
        try:
            return backup.domain(conn, vm.uuid or vm.name)
        except backup.BackupError:
            raise RemoteDiskError(f"{vm.name}: no such domain on {uri} any more (undefined "
                                  "since the scan?)") from None

    # -- leases -------------------------------------------------------------------------
    @contextmanager
    def lease(self, vm: VM, disk: Disk, tls_port: int | None = None) -> Iterator[Lease]:
        """The disk's guest view for the duration of the ``with``; raises
        :class:`RemoteDiskError` (one line naming VM/disk) when it cannot be exported."""
        target = host_target(vm)
        if target is None:
            raise RemoteDiskError(f"{vm.name}/{disk.target}: not on a remote libvirt host")
        with self._lock:
            dom = self._domain(vm)
            running = backup.is_active(dom)
        if running:
            lease = self._backup_lease(vm, disk, target, dom, tls_port)
        else:
            lease = self._offline_lease(vm, disk, target, tls_port, share=False)
        try:
            yield lease
        finally:
            self._release(vm, disk, lease)

    def _backup_lease(self, vm: VM, disk: Disk, target: ssh.HostTarget, dom: Any,
                      tls_port: int | None) -> Lease:
        with self._lock:
            session = self._vm_sessions.get(vm.key)
            if session is None or session.job is None or not session.job.running():
                if session is not None:
                    session.close()
                try:
                    session = self._begin(vm, target, dom)
                except backup.NoBackupSupport as exc:
                    if not self.inconsistent:
                        raise RemoteDiskError(f"{vm.name}/{disk.target}: VM is running and "
                                              f"{exc}; {NO_BACKUP_HINT}") from None
                    session = None
                except VmmoveError as exc:
                    raise RemoteDiskError(f"{vm.name}/{disk.target}: {exc}") from None
                if session is not None:
                    self._vm_sessions[vm.key] = session
            if session is not None:
                session.users += 1
        if session is None:
            return self._offline_lease(vm, disk, target, tls_port, share=True)
        assert session.job is not None
        export = next((e.export for e in session.job.exports if e.disk == disk.target), None)
        if export is None:
            raise RemoteDiskError(f"{vm.name}/{disk.target}: the backup job exports no such disk")
        note = session.job.note
        if tls_port:
            socket = f"{session.host_folder}/backup.sock"
            try:
                re = nbd.serve_remote(target, "", None, export, port=tls_port,
                                      image_opts=nbd.nbd_image_opts(socket, export))
            except VmmoveError as exc:
                with self._lock:
                    session.users -= 1  # this lease never started: the job may end
                raise RemoteDiskError(f"{vm.name}/{disk.target}: {exc}") from None
            with self._lock:
                session.exports.append(re)
            return Lease(vm.name, disk.target, BACKUP, "", note, re.psk, export, session)
        local = session.forward.local if session.forward is not None else \
            f"{session.host_folder}/backup.sock"
        url = nbd.unix_url(local, export)
        return Lease(vm.name, disk.target, BACKUP, url, note, None, export, session)

    def _begin(self, vm: VM, target: ssh.HostTarget, dom: Any) -> _Session:
        """A backup job for every batch disk of ``vm``, its socket forwarded here."""
        session = _Session(target, self._local, dom=dom)
        try:
            session.host_folder = ssh.make_temp_dir(target, mode="700")
            owner = backup.qemu_owner(dom)
            if owner:  # QEMU creates the socket: the folder must be its user's
                ssh.run(target, ["chown", f"{owner[0]}:{owner[1]}", session.host_folder])
            socket = f"{session.host_folder}/backup.sock"
            backup.abort_stale(dom)  # a job an earlier, cut-off run could not end
            disks = sorted(self._pending.get(vm.key) or ())
            session.job = backup.BackupJob.begin(dom, disks, socket, freeze=self.freeze,
                                               scratch_dir=session.host_folder)
            if isinstance(target, ssh.SshTarget):
                local = Path(tempfile.mkdtemp(prefix="vm-", dir=self._local)) / "backup.sock"
                session.forward = ssh.Forward(target, local, socket)
        except BaseException:
            session.close()
            raise
        return session

    def _offline_lease(self, vm: VM, disk: Disk, target: ssh.HostTarget,
                       tls_port: int | None, share: bool) -> Lease:
        from migrate.sources.host_chain import HostChainError, host_chain

        label = f"{vm.name}/{disk.target}"
        try:  # the host's chain, checked against libvirt's and pinned: never the headers'
            chain = host_chain(target, disk, label)
        except HostChainError as exc:
            raise RemoteDiskError(str(exc)) from None
        except VmmoveError as exc:
            raise RemoteDiskError(f"{label}: {exc}") from None
        session = _Session(target, self._local)
        try:
            re = nbd.serve_remote(target, chain.qemu_name(), None, disk.target,
                                  port=tls_port, share=share)
            session.exports.append(re)
            session.host_folder = None  # the export removes its own folder
            if tls_port:
                url = ""
            elif isinstance(target, ssh.SshTarget):
                assert re.socket
                local = Path(tempfile.mkdtemp(prefix="disk-", dir=self._local)) / "nbd.sock"
                session.forward = ssh.Forward(target, local, re.socket)
                url = nbd.unix_url(local, disk.target)
            else:
                assert re.socket
                url = nbd.unix_url(re.socket, disk.target)
        except VmmoveError as exc:
            session.close()
            raise RemoteDiskError(f"{label}: {exc}") from None
        except BaseException:
            session.close()
            raise
        kind = INCONSISTENT if share else OFFLINE
        note = "read while the VM runs (--inconsistent-copy)" if share else "VM shut off"
        return Lease(vm.name, disk.target, kind, url, note, re.psk, disk.target, session)

    def _release(self, vm: VM, disk: Disk, lease: Lease) -> None:
        session = lease.session
        if session is None:
            return
        if lease.kind != BACKUP:
            session.close()
            return
        with self._lock:
            session.users -= 1
            pending = self._pending.get(vm.key)
            if pending is not None:
                pending.discard(disk.target)
            if session.users <= 0 and not pending:
                session.close()
                self._vm_sessions.pop(vm.key, None)

    def close(self) -> None:
        with self._lock:
            for session in self._vm_sessions.values():
                session.close()
            self._vm_sessions.clear()
            for conn in self._conns.values():
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - a dropped connection closes anyway
                    pass
            self._conns.clear()
        shutil.rmtree(self._local, ignore_errors=True)

    def __enter__(self) -> RemoteReads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
