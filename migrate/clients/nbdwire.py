"""A small NBD client on a UNIX socket: ranged reads and block status (dirty bitmaps).

Warm migration reads *parts* of a disk — the extents a dirty bitmap marks — which
``nbdcopy`` and ``qemu-img`` cannot do for a list of ranges in one pass.  This speaks the
NBD protocol (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md) just far
enough: fixed-newstyle handshake, ``NBD_OPT_STRUCTURED_REPLY``, ``NBD_OPT_SET_META_CONTEXT``
(``base:allocation``, ``qemu:dirty-bitmap:NAME``), ``NBD_OPT_GO``, then ``NBD_CMD_READ``,
``NBD_CMD_BLOCK_STATUS`` and ``NBD_CMD_DISC``, one request at a time.  The servers are
QEMU's (a libvirt backup job's export, ``qemu-nbd``); the export is opened read-only.

Errors are :class:`NbdWireError`, one line naming the socket and export — also when the
connection breaks under a request (server killed, socket reset, no answer within
:data:`TIMEOUT` s): a raw ``OSError`` never leaves the client.
"""

from __future__ import annotations

import socket as _socket
import struct
from dataclasses import dataclass
from typing import Any

from migrate.core.errors import VmmoveError

IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
OPT_GO, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 7, 8, 10
REP_ACK, REP_INFO, REP_META_CONTEXT = 1, 3, 4
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 0, 1, 2, 3, 6, 7
FLAG_READ_ONLY, FLAG_SEND_WRITE_ZEROES = 1 << 1, 1 << 6  # transmission flags
REPLY_NONE, REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE, REPLY_BLOCK_STATUS = 0, 1, 2, 5
REPLY_FLAG_DONE = 1
STATE_HOLE = 1  # base:allocation: unallocated (reads as zero when STATE_ZERO too)
STATE_ZERO = 2
STATE_DIRTY = 1  # qemu:dirty-bitmap:…: changed since the bitmap was started
MAX_REQUEST = 32 << 20  # QEMU's limit for one read
BASE_ALLOCATION = "base:allocation"
TIMEOUT = 120  # seconds a request may wait for the server before the client gives up


class NbdWireError(VmmoveError):
    """An NBD export could not be opened or read."""


def _broke(exc: OSError, timeout: float | None) -> str:
    """What a socket-level failure means, in words: the server closed the connection
    (EOF, EPIPE), the connection was reset, or the server did not answer in time."""
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError (Python ≥ 3.10)
        return f"timed out after {timeout:g} s" if timeout else "timed out"
    if isinstance(exc, BrokenPipeError):
        return "the server closed the connection"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return f"connection failed: {exc.strerror or exc}"


def dirty_context(bitmap: str) -> str:
    """The meta context that reports ``bitmap``'s dirty blocks."""
    return f"qemu:dirty-bitmap:{bitmap}"


@dataclass(frozen=True)
class Extent:
    """``length`` bytes at ``offset`` with the context's ``flags``."""

    offset: int
    length: int
    flags: int


class NbdClient:
    """One connection to one export; use as a context manager.

    ``contexts``: meta contexts to negotiate (block status is only asked for these);
    ``timeout``: seconds one request may wait for the server.
    """

    def __init__(self, path: str, export: str, contexts: tuple[str, ...] = (),
                 timeout: float = TIMEOUT) -> None:
        self.label = f"nbd+unix:///{export}?socket={path}"
        self.size = 0
        self.flags = 0  # the export's transmission flags
        self.context_ids: dict[str, int] = {}
        self._handle = 0
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            self._handshake(export, contexts)
        except (OSError, struct.error) as exc:
            self._sock.close()
            raise NbdWireError(f"{self.label}: cannot open the export: {exc}") from None
        except NbdWireError:
            self._sock.close()
            raise

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire -----------------------------------------------------------------------------
    def _recv(self, n: int) -> bytes:
        return bytes(self._recv_into(bytearray(n)))

    def _broken(self, exc: OSError) -> NbdWireError:
        return NbdWireError(f"{self.label}: {_broke(exc, self._sock.gettimeout())}")

    def _recv_into(self, buf: bytearray | memoryview) -> bytearray | memoryview:
        view = memoryview(buf)
        got = 0
        while got < len(view):
            try:
                n = self._sock.recv_into(view[got:], len(view) - got)
            except OSError as exc:
                raise self._broken(exc) from None
            if not n:
                raise NbdWireError(f"{self.label}: the server closed the connection")
            got += n
        return buf

    def _send(self, data: bytes | memoryview) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._broken(exc) from None

    def _option(self, opt: int, data: bytes) -> None:
        self._send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def _opt_reply(self, opt: int) -> tuple[int, bytes]:
        magic, got, kind, length = struct.unpack(">QIII", self._recv(20))
        if magic != OPT_REPLY_MAGIC or got != opt:
            raise NbdWireError(f"{self.label}: unexpected option reply")
        data = self._recv(length) if length else b""
        if kind & 0x80000000:
            text = data.decode(errors="replace") if data else f"error {kind & 0x7FFFFFFF}"
            raise NbdWireError(f"{self.label}: the server refused option {opt}: {text}")
        return kind, data

    def _handshake(self, export: str, contexts: tuple[str, ...]) -> None:
        magic, opt_magic, _flags = struct.unpack(">8sQH", self._recv(18))
        if magic != b"NBDMAGIC" or opt_magic != IHAVEOPT:
            raise NbdWireError(f"{self.label}: not a newstyle NBD server")
        self._send(struct.pack(">I", 1 | 2))  # FIXED_NEWSTYLE | NO_ZEROES
        name = export.encode()
        self._option(OPT_STRUCTURED_REPLY, b"")
        self._opt_reply(OPT_STRUCTURED_REPLY)
        if contexts:
            body = struct.pack(">I", len(name)) + name + struct.pack(">I", len(contexts))
            for ctx in contexts:
                body += struct.pack(">I", len(ctx.encode())) + ctx.encode()
            self._option(OPT_SET_META_CONTEXT, body)
            while True:
                kind, data = self._opt_reply(OPT_SET_META_CONTEXT)
                if kind == REP_ACK:
                    break
                if kind == REP_META_CONTEXT:
                    (cid,) = struct.unpack(">I", data[:4])
                    self.context_ids[data[4:].decode()] = cid
            missing = [c for c in contexts if c not in self.context_ids]
            if missing:
                raise NbdWireError(f"{self.label}: the export has no {', '.join(missing)} "
                                   "(bitmap missing or not exported)")
        self._option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        while True:
            kind, data = self._opt_reply(OPT_GO)
            if kind == REP_ACK:
                break
            if kind == REP_INFO and len(data) >= 12 and struct.unpack(">H", data[:2])[0] == 0:
                self.size, self.flags = struct.unpack(">QH", data[2:12])

    def _request(self, cmd: int, offset: int, length: int, payload: bytes | memoryview = b"",
                 flags: int = 0) -> int:
        self._handle += 1
        self._send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, self._handle,
                               offset, length))
        if payload:
            self._send(payload)
        return self._handle

    def _replies(self, handle: int, sink: Any = None):  # type: ignore[no-untyped-def]
        """Yield ``(type, payload)`` of one request's structured replies until DONE.

        ``sink(offset, length) -> memoryview``: where an ``OFFSET_DATA`` chunk's data go
        (read straight into it; the payload yielded is then only the 8-byte offset)."""
        while True:
            (magic,) = struct.unpack(">I", self._recv(4))
            if magic == SIMPLE_REPLY_MAGIC:
                error, got = struct.unpack(">IQ", self._recv(12))
                if error:
                    raise NbdWireError(f"{self.label}: request failed (errno {error})")
                yield REPLY_NONE, b""  # a simple reply to a read carries data the caller reads
                return
            if magic != STRUCTURED_REPLY_MAGIC:
                raise NbdWireError(f"{self.label}: bad reply magic {magic:#x}")
            flags, kind, got, length = struct.unpack(">HHQI", self._recv(16))
            if kind == REPLY_OFFSET_DATA and sink is not None and length > 8:
                payload = self._recv(8)
                (at,) = struct.unpack(">Q", payload)
                self._recv_into(sink(at, length - 8))
                if got != handle:
                    raise NbdWireError(f"{self.label}: reply for another request")
                yield kind, payload
                if flags & REPLY_FLAG_DONE:
                    return
                continue
            payload = self._recv(length) if length else b""
            if got != handle:
                raise NbdWireError(f"{self.label}: reply for another request")
            if kind & 0x8000:  # an error chunk
                error = struct.unpack(">I", payload[:4])[0] if len(payload) >= 4 else 0
                text = payload[6:].decode(errors="replace")
                raise NbdWireError(f"{self.label}: request failed (errno {error}) {text}".strip())
            yield kind, payload
            if flags & REPLY_FLAG_DONE:
                return

    # -- commands -------------------------------------------------------------------------
    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (holes as zeros), in requests of ≤ 32 MiB."""
        out = bytearray(length)
        self.readinto(offset, out)
        return bytes(out)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset`` (holes as zeros), received straight
        into it: a caller reusing one buffer pays no allocation per read."""
        view = memoryview(buf).cast("B")
        length = len(view)
        done = 0

        def sink(at: int, n: int) -> memoryview:
            if at < offset or at + n > offset + length:
                raise NbdWireError(f"{self.label}: data outside the range asked")
            return view[at - offset:at - offset + n]

        while done < length:
            n = min(MAX_REQUEST, length - done)
            base = offset + done
            handle = self._request(CMD_READ, base, n)
            for kind, payload in self._replies(handle, sink):
                if kind == REPLY_OFFSET_HOLE:
                    at, hole = struct.unpack(">QI", payload[:12])
                    if at < offset or at + hole > offset + length:
                        raise NbdWireError(f"{self.label}: hole outside the range asked")
                    view[at - offset:at - offset + hole] = bytes(hole)
            done += n

    def block_status(self, context: str, offset: int = 0,
                     length: int | None = None) -> list[Extent]:
        """The extents of ``context`` over ``[offset, offset+length)`` (default: the whole
        export), merged runs of equal flags, in order, covering the range exactly."""
        if context not in self.context_ids:
            raise NbdWireError(f"{self.label}: {context} was not negotiated")
        cid = self.context_ids[context]
        end = self.size if length is None else offset + length
        out: list[Extent] = []
        pos = offset
        while pos < end:
            ask = min(end - pos, 1 << 30)
            handle = self._request(CMD_BLOCK_STATUS, pos, ask)
            got = pos
            for kind, payload in self._replies(handle):
                if kind != REPLY_BLOCK_STATUS or struct.unpack(">I", payload[:4])[0] != cid:
                    continue
                for i in range(4, len(payload), 8):
                    n, flags = struct.unpack(">II", payload[i:i + 8])
                    n = min(n, end - got)
                    if n <= 0:
                        break
                    if out and out[-1].flags == flags and out[-1].offset + out[-1].length == got:
                        out[-1] = Extent(out[-1].offset, out[-1].length + n, flags)
                    else:
                        out.append(Extent(got, n, flags))
                    got += n
            if got == pos:
                raise NbdWireError(f"{self.label}: block status made no progress at {pos}")
            pos = got
        return out

    # writes: vmmove builds qcow2 deltas through a writable qemu-nbd (S3 mode)
    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` (in requests of ≤ 32 MiB)."""
        if self.flags & FLAG_READ_ONLY:
            raise NbdWireError(f"{self.label}: the export is read-only")
        view = memoryview(data)
        for start in range(0, len(view), MAX_REQUEST):
            part = view[start:start + MAX_REQUEST]
            for _kind, _payload in self._replies(self._request(CMD_WRITE, offset + start,
                                                               len(part), part)):
                pass

    def write_zeroes(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros (explicit zeros: on a qcow2 with
        a backing file, zero clusters that hide the backing's data)."""
        if not self.flags & FLAG_SEND_WRITE_ZEROES:
            raise NbdWireError(f"{self.label}: the export cannot write zeros")
        done = 0
        while done < length:
            n = min(1 << 30, length - done)
            for _kind, _payload in self._replies(self._request(CMD_WRITE_ZEROES,
                                                               offset + done, n)):
                pass
            done += n

    def flush(self) -> None:
        for _kind, _payload in self._replies(self._request(CMD_FLUSH, 0, 0)):
            pass

    def close(self) -> None:
        try:
            self._request(CMD_DISC, 0, 0)
        except (OSError, NbdWireError):  # the server is gone already
            pass
        self._sock.close()
