"""SSH to a libvirt host, with the credentials its ``qemu+ssh://`` URI names.

Why OpenSSH's ``ssh`` client (not asyncssh or paramiko): libvirt's own ``qemu+ssh://``
transport runs this same binary, so a host the operator reaches with libvirt is reached
here with the same keys, agent, ``~/.ssh/config``, jump hosts and host-key policy, and no
second SSH implementation (with its own key formats and known-hosts rules) enters the
trust path.  OpenSSH also forwards a UNIX socket natively (``-L local.sock:remote.sock``,
"stream-local forwarding", OpenSSH ≥ 6.7), which is all the remote reads need.

What comes from the URI (libvirt's names, docs/remote-hosts.md): user and port from the
authority, ``keyfile`` (``-i``), ``known_hosts`` (``UserKnownHostsFile``, checked
strictly: vmmove's channels verify the host key against it even where libvirt's
``+ssh`` transport, which ignores ``known_hosts``, was told ``no_verify=1``), and
``no_verify=1`` (no host-key check, only when no ``known_hosts`` is given).  Nothing is
ever prompted for (``BatchMode=yes``); no secret is ever put in an argument list: secrets
go to the host on the SSH channel's stdin (:func:`write_file`).

Errors are :class:`SshError`, one line naming the host and what ssh said.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from migrate.core.errors import VmmoveError

#: URI transports that run over SSH (libvirt's names).
SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
CONNECT_TIMEOUT = 15  # seconds, ssh's ConnectTimeout
FORWARD_TIMEOUT = 20.0  # seconds to wait for a forwarded socket to appear
HOST_TMPDIR_ENV = "VMMOVE_HOST_TMPDIR"  # parent of vmmove's folders on hosts


class SshError(VmmoveError):
    """ssh failed: could not connect or authenticate, or the remote command failed."""


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to log in; built from a libvirt URI by :meth:`from_uri`."""

    host: str
    port: int | None = None
    user: str | None = None
    keyfile: str | None = None
    known_hosts: str | None = None
    no_verify: bool = False

    @classmethod
    def from_uri(cls, uri: str) -> SshTarget | None:
        """The SSH side of ``driver+ssh://[user@]host[:port]/path?keyfile=…``; None for a
        URI without an SSH transport (local, tcp, tls, test)."""
        parts = urlsplit(uri)
        transport = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else ""
        if transport not in SSH_TRANSPORTS or not parts.hostname:
            return None
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        return cls(
            host=parts.hostname, port=parts.port, user=unquote(parts.username or "") or None,
            keyfile=query.get("keyfile") or None, known_hosts=query.get("known_hosts") or None,
            no_verify=query.get("no_verify") == "1")

    @property
    def label(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{who}{self.host}{port}"

    def options(self) -> list[str]:
        """ssh options (no command, no host) for this target."""
        opts = ["-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR"]
        if self.port:
            opts += ["-p", str(self.port)]
        if self.user:
            opts += ["-l", self.user]
        if self.keyfile:
            opts += ["-i", self.keyfile, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}",
                     "-o", "StrictHostKeyChecking=yes"]
        elif self.no_verify:
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return opts

    def argv(self, command: list[str] | None = None, extra: list[str] | None = None) -> list[str]:
        """The ``ssh`` command line; ``command`` is quoted for the remote shell."""
        out = ["ssh", *self.options(), *(extra or []), self.host]
        if command:
            out += ["--", shlex.join(command)]
        return out


@dataclass(frozen=True)
class LocalHost:
    """This machine as the "host" (a local ``qemu:///system`` VM): the same commands run
    directly, without SSH, and sockets need no forwarding."""

    label: str = "localhost"

    def argv(self, command: list[str] | None = None, extra: list[str] | None = None) -> list[str]:
        return list(command or [])


HostTarget = SshTarget | LocalHost


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run(target: HostTarget, command: list[str], *, input: bytes | None = None,
        timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` on the host; raise :class:`SshError` (one line) when it fails."""
    try:
        proc = subprocess.run(target.argv(command), input=input, capture_output=True,
                              timeout=timeout, stdin=None if input is not None
                              else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SshError(f"{target.label}: {command[0]} did not finish within {timeout:g}s") \
            from None
    if check and proc.returncode != 0:
        said = _one_line(proc.stderr.decode(errors="replace")) or f"exit {proc.returncode}"
        if proc.returncode == 255 and isinstance(target, SshTarget):
            raise SshError(f"{target.label}: ssh failed: {said}")
        raise SshError(f"{target.label}: {command[0]} failed: {said}")
    return proc


def write_file(target: HostTarget, path: str, data: bytes, mode: str = "600") -> None:
    """Write ``data`` to ``path`` on the host (created with ``mode``), through stdin: the
    bytes never appear in an argument list or a log."""
    run(target, ["sh", "-c", f'umask 077 && cat > "$1" && chmod {mode} "$1"', "sh", path],
        input=data)


def host_tmpdir() -> str:
    """Where vmmove makes its folders on hosts: ``$VMMOVE_HOST_TMPDIR``, else ``/var/tmp``."""
    return os.environ.get(HOST_TMPDIR_ENV) or "/var/tmp"


def make_temp_dir(target: HostTarget, parent: str | None = None, mode: str = "711") -> str:
    """A fresh folder ``vmmove.XXXXXXXX`` on the host (``mktemp -d`` in ``parent``, default
    :func:`host_tmpdir`), for sockets and per-job files."""
    parent = parent or host_tmpdir()
    out = run(target, ["sh", "-c", f'd=$(mktemp -d "$1/vmmove.XXXXXXXX") && chmod {mode} "$d" '
                       '&& echo "$d"', "sh", parent])
    return out.stdout.decode().strip()


def remove_dir(target: HostTarget, path: str) -> None:
    """``rm -rf`` a folder :func:`make_temp_dir` made (refuses anything else)."""
    if "/vmmove." not in path:
        raise SshError(f"{target.label}: refusing to remove {path}: not a vmmove folder")
    run(target, ["rm", "-rf", "--", path], check=False, timeout=30)


class Forward:
    """A UNIX socket on the host, reachable at ``local`` here (``ssh -N -L``).

    A context manager; :meth:`close` ends the ssh process (and so the forwarding).  Each
    connection to ``local`` opens one channel to ``remote`` on the host.
    """

    def __init__(self, target: SshTarget, local: str | os.PathLike[str], remote: str,
                 timeout: float = FORWARD_TIMEOUT) -> None:
        self.target, self.local, self.remote = target, Path(local), remote
        self.local.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            target.argv(extra=["-N", "-o", "ExitOnForwardFailure=yes",
                               "-o", "StreamLocalBindUnlink=yes",
                               "-L", f"{self.local}:{remote}"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self.local.is_socket():
            if self.proc.poll() is not None:
                said = _one_line(self.proc.stderr.read().decode(errors="replace")
                                 if self.proc.stderr else "")
                raise SshError(f"{target.label}: cannot forward {remote}: "
                               f"{said or f'ssh exit {self.proc.returncode}'}")
            if time.monotonic() > deadline:
                self.close()
                raise SshError(f"{target.label}: forwarding {remote} did not start within "
                               f"{timeout:g}s")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.local.unlink(missing_ok=True)

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
