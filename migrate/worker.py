"""``vmmove worker``: write one disk from a source host's NBD export into a PVC.

This runs inside the ``direct`` mode's Job (manifests/workers.py gives the exact
arguments), never on the operator's machine: the bytes go from the source host straight
into the volume.  Steps, each failing with one line and a non-zero exit:

1. the PSK file (the Secret's ``keys.psk``) must be there and readable;
2. the destination: a Block-mode PVC's device (written in place, it must be at least
   ``size`` bytes), or a Filesystem-mode PVC's ``disk.img`` (written to a hidden temporary
   file beside it and renamed only once verified, so a killed pod never leaves a
   ``disk.img`` that looks whole);
3. ``nbdcopy`` from ``nbds://…`` (TLS-PSK; block status keeps holes off the wire) into
   this process, which hashes the export's guest view as it arrives (``sha256-1m``,
   :class:`migrate.clients.nbd.GuestDigest`) and writes it (zero blocks skipped in a fresh
   file, so holes stay holes; written on a block device, which may hold old data);
4. the written bytes read back and hashed the same way: the two must be equal, and the
   export exactly ``size`` bytes;
5. the result, one JSON object (``checksum``, ``bytes``, ``dest``), written to
   ``--result`` (the container's terminationMessagePath, which vmmove reads from the pod)
   and printed.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from migrate.clients import nbd
from migrate.core.errors import VmmoveError

class WorkerError(VmmoveError):
    """The worker could not write or verify the disk."""


def source_url(source: str, psk_file: str) -> str:
    """``nbds://USER@HOST:PORT/EXPORT`` with the PSK file added as libnbd expects."""
    parts = urlsplit(source)
    if parts.scheme != "nbds" or not parts.hostname or not parts.port:
        raise WorkerError(f"--source {source!r}: expected nbds://USER@HOST:PORT/EXPORT "
                          "(the worker reads only over TLS)")
    if parts.query:
        raise WorkerError(f"--source {source!r}: no query expected (the PSK comes from "
                          "--psk-file)")
    return f"{source}?tls-psk-file={quote(psk_file)}"


def _destination(dest: str, size: int) -> tuple[str, bool]:
    """(path to write, is a block device); checks what the PVC offers."""
    path = Path(dest)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise WorkerError(f"{dest}: {exc.strerror}") from None
    if st is not None and stat.S_ISBLK(st.st_mode):
        with open(path, "rb") as fh:
            capacity = fh.seek(0, os.SEEK_END)
        if capacity < size:
            raise WorkerError(f"{dest}: the block volume holds {capacity} bytes, the disk "
                              f"needs {size}")
        return str(path), True
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise WorkerError(f"{dest}: not a regular file or block device")
    if not path.parent.is_dir():
        raise WorkerError(f"{dest}: no such folder {path.parent} (is the PVC mounted there?)")
    part = path.with_name(f".{path.name}.vmmove-part")
    part.unlink(missing_ok=True)  # a killed earlier attempt's leftovers
    with open(part, "wb") as fh:
        fh.truncate(size)
    return str(part), False


def run_worker(source: str, psk_file: str, dest: str, size: int,
               result: str | None = None) -> dict[str, Any]:
    """Copy, verify, publish; the result object.  Raises :class:`WorkerError`."""
    if not os.access(psk_file, os.R_OK):
        raise WorkerError(f"{psk_file}: PSK file missing or unreadable (the Job's Secret "
                          "must hold keys.psk)")
    if size <= 0:
        raise WorkerError(f"--size {size}: must be the disk's size in bytes")
    url = source_url(source, psk_file)
    label = f"{dest} from {source}"
    exported = nbd.export_size(url, label)
    if exported != size:
        raise WorkerError(f"{label}: the export holds {exported} bytes, expected {size}")
    target, block = _destination(dest, size)
    try:
        # one read of the export, hashed as it arrives; then the PVC read back
        src_sum, src_bytes = nbd.stream_to(url, target, dest_is_zero=not block, label=label)
        dest_sum, _ = nbd.file_sha256(target, "raw", size)
        if src_bytes != size:
            raise WorkerError(f"{label}: the export holds {src_bytes} bytes, expected {size}")
        if src_sum != dest_sum:
            raise WorkerError(f"{label}: written bytes differ from the export ({dest_sum} "
                              f"written, {src_sum} exported)")
        if not block:
            os.replace(target, dest)
            fd = os.open(Path(dest).parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        if not block:
            Path(target).unlink(missing_ok=True)
        raise
    out = {"checksum": dest_sum, "bytes": size, "dest": dest}
    if result:
        Path(result).write_text(json.dumps(out))
    return out
