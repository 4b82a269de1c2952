"""Sources of VM descriptions: live libvirt connections and offline files.

Each reader turns one source into VMs or raises :class:`SourceError` with a one-line
message; :func:`migrate.sources.scan.scan` runs them all and collects the errors so that
one bad file never stops a scan.
"""

import os

from migrate.errors import VmmoveError


class SourceError(VmmoveError):
    """A source that cannot be read; ``str()`` names the file or URI and the problem."""


def read_bounded(path: str, limit: int, what: str) -> tuple[str, bytes]:
    """The absolute path and the bytes of a description file (``what``, e.g. "a .vmx
    file") at most ``limit`` bytes long.

    Capped because a scan pointed at the wrong file (a disk image named ``.ovf``) must
    fail in one line instead of reading gigabytes into memory.
    """
    path = os.path.abspath(path)
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise SourceError(f"{path}: {size} bytes is far too large for {what}")
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None
    return path, data
