"""Sources of VM descriptions: live libvirt connections and offline files.

Each reader turns one source into VMs or raises :class:`SourceError` with a one-line
message; :func:`migrate.sources.scan.scan` runs them all and collects the errors so that
one bad file never stops a scan.
"""

import os
import stat

from migrate.core.errors import SourceError


def read_bounded(path: str, limit: int, what: str) -> tuple[str, bytes]:
    """The absolute path and the bytes of a description file (``what``, e.g. "a .vmx
    file") at most ``limit`` bytes long.

    Capped because a scan pointed at the wrong file (a disk image named ``.ovf``) must
    fail in one line instead of reading gigabytes into memory.  Opened non-blocking and
    read only when it is a regular file: a FIFO or device put in its place fails in one
    line instead of blocking the scan (docs/security.md).
    """
    path = os.path.abspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{path}: not a regular file (a FIFO, socket or device): "
                                  "skipped")
            if st.st_size > limit:
                raise SourceError(f"{path}: {st.st_size} bytes is far too large for {what}")
            data = fh.read(limit + 1)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None
    return path, data
