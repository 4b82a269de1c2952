"""Progress reporting: the one subscriber protocol, log lines, and ``-v`` traces.

Long work — a scan, conversion, transfer, import watching, a cutover — reports to a
:class:`Subscriber` (queued / phase / progress / done, the shape of s3transfer's
``BaseSubscriber``).  The step libraries and the pipeline only emit; the command line
gives them its tqdm bars (:mod:`migrate.views.bars`), tests a recorder, everything else
the silent base class.

:func:`log` lines go through the stdlib ``logging`` logger ``vmmove`` to stderr, with a
time stamp, when stderr is not a terminal (there the bars carry the news instead), so CI
logs and pipes stay readable; the CLI wraps each command in tqdm's
``logging_redirect_tqdm`` so that a line never tears a bar.

With ``-v/--verbose`` (:func:`set_verbose`), :func:`trace_command` and :func:`trace_call`
log every qemu-img command line and libvirt call underneath, on stderr.  Neither is ever
given a credential: URIs go through :func:`without_password` first.
"""

from __future__ import annotations

import logging
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from migrate.core.output import escape


def interactive(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


LOGGER = logging.getLogger("vmmove")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """``HH:MM:SS message`` on whatever ``sys.stderr`` is when the line is written (a
    test's capture, tqdm's redirect), one write per line: lines logged from several
    threads, as in a parallel cutover, never interleave."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


if not LOGGER.handlers:
    LOGGER.addHandler(_StderrHandler())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def log(message: str) -> None:
    """A timestamped line on stderr when no bar is shown (non-TTY), nothing otherwise;
    control characters escaped (:func:`migrate.core.output.escape`)."""
    if not interactive():
        LOGGER.info("%s", escape(message))


# -- -v/--verbose: what runs underneath ----------------------------------------------------------

_verbose = False


def set_verbose(on: bool) -> None:
    """Turn the :func:`trace_command`/:func:`trace_call` lines on or off (``-v``)."""
    global _verbose
    _verbose = on


def _trace(text: str) -> None:
    if _verbose:
        LOGGER.info("+ %s", escape(text))


def trace_command(argv: Sequence[str]) -> None:
    """With ``-v``: the command line about to run, quoted as a shell would take it."""
    _trace(shlex.join(str(a) for a in argv))


def without_password(uri: str) -> str:
    """A URI with any ``user:password@`` password replaced by ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def trace_call(what: str) -> None:
    """With ``-v``: a library call about to be made (libvirt), e.g. ``libvirt.openAuth(URI)``."""
    _trace(what)


# -- the progress protocol -------------------------------------------------------------------------


class Subscriber:
    """The one progress protocol: convert, transfer, import watching, the scan and the
    cutover report through it.  Override what you need; every method is a no-op here.

    ``item`` is the unit of work (a disk job, a transfer item, an import, a VM), with an
    ``item`` key and a ``label``.  Amounts are in the item's units (bytes, percent,
    sources, steps); with a ``total`` of 0 they are fractions of 1.
    """

    def on_queued(self, item: Any, total: float, already: float = 0) -> None:
        """``item`` starts: ``total`` units, ``already`` of them done before."""

    def on_phase(self, item: Any, phase: str, total: float) -> None:
        """``item``'s next phase (e.g. convert's ``verify``) starts, at 0 of ``total``."""

    def on_progress(self, item: Any, amount: float | None, note: str | None = None) -> None:
        """``amount`` more units of ``item``'s current phase are done (None: no measure
        yet); ``note``: where it is, in a word (an import's CDI phase)."""

    def on_done(self, item: Any, result: Any) -> None:
        """``item`` is over: ``result`` says whether it succeeded."""

    def close(self) -> None:
        """No more items."""


def disk_estimate(disk: Any) -> int:
    """A disk's share of a batch's overall progress: its data as the inventory knows it."""
    return disk.allocated_size or disk.virtual_size or 1


class Fractions:
    """Report a phase's fraction done (0..1, as qemu-img gives it) to a subscriber as the
    protocol's amounts: ``fraction × total`` units, never backwards."""

    def __init__(self, subscriber: Subscriber, item: Any, total: float) -> None:
        self.subscriber, self.item = subscriber, item
        self.scale = total if total > 0 else 1.0
        self.sent = 0.0
        self.lock = threading.Lock()

    def __call__(self, fraction: float) -> None:
        with self.lock:
            units = min(max(fraction, 0.0), 1.0) * self.scale
            delta = units - self.sent
            if delta <= 0:
                return
            self.sent = units
        self.subscriber.on_progress(self.item, delta)


def _silent(*_: Any) -> Subscriber:
    return Subscriber()


@dataclass
class Reporters:
    """Where the progress of each kind of work goes: subscriber factories the command line
    gives the pipeline (its bars, :func:`migrate.views.bars.reporters`); silent by default.

    ``convert(total bytes, disks, verify)``, ``upload(total bytes, images)``,
    ``imports()``, ``scan()``, ``cutover()``."""

    convert: Callable[[int, int, bool], Subscriber] = _silent
    upload: Callable[[int, int], Subscriber] = _silent
    imports: Callable[[], Subscriber] = _silent
    scan: Callable[[], Subscriber] = _silent
    cutover: Callable[[], Subscriber] = _silent


SILENT = Reporters()
