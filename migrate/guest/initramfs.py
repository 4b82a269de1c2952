"""The kernel modules an initramfs holds, read on the host from the downloaded file.

An initramfs is one or more concatenated ``newc`` cpio archives (kernel
Documentation/driver-api/early-userspace/buffer-format.rst), each either uncompressed (the
early microcode archive dracut and initramfs-tools put first) or compressed as a whole with
gzip, xz, lzma, bzip2, zstd or lz4.  :func:`module_names` walks them all and returns the
module names (``virtio_blk``; ``-`` written as ``_``, as modprobe does) of every
``*.ko[.gz|.xz|.zst]`` file.  zstd and lz4 are decompressed with the ``zstd``/``lz4`` tools
(argument lists, input on stdin); gzip, xz and bzip2 with the standard library.
"""

from __future__ import annotations

import bz2
import lzma
import re
import shutil
import subprocess
import zlib

from migrate.core.errors import VmmoveError

_KO = re.compile(r"([^/]+)\.ko(?:\.(?:gz|xz|zst))?$")
_MAGICS: list[tuple[bytes, str]] = [
    (b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x02\x21\x4c\x18", "lz4"),
]
LIMIT = 1 << 30  # bytes of decompressed archive read at most


class InitramfsError(VmmoveError):
    """An initramfs that cannot be read."""


def module_names(data: bytes, name: str = "initramfs") -> set[str]:
    """Module names in every archive of ``data``; :class:`InitramfsError` when unreadable."""
    return {_module(p) for p in members(data, name) if _KO.search(p)}


def _module(path: str) -> str:
    found = _KO.search(path)
    assert found
    return found.group(1).replace("-", "_")


def members(data: bytes, name: str = "initramfs") -> list[str]:
    """Every member path of every archive (compressed segments decompressed in turn)."""
    paths: list[str] = []
    pos = 0
    while pos < len(data):
        while pos < len(data) and data[pos] == 0:  # archives are padded with NULs
            pos += 1
        if pos >= len(data):
            break
        if data[pos:pos + 6] in (b"070701", b"070702"):
            pos = _walk(data, pos, paths, name)
            continue
        kind = next((k for magic, k in _MAGICS if data.startswith(magic, pos)), None)
        if kind is None:
            raise InitramfsError(f"{name}: unknown data at byte {pos} (not cpio, not a "
                                 "known compression)")
        # a compressed segment runs to the end of the file
        _walk(_decompress(kind, data[pos:], name), 0, paths, name, strict=False)
        break
    return paths


def _walk(data: bytes, pos: int, paths: list[str], name: str, strict: bool = True) -> int:
    """Read one cpio archive (or, with ``strict=False``, several) from ``pos``."""
    while pos + 110 <= len(data):
        if data[pos:pos + 6] not in (b"070701", b"070702"):
            if not strict and data[pos] == 0:
                pos += 1
                continue
            if not strict:
                break
            raise InitramfsError(f"{name}: bad cpio header at byte {pos}")
        try:
            size = int(data[pos + 54:pos + 62], 16)
            namesize = int(data[pos + 94:pos + 102], 16)
        except ValueError:
            raise InitramfsError(f"{name}: bad cpio header at byte {pos}") from None
        start = pos + 110
        member = data[start:start + namesize - 1].decode("utf-8", "replace")
        pos = start + namesize
        pos += -pos % 4
        pos += size
        pos += -pos % 4
        if member == "TRAILER!!!":
            if strict:
                return pos
            continue
        paths.append(member)
    return pos


def _decompress(kind: str, data: bytes, name: str) -> bytes:
    try:
        if kind == "gzip":
            out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, LIMIT)
            return out
        if kind in ("xz", "lzma"):
            return lzma.LZMADecompressor().decompress(data, LIMIT)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(data, LIMIT)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise InitramfsError(f"{name}: cannot decompress its {kind} archive: {exc}") from None
    tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"]}[kind]
    if shutil.which(tool[0]) is None:
        raise InitramfsError(f"{name}: compressed with {kind}, and {tool[0]} is not installed")
    proc = subprocess.run(tool, input=data, capture_output=True, timeout=300)
    if not proc.stdout:
        raise InitramfsError(f"{name}: {tool[0]} failed: {proc.stderr.decode()[-200:]}")
    return proc.stdout[:LIMIT]
