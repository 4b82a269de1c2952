"""Change tracking on a libvirt host for warm migration: checkpoints, incremental backup
jobs, and dirty-bitmap exports of a stopped disk.

* A **checkpoint** (``virDomainCheckpointCreateXML``, libvirt ≥ 5.6) puts a persistent
  dirty bitmap of the same name into each chosen qcow2 disk; vmmove creates it together
  with a pull backup job (``virDomainBackupBegin(dom, backupXML, checkpointXML)``) so the
  bitmap starts exactly at the point in time the job exports.  vmmove's checkpoints are
  named ``vmmove-<tag>-<round>`` (:func:`checkpoint_name`); :func:`ours` tells them from
  the domain's own, which vmmove never touches.
* A round's job (:func:`begin_round`) exports every disk of the VM on one UNIX socket:
  qcow2 disks with a checkpoint from the previous round are ``incremental`` (their export
  carries the dirty bitmap ``vmmove-<disk>`` as the NBD meta context
  ``qemu:dirty-bitmap:vmmove-<disk>``); the others ``backupmode='full'``.
* After the guest shut down, :func:`serve_stopped` exports a disk with ``qemu-nbd
  --read-only`` (with ``-B BITMAP`` for the final delta of a qcow2 disk).
* :func:`remove_checkpoints` deletes vmmove's checkpoints: through libvirt while the domain
  runs; when it is off (libvirt 9 cannot delete checkpoints of an inactive domain) with
  ``qemu-img bitmap --remove`` on the image, then the checkpoint's metadata only.

Everything vmmove puts on the host for one VM lives in one folder,
:func:`scratch_dir` (``/var/tmp/vmmove-<tag>-<vm>``: the job's socket and scratch files,
``qemu-nbd``'s socket and PID file), removed by :func:`remove_scratch`.  The libvirt calls
work over any connection; the file steps here are this machine's, or (``host``: an SSH
target) run on a ``qemu+ssh://`` host (:mod:`migrate.sources.warm_host` does the rest).
Shapes: libvirt's ``formatcheckpoint``/``formatbackup``, ../shared/design/warm-migration.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import libvirt
from defusedxml import ElementTree

from migrate.clients.backup import BackupJob, checkpoint_xml, qemu_owner
from migrate.core.errors import VmmoveError

PREFIX = "vmmove-"
SCRATCH_ROOT = Path(os.environ.get("VMMOVE_HOST_SCRATCH", "/var/tmp"))
EXPORT_BITMAP = "vmmove-{disk}"  # the job's temporary export bitmap (removed with the job)


class CheckpointError(VmmoveError):
    """A checkpoint or a dirty-bitmap export could not be made or removed."""


def plan_tag(workdir: str | os.PathLike[str]) -> str:
    """8 hex digits naming one plan's work folder: keeps two plans' checkpoints apart."""
    return hashlib.sha256(str(Path(workdir).absolute()).encode()).hexdigest()[:8]


def checkpoint_name(tag: str, round_no: int) -> str:
    """``vmmove-<tag>-<round>``."""
    return f"{PREFIX}{tag}-{round_no}"


def ours(name: str, tag: str) -> bool:
    """Whether a checkpoint or bitmap named ``name`` is one of this plan's."""
    return re.fullmatch(re.escape(f"{PREFIX}{tag}-") + r"\d+", name) is not None


def _msg(exc: libvirt.libvirtError) -> str:
    return " ".join((exc.get_error_message() or str(exc)).split())


def scratch_dir(tag: str, vm_key: str) -> Path:
    """The host folder of one VM's warm jobs (deterministic, so clean finds it)."""
    vm = hashlib.sha256(vm_key.encode()).hexdigest()[:8]
    return SCRATCH_ROOT / f"{PREFIX}{tag}-{vm}"


def make_scratch(dom: Any, folder: Path) -> Path:
    """Create ``folder`` (mode 0700) owned by the domain's QEMU user, which writes the
    job's socket and scratch files there."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = qemu_owner(dom)
    if owner and os.geteuid() == 0:
        os.chown(folder, *owner)
    return folder


def remove_scratch(folder: Path) -> bool:
    """Stop any ``qemu-nbd`` whose PID file is in ``folder``, then remove the folder;
    True when something was there."""
    if not folder.exists():
        return False
    for pid_file in folder.glob("*.pid"):
        _kill_pid_file(pid_file)
    shutil.rmtree(folder, ignore_errors=True)
    return True


def _kill_pid_file(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"qemu-nbd" not in cmdline:  # a recycled PID is never signalled
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):  # exited (a zombie until its parent reaps it)
            return
        time.sleep(0.02)


# -- checkpoints --------------------------------------------------------------------------


def list_checkpoints(dom: Any) -> list[str]:
    """Names of every checkpoint of the domain (vmmove's and its own)."""
    try:
        return [c.getName() for c in dom.listAllCheckpoints(0)]
    except libvirt.libvirtError as exc:
        raise CheckpointError(f"{dom.name()}: cannot list checkpoints: {_msg(exc)}") from None


def _host_run(host: Any, argv: list[str], timeout: float) -> tuple[int, str, str]:
    """``argv`` on the domain's host (``host``: an :mod:`migrate.clients.ssh` target; None
    runs it here); (exit code, stdout, stderr).  A lost SSH connection raises."""
    from migrate.clients import ssh

    proc = ssh.run(host or ssh.LocalHost(), argv, timeout=timeout, check=False)
    if proc.returncode == 255 and isinstance(host, ssh.SshTarget):
        ssh.run(host, ["true"])  # raises the ssh failure itself (one line), if it was ssh's
    return proc.returncode, proc.stdout.decode(errors="replace"), \
        proc.stderr.decode(errors="replace")


def image_bitmaps(path: str, host: Any = None) -> list[str]:
    """Names of the persistent bitmaps in a qcow2 image (``qemu-img info``, shared read),
    on ``host`` (an SSH target; None: this machine)."""
    code, out, err = _host_run(host, ["qemu-img", "info", "-U", "--output=json", "-f",
                                      "qcow2", "--", path], 60)
    if code != 0:
        raise CheckpointError(f"{path}: qemu-img info failed: {err.strip()[-200:]}")
    data = (json.loads(out).get("format-specific") or {}).get("data") or {}
    return [b.get("name", "") for b in data.get("bitmaps") or []]


def remove_checkpoints(dom: Any, names: list[str], images: dict[str, str],
                       host: Any = None) -> list[str]:
    """Delete the checkpoints ``names`` (each must be vmmove's) and their bitmaps.

    Running domain: ``virDomainCheckpointDelete``.  Stopped domain: ``qemu-img bitmap
    --remove`` on each qcow2 image of ``images`` (target → path) holding the bitmap, then
    ``VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY``.  Names already gone are skipped; the
    names removed are returned.  ``host``: where the images are (an SSH target of a
    ``qemu+ssh://`` domain; None: this machine).
    """
    assert all(n.startswith(PREFIX) for n in names), names
    existing = set(list_checkpoints(dom))
    active = bool(dom.isActive())
    removed = []
    for name in names:
        if not active:
            for path in images.values():
                if name in image_bitmaps(path, host):
                    code, _out, err = _host_run(host, ["qemu-img", "bitmap", "--remove",
                                                       "-f", "qcow2", "--", path, name], 120)
                    if code != 0:
                        raise CheckpointError(f"{path}: cannot remove bitmap {name}: "
                                              f"{err.strip()[-200:]}")
        if name not in existing:
            if not active:
                removed.append(name)
            continue
        try:
            cp = dom.checkpointLookupByName(name, 0)
            try:
                cp.delete(0 if active else libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
            except libvirt.libvirtError:
                # a checkpoint whose bitmap the host lost: only its metadata is left to go
                if not active or any(name in image_bitmaps(p, host) for p in images.values()):
                    raise
                cp.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        except libvirt.libvirtError as exc:
            if name in set(list_checkpoints(dom)):
                raise CheckpointError(f"{dom.name()}: cannot delete checkpoint {name}: "
                                      f"{_msg(exc)}") from None
        removed.append(name)
    return removed


# -- backup jobs ----------------------------------------------------------------------------


def round_backup_xml(disks: dict[str, bool], socket: str, incremental: str | None,
                     scratch: str) -> str:
    """``<domainbackup mode='pull'>`` for one warm round.

    ``disks``: target → whether that disk is read incrementally (its export then carries
    the dirty bitmap ``vmmove-<target>``); the others are exported in full
    (``backupmode='full'``).  ``incremental``: the previous round's checkpoint.
    """
    parts = ["<domainbackup mode='pull'>"]
    if incremental and any(disks.values()):
        parts.append(f"<incremental>{_text(incremental)}</incremental>")
    parts.append(f"<server transport='unix' socket={quoteattr(socket)}/><disks>")
    for disk, incr in disks.items():
        mode = (f" backupmode='incremental' incremental={quoteattr(incremental)}"
                f" exportbitmap={quoteattr(EXPORT_BITMAP.format(disk=disk))}"
                if incr and incremental else " backupmode='full'")
        parts.append(f"<disk name={quoteattr(disk)} backup='yes' type='file' "
                     f"exportname={quoteattr(disk)}{mode}>"
                     f"<scratch file={quoteattr(f'{scratch}/{disk}.scratch.qcow2')}/></disk>")
    parts.append("</disks></domainbackup>")
    return "".join(parts)


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def begin_round(dom: Any, disks: dict[str, bool], folder: Path, incremental: str | None,
                checkpoint: str | None, bitmap_disks: list[str],
                skip_disks: list[str]) -> BackupJob:
    """Start a round's pull job exporting ``disks`` on ``folder/backup.sock``, creating
    ``checkpoint`` (a bitmap on ``bitmap_disks``, none on ``skip_disks``) at its start;
    filesystems frozen around the start when the guest agent answers.  Raises
    :class:`~migrate.clients.backup.BackupError` (``NoBackupSupport`` when the host
    cannot)."""
    socket = str(folder / "backup.sock")
    abort_stale(dom, str(folder))
    cp = checkpoint_xml(checkpoint, bitmap_disks, tuple(skip_disks)) if checkpoint else None
    return BackupJob.begin(dom, list(disks), socket, checkpoint=cp,
                           xml=round_backup_xml(disks, socket, incremental, str(folder)))


def abort_stale(dom: Any, folder: str) -> bool:
    """End a pull job a killed vmmove run left with its socket in ``folder``."""
    try:
        xml = dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return False
    try:
        server = ElementTree.fromstring(xml).find("server")
    except ElementTree.ParseError:
        return False
    if server is None or not (server.get("socket") or "").startswith(folder + "/"):
        return False
    try:
        dom.abortJob()
    except libvirt.libvirtError:
        pass
    for _ in range(100):  # the job ends asynchronously
        try:
            dom.backupGetXMLDesc(0)
        except libvirt.libvirtError:
            return True
        time.sleep(0.1)
    return True


# -- exports for in-cluster workers ------------------------------------------------------


_PORTS: set[int] = set()  # handed out by free_port, until serve_tls ends
_PORTS_LOCK = threading.Lock()


def free_port(bind: str, low: int, high: int) -> int:
    """A TCP port in ``[low, high]`` nothing listens on at ``bind`` and not handed out to
    another export of this run (``workers.portRange``); :func:`serve_tls` releases it."""
    import socket

    with _PORTS_LOCK:
        for port in range(low, high + 1):
            if port in _PORTS:
                continue
            with socket.socket() as s:
                try:
                    s.bind((bind, port))
                except OSError:
                    continue
            _PORTS.add(port)
            return port
    raise CheckpointError(f"no free port in workers.portRange {low}-{high} on {bind}")


def release_port(port: int) -> None:
    """Hand back a port :func:`free_port` gave (its export ended, or never started)."""
    with _PORTS_LOCK:
        _PORTS.discard(port)


@contextmanager
def serve_tls(folder: Path, name: str, bind: str, port: int, *, path: str | None = None,
              fmt: str | None = None, image_opts: str | None = None) -> Iterator[bytes]:
    """``qemu-nbd --read-only`` with TLS-PSK on ``bind:port`` exporting ``name``: a disk
    image (``path`` in ``fmt``) or another export (``image_opts``, e.g. a backup job's
    UNIX export); a fresh PSK (yielded, for the worker's Secret), all removed on exit."""
    from migrate.clients.nbd import PSK_FILE, new_psk

    keys = folder / f"{name}-tls"
    pid_file = folder / f"{name}-tls.pid"
    _kill_pid_file(pid_file)
    shutil.rmtree(keys, ignore_errors=True)
    keys.mkdir(mode=0o700, parents=True)
    psk = new_psk()
    (keys / PSK_FILE).write_bytes(psk)
    args = ["qemu-nbd", "--read-only", "--persistent", "--fork", "--shared=4",
            f"--pid-file={pid_file}", f"--export-name={name}", f"--bind={bind}",
            f"--port={port}", f"--object=tls-creds-psk,id=tls0,endpoint=server,dir={keys}",
            "--tls-creds=tls0"]
    if image_opts:
        args += ["--image-opts", image_opts]
    else:
        assert path is not None
        if not path.startswith("json:"):
            args.append(f"--format={fmt}")
        args.append(path)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        shutil.rmtree(keys, ignore_errors=True)
        if "in use" not in proc.stderr:  # a port another program took stays out of use
            with _PORTS_LOCK:
                _PORTS.discard(port)
        said = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise CheckpointError(f"{path or name}: cannot export for the worker: {said[0]}")
    try:
        yield psk
    finally:
        _kill_pid_file(pid_file)
        pid_file.unlink(missing_ok=True)
        shutil.rmtree(keys, ignore_errors=True)
        with _PORTS_LOCK:
            _PORTS.discard(port)


@contextmanager
def writable_qcow2(path: Path, size: int) -> Iterator[str]:
    """A new qcow2 ``path`` of ``size`` bytes served read-write by ``qemu-nbd`` on a UNIX
    socket in a private temporary folder (yielded; socket paths are short): a delta being
    built.  It is created over an empty raw placeholder as its backing file, so that zeros
    written to it are zero clusters that will hide the real base's data once rebased onto
    it (``qemu-img rebase -u``)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="vmmove-delta-"))
    base = folder / "base.raw"
    socket, pid_file = folder / "delta.sock", folder / "qemu-nbd.pid"
    with open(base, "wb") as fh:
        fh.truncate(size)
    try:
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base),
                               "-F", "raw", str(path), str(size)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise CheckpointError(f"{path}: cannot create the delta: {proc.stderr.strip()}")
        proc = subprocess.run(["qemu-nbd", "--persistent", "--fork", f"--pid-file={pid_file}",
                               f"--socket={socket}", "--format=qcow2", str(path)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise CheckpointError(f"{path}: cannot serve the delta: {proc.stderr.strip()}")
        try:
            yield str(socket)
        finally:
            _kill_pid_file(pid_file)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- a stopped disk ----------------------------------------------------------------------


@dataclass
class StoppedExport:
    socket: str
    export: str
    bitmap: str | None


@contextmanager
def serve_stopped(path: str, fmt: str, folder: Path, name: str,
                  bitmap: str | None = None) -> Iterator[StoppedExport]:
    """``qemu-nbd --read-only`` of a stopped disk on ``folder/<name>.sock`` (with ``-B
    bitmap``: its dirty bitmap as ``qemu:dirty-bitmap:<bitmap>``), stopped on exit."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket, pid_file = folder / f"{name}.sock", folder / f"{name}.pid"
    _kill_pid_file(pid_file)
    socket.unlink(missing_ok=True)
    args = ["qemu-nbd", "--read-only", "--persistent", "--fork", "--shared=4",
            f"--pid-file={pid_file}", f"--socket={socket}", f"--export-name={name}",
            ]
    if not path.startswith("json:"):  # a json: name (a checked chain) carries its drivers
        args.append(f"--format={fmt}")
    if bitmap:
        args.append(f"--bitmap={bitmap}")
    proc = subprocess.run([*args, path], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        said = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise CheckpointError(f"{path}: cannot export the stopped disk"
                              + (f" with bitmap {bitmap}" if bitmap else "") + f": {said[0]}")
    try:
        yield StoppedExport(str(socket), name, bitmap)
    finally:
        _kill_pid_file(pid_file)
        pid_file.unlink(missing_ok=True)
        socket.unlink(missing_ok=True)
