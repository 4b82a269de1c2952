"""Windows registry hives for tests, made with ``hivexregedit --merge``.

hivex edits hives but cannot create one, and Debian ships no empty hive, so
:func:`empty_hive` writes the smallest valid ``regf`` file (the format as hivex's
``lib/hivex-internal.h`` documents it: a 4 KiB header block whose last dword is the XOR of
the first 127, one 4 KiB ``hbin`` holding the root ``nk`` cell, its ``sk`` security cell
and one free cell).  :func:`make_hive` then merges a ``.reg`` text into it with the real
``hivexregedit``, exactly as a test of a real Windows guest's SYSTEM hive needs.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

HBIN = 0x1000


def _cell(payload: bytes) -> bytes:
    size = (len(payload) + 4 + 7) & ~7
    return struct.pack("<i", -size) + payload + b"\0" * (size - 4 - len(payload))


def empty_hive(path: Path, root_name: str = "ROOT") -> Path:
    sk_offset, nk_offset = 0x20, 0x20 + 0x30
    descriptor = bytes([1, 0, 0x04, 0x80]) + b"\0" * 16  # self-relative, no owner/DACL
    sk = _cell(b"sk" + b"\0\0" + struct.pack("<IIII", sk_offset, sk_offset, 1,
                                             len(descriptor)) + descriptor)
    assert len(sk) == 0x30
    name = root_name.encode("ascii")
    nk = _cell(b"nk" + struct.pack(
        "<HQIIIIIIIIIIIIIIIHH", 0x2C, 0, 0, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0, 0xFFFFFFFF,
        sk_offset, 0xFFFFFFFF, 0, 0, 0, 0, 0, len(name), 0) + name)
    cells = sk + nk
    free = HBIN - 0x20 - len(cells)
    hbin = (b"hbin" + struct.pack("<II", 0, HBIN) + b"\0" * 20 + cells
            + struct.pack("<i", free) + b"\0" * (free - 4))
    assert len(hbin) == HBIN
    header = bytearray(HBIN)
    header[0:4] = b"regf"
    struct.pack_into("<IIQIIIIIII", header, 4, 1, 1, 0, 1, 3, 0, 1, nk_offset, HBIN, 1)
    checksum = 0
    for (word,) in struct.iter_unpack("<I", bytes(header[:508])):
        checksum ^= word
    struct.pack_into("<I", header, 508, checksum)
    path.write_bytes(bytes(header) + hbin)
    return path


def make_hive(path: Path, prefix: str, reg: str) -> Path:
    """A hive at ``path`` holding the keys of the ``.reg`` text ``reg`` (under ``prefix``,
    e.g. ``HKEY_LOCAL_MACHINE\\SYSTEM``), written by hivexregedit."""
    if shutil.which("hivexregedit") is None:
        pytest.skip("hivexregedit is not installed (apt-get install libwin-hivex-perl)")
    empty_hive(path)
    regfile = path.with_suffix(".reg")
    regfile.write_text("Windows Registry Editor Version 5.00\n\n" + reg)
    proc = subprocess.run(["hivexregedit", "--merge", "--prefix", prefix, "--encoding",
                           "UTF-16LE", str(path), str(regfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return path
