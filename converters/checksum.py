"""Content checksums of images, in the one form every journal record uses: ``sha256:<hex>``.

Conversion records the checksum of its output; upload stores it as object metadata and
checks it again on the server; cutover compares it to decide whether a final sync must
send anything.  They all go through these two functions.
"""

from __future__ import annotations

import hashlib
import os

PREFIX = "sha256:"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's bytes (hashlib's C loop, bounded memory)."""
    with open(path, "rb") as fh:
        return PREFIX + hashlib.file_digest(fh, "sha256").hexdigest()


def parse_checksum(checksum: str | None) -> str | None:
    """The hex digest of a ``sha256:<hex>`` checksum, or None for any other form."""
    if checksum and checksum.startswith(PREFIX) and len(checksum) == len(PREFIX) + 64:
        return checksum[len(PREFIX):].lower()
    return None
