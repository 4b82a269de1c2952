"""Where a warm VM's host-side work runs: this machine, or a ``qemu+ssh://`` host over SSH.

:class:`WarmHost` is the host access of :mod:`migrate.pipeline.warm` for one VM.  For a
local libvirt URI (``qemu:///system``) everything runs here as before
(:mod:`migrate.clients.checkpoint`).  For a VM scanned from ``qemu+ssh://user@host/…``
(or ``+libssh``/``+libssh2``) the same steps run on the host through the SSH connection
the URI names (:mod:`migrate.clients.ssh`, as :mod:`migrate.sources.remote_disks` does):

* the VM's scratch folder (job socket, scratch files, ``qemu-nbd`` PID files) is
  ``<host tmp>/vmmove-<tag>-<vm>`` on the host (``$VMMOVE_HOST_TMPDIR``, else
  ``/var/tmp``), mode 0700, owned by the domain's QEMU user; :meth:`remove_scratch` stops
  the ``qemu-nbd`` processes whose PID files are in it and removes it (only a folder of
  that exact name shape);
* a backup job's UNIX export is reached here through ``ssh -L`` (:meth:`reach`), so the
  NBD block status of ``qemu:dirty-bitmap:`` contexts is read over the forwarded socket;
* a stopped disk is exported on the host by ``qemu-nbd --read-only [-B BITMAP]``
  (:meth:`stopped`), opened as the chain :func:`migrate.sources.host_chain.host_chain`
  checked against libvirt's view, and forwarded here;
* in-cluster workers read a TLS-PSK re-export made on the host (:meth:`serve_tls`); the
  PSK goes to the host through the SSH channel's stdin, into a 0600 file.

:meth:`lost` tells a broken SSH connection (a forwarding ended) from other failures, so
a round names it in one line.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.clients import nbd, ssh
from migrate.core.errors import VmmoveError
from migrate.core.model import VM, Disk

#: The only folder names :meth:`WarmHost.remove_scratch` removes on a host.
_SCRATCH_NAME = re.compile(r"vmmove-[0-9a-f]{8}-[0-9a-f]{8}")
#: Stops each qemu-nbd whose PID file lies in the folder ($1) or one level below.
_STOP_EXPORTS = r'''for f in "$1"/*.pid "$1"/*/*.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f") || continue
  case "$p" in ''|*[!0-9]*) continue;; esac
  tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q qemu-nbd || continue
  kill "$p" 2>/dev/null
  i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
done
true
'''


@dataclass
class Served:
    """A stopped disk's export: ``socket`` to read here, ``host_socket`` on the host."""

    socket: str
    host_socket: str
    export: str
    bitmap: str | None


class WarmHost:
    """Host access for one warm VM (see the module docstring)."""

    def __init__(self, vm: VM, tag: str, vm_key: str) -> None:
        from migrate.clients.checkpoint import scratch_dir
        from migrate.sources.remote_disks import ssh_target

        self.vm = vm
        self.target: ssh.SshTarget | None = ssh_target(vm)
        local = scratch_dir(tag, vm_key)
        self.folder = f"{ssh.host_tmpdir().rstrip('/')}/{local.name}" if self.target \
            else str(local)
        self._tmp: Path | None = None
        self._forwards: list[ssh.Forward] = []
        self._broken = False  # a forwarding of this run ended under a read

    @property
    def remote(self) -> bool:
        return self.target is not None

    @property
    def label(self) -> str:
        return self.target.label if self.target else "localhost"

    # -- scratch folder ------------------------------------------------------------------
    def make_scratch(self, dom: Any) -> None:
        """The folder, 0700, given to the domain's QEMU user (it writes the job's files)."""
        from migrate.clients.backup import qemu_owner
        from migrate.clients.checkpoint import make_scratch

        if self.target is None:
            make_scratch(dom, Path(self.folder))
            return
        ssh.run(self.target, ["mkdir", "-m", "700", "-p", "--", self.folder])
        owner = qemu_owner(dom)
        if owner:
            ssh.run(self.target, ["chown", f"{owner[0]}:{owner[1]}", "--", self.folder])

    def stop_exports(self) -> None:
        """Stop the ``qemu-nbd`` a killed run left serving from the folder (it would hold
        the image open against ``qemu-img bitmap --remove``)."""
        if self.target is None:
            from migrate.clients.checkpoint import _kill_pid_file

            for pid_file in Path(self.folder).glob("*.pid"):
                _kill_pid_file(pid_file)
            return
        ssh.run(self.target, ["sh", "-c", _STOP_EXPORTS, "sh", self.folder], timeout=60)

    def remove_scratch(self) -> bool:
        """Stop its ``qemu-nbd`` processes and remove the folder; True when it existed."""
        from migrate.clients.checkpoint import remove_scratch

        if self.target is None:
            return remove_scratch(Path(self.folder))
        if not _SCRATCH_NAME.fullmatch(self.folder.rsplit("/", 1)[-1]):
            raise ssh.SshError(f"{self.label}: refusing to remove {self.folder}: not a "
                               "vmmove scratch folder")
        script = '[ -d "$1" ] || exit 3\n' + _STOP_EXPORTS + 'rm -rf -- "$1"\n'
        proc = ssh.run(self.target, ["sh", "-c", script, "sh", self.folder], check=False,
                       timeout=60)
        if proc.returncode not in (0, 3):
            said = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or \
                [f"exit {proc.returncode}"]
            raise ssh.SshError(f"{self.label}: cannot remove {self.folder}: {said[0]}")
        return proc.returncode == 0

    def tidy(self) -> None:
        """Remove the folder if empty (between rounds); anything else stays for clean."""
        if self.target is None:
            try:
                Path(self.folder).rmdir()
            except OSError:
                pass
            return
        try:
            ssh.run(self.target, ["rmdir", "--", self.folder], check=False, timeout=30)
        except ssh.SshError:
            pass

    # -- reaching the host's exports -----------------------------------------------------
    def _local_dir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="vmmove-warm-"))
        return Path(tempfile.mkdtemp(prefix="s-", dir=self._tmp))

    @contextmanager
    def reach(self, socket: str) -> Iterator[str]:
        """A UNIX socket of the host as a path here (``ssh -L``; itself when local)."""
        if self.target is None:
            yield socket
            return
        fwd = ssh.Forward(self.target, self._local_dir() / "nbd.sock", socket)
        self._forwards.append(fwd)
        try:
            yield str(fwd.local)
        except BaseException:
            deadline = time.monotonic() + 2.0  # ssh notices a cut connection a moment later
            while fwd.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            self._broken = self._broken or not fwd.alive()
            raise
        finally:
            fwd.close()
            self._forwards.remove(fwd)

    def lost(self) -> bool:
        """Whether a forwarding of this run ended on its own (the SSH connection broke)."""
        return self._broken or any(not f.alive() for f in self._forwards)

    def _export_dir(self) -> str:
        """A fresh ``vmmove.XXXXXXXX`` folder (0700) in the scratch folder, for one export."""
        assert self.target is not None
        out = ssh.run(self.target, ["sh", "-c", 'mkdir -m 700 -p -- "$1" && d=$(mktemp -d '
                                    '"$1/vmmove.XXXXXXXX") && chmod 700 "$d" && echo "$d"',
                                    "sh", self.folder])
        return out.stdout.decode().strip()

    @contextmanager
    def stopped(self, disk: Disk, name: str, bitmap: str | None) -> Iterator[Served]:
        """``qemu-nbd --read-only [-B bitmap]`` of a stopped disk of a remote host, opened
        as the checked chain, reachable here; stopped on exit.  Raises
        :class:`~migrate.sources.host_chain.HostChainError` or
        :class:`~migrate.clients.nbd.NbdError`."""
        from migrate.sources.host_chain import host_chain

        assert self.target is not None
        chain = host_chain(self.target, disk, f"{self.vm.name}/{disk.target}")
        folder = self._export_dir()
        export = nbd.serve_remote(self.target, chain.qemu_name(), None, name, folder=folder,
                                  bitmap=bitmap)
        try:
            assert export.socket
            with self.reach(export.socket) as local:
                yield Served(local, export.socket, name, bitmap)
        finally:
            try:
                export.stop()
            except VmmoveError:
                pass

    @contextmanager
    def serve_tls(self, name: str, socket: str, export: str, port: int) -> Iterator[bytes]:
        """Re-export the host's UNIX export ``socket``/``export`` on TCP ``port`` with
        TLS-PSK from the host itself (the worker reads host → cluster); yields the PSK."""
        from migrate.clients.checkpoint import release_port

        assert self.target is not None
        try:
            folder = self._export_dir()
            served = nbd.serve_remote(self.target, "", None, name, port=port, folder=folder,
                                      image_opts=nbd.nbd_image_opts(socket, export))
        except VmmoveError as exc:
            if "in use" not in str(exc):  # a port another program holds stays out of use
                release_port(port)
            raise
        try:
            assert served.psk is not None
            yield served.psk
        finally:
            try:
                served.stop()
            except VmmoveError:
                pass
            release_port(port)

    def close(self) -> None:
        """End this run's forwardings (a next run starts afresh)."""
        self._broken = False
        for fwd in list(self._forwards):
            fwd.close()
        self._forwards.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
