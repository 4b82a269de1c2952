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
   this process, which hashes the export's guest view as it arrives (``--checksum-form``,
   a tree form of :mod:`migrate.core.digest`, ``xxh3-1m`` by default: the direct mode
   records whichever it reports) and writes it (zero blocks skipped in a fresh
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
from migrate.core import digest
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


def _tree_form(form: str) -> str:
    if form not in digest.TREE_FORMS:
        raise WorkerError(f"--checksum-form {form!r}: expected one of "
                          f"{', '.join(digest.TREE_FORMS)}")
    return form


def run_worker(source: str, psk_file: str, dest: str, size: int,
               result: str | None = None, form: str = digest.DEFAULT) -> dict[str, Any]:
    """Copy, verify (guest-view checksums in tree form ``form``), publish; the result
    object.  Raises :class:`WorkerError`."""
    _tree_form(form)
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
        src_sum, src_bytes = nbd.stream_to(url, target, dest_is_zero=not block, label=label,
                                           form=form)
        dest_sum, _ = nbd.file_guest_checksum(target, "raw", size, form)
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


# -- warm migration: deltas written in place (issue 15, docs/warm-migration.md) -------------
#
# A warm round's worker does not rewrite the volume: it writes only what changed since the
# last round, in place, into the PVC that earlier rounds filled.  Two ways, as the round's
# method says:
#
# * ``--extents FILE`` (bitmap method): JSON ``{"data": [[offset, length], …], "zero":
#   [[offset, length], …]}`` from the host's dirty bitmap; each data run is read from the
#   export and written at the same offset (``qemu-img convert -n`` between two raw windows,
#   the source over NBD with TLS-PSK), each zero run is written as zeros;
# * ``--compare`` (hash method, done where the volume is): the whole export is streamed
#   (``nbdcopy URL -``) and compared per MiB with the volume; the differing 64 KiB pieces
#   of a block are written.
#
# ``--verify`` (the final delta) then compares the guest-view checksums (``--checksum-form``)
# of the export and of the volume.  A killed pod leaves a partly applied delta; the retried pod applies it again
# from the same export (writes are idempotent).

DELTA_BLOCK = 1 << 20


def _psk_object(psk_file: str) -> str:
    folder = os.path.dirname(os.path.abspath(psk_file))
    if os.path.basename(psk_file) != nbd.PSK_FILE or "," in folder:
        raise WorkerError(f"{psk_file}: qemu reads a PSK from a folder's {nbd.PSK_FILE}")
    return f"tls-creds-psk,id=tls0,endpoint=client,dir={folder},username={nbd.PSK_USER}"


def _window(source: str, offset: int, length: int) -> str:
    """qemu image options: ``length`` bytes at ``offset`` of the TLS export ``source``."""
    parts = urlsplit(source)
    export = parts.path.lstrip("/")
    for value in (parts.hostname or "", export):
        if "," in value:
            raise WorkerError(f"--source {source!r}: a comma cannot appear in qemu options")
    return (f"driver=raw,offset={offset},size={length},file.driver=nbd,"
            f"file.server.type=inet,file.server.host={parts.hostname},"
            f"file.server.port={parts.port},file.export={export},file.tls-creds=tls0")


def _copy_run(source: str, psk_file: str, dest: str, offset: int, length: int) -> None:
    import subprocess

    if "," in dest:
        raise WorkerError(f"{dest}: a comma cannot appear in qemu options")
    proc = subprocess.run(
        ["qemu-img", "convert", "-n", "--object", _psk_object(psk_file), "--image-opts",
         _window(source, offset, length), "--target-image-opts",
         f"driver=raw,offset={offset},size={length},file.driver=file,file.filename={dest}"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3600)
    if proc.returncode != 0:
        said = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise WorkerError(f"{dest}: writing {length} bytes at {offset} failed: "
                          f"{said[-1] if said else proc.returncode}")


def _compare_into(url: str, dest: str, size: int, label: str) -> int:
    """Stream the export, compare it per MiB with ``dest`` and write the 64 KiB pieces that
    differ (:func:`converters.delta.differing_pieces`); bytes written."""
    import subprocess

    from converters.delta import differing_pieces

    proc = subprocess.Popen(["nbdcopy", "--", url, "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    changed, offset = 0, 0
    with open(dest, "r+b", buffering=0) as out:
        while offset < size:
            block = proc.stdout.read(min(DELTA_BLOCK, size - offset))
            if not block:
                break
            have = os.pread(out.fileno(), len(block), offset)
            if have != block:  # only the 64 KiB pieces that differ
                for at, n in differing_pieces(block, have):
                    os.pwrite(out.fileno(), block[at:at + n], offset + at)
                    changed += n
            offset += len(block)
        os.fsync(out.fileno())
    proc.stdout.close()
    proc.wait()
    if proc.returncode != 0 or offset != size:
        said = proc.stderr.read().decode(errors="replace").strip().splitlines() \
            if proc.stderr else []
        raise WorkerError(f"{label}: reading the export failed: "
                          f"{said[-1] if said else f'{offset} of {size} bytes'}")
    return changed


def run_delta(source: str, psk_file: str, dest: str, size: int, *,
              extents_file: str | None = None, compare: bool = False, verify: bool = False,
              result: str | None = None, form: str = digest.DEFAULT) -> dict[str, Any]:
    """Apply one warm round's delta in place (see above); the result object
    (``changed`` bytes, ``bytes`` = size, ``dest``, and ``checksum`` in tree form ``form``
    with ``verify``)."""
    _tree_form(form)
    if not os.access(psk_file, os.R_OK):
        raise WorkerError(f"{psk_file}: PSK file missing or unreadable (the Job's Secret "
                          "must hold keys.psk)")
    if bool(extents_file) == compare:
        raise WorkerError("a delta takes exactly one of --extents FILE and --compare")
    url = source_url(source, psk_file)
    label = f"{dest} from {source}"
    exported = nbd.export_size(url, label)
    if exported != size:
        raise WorkerError(f"{label}: the export holds {exported} bytes, expected {size}")
    try:
        st = os.stat(dest)
    except OSError as exc:
        raise WorkerError(f"{dest}: {exc.strerror} (a delta goes into the volume the first "
                          "round filled)") from None
    if stat.S_ISREG(st.st_mode) and st.st_size < size:
        raise WorkerError(f"{dest}: holds {st.st_size} bytes, the disk {size}")
    changed = 0
    if extents_file:
        try:
            runs = json.loads(Path(extents_file).read_text())
            data = [(int(o), int(n)) for o, n in runs.get("data", [])]
            zero = [(int(o), int(n)) for o, n in runs.get("zero", [])]
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise WorkerError(f"{extents_file}: not an extents file: {exc}") from None
        bad = [(o, n) for o, n in data + zero if o < 0 or n <= 0 or o + n > size]
        if bad:
            raise WorkerError(f"{extents_file}: extent {bad[0]} is outside the disk ({size})")
        for offset, length in data:
            _copy_run(source, psk_file, dest, offset, length)
            changed += length
        fd = os.open(dest, os.O_WRONLY)
        try:
            for offset, length in zero:
                done = 0
                while done < length:
                    n = min(DELTA_BLOCK * 4, length - done)
                    os.pwrite(fd, bytes(n), offset + done)
                    done += n
                changed += length
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        changed = _compare_into(url, dest, size, label)
    out: dict[str, Any] = {"changed": changed, "bytes": size, "dest": dest}
    if verify:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            f_source = pool.submit(nbd.guest_checksum, url, label, form)
            f_dest = pool.submit(nbd.file_guest_checksum, dest, "raw", size, form)
            (src_sum, _n), (dest_sum, _m) = f_source.result(), f_dest.result()
        if src_sum != dest_sum:
            raise WorkerError(f"{label}: the volume differs from the export after the delta "
                              f"({dest_sum} in the volume, {src_sum} exported)")
        out["checksum"] = dest_sum
    if result:
        Path(result).write_text(json.dumps(out))
    return out


def run_merge(url_file: str, dest: str, size: int, *, verify: bool = False,
              result: str | None = None, form: str = digest.DEFAULT) -> dict[str, Any]:
    """S3 mode: fetch a round's qcow2 delta (holding only the changed clusters) from the
    presigned URL in ``url_file`` and merge it into the volume as CDI's ImageIO path does:
    ``qemu-img rebase -u -F raw -b DEST delta.qcow2`` then ``qemu-img commit delta.qcow2``.
    The result: ``changed`` (the delta's allocated bytes), ``bytes``, ``dest``, and with
    ``verify`` the volume's guest-view ``checksum`` in tree form ``form`` (vmmove compares
    it with the source's).
    """
    _tree_form(form)
    import shutil
    import subprocess
    import tempfile
    import urllib.request

    try:
        url = Path(url_file).read_text().strip()
    except OSError as exc:
        raise WorkerError(f"{url_file}: {exc.strerror} (the Job's Secret holds delta.url)") \
            from None
    if not url.startswith(("https://", "http://")):
        raise WorkerError(f"{url_file}: not an http(s) URL")
    if "," in dest or not os.path.exists(dest):
        raise WorkerError(f"{dest}: no such volume (a delta goes into the volume the first "
                          "round filled)")
    work = Path(tempfile.mkdtemp(prefix="vmmove-delta-"))
    delta = work / "delta.qcow2"
    try:
        try:
            with urllib.request.urlopen(url, timeout=300) as answer, open(delta, "wb") as out:  # noqa: S310 - an http(s) URL, checked above
                shutil.copyfileobj(answer, out, 4 << 20)
        except OSError as exc:
            raise WorkerError(f"{dest}: cannot fetch the delta: {exc}") from None

        def qemu_img(*args: str) -> str:
            proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=3600)
            if proc.returncode != 0:
                said = [ln for ln in proc.stderr.splitlines() if ln.strip()]
                raise WorkerError(f"{dest}: qemu-img {args[0]} of the delta failed: "
                                  f"{said[-1] if said else proc.returncode}")
            return proc.stdout

        info = json.loads(qemu_img("info", "--output=json", "-f", "qcow2", str(delta)))
        data = (info.get("format-specific") or {}).get("data") or {}
        if info.get("virtual-size") != size or data.get("data-file"):
            raise WorkerError(f"{dest}: the delta is not a {size}-byte qcow2 of its own")
        qemu_img("rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", os.path.abspath(dest),
                 str(delta))
        qemu_img("commit", "-q", "-f", "qcow2", str(delta))
        out: dict[str, Any] = {"changed": int(info.get("actual-size") or 0), "bytes": size,
                               "dest": dest}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if verify:
        out["checksum"] = nbd.file_guest_checksum(dest, "raw", size, form)[0]
    if result:
        Path(result).write_text(json.dumps(out))
    return out
