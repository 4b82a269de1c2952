"""How far a stream conversion has written its file: what lets an upload follow it.

:mod:`converters.stream` writes a qcow2 strictly front to back: the metadata region
``[0, first_data)`` is reserved for the worst case and written last; the data clusters go
from ``first_data`` on, in order, and never move.  Right after the source's allocation
map is read the file's size is bounded: ``bound = first_data + allocated clusters × 64
KiB`` (zero clusters are skipped, so the final size may be smaller).  So a reader may send
any byte below the *written* offset at once (it is final), and the metadata region once
the conversion finished.

Two ways to watch it, one :class:`Growth` snapshot shape:

- :class:`Watermark`: in the converting process (a condition variable; the converter
  calls :meth:`Watermark.plan`, :meth:`Watermark.advance`, then :meth:`Watermark.finish`
  or :meth:`Watermark.fail`);
- :class:`JournalGrowth`: from another process (``vmmove upload --follow`` beside
  ``vmmove convert``): the convert journal step's ``growing`` field (temporary file, first
  data offset, bound, written offset, converter pid; journalled every 64 MiB or second),
  then the step's final status, size and checksum.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

#: The convert journal step is updated when the written offset moved this far, or this
#: long after the last update (cross-process followers poll it).
JOURNAL_BYTES = 64 << 20
JOURNAL_SECONDS = 1.0


@dataclass(frozen=True)
class Growth:
    """A snapshot of a file being written (offsets in bytes).  ``first_data``/``bound``
    are None until the layout is known; ``size`` and ``checksum`` are set when the file is
    complete (``path`` then names the finished file; the temporary one was renamed to it),
    ``error`` when the conversion failed or stopped."""

    path: str | None = None
    first_data: int | None = None
    bound: int | None = None
    written: int = 0
    size: int | None = None
    checksum: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.size is not None or self.error is not None


class GrowthSource(Protocol):
    """What an uploader needs from a growing file."""

    def wait(self, offset: int | None, timeout: float) -> Growth:
        """Block until ``written >= offset`` (``None``: until the layout is known), the
        file is finished or failed, or ``timeout`` seconds passed; the snapshot then."""
        ...


_ACTIVE: dict[str, Watermark] = {}  # temporary file -> its watermark, in this process
_ACTIVE_LOCK = threading.Lock()


def active(path: str) -> Watermark | None:
    """The watermark of the conversion writing ``path`` in this process, if any (a
    follower in the converting process waits on it instead of polling the journal)."""
    with _ACTIVE_LOCK:
        return _ACTIVE.get(path)


class Watermark:
    """The in-process watermark of one stream conversion (thread-safe).

    ``listener(growth)`` (optional) is called on every change, from the writer's thread;
    :func:`journal_listener` makes one that journals the progress throttled.  With
    ``publish`` the watermark is found by :func:`active` until it is finished or failed."""

    def __init__(self, path: str, listener: Callable[[Growth], None] | None = None,
                 publish: bool = False) -> None:
        self._cond = threading.Condition()
        self._state = Growth(path=path)
        self._listener = listener
        if publish:
            with _ACTIVE_LOCK:
                _ACTIVE[path] = self

    def _set(self, **changes: Any) -> None:
        with self._cond:
            if self._state.finished:
                return
            path = self._state.path
            self._state = replace(self._state, **changes)
            state = self._state
            self._cond.notify_all()
        if state.finished:
            with _ACTIVE_LOCK:
                if path is not None and _ACTIVE.get(path) is self:
                    del _ACTIVE[path]
        if self._listener is not None:
            self._listener(state)

    def plan(self, first_data: int, bound: int) -> None:
        """The layout is known: data from ``first_data``, the file at most ``bound``."""
        self._set(first_data=first_data, bound=bound, written=first_data)

    def advance(self, written: int) -> None:
        """Every byte in ``[first_data, written)`` is written and final."""
        self._set(written=written)

    def finish(self, path: str, size: int, checksum: str) -> None:
        """The file is complete (renamed to ``path``): ``size`` bytes, ``checksum``."""
        self._set(path=path, size=size, written=size, checksum=checksum)

    def fail(self, error: str) -> None:
        self._set(error=error)

    @property
    def state(self) -> Growth:
        with self._cond:
            return self._state

    def wait(self, offset: int | None, timeout: float) -> Growth:
        def ready() -> bool:
            s = self._state
            return s.finished or (s.first_data is not None
                                  and (offset is None or s.written >= offset))

        with self._cond:
            self._cond.wait_for(ready, timeout)
            return self._state


def journal_listener(update: Callable[[dict[str, Any]], None], pid: int | None = None,
                     every_bytes: int = JOURNAL_BYTES,
                     every_seconds: float = JOURNAL_SECONDS) -> Callable[[Growth], None]:
    """A :class:`Watermark` listener that calls ``update(growing)`` (the convert step's
    ``growing`` field: ``temp``, ``first_data``, ``bound``, ``written``, ``pid``) when the
    layout is first known and then when the written offset moved ``every_bytes`` or
    ``every_seconds`` passed; the final result is journalled by the converter itself."""
    last = {"written": -1, "at": 0.0}
    lock = threading.Lock()
    pid = os.getpid() if pid is None else pid

    def listener(g: Growth) -> None:
        if g.finished or g.first_data is None:
            return
        now = time.monotonic()
        with lock:
            if last["written"] >= 0 and g.written - last["written"] < every_bytes \
                    and now - last["at"] < every_seconds:
                return
            last["written"], last["at"] = g.written, now
        update({"temp": g.path, "first_data": g.first_data, "bound": g.bound,
                "written": g.written, "pid": pid})

    return listener


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JournalGrowth:
    """A conversion followed through ``journal`` (a :class:`~migrate.core.journal.Journal`
    of the work folder; the converter may be another process: SQLite shows its commits).  ``item`` is the disk's convert item; the
    conversion followed is the one writing ``temp`` (another temporary file means it
    started over: an error for this follower).  A converter process that died, or
    ``idle`` seconds without progress, is an error too."""

    POLL = 0.2

    def __init__(self, journal: Any, item: str, temp: str | None = None,
                 idle: float = 300.0) -> None:
        self.journal = journal
        self.item = item
        self.temp = temp
        self.idle = idle
        self._last: tuple[int, float] = (-1, time.monotonic())

    def read(self) -> Growth:
        """The conversion's state now."""
        from migrate.core.journal import DONE, FAILED
        from migrate.core.records import KIND_CONVERT

        step = self.journal.get(KIND_CONVERT, self.item)
        if step is None:
            return Growth(path=self.temp, error="its conversion record is gone")
        growing = step.growing or {}
        if step.status == FAILED:
            return Growth(path=self.temp, error=f"conversion failed: {step.error}")
        if step.status == DONE:
            if self.temp is not None and growing.get("temp") not in (None, self.temp):
                return Growth(path=self.temp, error="its conversion started over")
            return Growth(path=step.output, first_data=growing.get("first_data"),
                          bound=growing.get("bound"), written=int(step.size or 0),
                          size=step.size, checksum=step.checksum)
        if not growing:
            return Growth(path=self.temp)
        if self.temp is None:
            self.temp = growing["temp"]
        elif growing["temp"] != self.temp:
            return Growth(path=self.temp, error="its conversion started over")
        if growing.get("pid") and not _alive(int(growing["pid"])):
            return Growth(path=self.temp, error=f"its conversion stopped (vmmove process "
                                                f"{growing['pid']} ended mid-way)")
        return Growth(path=self.temp, first_data=growing["first_data"],
                      bound=growing["bound"], written=int(growing["written"]))

    def wait(self, offset: int | None, timeout: float) -> Growth:
        deadline = time.monotonic() + timeout
        while True:
            g = self.read()
            now = time.monotonic()
            if g.written != self._last[0]:
                self._last = (g.written, now)
            elif not g.finished and now - self._last[1] > self.idle:
                return replace(g, error=f"its conversion made no progress for "
                                        f"{self.idle:.0f}s")
            if g.finished or (g.first_data is not None
                              and (offset is None or g.written >= offset)) \
                    or now >= deadline:
                return g
            time.sleep(min(self.POLL, max(0.0, deadline - now)))
