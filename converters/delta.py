"""Deltas between a source disk and its copy: changed extents, block hashes, in-place writes.

Warm migration (docs/warm-migration.md) keeps a target volume (a PVC's ``disk.img`` or raw
block device) close to a running source with rounds that send only what changed:

* **bitmap method** (qcow2 disks on a libvirt host): the host says which extents changed
  (a dirty bitmap read over NBD block status); :func:`copy_extents` writes exactly those
  extents, read from the source's export, at the same offsets of the target;
* **hash method** (raw, LVM and block disks, offline sources): :func:`hash_sync` reads the
  whole source and compares it per :data:`BLOCK` with the digests recorded in the previous
  round (:class:`BlockHashes`, a file in the work folder): XXH3-128 finds the changed
  blocks at memory speed, and of a changed block only the :data:`SUB` pieces that differ
  from the target are written.  The recorded digests are the guest-view checksum's blocks
  (``xxh3-1m``, :mod:`migrate.core.digest`; :func:`guest_checksum`), so the pass gives the
  source's checksum without a second read or another hash.

Readers are anything with ``size`` and ``pread(offset, length) -> bytes`` (an
:class:`migrate.clients.nbdwire.NbdClient`, or :class:`FileReader` for a stopped raw disk
on this machine); one with ``readinto(offset, buffer)`` too is read into reused buffers.
Targets are opened for writing in place (never truncated except in a full round of a
regular file, which starts from zeros).  Counts are bytes; nothing here talks to libvirt
or the cluster.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from migrate.core import digest
from migrate.core.errors import VmmoveError
from migrate.core.serialize import atomic_write

BLOCK = digest.BLOCK  # hash method block size (bytes): the guest checksum's tree block
SUB = 64 << 10  # hash method write granularity inside a changed block (a qcow2 cluster)
CHUNK = 8 << 20  # largest single write
READ = 32 << 20  # hash method: bytes read (and hashed in parallel) at once
FAST = 16  # bytes of a block's XXH3-128 digest
DIGEST = FAST  # bytes recorded per block: its XXH3-128 (the xxh3-1m guest checksum's block)
FORM = digest.XXH3_1M  # the guest checksum the recorded digests make
ZERO_CHUNK = bytes(CHUNK)


class DeltaError(VmmoveError):
    """A delta could not be read or written."""


class Reader(Protocol):
    size: int

    def pread(self, offset: int, length: int) -> bytes | bytearray: ...


@dataclass
class DeltaStats:
    """What one pass sent: ``changed`` bytes written to the target, ``read`` bytes read from
    the source, ``extents`` written (merged runs), ``seconds``."""

    changed: int = 0
    read: int = 0
    extents: int = 0
    seconds: float = 0.0
    checksum: str | None = None  # hash_sync: the source's guest-view checksum


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
    """A file descriptor writing (and reading: :func:`hash_sync` compares) ``path`` in
    place: a block device (at least ``size`` bytes) or a regular file (created or grown
    sparse to ``size``; with ``fresh`` emptied first so a full round starts from zeros).
    Raises :class:`DeltaError`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
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


class Writer(Protocol):
    """A target that is not a file descriptor: an NBD export (a qcow2 delta being built)."""

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...


Target = int | Writer  # a file descriptor, or a writer


def _write_all(fd: Target, data: bytes | bytearray | memoryview, offset: int) -> None:
    if not isinstance(fd, int):
        fd.pwrite(data, offset)
        return
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def copy_extents(reader: Reader, extents: Iterable[tuple[int, int]], fd: Target,
                 zero: Iterable[tuple[int, int]] = ()) -> DeltaStats:
    """Write ``extents`` of ``reader`` at the same offsets of ``fd`` (a file descriptor or
    a :class:`Writer`), and zeros over the ``zero`` ranges (extents the source reads as
    zeros, known without reading them)."""
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
        if not isinstance(fd, int):
            fd.write_zeroes(off, length)
            stats.changed += length
            continue
        pos, end = off, off + length
        while pos < end:
            n = min(CHUNK, end - pos)
            _write_all(fd, ZERO_CHUNK[:n], pos)
            stats.changed += n
            pos += n
    return stats


def fast_digest(data: bytes | memoryview) -> bytes:
    """A block's XXH3-128 (``xxh3-1m``'s block digest): ~20 GB/s here, so the whole disk
    is compared with the last round at memory speed."""
    return digest.block_digest(FORM, data)


class FileReader:
    """A stopped raw disk (file or block device) of this machine, opened read-only."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise DeltaError(f"{path}: cannot open the source: {exc.strerror}") from None
        self.size = os.lseek(self.fd, 0, os.SEEK_END)

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def pread(self, offset: int, length: int) -> bytearray:
        """``length`` bytes at ``offset`` (zeros past the end), read into one buffer."""
        out = bytearray(length)
        self.readinto(offset, out)
        return out

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset`` (zeros past the end)."""
        view, got = memoryview(buf).cast("B"), 0
        while got < len(view):
            n = os.preadv(self.fd, [view[got:]], offset + got)
            if n == 0:  # past the end: zeros
                view[got:] = bytes(len(view) - got)
                break
            got += n

    def holes(self) -> list[tuple[int, int]]:
        """Ranges the file does not allocate (``SEEK_HOLE``/``SEEK_DATA``); none for a
        device or a file system that cannot tell."""
        out: list[tuple[int, int]] = []
        pos = 0
        try:
            while pos < self.size:
                hole = os.lseek(self.fd, pos, os.SEEK_HOLE)
                if hole >= self.size:
                    break
                try:
                    data = os.lseek(self.fd, hole, os.SEEK_DATA)
                except OSError:  # ENXIO: a hole up to the end
                    data = self.size
                out.append((hole, data - hole))
                pos = data
        except OSError:
            return []
        return out


ZERO_BLOCK = bytes(BLOCK)


def _zero_entry(length: int) -> bytes:
    """The recorded digest of ``length`` zero bytes (a block inside a hole)."""
    return digest.zero_digest(FORM) if length == BLOCK else fast_digest(bytes(length))


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted ``numbers`` as ``(first, last)``."""
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


class BlockHashes:
    """Per-block digests of what the target holds, one file: :data:`MAGIC`, then
    :data:`DIGEST` bytes a block (its XXH3-128: finds changed blocks, and makes the
    ``xxh3-1m`` guest-view checksum).  A file of another layout (an older vmmove's, with
    SHA-256 beside or instead) does not load: the next round is then full.

    The file is replaced atomically after a pass has written its blocks, so a pass cut
    short leaves the previous round's hashes, and the next pass sends again whatever it
    did not finish (a block written twice is harmless; one skipped never happens).
    """

    MAGIC = b"vmmove-hashes xxh3-128 1MiB v2\n"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self, size: int) -> list[bytes] | None:
        """The recorded digests for a disk of ``size`` bytes; None when there are none
        (first round) or they were for another size or layout."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        count = -(-size // BLOCK)
        head = len(self.MAGIC)
        if raw[:head] != self.MAGIC or len(raw) != head + count * DIGEST:
            return None
        return [raw[head + i * DIGEST:head + (i + 1) * DIGEST] for i in range(count)]

    def save(self, digests: list[bytes]) -> None:
        atomic_write(self.path, self.MAGIC + b"".join(digests), private=True)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def guest_checksum(digests: list[bytes]) -> str:
    """The guest-view checksum (``xxh3-1m:<hex>``, :mod:`migrate.core.digest`) of a disk
    whose per-:data:`BLOCK` recorded digests (:class:`BlockHashes`) are ``digests``: the
    hash pass gives the source's checksum without a second read."""
    return digest.combine(FORM, digests)


def _read_into(reader: Reader, offset: int, view: memoryview) -> None:
    into = getattr(reader, "readinto", None)
    if into is not None:
        into(offset, view)
    else:
        view[:] = reader.pread(offset, len(view))


class _Runs:
    """Writes pieces at their offsets, merging adjacent ones into one write of ≤ CHUNK."""

    def __init__(self, fd: Target, stats: DeltaStats) -> None:
        self.fd, self.stats = fd, stats
        self.start = 0
        self.parts: list[memoryview] = []
        self.length = 0

    def add(self, offset: int, data: memoryview) -> None:
        if self.parts and self.start + self.length != offset:
            self.flush()
        if not self.parts:
            self.start = offset
        self.parts.append(data)
        self.length += len(data)
        if self.length >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            _write_all(self.fd, self.parts[0] if len(self.parts) == 1 else
                       b"".join(self.parts), self.start)
            self.stats.changed += self.length
            self.stats.extents += 1
        self.parts, self.length = [], 0


def differing_pieces(want: bytes, have: bytes) -> list[tuple[int, int]]:
    """``(offset, length)`` runs of the :data:`SUB` pieces where ``want`` (a block of the
    source) differs from ``have`` (the target's bytes there; shorter reads as different):
    what to write so that the target holds ``want``."""
    out: list[tuple[int, int]] = []
    for at in range(0, len(want), SUB):
        if want[at:at + SUB] != have[at:at + SUB]:
            n = min(SUB, len(want) - at)
            if out and out[-1][0] + out[-1][1] == at:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((at, n))
    return out


def hash_sync(reader: Reader, size: int, old: list[bytes] | None, fd: Target | None,
              holes: Iterable[tuple[int, int]] = (),
              zeroed: bool = False) -> tuple[list[bytes], DeltaStats]:
    """Read the whole source, compare it per :data:`BLOCK` with ``old``'s digests (every
    block differs when ``old`` is None), write what differs; the new digests
    (:class:`BlockHashes` entries) and what was sent (``stats.checksum``: the source's
    guest-view checksum, :func:`guest_checksum`).

    A block whose XXH3-128 equals the recorded one is unchanged.  ``holes``: ranges the
    source reports as zeros (block status), known without reading (a block wholly inside
    one gets the zero digest; with that recorded too, nothing is read, hashed or written).
    ``zeroed``: the target reads zeros already (a fresh file), so zero blocks of a first
    pass are not written.  ``fd`` None: only hash (the checksum of a volume read back).

    Costs (docs/warm-migration.md, ``bench/warm.py``): reads go into two reused buffers
    of :data:`READ` bytes (the next window is read while this one is compared).  A changed
    block of a file descriptor target is compared with what the target holds, and only its
    differing :data:`SUB` pieces are written: a 4 KiB change costs a 64 KiB write, not 1 MiB.
    The trust this puts in XXH3 (not a cryptographic hash): a block made by the guest to
    collide with its own previous content would not be carried over, which harms only that
    guest's own disk, which it controls anyway; accidental collisions are 2^-128 per block.
    """
    stats = DeltaStats()
    zero_blocks: set[int] = set()
    for off, length in holes:
        first = -(-off // BLOCK)
        last = (off + length) // BLOCK  # blocks wholly inside the hole
        zero_blocks.update(range(first, last))
    count = -(-size // BLOCK)
    runs = _Runs(fd, stats) if fd is not None else None
    compare = isinstance(fd, int) and old is not None  # the target holds the last round
    per_read = READ // BLOCK
    windows = [range(first, min(count, first + per_read)) for first in range(0, count, per_read)]
    # Two buffers, reused: a fresh 32 MiB buffer per read is a fresh mapping whose every
    # page faults in (most of the old cost of this pass); one is read into, one compared.
    buffers = [memoryview(bytearray(min(READ, size) or 1)) for _ in range(min(2, len(windows)))]
    zeros = memoryview(ZERO_CHUNK)[:BLOCK]
    zero_fast = _zero_entry(BLOCK)

    def read(i: int) -> list[int]:
        blocks, buf = windows[i], buffers[i % len(buffers)]
        need = [b for b in blocks if b not in zero_blocks]
        for run_first, run_last in _runs(need):  # one read per run of blocks to read
            lo, hi = run_first * BLOCK, min(size, (run_last + 1) * BLOCK)
            at = lo - blocks[0] * BLOCK
            _read_into(reader, lo, buf[at:at + hi - lo])
            stats.read += hi - lo
        return need

    def differing(off: int, data: memoryview) -> list[tuple[int, memoryview]]:
        """The runs of :data:`SUB` pieces of ``data`` that differ from the target at
        ``off``."""
        assert isinstance(fd, int)
        return [(off + at, data[at:at + n])
                for at, n in differing_pieces(bytes(data), os.pread(fd, len(data), off))]

    ahead = ThreadPoolExecutor(1, thread_name_prefix="read")  # reads the next window
    digests: list[bytes] = []  # per block: its XXH3-128

    try:
        pending = ahead.submit(read, 0) if windows else None
        for i, blocks in enumerate(windows):
            assert pending is not None
            read_now = set(pending.result())
            # the next window goes into the other buffer: the last window's is done with
            pending = ahead.submit(read, i + 1) if i + 1 < len(windows) else None
            buf, base = buffers[i % len(buffers)], blocks[0] * BLOCK

            def view(b: int) -> memoryview:
                return buf[b * BLOCK - base:min(size, (b + 1) * BLOCK) - base]
            for b in blocks:
                length = min(BLOCK, size - b * BLOCK)
                if b in read_now:
                    fast = fast_digest(view(b))
                else:  # a block inside a hole: zeros, known without reading
                    fast = zero_fast if length == BLOCK else _zero_entry(length)
                digests.append(fast)
                if old is not None and old[b] == fast:
                    continue  # unchanged: nothing written
                data = view(b) if b in read_now else zeros[:length]
                zero = b not in read_now or (fast == zero_fast and bytes(data) == ZERO_BLOCK)
                if runs is None or (old is None and zeroed and zero):
                    continue
                if zero and not isinstance(fd, int):  # a delta: a zero cluster
                    assert fd is not None
                    runs.flush()
                    fd.write_zeroes(b * BLOCK, length)
                    stats.changed += length
                    continue
                if compare:
                    for off, piece in differing(b * BLOCK, data):
                        runs.add(off, piece)
                else:
                    runs.add(b * BLOCK, data)
            if runs is not None:
                runs.flush()  # before this window's buffer is read into again
    finally:
        ahead.shutdown()
    stats.checksum = guest_checksum(digests)
    return digests, stats
