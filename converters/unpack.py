"""Join and decompress an OVF package's stored file into a scratch image in the work folder.

DMTF DSP0243 (OVF 2.1.1) §5.3 lets a package store a referenced file gzip-compressed
(``ovf:compression="gzip"``) and/or split into chunks (``ovf:chunkSize``: ``href.000000000``,
``href.000000001``, … concatenated in order; chunking is applied after compression, so the
chunks join into the compressed stream).  qemu-img reads neither in place, so
``vmmove convert`` rebuilds the file here first and converts from the copy.

Everything is streamed in :data:`BLOCK`-sized reads: memory stays bounded whatever the
size.  The stored bytes must add up to the descriptor's ``ovf:size`` and the output may not
grow past a limit the caller derives from the disk's capacity, so a gzip bomb stops early.
The pieces are only ever read; the output is written under a temporary name and renamed
when complete.
"""

from __future__ import annotations

import os
import secrets
import zlib
from collections.abc import Iterator
from pathlib import Path

from migrate.core.errors import VmmoveError
from migrate.core.model import Packing

BLOCK = 1024 * 1024  # bytes per read
MAX_OUT = 8 * BLOCK  # most bytes one decompress call may return


class UnpackError(VmmoveError):
    """The stored file cannot be rebuilt; the message names it and says why."""


def _stored_bytes(packing: Packing) -> Iterator[bytes]:
    """The stored file's bytes, piece after piece, in blocks."""
    for piece in packing.pieces:
        try:
            with open(piece.path, "rb") as fh:
                fh.seek(piece.offset)
                left = piece.size
                while left:
                    block = fh.read(min(BLOCK, left))
                    if not block:
                        raise UnpackError(f"{packing.href}: {piece.path} ends {left} bytes early "
                                          "(changed since the scan?)")
                    left -= len(block)
                    yield block
        except OSError as exc:
            raise UnpackError(f"{packing.href}: {piece.path}: {exc.strerror or exc}") from None


def _gunzip(blocks: Iterator[bytes], href: str) -> Iterator[bytes]:
    """Decompress a gzip stream (several members allowed, as ``gzip`` itself does)."""
    inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer (CRC-32, length) checked
    started = False
    try:
        for block in blocks:
            data = block
            while data:
                if inflater.eof:  # a further gzip member follows
                    inflater = zlib.decompressobj(wbits=31)
                started = True
                out = inflater.decompress(data, MAX_OUT)
                yield out
                while inflater.unconsumed_tail:
                    out = inflater.decompress(inflater.unconsumed_tail, MAX_OUT)
                    yield out
                data = inflater.unused_data
    except zlib.error as exc:
        raise UnpackError(f"{href}: corrupt gzip stream ({exc})") from None
    if not started or not inflater.eof:
        raise UnpackError(f"{href}: the gzip stream ends early (truncated file)")


def unpack(packing: Packing, folder: Path, name: str, limit: int) -> Path:
    """Rebuild the stored file as ``folder/name``; return its path.

    ``limit`` is the most bytes the result may have (a gzip stream that inflates beyond it
    is refused).  Raises :class:`UnpackError` (one line naming the file) when the pieces
    do not add up to ``ovf:size``, the gzip stream is corrupt or truncated, or the result
    is too large; nothing is left behind then.
    """
    stored = sum(p.size for p in packing.pieces)
    if packing.size is not None and stored != packing.size:
        raise UnpackError(f"{packing.href}: the package holds {stored} bytes but the descriptor "
                          f"says ovf:size {packing.size}")
    out = folder / name
    temp = folder / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.part"
    blocks: Iterator[bytes] = _stored_bytes(packing)
    if packing.compression == "gzip":
        blocks = _gunzip(blocks, packing.href)
    elif packing.compression:
        raise UnpackError(f"{packing.href}: unknown ovf:compression {packing.compression!r}")
    written = 0
    try:
        with open(temp, "xb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            for block in blocks:
                written += len(block)
                if written > limit:
                    raise UnpackError(f"{packing.href}: unpacks to more than {limit} bytes, "
                                      "far beyond the disk's capacity (corrupt or hostile file)")
                fh.write(block)
        os.replace(temp, out)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise UnpackError(f"{packing.href}: writing {out}: {exc.strerror or exc}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return out
