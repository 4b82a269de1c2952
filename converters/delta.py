"""Deltas between a source disk and its copy: changed extents, block hashes, in-place writes.

Warm migration (docs/warm-migration.md) keeps a target volume (a PVC's ``disk.img`` or raw
block device) close to a running source with rounds that send only what changed:

* **bitmap method** (qcow2 disks on a libvirt host): the host says which extents changed
  (a dirty bitmap read over NBD block status); :func:`copy_extents` writes exactly those
  extents, read from the source's export, at the same offsets of the target;
* **hash method** (raw, LVM and block disks, offline sources): :func:`hash_sync` reads the
  whole source, hashes it in fixed blocks (BLAKE2b-128 per :data:`BLOCK` bytes), and writes
  only the blocks whose hash differs from the one recorded in the previous round
  (:class:`BlockHashes`, a file in the work folder).

Readers are anything with ``pread(offset, length) -> bytes`` (an
:class:`migrate.clients.nbdwire.NbdClient`).  Targets are opened for writing in place
(never truncated except in a full round of a regular file, which starts from zeros).
Counts are bytes; nothing here talks to libvirt or the cluster.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from migrate.errors import VmmoveError
from migrate.serialize import atomic_write

BLOCK = 1 << 20  # hash method block size (bytes)
CHUNK = 8 << 20  # largest single read/write
DIGEST = 16  # bytes of BLAKE2b per block
ZERO_CHUNK = bytes(CHUNK)


class DeltaError(VmmoveError):
    """A delta could not be read or written."""


class Reader(Protocol):
    size: int

    def pread(self, offset: int, length: int) -> bytes: ...


@dataclass
class DeltaStats:
    """What one pass sent: ``changed`` bytes written to the target, ``read`` bytes read from
    the source, ``extents`` written (merged runs), ``seconds``."""

    changed: int = 0
    read: int = 0
    extents: int = 0
    seconds: float = 0.0


def merge_extents(extents: Iterable[tuple[int, int]], gap: int = 0) -> list[tuple[int, int]]:
    """Sorted ``(offset, length)`` runs with overlapping (or ≤ ``gap`` apart) ones merged."""
    out: list[tuple[int, int]] = []
    for off, length in sorted(e for e in extents if e[1] > 0):
        if out and off <= out[-1][0] + out[-1][1] + gap:
            start = out[-1][0]
            out[-1] = (start, max(out[-1][0] + out[-1][1], off + length) - start)
        else:
            out.append((off, length))
    return out


def open_target(path: str | os.PathLike[str], size: int, *, fresh: bool = False) -> int:
    """A file descriptor writing ``path`` in place: a block device (at least ``size``
    bytes) or a regular file (created or grown sparse to ``size``; with ``fresh`` emptied
    first so a full round starts from zeros).  Raises :class:`DeltaError`."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DeltaError(f"{path}: cannot open the target volume: {exc.strerror}") from None
    try:
        if stat.S_ISBLK(os.fstat(fd).st_mode):
            have = os.lseek(fd, 0, os.SEEK_END)
            if have < size:
                raise DeltaError(f"{path}: the target device holds {have} bytes, the disk "
                                 f"{size}")
        else:
            if fresh:
                os.ftruncate(fd, 0)
            if fresh or os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def copy_extents(reader: Reader, extents: Iterable[tuple[int, int]], fd: int,
                 zero: Iterable[tuple[int, int]] = ()) -> DeltaStats:
    """Write ``extents`` of ``reader`` at the same offsets of ``fd``, and zeros over the
    ``zero`` ranges (extents the source reads as zeros, known without reading them)."""
    stats = DeltaStats()
    for off, length in merge_extents(extents):
        stats.extents += 1
        pos, end = off, off + length
        while pos < end:
            n = min(CHUNK, end - pos)
            data = reader.pread(pos, n)
            stats.read += n
            _write_all(fd, data, pos)
            stats.changed += n
            pos += n
    for off, length in merge_extents(zero):
        pos, end = off, off + length
        while pos < end:
            n = min(CHUNK, end - pos)
            _write_all(fd, ZERO_CHUNK[:n], pos)
            stats.changed += n
            pos += n
    return stats


def block_digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST).digest()


ZERO_DIGEST = block_digest(bytes(BLOCK))


class BlockHashes:
    """Per-block digests of what the target holds, one file (``DIGEST`` bytes a block).

    The file is replaced atomically after a pass has written its blocks, so a pass cut
    short leaves the previous round's hashes, and the next pass sends again whatever it
    did not finish (a block written twice is harmless; one skipped never happens).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self, size: int) -> list[bytes] | None:
        """The recorded digests for a disk of ``size`` bytes; None when there are none
        (first round) or they were for another size."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        count = -(-size // BLOCK)
        if len(raw) != count * DIGEST:
            return None
        return [raw[i * DIGEST:(i + 1) * DIGEST] for i in range(count)]

    def save(self, digests: list[bytes]) -> None:
        atomic_write(self.path, b"".join(digests), private=True)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def hash_sync(reader: Reader, size: int, old: list[bytes] | None, fd: int,
              holes: Iterable[tuple[int, int]] = ()) -> tuple[list[bytes], DeltaStats]:
    """Read the whole source, hash it per :data:`BLOCK`, write the blocks whose digest is
    not ``old``'s (every block when ``old`` is None); the new digests and what was sent.

    ``holes``: ranges the source reports as zeros (block status), hashed without reading.
    """
    stats = DeltaStats()
    zero_blocks: set[int] = set()
    for off, length in holes:
        first = -(-off // BLOCK)
        last = (off + length) // BLOCK  # blocks wholly inside the hole
        zero_blocks.update(range(first, last))
    digests: list[bytes] = []
    count = -(-size // BLOCK)
    run_start: int | None = None
    run = bytearray()

    def flush() -> None:
        nonlocal run_start, run
        if run_start is not None and run:
            _write_all(fd, bytes(run), run_start)
            stats.changed += len(run)
            stats.extents += 1
        run_start, run = None, bytearray()

    per_read = CHUNK // BLOCK
    for first in range(0, count, per_read):
        blocks = range(first, min(count, first + per_read))
        need = [b for b in blocks if b not in zero_blocks]
        data = b""
        if need:
            lo, hi = need[0] * BLOCK, min(size, (need[-1] + 1) * BLOCK)
            data = reader.pread(lo, hi - lo)
            stats.read += hi - lo
            base = lo
        for b in blocks:
            length = min(BLOCK, size - b * BLOCK)
            if b in zero_blocks:
                block = None
                digest = ZERO_DIGEST if length == BLOCK else block_digest(bytes(length))
            else:
                block = data[b * BLOCK - base:b * BLOCK - base + length]
                digest = block_digest(block)
            digests.append(digest)
            if old is not None and old[b] == digest:
                flush()
                continue
            if block is None:
                block = bytes(length)
            if run_start is None or run_start + len(run) != b * BLOCK:
                flush()
                run_start = b * BLOCK
            run += block
            if len(run) >= CHUNK:
                flush()
    flush()
    return digests, stats
