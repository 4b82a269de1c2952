"""The one interface every transfer backend implements, and the journal records it leaves.

A backend moves one image (a local file or a readable stream of known size) to where
CDI fills a PVC from, and says where it went in a :class:`TransferResult`.  The runner
(:func:`run_transfers`) owns the journal: it marks each item running, hands the backend
the step (so it can keep resumption state such as an S3 UploadId in ``data``), and
records the result as the ``upload`` step that ``vmmove manifests`` reads (the fields
are documented in :mod:`migrate.core.workdir`).  Progress goes to subscribers shaped like
s3transfer's (``on_queued``/``on_progress``/``on_done``), so a CLI can draw bars and
tests can count bytes without either knowing the backend.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from migrate.core import digest
from migrate.core.errors import VmmoveError
from migrate.core.journal import MEASURED, Journal, Step
from migrate.core.progress import Subscriber
from migrate.core.records import KIND_UPLOAD

UPLOADED = "uploaded"  # sent in full in this run
RESUMED = "resumed"  # an interrupted transfer finished, only missing parts sent
SKIPPED = "skipped"  # already at the destination with the right size and checksum
FAILED = "failed"

READ_CHUNK = 1 << 20  # bytes read at a time when streaming (bounded memory)


class TransferError(VmmoveError):
    """A transfer failed; the message names the image and the destination."""


@dataclass
class TransferItem:
    """One image to move: a file (``path``) or a stream (``stream``) of ``size`` bytes."""

    item: str  # journal item: <vm key>/<disk target>, or the file name for a folder
    name: str  # file name of the image (object key suffix, DataVolume name source)
    size: int  # bytes of the image as stored (what is sent)
    path: Path | None = None
    stream: BinaryIO | None = None
    checksum: str | None = None  # "FORM:HEX" when already known (vmmove convert; migrate.core.digest)
    virtual_size: int | None = None  # bytes the guest sees (DataVolume size)
    format: str | None = None  # qcow2 | raw | vmdk | …, when known
    dv_name: str | None = None  # DataVolume name for the upload proxy (DNS-1123)
    label: str = ""  # how messages name it: "web/vda (web-vda.qcow2)"
    #: A file still being written (converters.watermark.GrowthSource): ``path`` is its
    #: temporary file, ``size`` its bound; a backend that can follow it sends it as it grows.
    growth: Any = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.stream is None):
            raise ValueError("a TransferItem needs exactly one of path and stream")
        if not self.label:
            self.label = self.item if self.item == self.name else f"{self.item} ({self.name})"

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the local content cheaply; a change voids a partial transfer."""
        if self.path is None:
            return {"size": self.size}
        if self.growth is not None:  # still written (its temporary file may be renamed)
            return {"path": str(self.path), "bound": self.size, "growing": True}
        st = os.stat(self.path)
        return {"path": str(self.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def checksum_form(item: TransferItem) -> str:
    """The checksum form a backend computes over what it sends: the recorded checksum's
    (an older journal's ``sha256:`` still verifies), :data:`migrate.core.digest.DEFAULT`
    when none is recorded.  :class:`TransferError` naming the image for an unknown form."""
    try:
        return digest.form_of(item.checksum)
    except digest.UnknownForm as exc:
        raise TransferError(f"{item.label}: its recorded checksum {item.checksum!r} has an "
                            f"{exc}; this vmmove cannot verify it") from None


@dataclass
class TransferResult:
    """Where one image went; :meth:`journal_data` is exactly what the journal records."""

    item: str
    backend: str  # s3 | upload
    status: str  # uploaded | resumed | skipped | failed
    size: int
    checksum: str | None = None  # FORM:HEX of the bytes sent (migrate.core.digest)
    sent: int = 0  # bytes sent over the network in this run
    seconds: float = 0.0
    url: str | None = None  # s3: the path-style URL CDI's s3 source imports from
    secret: str | None = None  # s3: name of the Secret manifest
    secret_file: str | None = None  # s3: where that manifest was written (mode 0600)
    dv: str | None = None  # upload proxy: the DataVolume filled
    namespace: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # backend facts (bucket, key, …)

    @property
    def ok(self) -> bool:
        return self.status != FAILED

    def journal_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"backend": self.backend, "size": self.size, "sent": self.sent}
        for key in ("url", "secret", "secret_file", "dv", "namespace"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        data.update(self.extra)
        return data


class Subscribers(Subscriber):
    """Fan one event out to many subscribers."""

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self.subscribers = list(subscribers)

    def on_queued(self, item: TransferItem, total: float, already: float = 0) -> None:
        for s in self.subscribers:
            s.on_queued(item, total, already)

    def on_phase(self, item: TransferItem, phase: str, total: float) -> None:
        for s in self.subscribers:
            s.on_phase(item, phase, total)

    def on_progress(self, item: TransferItem, amount: float | None,
                    note: str | None = None) -> None:
        for s in self.subscribers:
            s.on_progress(item, amount, note)

    def on_done(self, item: TransferItem, result: TransferResult) -> None:
        for s in self.subscribers:
            s.on_done(item, result)


class Backend(ABC):
    """A transfer destination: S3, the CDI upload proxy, …"""

    name: str = ""

    def prepare(self) -> None:
        """Check the destination once before any item (credentials, bucket, cluster)."""

    @abstractmethod
    def transfer(self, item: TransferItem, step: Step, journal: Journal,
                 progress: Subscriber) -> TransferResult:
        """Move ``item``; ``step`` is its running journal step (resumption state in
        ``step.data``, which the backend may extend with :meth:`Journal.update`)."""

    def describe(self) -> str:
        """The destination in one short phrase, for messages."""
        return self.name

    def target_of(self, item: TransferItem) -> dict[str, Any]:
        """Where ``item`` goes, as the journal records it (``target``): S3 endpoint,
        bucket and key, or the upload proxy, namespace and DataVolume.  A done transfer
        to another target is not this one: it is sent again."""
        return self.target_for(item.name, item.dv_name)

    def target_for(self, name: str, dv_name: str | None = None) -> dict[str, Any]:
        """:meth:`target_of` for an image file ``name`` (and its DataVolume name)."""
        return {"backend": self.name}


def run_transfers(backend: Backend, items: Sequence[TransferItem], journal: Journal,
                  progress: Subscriber | None = None, redo: bool = False,
                  stop_on_error: bool = False) -> list[TransferResult]:
    """Transfer ``items`` one after the other, each recorded in the journal.

    One at a time on purpose: each backend already keeps the link busy (parallel parts),
    and one object in flight keeps memory bounded whatever the number of disks.  A failed
    item is recorded with its error and the others go on (unless ``stop_on_error``).
    """
    progress = progress or Subscriber()
    results = []
    for item in items:
        result = transfer_one(backend, item, journal, progress, redo=redo)
        results.append(result)
        if not result.ok and stop_on_error:
            break
    return results


def transfer_one(backend: Backend, item: TransferItem, journal: Journal,
                 progress: Subscriber, redo: bool = False) -> TransferResult:
    """Transfer one item with its journal bookkeeping; errors become a failed result."""
    target = backend.target_of(item)
    old = journal.get(KIND_UPLOAD, item.item)
    # Redone, or going somewhere else: a new transfer (no resumption state of the old one).
    kept: dict[str, Any] = {}
    if old is not None and ((redo and old.status == "done") or
                            old.target_or(target) != target):
        if old.status == "done" and old.duration is not None:  # the link's last real rate
            kept[MEASURED] = {"started": old.started, "finished": old.finished,
                              "bytes": old.bytes}
        journal.reset(KIND_UPLOAD, item.item)
    step = journal.start(KIND_UPLOAD, item.item, backend=backend.name, name=item.name,
                         fingerprint=item.fingerprint(), target=target, **kept)
    started = time.monotonic()
    try:
        result = backend.transfer(item, step, journal, progress)
    except VmmoveError as exc:
        message = str(exc)
        journal.fail(KIND_UPLOAD, item.item, message)
        result = TransferResult(item.item, backend.name, FAILED, item.size, error=message,
                                seconds=time.monotonic() - started)
        progress.on_done(item, result)
        return result
    except BaseException:
        journal.fail(KIND_UPLOAD, item.item, "interrupted: rerun to resume")
        raise
    result.seconds = time.monotonic() - started
    # Found there already: nothing was sent, so nothing is measured (the step keeps the
    # last real transfer's times; see Journal.done).
    journal.done(KIND_UPLOAD, item.item, bytes=result.size, checksum=result.checksum,
                 measured=result.status != SKIPPED, **result.journal_data())
    progress.on_done(item, result)
    return result
