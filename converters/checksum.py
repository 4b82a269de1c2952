"""Content checksums of images, in the one form every journal record uses: ``sha256:<hex>``.

Conversion records the checksum of its output; upload stores it as object metadata and
checks it again on the server; cutover compares it to decide whether a final sync must
send anything.  They all go through these two functions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

PREFIX = "sha256:"


CHUNK = 4 * 1024 * 1024


def sha256_file(path: str | os.PathLike[str],
                on_bytes: Callable[[int], None] | None = None) -> str:
    """``sha256:<hex>`` of a file's bytes (bounded memory).

    ``on_bytes`` gets the running count of bytes hashed after each 4 MiB read (progress);
    without it hashlib's own C loop reads the file.
    """
    with open(path, "rb") as fh:
        if on_bytes is None:
            return PREFIX + hashlib.file_digest(fh, "sha256").hexdigest()
        digest = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        done = 0
        while n := fh.readinto(buffer):
            digest.update(view[:n])
            done += n
            on_bytes(done)
        return PREFIX + digest.hexdigest()


def parse_checksum(checksum: str | None) -> str | None:
    """The hex digest of a ``sha256:<hex>`` checksum, or None for any other form."""
    if checksum and checksum.startswith(PREFIX) and len(checksum) == len(PREFIX) + 64:
        return checksum[len(PREFIX):].lower()
    return None
