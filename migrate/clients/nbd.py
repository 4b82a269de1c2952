"""NBD exports on a source host and reads from them: ``qemu-nbd``, ``nbdcopy``, URLs, PSKs.

A disk is read remotely through an NBD export, never from its file:

* a shut-off VM's disk: :func:`serve_remote` starts ``qemu-nbd --read-only`` on the host
  over SSH (the image opened read-only, in the format libvirt declares, with its backing
  chain as the image headers name it), listening on a UNIX socket in a private folder of
  the host (operator reads, forwarded back by :class:`migrate.clients.ssh.Forward`) or
  on TCP with TLS-PSK (in-cluster workers, ``direct`` mode);
* a running VM's disk: libvirt's backup job exports it (:mod:`migrate.clients.backup`);
  for ``direct`` mode the same :func:`serve_remote` re-exports that UNIX export on TCP
  with TLS (``qemu-nbd`` opens the backup export as an NBD client).

Reads go through qemu-img (``nbd+unix:///EXPORT?socket=…``) and libnbd's ``nbdcopy``
(``nbds://USER@HOST:PORT/EXPORT?tls-psk-file=…``).  :func:`guest_checksum` is the
checksum of the guest-visible bytes (the raw disk as the guest sees it, holes read as
zeros; a tree form of :mod:`migrate.core.digest`), the one checksum compared on both ends
of every remote copy.

PSK files are qemu's and libnbd's format (``USER:HEX``, one line, ``keys.psk`` in the
``tls-creds-psk`` folder); a fresh 256-bit key per export (:func:`new_psk`).
"""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
from dataclasses import dataclass
from collections.abc import Callable
from typing import IO
from urllib.parse import quote

from migrate.clients import ssh
from migrate.core import digest
from migrate.core.errors import VmmoveError

PSK_USER = "vmmove"
PSK_FILE = "keys.psk"  # the file name qemu's tls-creds-psk looks for in its folder
CHUNK = 1 << 20
SPARSE = 64 << 10  # granularity of holes kept when writing a fresh file (a qcow2 cluster)
#: nbdcopy to a pipe serializes its requests: large ones keep a TLS connection busy (with
#: its default 256 KiB requests a TLS export streams at a few MB/s); 2×2×32 MiB in memory.
STREAM_OPTIONS = ["--request-size=33554432", "--requests=2", "--connections=2"]


class NbdError(VmmoveError):
    """An NBD export could not be started or read."""


def new_psk(user: str = PSK_USER) -> bytes:
    """A PSK file's content: ``USER:<64 hex digits>\\n`` (256 random bits)."""
    return f"{user}:{secrets.token_hex(32)}\n".encode()


def unix_url(socket: str | os.PathLike[str], export: str) -> str:
    """The qemu/libnbd URL of ``export`` on a local UNIX socket."""
    return f"nbd+unix:///{quote(export)}?socket={quote(str(socket))}"


@dataclass
class RemoteExport:
    """A ``qemu-nbd`` running on a host; :meth:`stop` ends it (and removes its folder)."""

    target: ssh.HostTarget
    folder: str  # private folder on the host: pid file, socket, PSK
    export: str
    socket: str | None = None  # UNIX socket on the host
    port: int | None = None  # TCP port (TLS)
    psk: bytes | None = None

    def stop(self) -> None:
        pid = f"{self.folder}/qemu-nbd.pid"
        ssh.run(self.target, ["sh", "-c", 'test -f "$1" && kill "$(cat "$1")"; true', "sh",
                              pid], check=False, timeout=30)
        ssh.remove_dir(self.target, self.folder)


def serve_remote(target: ssh.HostTarget, image: str, fmt: str | None, export: str, *,
                 image_opts: str | None = None, port: int | None = None,
                 bind: str = "0.0.0.0", folder: str | None = None,
                 share: bool = False, bitmap: str | None = None) -> RemoteExport:
    """Start ``qemu-nbd --read-only`` on the host for ``image`` (a path, in format ``fmt``)
    or ``image_opts`` (qemu ``--image-opts``, e.g. a backup job's NBD export).

    Without ``port``: a UNIX socket ``<folder>/nbd.sock``.  With ``port``: TCP on
    ``bind:port`` with TLS-PSK (a new key, written to the host through stdin, returned in
    :attr:`RemoteExport.psk` for the Secret).  ``qemu-nbd --fork`` returns once the socket
    listens; ``--persistent`` serves any number of connections until :meth:`stop`.
    ``share``: open an image a running QEMU holds (``--force-share``; only for
    ``--inconsistent-copy``).  ``bitmap``: also export that persistent dirty bitmap of
    the image as the meta context ``qemu:dirty-bitmap:<bitmap>`` (``-B``; a warm final
    delta).  ``image`` may be a ``json:`` filename (a checked, pinned chain; ``fmt`` None).
    Raises :class:`NbdError` (one line naming the host and image).
    """
    folder = folder or ssh.make_temp_dir(target, mode="700")
    args = ["qemu-nbd", "--read-only", "--persistent", "--fork", "--shared=8",
            f"--pid-file={folder}/qemu-nbd.pid", f"--export-name={export}"]
    if share:
        args.append("--force-share")
    if bitmap:
        args.append(f"--bitmap={bitmap}")
    psk = None
    if port:
        psk = new_psk()
        ssh.run(target, ["mkdir", "-m", "700", "-p", f"{folder}/psk"])
        ssh.write_file(target, f"{folder}/psk/{PSK_FILE}", psk)
        args += [f"--bind={bind}", f"--port={port}",
                 f"--object=tls-creds-psk,id=tls0,endpoint=server,dir={folder}/psk",
                 "--tls-creds=tls0"]
        socket = None
    else:
        socket = f"{folder}/nbd.sock"
        args.append(f"--socket={socket}")
    if image_opts:
        args += ["--image-opts", image_opts]
    else:
        if fmt:
            args.append(f"--format={fmt}")
        args.append(image)
    try:
        ssh.run(target, args, timeout=60)
    except ssh.SshError as exc:
        ssh.remove_dir(target, folder)
        what = image_opts or (image if not image.startswith("json:") else
                              "the checked image chain")
        raise NbdError(f"{target.label}: cannot export {what} with qemu-nbd: "
                       f"{str(exc).split(': ', 2)[-1]}") from None
    return RemoteExport(target, folder, export, socket=socket, port=port, psk=psk)


def nbd_image_opts(socket: str, export: str) -> str:
    """qemu ``--image-opts`` that open an NBD export on a UNIX socket as a raw disk."""
    for value in (socket, export):
        if "," in value:
            raise NbdError(f"{value!r}: a comma cannot appear in qemu image options")
    return f"driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={socket}," \
           f"file.export={export}"


def _nbdcopy(url: str, dest: str, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["nbdcopy", *(extra or []), "--", url, dest],
                            stdout=subprocess.PIPE if dest == "-" else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _said(proc: subprocess.Popen[bytes]) -> str:
    text = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {proc.returncode}"


def guest_checksum(url: str, label: str = "", form: str = digest.DEFAULT) -> tuple[str, int]:
    """``(FORM:HEX, bytes)`` of an NBD export's whole guest view (holes as zeros; ``form`` a
    tree form of :mod:`migrate.core.digest`).  Read with ``nbdcopy URL -`` (block status
    skips reading holes on the wire).  Raises :class:`NbdError` naming ``label``.
    """
    proc = _nbdcopy(url, "-", STREAM_OPTIONS)
    return hash_stream(proc, label or url, form=form)


def file_guest_checksum(path: str | os.PathLike[str], fmt: str = "raw",
                        size: int | None = None,
                        form: str = digest.DEFAULT) -> tuple[str, int]:
    """``(FORM:HEX, bytes)`` of a local image's guest view (``form`` a tree form of
    :mod:`migrate.core.digest`): qcow2 read through a captive ``qemu-nbd``; raw files and
    block devices read directly, holes skipped, their first ``size`` bytes when given (a
    short sparse file reads as zeros to ``size``)."""
    if fmt == "raw":
        tree = digest.TreeDigest(form)
        total = size if size is not None else os.stat(path).st_size
        with open(path, "rb") as fh:
            pos = 0
            while pos < total:
                data = _next_data(fh.fileno(), pos, total)
                if data > pos:  # a hole: zeros, not read
                    tree.zeros(data - pos)
                    pos = data
                    continue
                fh.seek(pos)
                chunk = fh.read(min(CHUNK * 4, total - pos))
                if not chunk:  # past the end of a short file: zeros up to ``size``
                    tree.zeros(total - pos)
                    break
                tree.update(chunk)
                pos += len(chunk)
        return tree.hexdigest(), tree.bytes
    proc = subprocess.Popen(
        ["nbdcopy", *STREAM_OPTIONS, "--", "[", "qemu-nbd", "--read-only", "--format", fmt,
         str(path), "]", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    return hash_stream(proc, str(path), form=form)


def _next_data(fd: int, pos: int, end: int) -> int:
    """Where data starts at or after ``pos`` (``SEEK_DATA``), ``end`` when only a hole
    follows; ``pos`` where holes cannot be told (block devices, some file systems)."""
    try:
        return min(os.lseek(fd, pos, os.SEEK_DATA), end)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nothing but a hole to the end
            return end
        return pos


def hash_stream(proc: subprocess.Popen[bytes], label: str,
                sink: Callable[[memoryview, int], None] | None = None,
                failed: str = "reading the NBD export failed",
                form: str = digest.DEFAULT) -> tuple[str, int]:
    """Hash what ``proc`` writes to stdout (a guest view, tree form ``form``), handing each
    chunk and its offset to ``sink`` too; ``(FORM:HEX, bytes)``, or :class:`NbdError`
    naming ``label``."""
    tree = digest.TreeDigest(form)
    out: IO[bytes] = proc.stdout  # type: ignore[assignment]
    try:
        pos = 0
        while chunk := out.read(CHUNK * 4):
            tree.update(chunk)
            if sink is not None:
                sink(memoryview(chunk), pos)
            pos += len(chunk)
    finally:
        out.close()
        proc.wait()
    if proc.returncode != 0:
        raise NbdError(f"{label}: {failed}: {_said(proc)}")
    if proc.stderr:
        proc.stderr.close()
    return tree.hexdigest(), tree.bytes


def export_size(url: str, label: str = "") -> int:
    """The export's size in bytes (``nbdinfo --size``); :class:`NbdError` naming ``label``."""
    proc = subprocess.run(["nbdinfo", "--size", "--", url], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    if proc.returncode != 0:
        said = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise NbdError(f"{label or url}: cannot open the export: "
                       f"{said[-1] if said else proc.returncode}")
    return int(proc.stdout.strip())


def stream_to(url: str, dest: str | os.PathLike[str], *, dest_is_zero: bool,
              label: str = "", form: str = digest.DEFAULT) -> tuple[str, int]:
    """Write an export's guest view into ``dest`` (a file or block device, at least as
    large) and return its guest-view checksum as read (tree form ``form``), in one read
    of the export: ``nbdcopy URL -`` into this process, hashed and written.  With
    ``dest_is_zero`` (a freshly truncated file) zero blocks are skipped, so holes stay
    holes; otherwise they are written.  Raises :class:`NbdError` naming ``label``."""
    zero = bytes(SPARSE)
    with open(dest, "r+b") as fh:

        def write(view: memoryview, pos: int) -> None:
            if not dest_is_zero:
                fh.seek(pos)
                fh.write(view)
                return
            for at in range(0, len(view), SPARSE):  # only the 64 KiB pieces with data
                piece = view[at:at + SPARSE]
                if piece != zero[:len(piece)]:
                    fh.seek(pos + at)
                    fh.write(piece)

        result = hash_stream(_nbdcopy(url, "-", STREAM_OPTIONS), label or url, write,
                             "copy failed", form)
        fh.flush()
        os.fsync(fh.fileno())
    return result
