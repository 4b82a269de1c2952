"""Stream conversion: read the source once, write a qcow2 front to back, hash both in stream.

``qemu-img convert`` + ``qemu-img compare`` reads the source twice and the output twice
(plus a checksum pass over the output).  This path reads the guest view of the source once,
through a captive ``qemu-nbd --read-only`` (the checked ``json:`` chain, format pinned),
and writes the qcow2 itself in one forward pass:

1. ``NBD_CMD_BLOCK_STATUS`` (``base:allocation``) gives the source's allocation map; every
   64 KiB guest cluster that holds any data (not a hole, not a zero run) gets a data cluster;
2. the whole layout follows from that map before a byte of data is read: header, refcount
   table and blocks, L1 table, the L2 tables that map data, then the data clusters in guest
   order (qcow2 v3, 64 KiB clusters, 16-bit refcounts, every cluster referenced once:
   ``qemu-img check`` finds it clean);
3. the data clusters are read from the export in guest order (≤ 32 MiB requests), written
   behind the metadata, and hashed as they pass (:mod:`migrate.core.digest`, form
   ``xxh3-1m``): the guest view's checksum (holes counted as zeros without being read) and
   the output file's checksum (what upload sends and the journal records), a tree of the
   file's 1 MiB blocks: a block lying wholly behind the metadata region is final once
   written, so it is hashed then (:class:`FileTree`); the few blocks of the metadata region
   are hashed at the end, from the metadata as written.

So the source is read once (its allocated clusters only; :attr:`StreamResult.source_read`
counts the bytes asked over NBD and :attr:`StreamResult.server_read` what ``qemu-nbd`` read,
from ``/proc/PID/io``), the output is never read back, and the file's data is written
strictly front to back from :attr:`StreamResult.first_data`, which is what lets an upload
follow it.  ``qemu-img compare`` stays
available as ``--verify=full`` (:mod:`converters.convert`).
"""

from __future__ import annotations

import os
import queue
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from converters.qemuimg import Canceller, launcher
from converters.watermark import Watermark
from migrate.clients.nbdwire import BASE_ALLOCATION, STATE_ZERO, NbdClient, NbdWireError
from migrate.core import digest
from migrate.core.errors import VmmoveError
from migrate.core.progress import trace_command

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS  # 64 KiB: qemu's default qcow2 cluster
L2_ENTRIES = CLUSTER // 8  # an L2 table maps 512 MiB of guest space
REFCOUNT_ORDER = 4  # 16-bit refcounts, qemu's default
REFS_PER_BLOCK = CLUSTER * 8 // (1 << REFCOUNT_ORDER)  # clusters one refcount block counts
COPIED = 1 << 63  # QCOW_OFLAG_COPIED: refcount is exactly 1
HEADER_LENGTH = 104  # qcow2 v3 header without the optional compression-type field
#: Reads: runs of at most RUN bytes, each read as REQUEST-byte requests spread over
#: CONNECTIONS connections, at most WINDOW runs ahead.  Measured (docs/convert.md): qemu-nbd
#: serves a vmdk's 256 KiB requests on 4 connections about twice as fast as 4-32 MiB ones.
RUN = 4 << 20
REQUEST = 256 << 10
CONNECTIONS = 4
WINDOW = 4  # memory: WINDOW × RUN
#: Written bytes after which a ``fdatasync`` starts in its own thread: the disk writes the
#: output while the source is still being read, so the final ``fsync`` a verified
#: conversion makes (:mod:`converters.convert`) finds little left (measured: ~0.9 s for
#: 2 GiB written at once, at the end).
FLUSH_EVERY = 256 << 20


class StreamError(VmmoveError):
    """The stream conversion failed; the message names the image."""


@dataclass
class Layout:
    """Where the qcow2's parts go (offsets in bytes).  The metadata region in front of
    the data is sized for the worst case (every allocated cluster holding data); what is
    not used stays a hole of the file (refcount 0, free)."""

    size: int  # guest bytes
    refcount_table: int
    refcount_table_clusters: int
    refcount_blocks: int  # offset of the first (reserved: refcount_block_count)
    refcount_block_count: int
    l1: int
    l1_size: int  # entries
    l1_clusters: int
    l2: dict[int, int]  # L1 index -> L2 table offset (reserved for each index with data)
    first_data: int  # offset of the first data cluster


def _clusters(nbytes: int) -> int:
    return -(-nbytes // CLUSTER)


def plan_layout(size: int, allocated: list[int]) -> Layout:
    """The qcow2 layout for ``size`` guest bytes whose clusters ``allocated`` may hold data."""
    l1_size = max(1, -(-size // (CLUSTER * L2_ENTRIES)))
    l1_clusters = _clusters(l1_size * 8)
    tables = sorted({g // L2_ENTRIES for g in allocated})
    fixed = 1 + l1_clusters + len(tables) + len(allocated)
    blocks, table_clusters = 1, 1
    while True:  # refcount blocks count themselves and the table: find the fixed point
        total = fixed + blocks + table_clusters
        need_blocks = -(-total // REFS_PER_BLOCK)
        need_table = _clusters(need_blocks * 8)
        if (need_blocks, need_table) == (blocks, table_clusters):
            break
        blocks, table_clusters = max(blocks, need_blocks), max(table_clusters, need_table)
    at = CLUSTER
    refcount_table, at = at, at + table_clusters * CLUSTER
    refcount_blocks, at = at, at + blocks * CLUSTER
    l1, at = at, at + l1_clusters * CLUSTER
    l2 = {}
    for index in tables:
        l2[index], at = at, at + CLUSTER
    return Layout(size, refcount_table, table_clusters, refcount_blocks, blocks, l1,
                  l1_size, l1_clusters, l2, at)


def metadata(layout: Layout, data: list[int]) -> tuple[bytes, list[tuple[int, int]]]:
    """The bytes before the first data cluster, once the guest clusters ``data`` (ascending)
    were written in order from ``layout.first_data``; and the ``(offset, length)`` pieces
    of it in use (the rest stays a hole)."""
    out = bytearray(layout.first_data)
    clusters = layout.first_data // CLUSTER + len(data)  # the file's length in clusters
    struct.pack_into(">4sIQIIQIIQQIIQQQQII", out, 0, b"QFI\xfb", 3, 0, 0, CLUSTER_BITS,
                     layout.size, 0, layout.l1_size, layout.l1, layout.refcount_table,
                     layout.refcount_table_clusters, 0, 0, 0, 0, 0, REFCOUNT_ORDER,
                     HEADER_LENGTH)
    # Header extensions end at once (type 0, length 0: already zero bytes).
    used = [(0, CLUSTER), (layout.refcount_table, layout.refcount_table_clusters * CLUSTER),
            (layout.l1, layout.l1_clusters * CLUSTER)]
    tables = sorted({g // L2_ENTRIES for g in data})
    for index in tables:
        struct.pack_into(">Q", out, layout.l1 + 8 * index, layout.l2[index] | COPIED)
        used.append((layout.l2[index], CLUSTER))
    for n, guest in enumerate(data):
        table = layout.l2[guest // L2_ENTRIES]
        struct.pack_into(">Q", out, table + 8 * (guest % L2_ENTRIES),
                         (layout.first_data + n * CLUSTER) | COPIED)
    blocks = -(-clusters // REFS_PER_BLOCK)
    for i in range(blocks):
        struct.pack_into(">Q", out, layout.refcount_table + 8 * i,
                         layout.refcount_blocks + i * CLUSTER)
        used.append((layout.refcount_blocks + i * CLUSTER, CLUSTER))
    counted = bytearray(2 * (layout.first_data // CLUSTER)) + b"\x00\x01" * len(data)
    for offset, length in used:
        first, last = offset // CLUSTER, (offset + length) // CLUSTER
        counted[2 * first:2 * last] = b"\x00\x01" * (last - first)
    refs = layout.refcount_blocks
    out[refs:refs + len(counted)] = counted
    return bytes(out), sorted(used)


def data_clusters(extents: list, size: int) -> list[int]:
    """Guest clusters overlapping any extent that is not zero (``base:allocation``)."""
    clusters: list[int] = []
    for ext in extents:
        if ext.flags & STATE_ZERO or ext.length <= 0:
            continue
        first, last = ext.offset // CLUSTER, _clusters(min(ext.offset + ext.length, size))
        if clusters and clusters[-1] >= first:
            first = clusters[-1] + 1
        clusters.extend(range(first, last))
    return clusters


def runs(clusters: list[int], limit: int = RUN // CLUSTER) -> Iterator[tuple[int, int]]:
    """``(first, count)`` runs of consecutive clusters, at most ``limit`` long."""
    start = prev = None
    for c in clusters:
        if start is not None and c == prev + 1 and c - start < limit:
            prev = c
            continue
        if start is not None:
            yield start, prev - start + 1
        start = prev = c
    if start is not None:
        yield start, prev - start + 1


class FileTree:
    """The checksum (``FORM:HEX``, tree form, :mod:`migrate.core.digest`) of a file written
    as :func:`convert_stream` writes it: its data bytes in order from ``first_data`` on
    (:meth:`data`, as they are written), then the bytes below ``first_data`` once they are
    final (:meth:`finish`).  A 1 MiB block of the file lying wholly at or after
    ``first_data`` is hashed as soon as its last byte is given; the block straddling
    ``first_data`` keeps its data part (< 1 MiB) until :meth:`finish`.  Not thread-safe:
    one writer."""

    def __init__(self, first_data: int, form: str = digest.DEFAULT) -> None:
        self.first_data = first_data
        self.end = first_data  # the file offset after the last byte given
        self._tree = digest.BlockTree(form)
        self._pending = bytearray()  # the current block's bytes from max(start, first_data)
        self._lead = b""  # the data part of the block straddling first_data, once complete

    def data(self, data: bytes | bytearray | memoryview) -> None:
        """The next bytes written at :attr:`end`."""
        view = memoryview(data).cast("B")
        while view:
            pos = self.end
            block_end = (pos // digest.BLOCK + 1) * digest.BLOCK
            n = min(len(view), block_end - pos)
            if n == digest.BLOCK:  # a whole aligned block: hashed from the caller's buffer
                self._tree.put(pos // digest.BLOCK, view[:n])
            else:
                self._pending += view[:n]
                if pos + n == block_end:
                    start = block_end - digest.BLOCK
                    if start >= self.first_data:
                        self._tree.put(start // digest.BLOCK, self._pending)
                    else:
                        self._lead = bytes(self._pending)
                    self._pending = bytearray()
            self.end += n
            view = view[n:]

    def finish(self, head: bytes) -> str:
        """``FORM:HEX`` of the file: ``head`` (its first ``first_data`` bytes, final) and the
        data given.  ``ValueError`` when ``head`` is not ``first_data`` bytes."""
        if len(head) != self.first_data:
            raise ValueError(f"head of {len(head)} bytes, expected {self.first_data}")
        below, straddle = divmod(self.first_data, digest.BLOCK)
        for index in range(below):
            self._tree.put(index, head[index * digest.BLOCK:(index + 1) * digest.BLOCK])
        tail = bytes(self._pending)
        if straddle:  # the block holding both metadata and data
            data = self._lead
            if not data:  # the file ends within it
                data, tail = tail, b""
            self._tree.put(below, head[below * digest.BLOCK:] + data)
        if tail:  # the file's last, short block
            self._tree.put(self.end // digest.BLOCK, tail)
        return self._tree.hexdigest(self.end)


@dataclass
class StreamResult:
    checksum: str  # FORM:HEX (xxh3-1m) of the output file's bytes
    guest_checksum: str  # FORM:HEX (xxh3-1m) of the guest view as read from the source
    guest_bytes: int
    source_read: int  # bytes asked of the source export (NBD reads)
    server_read: int | None  # bytes qemu-nbd read (/proc/PID/io rchar), when readable
    size: int  # bytes of the output file
    data_clusters: int
    first_data: int  # offset of the first data cluster: the data is written in order from it


def _rchar(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io") as fh:
            for line in fh:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@contextmanager
def serve_readonly(name: str, fmt: str, label: str, canceller: Canceller | None = None,
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A captive ``qemu-nbd --read-only`` of ``name`` (a checked ``json:`` chain or a file
    in format ``fmt``) on a UNIX socket in a private temporary folder; yields
    ``(socket, process)`` and stops it on exit (or when ``canceller`` cancels).  Raises
    :class:`StreamError`."""
    folder = tempfile.mkdtemp(prefix="vmmove-stream-")
    socket = os.path.join(folder, "nbd.sock")
    args = ["qemu-nbd", "--read-only", "--persistent", f"--shared={CONNECTIONS + 1}",
            f"--socket={socket}", "--export-name=src", "--cache=writeback"]
    if not name.startswith("json:"):
        args.append(f"--format={fmt}")
    trace_command([*args, name])
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([*launcher(), *args, name], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=err)
    if canceller is not None:
        canceller.register(proc)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                err.seek(0)
                said = [ln for ln in err.read().decode(errors="replace").splitlines() if ln]
                raise StreamError(f"{label}: cannot read the image with qemu-nbd: "
                                  f"{said[-1].removeprefix('qemu-nbd: ') if said else 'it did not start'}")
            time.sleep(0.005)
        yield socket, proc
    finally:
        if canceller is not None:
            canceller.unregister(proc)
        proc.kill()
        proc.wait()
        err.close()
        shutil.rmtree(folder, ignore_errors=True)


def _connect(socket: str, export: str, proc: subprocess.Popen[bytes] | None, label: str,
             contexts: tuple[str, ...] = (BASE_ALLOCATION,)) -> NbdClient:
    """A connection to ``export``.  A captive server's socket file appears at bind(), a
    moment before qemu-nbd listens, so a refused first connection is tried again while
    ``proc`` runs (up to 60 s); without ``proc`` (a lease's export) it is not."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return NbdClient(socket, export, contexts)
        except NbdWireError as exc:
            if proc is None or proc.poll() is not None or time.monotonic() > deadline:
                raise StreamError(f"{label}: cannot read the image over NBD: "
                                  f"{str(exc).rsplit(': ', 1)[-1]}") from None
            time.sleep(0.01)


def convert_stream(name: str, fmt: str, dest: str, *, label: str,
                   on_progress: Callable[[float], None] | None = None,
                   on_checksum: Callable[[int, int], None] | None = None,
                   canceller: Canceller | None = None,
                   watermark: Watermark | None = None) -> StreamResult:
    """Write the guest view of ``name`` (format ``fmt``) as a qcow2 into ``dest`` (an
    existing file vmmove created; truncated), reading the source once; see the module doc.

    ``on_progress`` gets the fraction of the allocated source read and written (0..1);
    ``on_checksum(done, total)`` the bytes of the written file hashed at the end;
    ``watermark`` (:class:`converters.watermark.Watermark`) learns the layout
    (``first_data``, the size bound) and how far the data region is written, as it grows
    (the converter finishes or fails it).  Raises :class:`StreamError` (or :class:`~migrate.clients.nbdwire.NbdWireError`)
    naming ``label``; ``OSError`` for the output.
    """
    with serve_readonly(name, fmt, label, canceller) as (socket, proc):
        result = stream_export(socket, "src", dest, label=label, on_progress=on_progress,
                               on_checksum=on_checksum, canceller=canceller, proc=proc,
                               watermark=watermark)
        result.server_read = _rchar(proc.pid)
    return result


def stream_export(socket: str, export: str, dest: str, *, label: str,
                  on_progress: Callable[[float], None] | None = None,
                  on_checksum: Callable[[int, int], None] | None = None,
                  canceller: Canceller | None = None,
                  proc: subprocess.Popen[bytes] | None = None,
                  watermark: Watermark | None = None) -> StreamResult:
    """:func:`convert_stream` from an NBD export already served on a UNIX ``socket`` (a
    remote host's disk forwarded over SSH; or the captive ``proc``)."""
    try:
        with _connect(socket, export, proc, label) as src:
            size = src.size
            allocated = data_clusters(src.block_status(BASE_ALLOCATION), size)
    except OSError as exc:  # the connection broke: a read error, not the output's
        raise StreamError(f"{label}: reading the allocation map failed: "
                          f"{exc.strerror or exc}") from None
    except NbdWireError as exc:  # (the client's own words: closed, reset, timed out)
        raise StreamError(f"{label}: reading the allocation map failed: "
                          f"{str(exc).rsplit(': ', 1)[-1]}") from None
    layout = plan_layout(size, allocated)
    clients = [_connect(socket, export, proc, label, ()) for _ in range(CONNECTIONS)]
    try:
        return _copy(clients, layout, allocated, dest, label, on_progress, on_checksum,
                     canceller.cancelled if canceller else None, watermark)
    finally:
        for client in clients:
            client.close()


def _reads(clients: list[NbdClient], layout: Layout,
           allocated: list[int]) -> Iterator[tuple[int, bytearray]]:
    """``(guest offset, bytes)`` of every allocated run, in order; each run is read as
    :data:`REQUEST`-byte requests over ``clients`` side by side (one request per connection
    at a time), at most :data:`WINDOW` runs ahead."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    free: queue.Queue[NbdClient] = queue.Queue()
    for client in clients:
        free.put(client)

    def read(view: memoryview, offset: int) -> None:
        client = free.get()
        try:
            client.readinto(offset, view)
        except OSError as exc:  # the connection broke (SSH lost, server gone): a read error
            raise NbdWireError(f"{client.label}: reading failed: {exc.strerror or exc}") from None
        finally:
            free.put(client)

    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="stream-read") as pool:
        try:
            for first, count in runs(allocated):
                offset = first * CLUSTER
                length = min(count * CLUSTER, layout.size - offset)
                buffer = bytearray(length)
                view = memoryview(buffer)
                parts = [pool.submit(read, view[at:at + REQUEST], offset + at)
                         for at in range(0, length, REQUEST)]
                pending.append((offset, buffer, parts))
                if len(pending) >= WINDOW:
                    at, done, futures = pending.popleft()
                    for fut in futures:
                        fut.result()
                    yield at, done
            while pending:
                at, done, futures = pending.popleft()
                for fut in futures:
                    fut.result()
                yield at, done
        finally:
            for _, _, futures in pending:
                for fut in futures:
                    fut.cancel()


_ZERO_CLUSTER = bytes(CLUSTER)


def _copy(clients: list[NbdClient], layout: Layout, allocated: list[int], dest: str,
          label: str, on_progress: Callable[[float], None] | None,
          on_checksum: Callable[[int, int], None] | None,
          cancelled: threading.Event | None,
          watermark: Watermark | None = None) -> StreamResult:
    """Read the allocated clusters in order; keep those that are not all zeros (as
    ``qemu-img convert`` does) and write them one after the other behind the metadata
    region, then write the metadata.  Worker threads write the file, hash it
    (:class:`FileTree`: its blocks behind the metadata region as they are written, the
    rest at the end from the metadata) and hash the guest view while the readers fetch the
    next runs (xxhash, hashlib and file writes release the GIL).  The file is never read
    back.
    """
    guest = digest.TreeDigest(digest.DEFAULT)
    file_tree = FileTree(layout.first_data, digest.DEFAULT)
    to_file: queue.Queue[tuple[memoryview, int] | None] = queue.Queue(maxsize=4)
    to_hash: queue.Queue[memoryview | None] = queue.Queue(maxsize=8)
    to_guest: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=4)
    failure: list[BaseException] = []
    data: list[int] = []  # guest clusters written, in order
    total = max(1, len(allocated) * CLUSTER)

    flush = threading.Event()  # FLUSH_EVERY more bytes were written (or the copy ended)
    copied = threading.Event()

    def flush_worker(fd: int) -> None:
        try:
            while True:
                flush.wait()
                flush.clear()
                if copied.is_set():
                    return
                os.fdatasync(fd)
        except BaseException as exc:  # carried to the reading thread
            failure.append(exc)

    def file_worker(fd: int) -> None:
        done = 0
        end = layout.first_data  # the data region's end: bytes below it are final
        unflushed = 0
        try:
            while (item := to_file.get()) is not None:
                view, count = item
                if failure:
                    continue
                end += len(view)
                unflushed += len(view)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if unflushed >= FLUSH_EVERY:
                    unflushed = 0
                    flush.set()
                if watermark is not None:
                    watermark.advance(end)
                done += count * CLUSTER
                if on_progress is not None:
                    on_progress(done / total)
        except BaseException as exc:  # carried to the reading thread
            failure.append(exc)

    def hash_worker() -> None:
        try:
            while (view := to_hash.get()) is not None:
                if not failure:
                    file_tree.data(view)
        except BaseException as exc:
            failure.append(exc)

    def guest_worker() -> None:
        pos = 0
        try:
            while (item := to_guest.get()) is not None:
                at, chunk = item
                if failure:
                    continue
                if at > pos:
                    guest.zeros(at - pos)
                guest.update(chunk)
                pos = at + len(chunk)
            if not failure and pos < layout.size:
                guest.zeros(layout.size - pos)
        except BaseException as exc:
            failure.append(exc)

    read = 0
    fd = os.open(dest, os.O_RDWR | os.O_TRUNC)
    try:
        os.lseek(fd, layout.first_data, os.SEEK_SET)
        if watermark is not None:
            watermark.plan(layout.first_data, layout.first_data + len(allocated) * CLUSTER)
        threads = [threading.Thread(target=file_worker, args=(fd,), name="stream-file"),
                   threading.Thread(target=hash_worker, name="stream-hash"),
                   threading.Thread(target=guest_worker, name="stream-guest"),
                   threading.Thread(target=flush_worker, args=(fd,), name="stream-flush")]
        for t in threads:
            t.start()
        try:
            for offset, chunk in _reads(clients, layout, allocated):
                if failure or (cancelled is not None and cancelled.is_set()):
                    break
                read += len(chunk)
                to_guest.put((offset, chunk))
                if len(chunk) % CLUSTER:  # the last cluster past the guest size: padded
                    chunk = chunk + bytes(CLUSTER - len(chunk) % CLUSTER)  # a new buffer
                view = memoryview(chunk)
                first = offset // CLUSTER
                count = len(chunk) // CLUSTER
                keep = [i for i in range(count)
                        if view[i * CLUSTER:(i + 1) * CLUSTER] != _ZERO_CLUSTER]
                data.extend(first + i for i in keep)
                if len(keep) == count:
                    to_file.put((view, count))
                    to_hash.put(view)
                    continue
                for start, n in runs(keep, count):  # the kept clusters; zero ones skipped
                    kept = view[start * CLUSTER:(start + n) * CLUSTER]
                    to_file.put((kept, 0))
                    to_hash.put(kept)
                to_file.put((view[:0], count))  # progress for the whole run
        finally:
            for q in (to_file, to_hash, to_guest):
                q.put(None)
            threads[0].join()  # the writer first: then no flush is asked any more
            copied.set()
            flush.set()
            for t in threads:
                t.join()
        if failure:
            raise failure[0]
        if cancelled is not None and cancelled.is_set():
            raise StreamError(f"{label}: interrupted")
        head, used = metadata(layout, data)
        for offset, length in used:
            os.pwrite(fd, head[offset:offset + length], offset)
        size = layout.first_data + len(data) * CLUSTER
        os.ftruncate(fd, size)  # no data at all: the file ends with its metadata region
        if on_checksum is not None:
            on_checksum(layout.first_data, size)
        checksum = file_tree.finish(head)  # its data blocks were hashed as written
        if file_tree.end != size:  # pragma: no cover - the hash follows every write
            raise StreamError(f"{label}: {file_tree.end} bytes hashed, {size} written")
        if on_checksum is not None:
            on_checksum(size, size)
    finally:
        os.close(fd)
    return StreamResult(checksum=checksum, guest_checksum=guest.hexdigest(),
                        guest_bytes=guest.bytes, source_read=read, server_read=None, size=size,
                        data_clusters=len(data), first_data=layout.first_data)

