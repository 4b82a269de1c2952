"""An S3 multipart upload of a qcow2 while :mod:`converters.stream` writes it.

The stream conversion writes its file front to back (:mod:`converters.watermark`): the
data clusters from ``first_data`` on, in order, never moved; the metadata region
``[0, first_data)`` last.  S3 parts may be sent in any order, so:

1. as soon as the layout is known, ``CreateMultipartUpload`` with the part size chosen for
   the size bound (:func:`~converters.transfer.s3.part_size_for`), its UploadId journalled;
2. part ``n`` (bytes ``[(n-1)·P, n·P)``) wholly inside the data region is read and sent
   as soon as the writer passed its end;
3. once the conversion finished (and renamed its file: the descriptor opened on the
   temporary file reads on), the parts overlapping ``[0, first_data)`` and the last,
   short part;
4. every part is hashed into a :class:`~migrate.core.digest.BlockTree` as it is read for
   sending; before ``CompleteMultipartUpload`` the tree's checksum must equal the one the
   conversion recorded for its file, else the upload is aborted.

A conversion that fails or stops, a checksum that differs, any error: the multipart
upload is aborted (nothing half-written stays in S3) and the journal's upload state
cleared; one error line names the disk.  Memory: parts in flight × part size.  After a
crash the conversion starts over, and so does this upload (the old UploadId aborted).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters.transfer.base import UPLOADED, TransferError, TransferItem, TransferResult
from converters.watermark import Growth, GrowthSource
from migrate.core import digest as digests
from migrate.core.records import KIND_UPLOAD

if TYPE_CHECKING:
    from converters.transfer.base import Subscriber
    from converters.transfer.s3 import S3Backend
    from migrate.core.journal import Journal, Step

#: How long one wait for the writer lasts before the follower looks again (seconds).
WAIT = 5.0


def _open(growth: GrowthSource, g: Growth, label: str) -> int:
    """A descriptor on the file ``g`` names (it reads on through the rename at the end);
    the finished file when the conversion renamed it before it could be opened."""
    for _ in range(2):
        assert g.path is not None
        try:
            return os.open(g.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            g = growth.wait(None, WAIT)  # renamed (finished) or removed (failed) meanwhile
            if g.error:
                raise TransferError(f"{label}: {g.error}; nothing uploaded") from None
        except OSError as exc:
            raise TransferError(f"{label}: cannot read {g.path}: {exc.strerror}") from None
    raise TransferError(f"{label}: {g.path} is gone (the conversion removed it)")


def send_growing(backend: S3Backend, item: TransferItem, growth: GrowthSource, step: Step,
                 journal: Journal, progress: Subscriber) -> TransferResult:
    """Upload ``item`` (its ``path``: the temporary file a stream conversion writes) while
    ``growth`` says how far it is written; see the module doc.  Raises
    :class:`TransferError` naming ``item.label``."""
    key = backend.key_for(item)
    where = f"{item.label} → s3://{backend.bucket}/{key}"
    old = step.s3_state
    if old.get("upload_id"):  # a conversion that crashed: it starts over, so does its upload
        backend._abort(str(old.get("key") or key), str(old["upload_id"]))
        journal.update(KIND_UPLOAD, item.item, s3={**old, "upload_id": None})
    g = growth.wait(None, WAIT)
    while not g.finished and g.first_data is None:
        g = growth.wait(None, WAIT)
    if g.error:
        raise TransferError(f"{item.label}: {g.error}; nothing uploaded")
    fd = _open(growth, g, item.label)
    upload_id: str | None = None
    try:
        assert g.first_data is not None and g.bound is not None
        part = backend_part_size(backend, g.bound)
        upload_id = str(backend.client.create_multipart_upload(
            Bucket=backend.bucket, Key=key, ContentType="application/octet-stream")["UploadId"])
        journal.update(KIND_UPLOAD, item.item, s3={
            "bucket": backend.bucket, "key": key, "upload_id": upload_id, "part_size": part,
            "fingerprint": None, "metadata_at_create": False, "growing": True})
        progress.on_queued(item, g.bound, 0)
        sender = _Sender(backend, item, key, upload_id, part, fd, progress)
        try:
            g = sender.follow(growth, g)
        finally:
            sender.close()
        assert g.size is not None and g.checksum is not None
        got = sender.checksum(g.checksum, g.size)
        if got != g.checksum:
            raise TransferError(
                f"{item.label}: the bytes sent do not match the conversion's checksum "
                f"{digests.short(g.checksum)} (got {digests.short(got)}): the file changed "
                "after it was written; upload refused")
        backend.client.complete_multipart_upload(
            Bucket=backend.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": sender.etags[n]}
                                       for n in sorted(sender.etags)]})
        upload_id = None  # complete: nothing to abort any more
        final = TransferItem(item=item.item, name=item.name, size=g.size,
                             path=Path(g.path or item.path or ""), checksum=g.checksum,
                             label=item.label)
        backend._store_checksum(key, g.checksum, final)  # (known only now: in place)
        backend._verify(final, key, g.checksum)
        journal.update(KIND_UPLOAD, item.item, fingerprint=final.fingerprint(), s3={
            "bucket": backend.bucket, "key": key, "upload_id": None, "part_size": part,
            "fingerprint": final.fingerprint(), "completed": g.checksum, "growing": True})
        return backend._result(final, key, UPLOADED, g.checksum, sender.sent)
    except BaseException as exc:
        if upload_id is not None:
            backend._abort(key, upload_id)
            journal.update(KIND_UPLOAD, item.item, s3={**step.s3_state, "upload_id": None})
        if isinstance(exc, TransferError):
            if str(exc).startswith(item.label):
                raise
            raise TransferError(f"{where}: {exc}") from None
        if isinstance(exc, Exception):
            raise backend._error(exc, where) from None
        raise
    finally:
        os.close(fd)


def backend_part_size(backend: S3Backend, bound: int) -> int:
    """The part size for a file of at most ``bound`` bytes, a whole number of tree blocks
    (each part hashes into whole :data:`~migrate.core.digest.BLOCK` blocks)."""
    from converters.transfer.s3 import part_size_for

    size = part_size_for(bound, backend.options.part_size)
    return -(-size // digests.BLOCK) * digests.BLOCK


class _Sender:
    """Reads parts through ``fd``, hashes them, sends them on a bounded pool."""

    def __init__(self, backend: S3Backend, item: TransferItem, key: str, upload_id: str,
                 part: int, fd: int, progress: Subscriber) -> None:
        o = backend.options
        self.backend, self.item, self.key, self.upload_id = backend, item, key, upload_id
        self.part, self.fd, self.progress = part, fd, progress
        self.etags: dict[int, str] = {}
        self.sent = 0
        self.tree = digests.BlockTree(digests.DEFAULT)
        self.hashed: set[int] = set()
        in_flight = max(1, min(o.workers, o.memory_budget // part))
        self.slots = threading.BoundedSemaphore(in_flight)
        self.pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="s3-grow")
        self.futures: list[Future[None]] = []
        self.failure: list[BaseException] = []
        self.lock = threading.Lock()
        from converters.transfer.s3 import _Limiter

        self.limiter = _Limiter(o.max_bandwidth)

    def _check(self) -> None:
        if self.failure:
            raise self.failure[0]

    def send(self, n: int, length: int) -> None:
        """Read part ``n`` (``length`` bytes), hash it, hand it to the pool."""
        self.slots.acquire()
        try:
            self._check()
            offset = (n - 1) * self.part
            data = os.pread(self.fd, length, offset)
            if len(data) != length:
                raise TransferError(f"{self.item.label}: the image ended early at "
                                    f"{offset + len(data)} bytes (it changed while read?)")
            self.tree.put_range(offset, data)
            self.hashed.add(n)
            self.limiter.take(length)
        except BaseException:
            self.slots.release()
            raise
        self.futures.append(self.pool.submit(self._upload, n, data))

    def _upload(self, n: int, data: bytes) -> None:
        try:
            etag = self.backend._upload_part(self.key, self.upload_id, n, data)
            with self.lock:
                self.etags[n] = etag
                self.sent += len(data)
            self.progress.on_progress(self.item, len(data))
        except BaseException as exc:
            self.failure.append(exc)
        finally:
            self.slots.release()

    def follow(self, growth: GrowthSource, g: Growth) -> Growth:
        """Send the data parts as the writer passes them, then the rest; the final
        snapshot (raises :class:`TransferError` when the conversion failed)."""
        assert g.first_data is not None
        n = -(-g.first_data // self.part) + 1  # the first part wholly in the data region
        while not g.finished:
            end = n * self.part
            if g.written >= end:
                self.send(n, self.part)
                n += 1
                continue
            self._check()
            g = growth.wait(end, WAIT)
        if g.error:
            raise TransferError(f"{self.item.label}: {g.error}; the upload was aborted")
        assert g.size is not None
        count = max(1, -(-g.size // self.part))
        for m in list(range(n, count + 1)) + list(range(1, min(n, count + 1))):
            if m not in self.hashed:
                self.send(m, min(self.part, g.size - (m - 1) * self.part))
        self.close()
        self._check()
        missing = [m for m in range(1, count + 1) if m not in self.etags]
        if missing:  # pragma: no cover - every part was sent above
            raise TransferError(f"{self.item.label}: parts {missing[:5]} were not sent")
        return g

    def checksum(self, recorded: str, size: int) -> str:
        """The checksum of the bytes sent, in the form of ``recorded``."""
        form = digests.form_of(recorded)
        if form == self.tree.form:
            return self.tree.hexdigest(size)
        return digests.fd_checksum(self.fd, size, form)  # an older form: read once more

    def close(self) -> None:
        for fut in self.futures:
            if self.failure:
                fut.cancel()
        self.pool.shutdown(wait=True, cancel_futures=bool(self.failure))
