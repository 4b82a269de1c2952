"""Progress reporting: tqdm bars on a terminal, plain log lines otherwise.

Long work (conversion, upload, import watching) reports through :func:`bar`; when the
stream is not a TTY the bar is disabled and :func:`log` lines carry the news instead, so
CI logs and pipes stay readable.

With ``-v/--verbose`` (:func:`set_verbose`), :func:`trace_command` and :func:`trace_call`
log every qemu-img command line and libvirt call underneath, on stderr.  Neither is ever
given a credential: URIs go through :func:`without_password` first.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from migrate.output import escape


def interactive(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def bar(total: float | None, desc: str, unit: str = "B", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, disabled (silent) when stderr is not a terminal."""
    byte_units = unit == "B"
    return tqdm(
        total=total,
        desc=escape(desc),
        unit=unit,
        unit_scale=byte_units,
        unit_divisor=1024 if byte_units else 1000,
        disable=not interactive(),
        dynamic_ncols=True,
        leave=kwargs.pop("leave", True),
        **kwargs,
    )


def log(message: str) -> None:
    """A timestamped line on stderr when no bar is shown (non-TTY), nothing otherwise;
    control characters escaped (:func:`migrate.output.escape`)."""
    if not interactive():
        stamp = time.strftime("%H:%M:%S")
        # one write per line: print() writes the text and the newline separately, so lines
        # logged from several threads (parallel cutover) could interleave
        sys.stderr.write(f"{stamp} {escape(message)}\n")
        sys.stderr.flush()


# -- -v/--verbose: what runs underneath ----------------------------------------------------------

_verbose = False


def set_verbose(on: bool) -> None:
    """Turn the :func:`trace_command`/:func:`trace_call` lines on or off (``-v``)."""
    global _verbose
    _verbose = on


def _trace(text: str) -> None:
    if _verbose:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} + {escape(text)}\n")
        sys.stderr.flush()


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


# -- bars for a batch of items: an overall bar and one per item in flight ------------------------


class ItemBars:
    """An overall bar plus one bar per item in flight, with exact accounting.

    Every update sets a bar to an absolute position computed from each item's fraction
    (0..1) and weight, clamped to the bar's total, instead of adding float deltas: deltas
    accumulate rounding past the total (tqdm then warns "clamping frac to range [0, 1]"
    mid-bar), and a phase that restarts an item's fraction (verification after conversion)
    would count twice.  An item's weight may be split into phases (the ``share`` of
    :meth:`start` and :meth:`next_phase`): conversion, then verification.
    When stderr is not a terminal the bars are silent and each item logs a line per
    quarter of each phase instead.
    """

    def __init__(self, total: int, desc: str) -> None:
        self.lock = threading.Lock()
        self.tty = interactive()
        self.total = max(int(total), 0)
        self.overall = bar(self.total, desc, position=0)
        self.bars: dict[str, Any] = {}
        self.slots: dict[str, int] = {}
        self.free_slots: list[int] = []
        self.next_slot = 1
        self.weights: dict[str, int] = {}
        self.shares: dict[str, float] = {}  # the item's finished phases, 0..1 of its weight
        self.phase_share: dict[str, float] = {}  # the running phase's part of the weight
        self.fraction: dict[str, float] = {}  # of the running phase
        self.logged: dict[str, int] = {}
        self.phase_name: dict[str, str] = {}
        self.done_weight = 0

    # positions ------------------------------------------------------------------------------
    def _position(self) -> int:
        moving = sum(w * (self.shares[k] + self.phase_share[k] * self.fraction[k])
                     for k, w in self.weights.items())
        return min(self.total, int(self.done_weight + moving))

    @staticmethod
    def _move(b: Any, position: int) -> None:
        if b.total is not None:
            position = min(position, int(b.total))
        if position > b.n:
            b.update(position - b.n)

    # events ---------------------------------------------------------------------------------
    def start(self, key: str, label: str, size: int, weight: int, phase: str,
              share: float = 1.0) -> None:
        """An item starts its first phase (``share`` of its weight) on a bar of ``size``;
        an item started again (a retry from the start) starts over, counted once."""
        with self.lock:
            old = self.bars.pop(key, None)
            if old is not None:
                old.close()
                self.free_slots.append(self.slots.pop(key))
                self.free_slots.sort()
            slot = self.free_slots.pop(0) if self.free_slots else self._new_slot()
            self.slots[key] = slot
            self.bars[key] = bar(max(int(size), 0), f"{label} {phase}", position=slot,
                                 leave=False)
            self.weights[key] = max(int(weight), 0)
            self.shares[key] = 0.0
            self.phase_share[key] = min(max(share, 0.0), 1.0)
            self.fraction[key] = 0.0
            self.logged[key] = 0
            self.phase_name[key] = phase

    def next_phase(self, key: str, label: str, size: int, phase: str, share: float) -> None:
        """The item's current phase is complete; the next one (``share``) starts at 0."""
        with self.lock:
            if key not in self.weights:
                return
            self.shares[key] = min(1.0, self.shares[key] + self.phase_share[key])
            self.phase_share[key] = min(max(share, 0.0), 1.0 - self.shares[key])
            self.fraction[key] = 0.0
            self.logged[key] = 0
            self.phase_name[key] = phase
            old = self.bars.pop(key, None)
            if old is not None:
                old.close()
            self.bars[key] = bar(max(int(size), 0), f"{label} {phase}",
                                 position=self.slots[key], leave=False)
            self._move(self.overall, self._position())

    def advance(self, key: str, label: str, fraction: float) -> None:
        """The item's running phase reached ``fraction`` (0..1; never moves backwards)."""
        with self.lock:
            if key not in self.weights:
                return
            fraction = min(max(fraction, self.fraction[key]), 1.0)
            self.fraction[key] = fraction
            b = self.bars.get(key)
            if b is not None and b.total:
                self._move(b, int(fraction * b.total))
            self._move(self.overall, self._position())
            quarter = int(fraction * 4)
            report = not self.tty and 0 < quarter < 4 and quarter > self.logged[key]
            if report:
                self.logged[key] = quarter
            phase = self.phase_name[key]
        if report:
            log(f"{label}: {phase} {quarter * 25}%")

    def finish(self, key: str, weight: int) -> None:
        """The item is over (done, failed or skipped): ``weight`` of it counts (its whole
        weight when done; 0 for a failed item that should not count)."""
        with self.lock:
            if key in self.weights:
                self.weights.pop(key)
                for table in (self.shares, self.phase_share, self.fraction, self.logged,
                              self.phase_name):
                    table.pop(key, None)
            self.done_weight += max(int(weight), 0)
            b = self.bars.pop(key, None)
            if b is not None:
                self.free_slots.append(self.slots.pop(key))
                self.free_slots.sort()
                b.close()
            self._move(self.overall, self._position())

    def grow(self, extra: int) -> None:
        """More work became known (``upload --follow``): the overall total grows."""
        with self.lock:
            self.total += max(int(extra), 0)
            self.overall.total = self.total
            self.overall.refresh()

    def _new_slot(self) -> int:
        slot = self.next_slot
        self.next_slot += 1
        return slot

    def close(self) -> None:
        with self.lock:
            for b in self.bars.values():
                b.close()
            self.bars.clear()
            self.overall.close()


def disk_estimate(disk: Any) -> int:
    """A disk's share of a batch's overall bar: its data as the inventory knows it."""
    return disk.allocated_size or disk.virtual_size or 1


class ConvertProgress:
    """Conversion progress (:class:`converters.convert.Progress`): an overall bar and one
    per disk in flight, first converting then verifying (compare + checksum), each with its
    own bar; plain log lines when stderr is not a terminal.

    ``verify``: whether the batch verifies; verification then gets 60 % of each disk's
    share of the overall bar, as it reads the source and the output again.
    """

    VERIFY_SHARE = 0.6

    def __init__(self, total: int, count: int, verify: bool = True) -> None:
        self.bars = ItemBars(total, f"{count} disk(s)")
        self.verify = verify
        self.verifying_items: set[str] = set()

    def started(self, job: Any, total: int) -> None:
        from migrate.output import human_size

        share = 1.0 - self.VERIFY_SHARE if self.verify else 1.0
        self.bars.start(job.item, job.label, total, disk_estimate(job.disk), "convert", share)
        log(f"{job.label}: converting {job.disk.path} → {job.output.name} "
            f"({human_size(total)} to write)")

    def advanced(self, job: Any, fraction: float) -> None:
        self.bars.advance(job.item, job.label, fraction)

    def verifying(self, job: Any, fraction: float) -> None:
        from migrate.output import human_size

        if job.item not in self.verifying_items:
            self.verifying_items.add(job.item)
            size = job.output.stat().st_size if job.output.exists() else 0
            size = size or job.required or job.virtual_size or 0
            self.bars.next_phase(job.item, job.label, size, "verify", self.VERIFY_SHARE)
            log(f"{job.label}: verifying (qemu-img compare with the source, sha256 of "
                f"the output, {human_size(job.virtual_size)})")
        self.bars.advance(job.item, job.label, fraction)

    def finished(self, job: Any, result: Any) -> None:
        from migrate.output import human_size

        self.verifying_items.discard(job.item)
        self.bars.finish(job.item, disk_estimate(job.disk))
        if result.ok:
            extra = f", verified, {result.checksum}" if result.verified else ""
            log(f"{job.label}: {result.status} → {result.output} "
                f"({human_size(result.allocated)}{extra})")
        else:  # the error itself is printed once, with the results
            log(f"{job.label}: failed")

    def close(self) -> None:
        self.bars.close()


class UploadProgress:
    """Transfer progress (:class:`converters.transfer.base.Subscriber`): an overall bar and
    one per image in flight, log lines when stderr is not a terminal.

    Bytes are counted at most once per image: s3transfer reports a part again when it
    retries it, and a transfer may restart from the start (an expired upload token), so
    each image's bar is set from its bytes sent, capped at its size, never past it.
    A failed image no longer counts in the overall bar.
    """

    def __init__(self, total: int, count: int) -> None:
        self.bars = ItemBars(total, f"upload {count} image(s)")
        self.lock = threading.Lock()
        self.sizes: dict[str, int] = {}
        self.done: dict[str, int] = {}

    def grow(self, extra: int) -> None:
        """An image joined the batch after it started (``--follow``)."""
        self.bars.grow(extra)

    def on_queued(self, item: Any, total: int, already: int) -> None:
        from migrate.output import human_size

        with self.lock:
            self.sizes[item.item] = max(int(total), 1)
            self.done[item.item] = int(already)
        self.bars.start(item.item, item.label, total, total, "upload")
        self.bars.advance(item.item, item.label, already / max(int(total), 1))
        note = f", {human_size(already)} already there" if already else ""
        log(f"{item.label}: sending {human_size(total - already)} of {human_size(total)}{note}")

    def on_progress(self, item: Any, bytes_transferred: int) -> None:
        with self.lock:
            done = self.done.get(item.item, 0) + int(bytes_transferred)
            self.done[item.item] = done
            fraction = min(1.0, done / self.sizes.get(item.item, 1))
        self.bars.advance(item.item, item.label, fraction)

    def on_done(self, item: Any, result: Any) -> None:
        from migrate.output import human_size

        with self.lock:
            size = self.sizes.pop(item.item, 0)
            self.done.pop(item.item, None)
        self.bars.finish(item.item, size if result.ok else 0)
        if result.ok:
            where = getattr(result, "url", None) or (
                f"{result.namespace}/{result.dv}" if getattr(result, "dv", None) else "-")
            log(f"{item.label}: {result.status} → {where} ({human_size(result.sent)} sent)")
        else:  # the error itself is printed once, with the results
            log(f"{item.label}: failed")

    def close(self) -> None:
        self.bars.close()
