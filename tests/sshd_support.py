"""A real OpenSSH server on loopback for the remote-host tests.

``sshd`` (session fixture) starts Debian's ``/usr/sbin/sshd`` in the foreground (``-D``)
on 127.0.0.1 and a free port, with a host key and a client key generated for the session
(``ssh-keygen``), ``AuthorizedKeysFile`` pointing at the client's public key, stream-local
forwarding allowed and password logins off.  The client side is a ``known_hosts`` file
holding the host key, so connections verify it as a real operator's would.
:meth:`Sshd.libvirt_uri` gives ``qemu+ssh://root@127.0.0.1:PORT/system?keyfile=…&known_hosts=…``.

Skips (saying why) when not root or when openssh-server is not installed (``.ci/run``
installs it).  :meth:`Sshd.drop_connections` kills every session process of this server
but the listener, the way a network cut ends them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    port: int
    folder: Path
    key: Path  # the client's private key
    known_hosts: Path
    proc: subprocess.Popen[bytes]

    def libvirt_uri(self) -> str:
        return (f"qemu+ssh://root@127.0.0.1:{self.port}/system?keyfile={quote(str(self.key))}"
                f"&known_hosts={quote(str(self.known_hosts))}")

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split()]

    def drop_connections(self) -> int:
        """Kill every open session of this server (the listener stays); how many."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)


class NoSshd(Exception):
    """sshd cannot run here; the message says why."""


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    """sshd on 127.0.0.1:<free port> for the session; skips with the reason if impossible."""
    try:
        with running_sshd() as server:
            yield server
    except NoSshd as exc:
        pytest.skip(str(exc))


@contextmanager
def running_sshd() -> Iterator[Sshd]:
    """sshd on 127.0.0.1:<free port> until the ``with`` ends (tests and bench/remote.py);
    raises :class:`NoSshd` when it cannot run."""
    if os.geteuid() != 0:
        raise NoSshd("not root: sshd needs root to log in as root (the libvirt host's user)")
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        raise NoSshd("openssh-server/openssh-client not installed (apt install openssh-server)")
    folder = Path(tempfile.mkdtemp(prefix="vmmove-sshd-"))
    folder.chmod(0o700)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
    port = free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"AuthorizedKeysFile {client_key}.pub", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "AllowStreamLocalForwarding yes", "AllowTcpForwarding yes", "StrictModes no",
        f"PidFile {folder}/sshd.pid", "MaxSessions 64", "MaxStartups 64",
        "LogLevel ERROR", "Subsystem sftp internal-sftp", ""]))
    known_hosts = folder / "known_hosts"
    pub = (folder / "host_ed25519.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    log = open(folder / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise NoSshd(f"sshd did not start: {(folder / 'sshd.log').read_text()[-300:]}")
            time.sleep(0.05)
    try:
        yield Sshd(port, folder, client_key, known_hosts, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def host_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private parent for the folders vmmove makes on the "host" (``VMMOVE_HOST_TMPDIR``),
    so a test can check it leaves none behind while other sessions share /var/tmp."""
    folder = Path(tempfile.mkdtemp(prefix="vmmove-hosttmp-", dir="/var/tmp"))
    folder.chmod(0o755)  # QEMU's user creates backup sockets in folders below it
    monkeypatch.setenv("VMMOVE_HOST_TMPDIR", str(folder))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
