"""Files and folders vmmove creates: their modes, their locks, and full disks.

One place for the rules of docs/security.md "Files vmmove writes":

* guest data (converted images), the journal and Secret manifests are *private*: mode
  0600, in a work folder of mode 0700, whatever the umask (:func:`private_dir`,
  :data:`PRIVATE_FILE`);
* files meant to be shared (inventories, plans, runbooks, reports, manifests without
  credentials) follow the umask like any tool's output (:func:`shared_mode`), and nothing
  vmmove creates is ever world-writable (the ``o+w`` bit is always cleared);
* run locks (:func:`run_lock`) are opened with ``O_NOFOLLOW`` and only ever written when
  they are plain files with one link, so a lock name planted as a symlink or hard link in
  a shared folder cannot make vmmove truncate another file;
* a write that fails because the disk is full (or quota, or read-only) becomes one
  :class:`WriteError` line naming the file being written (:func:`write_failure`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from migrate.core.errors import VmmoveError

#: Mode of private files: guest disks, the journal, Secret manifests.
PRIVATE_FILE = 0o600
#: Mode of folders holding private files (the work folder).
PRIVATE_DIR = 0o700
_NOT_WORLD_WRITABLE = ~0o002 & 0o7777


class WriteError(VmmoveError):
    """Writing a file vmmove creates failed (full disk, quota, read-only, permissions)."""


class LockBusy(VmmoveError):
    """Another process holds the lock; ``busy`` is the message without the holder,
    ``holder`` the PID it wrote, when known."""

    def __init__(self, message: str, holder: str = "", busy: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder
        self.busy = busy if busy is not None else message


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``, Linux ≥ 4.7).

    Falls back to setting and restoring it, which is not thread-safe; only reached on
    kernels without the ``Umask:`` line.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shared_mode(base: int = 0o666) -> int:
    """Mode for a shared output: ``base`` under the umask, never world-writable."""
    return base & ~current_umask() & _NOT_WORLD_WRITABLE


def make_dirs(path: str | os.PathLike[str], *, private: bool = False) -> Path:
    """Create ``path`` and its missing parents; return it.

    Folders vmmove creates are never world-writable; the last one is 0700 when
    ``private`` (a work folder).  An existing folder keeps its mode: it belongs to whoever
    made it.  A path that exists and is not a folder raises :class:`WriteError`.
    """
    folder = Path(path)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for index, part in enumerate(reversed(missing)):
        last = index == len(missing) - 1
        mode = PRIVATE_DIR if private and last else shared_mode(0o777)
        try:
            os.mkdir(part, mode)
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_failure(part, exc) from None
        os.chmod(part, mode)  # mkdir's mode is filtered by the umask; this one is not
    if not folder.is_dir():
        raise WriteError(f"{folder}: not a folder")
    return folder


def private_dir(path: str | os.PathLike[str]) -> Path:
    """A work folder: created 0700 (whatever the umask) with its parents never o+w."""
    return make_dirs(path, private=True)


def create_private(path: str | os.PathLike[str]) -> None:
    """Make sure ``path`` exists as a plain private file (mode 0600), never via a link.

    Used before a library creates the file itself (SQLite's journal: its ``-wal`` and
    ``-shm`` files take the database file's mode).  An existing file of ours gets its mode
    tightened; a symlink, a hard-linked or a special file raises :class:`WriteError`.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WriteError(f"{path}: is a symbolic link; vmmove will not write through it") \
                from None
        if exc.errno in (errno.EACCES, errno.EROFS) and os.path.isfile(path):
            return  # someone else's journal, read-only for us: SQLite opens it read-only
        raise write_failure(path, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise WriteError(f"{path}: not a plain file of its own (hard-linked or special); "
                             "vmmove will not write to it")
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def new_private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 whatever the umask; fail (``OSError``) if
    anything, a link included, is already there.  For files another program then writes
    into (qemu-img keeps an existing file's mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def write_failure(path: str | os.PathLike[str], exc: OSError) -> WriteError:
    """One line for a failed write of ``path`` (the file vmmove writes, never a source)."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why += " (free space, or write somewhere else)"
    return WriteError(f"{path}: cannot write: {why}")


@contextmanager
def run_lock(path: str | os.PathLike[str], busy: str) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` for the ``with`` block; yield its fd.

    The file is opened ``O_NOFOLLOW`` and created 0600; it is written (our PID) only when it
    is a plain file with a single link, so a planted symlink fails (ELOOP) and a planted hard
    link is refused, both before anything is truncated.  ``busy`` is the message of the
    :class:`LockBusy` raised when another process holds the lock (``(pid N)`` is added
    when that process wrote its PID).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WriteError(f"{path}: the lock file is a symbolic link; remove it (vmmove "
                             "never writes through a link) and rerun") from None
        raise write_failure(path, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise WriteError(f"{path}: the lock file is not a plain file of its own "
                             f"({'hard-linked' if stat.S_ISREG(st.st_mode) else 'special'}); "
                             "remove it and rerun")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise LockBusy(busy + (f" (pid {holder})" if holder.isdigit() else ""), holder,
                           busy=busy) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the PID is a courtesy for the next run's message; the lock is what counts
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
