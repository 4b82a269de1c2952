"""Progress bars for the terminal: the one tqdm subscriber of the progress protocol.

:class:`Bars` implements :class:`migrate.core.progress.Subscriber` with an overall bar
plus one bar per item in flight (silent when stderr is not a terminal, where log lines
carry the news instead); :class:`ConvertBars`, :class:`UploadBars`, :class:`ImportBars`
and :class:`CountBar` only choose what each item weighs and what its log lines say.
:func:`reporters` hands them to the pipeline.
"""

from __future__ import annotations

import threading
from typing import Any

from tqdm import tqdm

from migrate.core.output import escape, human_size
from migrate.core.progress import Subscriber, disk_estimate, interactive, log


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


def failed_line(item: Any, result: Any) -> str:
    """The log line (stderr) of a failed item: its error, which names the VM/disk and the
    problem, so the reason is on stderr even when the results table goes to a file."""
    error = getattr(result, "error", None)
    if not error:
        return f"{item.label}: failed"
    error = escape(str(error))
    return f"failed: {error}" if error.startswith(str(item.label)) else \
        f"{item.label}: failed: {error}"


class Bars(Subscriber):
    """The tqdm subscriber: an overall bar of ``total`` and one bar per item in flight
    (:class:`ItemBars`).  Amounts accumulate per item and phase into the fraction the bars
    show, capped at the phase's total.  Subclasses say what an item weighs in the overall
    bar (:meth:`weight`), what share of it each phase takes (:meth:`share`), and what the
    log lines say (:meth:`said_queued`, :meth:`said_phase`, :meth:`said_done`)."""

    first_phase = "upload"

    def __init__(self, total: int, desc: str) -> None:
        self.bars = ItemBars(total, desc)
        self.lock = threading.Lock()
        self.totals: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.weights: dict[str, int] = {}

    # what subclasses choose
    def weight(self, item: Any, total: float) -> int:
        return max(int(total), 0)

    def finished_weight(self, item: Any, result: Any, weight: int | None) -> int:
        """What a finished item adds to the overall bar (``weight``: its weight when
        it was queued, None when it never was)."""
        return max(weight or 0, 1) if result.ok and weight is not None else 0

    def share(self, phase: str) -> float:
        return 1.0

    def bar_size(self, item: Any, total: float) -> int:
        return int(total)

    def said_queued(self, item: Any, total: float, already: float) -> str | None:
        return None

    def said_phase(self, item: Any, phase: str, total: float) -> str | None:
        return None

    def said_done(self, item: Any, result: Any) -> str | None:
        return f"{item.label}: {result.status}" if result.ok else failed_line(item, result)

    # the protocol
    def grow(self, extra: int) -> None:
        """More work became known after the batch started (``upload --follow``)."""
        self.bars.grow(extra)

    def on_queued(self, item: Any, total: float, already: float = 0) -> None:
        weight = self.weight(item, total)
        with self.lock:
            self.totals[item.item] = total if total > 0 else 1.0
            self.done[item.item] = float(already)
            self.weights[item.item] = weight
        self.bars.start(item.item, item.label, self.bar_size(item, total), weight,
                        self.first_phase, self.share(self.first_phase))
        if already:
            self.bars.advance(item.item, item.label, already / max(total, 1))
        line = self.said_queued(item, total, already)
        if line:
            log(line)

    def on_phase(self, item: Any, phase: str, total: float) -> None:
        with self.lock:
            self.totals[item.item] = total if total > 0 else 1.0
            self.done[item.item] = 0.0
        self.bars.next_phase(item.item, item.label, int(total), phase, self.share(phase))
        line = self.said_phase(item, phase, total)
        if line:
            log(line)

    def on_progress(self, item: Any, amount: float | None, note: str | None = None) -> None:
        if not amount:
            return
        with self.lock:
            done = self.done.get(item.item, 0.0) + amount
            self.done[item.item] = done
            fraction = min(1.0, done / self.totals.get(item.item, 1.0))
        self.bars.advance(item.item, item.label, fraction)

    def on_done(self, item: Any, result: Any) -> None:
        with self.lock:
            self.totals.pop(item.item, None)
            self.done.pop(item.item, None)
            weight = self.weights.pop(item.item, None)
        self.bars.finish(item.item, self.finished_weight(item, result, weight))
        line = self.said_done(item, result)
        if line:
            log(line)

    def close(self) -> None:
        self.bars.close()


class ConvertBars(Bars):
    """Conversion: each disk weighs its data (:func:`disk_estimate`); with ``verify`` the
    verification (compare + checksum) takes 60 % of it, as it reads the source and the
    output again, on a bar of its own."""

    VERIFY_SHARE = 0.6
    first_phase = "convert"

    def __init__(self, total: int, count: int, verify: bool = True) -> None:
        super().__init__(total, f"{count} disk(s)")
        self.verify = verify

    def weight(self, item: Any, total: float) -> int:
        return disk_estimate(item.disk)

    def finished_weight(self, item: Any, result: Any, weight: int | None) -> int:
        return disk_estimate(item.disk)  # done, skipped or failed: the batch moves on

    def share(self, phase: str) -> float:
        if phase == "verify":
            return self.VERIFY_SHARE
        return 1.0 - self.VERIFY_SHARE if self.verify else 1.0

    def said_queued(self, item: Any, total: float, already: float) -> str:
        return (f"{item.label}: converting {item.disk.path} → {item.output.name} "
                f"({human_size(int(total))} to write)")

    def said_phase(self, item: Any, phase: str, total: float) -> str:
        how = getattr(item, "verifying", "qemu-img compare with the source, checksum of the output")
        return f"{item.label}: verifying ({how}, {human_size(item.virtual_size)})"

    def said_done(self, item: Any, result: Any) -> str:
        if not result.ok:
            return failed_line(item, result)
        extra = f", verified, {result.checksum}" if result.verified else ""
        return (f"{item.label}: {result.status} → {result.output} "
                f"({human_size(result.allocated)}{extra})")


class UploadBars(Bars):
    """Transfer: each image weighs its bytes; bytes count at most once per image (a part
    sent again on a retry, a transfer restarted from the start), capped at its size."""

    def __init__(self, total: int, count: int) -> None:
        super().__init__(total, f"upload {count} image(s)")

    def said_queued(self, item: Any, total: float, already: float) -> str:
        note = f", {human_size(int(already))} already there" if already else ""
        return (f"{item.label}: sending {human_size(int(total - already))} of "
                f"{human_size(int(total))}{note}")

    def said_done(self, item: Any, result: Any) -> str:
        if not result.ok:
            return failed_line(item, result)
        where = getattr(result, "url", None) or (
            f"{result.namespace}/{result.dv}" if getattr(result, "dv", None) else "-")
        return f"{item.label}: {result.status} → {where} ({human_size(result.sent)} sent)"


class ImportBars(Subscriber):
    """Import watching: a bar per DataVolume in percent (no overall bar; the percent is
    CDI's and may go back when an import restarts), a log line at each change of phase
    or percent, and its outcome."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}
        self.percent: dict[str, float] = {}
        self.logged: dict[str, str] = {}

    @staticmethod
    def _key(item: Any) -> str:
        return f"{item.namespace}/{item.dv}"

    def _bar(self, item: Any) -> Any:
        key = self._key(item)
        if key not in self.bars:
            self.bars[key] = bar(100.0, item.label, unit="%", position=len(self.bars))
            self.percent[key] = 0.0
        return self.bars[key]

    def _say(self, item: Any, line: str) -> None:
        key = self._key(item)
        if self.logged.get(key) != line:
            self.logged[key] = line
            log(f"{item.label} (DataVolume {key}): {line}")

    def on_queued(self, item: Any, total: float, already: float = 0) -> None:
        self._bar(item)

    def on_progress(self, item: Any, amount: float | None, note: str | None = None) -> None:
        b = self._bar(item)
        key = self._key(item)
        if amount is not None:
            self.percent[key] += amount
            b.n = self.percent[key]
        b.set_postfix_str(note or "", refresh=False)
        b.refresh()
        self._say(item, f"{note}" + (f" {self.percent[key]:.0f}%" if amount is not None
                                     else ""))

    def on_done(self, item: Any, result: Any) -> None:
        b = self._bar(item)
        if result.progress is not None:
            b.n = result.progress
        b.set_postfix_str(result.phase or "", refresh=False)
        b.refresh()
        self._say(item, f"{result.outcome}" + (f": {result.reason}" if result.reason else ""))

    def close(self) -> None:
        for b in self.bars.values():
            b.close()


class CountBar(Subscriber):
    """One bar counting what is done of one item (the scan: sources read)."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit = desc, unit
        self.bar: Any = None

    def on_queued(self, item: Any, total: float, already: float = 0) -> None:
        self.bar = bar(total, self.desc, unit=self.unit)

    def on_progress(self, item: Any, amount: float | None, note: str | None = None) -> None:
        if self.bar is not None and amount:
            self.bar.update(amount)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def reporters() -> Any:
    """The bars for each kind of work, as :class:`migrate.core.progress.Reporters`."""
    from migrate.core.progress import Reporters

    return Reporters(convert=ConvertBars, upload=UploadBars, imports=ImportBars,
                     scan=lambda: CountBar("scan", "source"))
