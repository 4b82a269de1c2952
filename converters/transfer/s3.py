"""S3 (AWS or any S3-compatible server) as CDI's import source, with resumable uploads.

Why not just ``TransferManager.upload_file``: it creates its own multipart upload, aborts
it on any error and forgets its UploadId on a crash, so an interrupted 200 GiB upload
starts over; and it reads parts in worker threads, out of order, so it cannot hash the
content as it goes.  Here instead:

1. ``CreateMultipartUpload`` ourselves and keep the UploadId, part size and the file's
   fingerprint (path, size, mtime) in the journal step before the first part is sent;
2. one reader walks the image in order, hashes every byte (the recorded checksum's form,
   :mod:`migrate.core.digest`; ``xxh3-1m`` when none is recorded) and hands each part
   to a bounded thread pool that calls ``UploadPart``; a semaphore caps the parts held in
   memory, so memory is ``parts in flight × part size`` whatever the image size;
3. on a rerun, ``ListParts`` tells which parts the server already holds: those are not
   sent again (when the checksum is not yet known they are read locally to hash them:
   reading, not sending);
4. ``CompleteMultipartUpload``, then ``HeadObject`` must show the size and the checksum.

boto3/s3transfer still do what they are good at: credentials the aws-cli way (env,
shared config, ``--profile``), retries with backoff (standard mode), the part size rule
(s3transfer's :class:`ChunksizeAdjuster`: at most 10,000 parts of 5 MiB–5 GiB), and the
managed copy that writes the checksum metadata when it was not known before the upload.
The checksum (``FORM:HEX``) is the object's ``x-amz-meta-checksum``: given at creation when
vmmove convert recorded it, else written afterwards by an in-place server-side copy (no
bytes resent).  Objects written by vmmove before issue 17 carry ``x-amz-meta-sha256`` (the
hex of a ``sha256:`` checksum) instead; it is still read, and written beside
``checksum`` for a ``sha256:`` checksum.

Credentials go into one place only: a Secret manifest (``accessKeyId``/``secretKey``, what
CDI's s3 source reads) written with mode 0600 into the work folder.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.parse
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from converters.transfer.base import (
    RESUMED,
    SKIPPED,
    UPLOADED,
    Backend,
    Subscriber,
    TransferError,
    TransferItem,
    TransferResult,
    checksum_form,
)
from migrate.core import digest as checksums
from migrate.core.errors import UsageError
from migrate.core.naming import dns1123_label
from migrate.core.serialize import atomic_write
from migrate.core.journal import Journal, Step
from migrate.core.records import KIND_UPLOAD

MiB = 1 << 20
DEFAULT_PART_SIZE = 8 * MiB  # s3transfer's default chunk; grown for big objects
MEMORY_BUDGET = 96 * MiB  # bytes of parts held in memory at once, at most
SINGLE_COPY_LIMIT = 5 * 1024 * MiB  # CopyObject's limit; above it s3transfer copies in parts
META_KEY = "checksum"  # x-amz-meta-checksum: FORM:HEX
OLD_META_KEY = "sha256"  # x-amz-meta-sha256: the hex of a sha256: checksum (before issue 17)


def _metadata(checksum: str) -> dict[str, str]:
    """The object metadata that records ``checksum`` (``FORM:HEX``)."""
    form, _, hexpart = checksum.partition(":")
    meta = {META_KEY: checksum}
    if form == checksums.SHA256:  # what vmmove before issue 17 reads
        meta[OLD_META_KEY] = hexpart
    return meta


def _remote_checksum(head: dict[str, Any]) -> str | None:
    """The checksum an object's metadata records (``FORM:HEX``; the old ``sha256`` key as
    ``sha256:<hex>``), or None."""
    meta = head.get("Metadata") or {}
    if meta.get(META_KEY):
        return str(meta[META_KEY])
    if meta.get(OLD_META_KEY):
        return f"{checksums.SHA256}:{meta[OLD_META_KEY]}"
    return None


def _completed(value: Any) -> str | None:
    """A journal's ``s3.completed`` as ``FORM:HEX`` (before issue 17 it held sha256 hex)."""
    if not value:
        return None
    value = str(value)
    return value if ":" in value else f"{checksums.SHA256}:{value}"


@dataclass
class S3Options:
    url: str  # s3://bucket/prefix
    workdir: Path  # where the Secret manifest is written
    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    secret_name: str | None = None
    secret_namespace: str | None = None
    workers: int = 8
    part_size: int = DEFAULT_PART_SIZE
    memory_budget: int = MEMORY_BUDGET
    max_bandwidth: int | None = None  # bytes per second, like aws-cli's s3.max_bandwidth
    max_attempts: int = 10  # botocore retries per request (standard mode)
    sign_payload: bool = False  # SigV4 body hash; parts carry a CRC32 checksum instead


def part_size_for(size: int, preferred: int = DEFAULT_PART_SIZE) -> int:
    """The part size for an object of ``size`` bytes: ``preferred``, grown so that the
    object fits in S3's 10,000 parts (s3transfer's rule, shared with ``aws s3 cp``)."""
    from s3transfer.utils import ChunksizeAdjuster

    return ChunksizeAdjuster().adjust_chunksize(preferred, size)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UsageError(f"{url}: not an S3 URL; expected s3://bucket[/prefix]")
    return parsed.netloc, parsed.path.strip("/")


class _Limiter:
    """Keeps the average send rate at most ``rate`` bytes/s (None: unlimited)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.total = 0

    def take(self, nbytes: int) -> None:
        if not self.rate:
            return
        self.total += nbytes
        ahead = self.total / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


class S3Backend(Backend):
    name = "s3"
    #: Sends a file a stream conversion is still writing (converters.transfer.growing).
    follows_growth = True

    def __init__(self, options: S3Options) -> None:
        self.options = options
        self.bucket, self.prefix = parse_s3_url(options.url)
        self._client: Any = None
        self.secret_name: str | None = None
        self.secret_file: Path | None = None

    # -- set-up -----------------------------------------------------------------------
    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        import botocore.exceptions
        from botocore.config import Config

        o = self.options
        try:
            session = boto3.session.Session(profile_name=o.profile, region_name=o.region)
        except botocore.exceptions.ProfileNotFound:
            raise UsageError(f"AWS profile {o.profile!r} not found in the shared config") from None
        self._session = session
        config = Config(
            region_name=o.region or session.region_name or "us-east-1",
            s3={"addressing_style": "path" if o.endpoint_url else "auto",
                "payload_signing_enabled": o.sign_payload},
            retries={"mode": "standard", "max_attempts": o.max_attempts},
            max_pool_connections=max(10, o.workers + 2),
            connect_timeout=10,
            read_timeout=120,
        )
        return session.client("s3", endpoint_url=o.endpoint_url, config=config)

    def credentials(self) -> tuple[str, str]:
        """The resolved access key id and secret key (env, profile, …); never printed."""
        import botocore.exceptions

        self.client  # noqa: B018 - builds the session
        try:
            creds = self._session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise TransferError(f"{self.describe()}: cannot read AWS credentials: {exc}") from None
        if creds is None:
            raise TransferError(
                f"{self.describe()}: no AWS credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or use --profile (a plan's transfer.profile) with a "
                "shared-config profile")
        frozen = creds.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key

    def prepare(self) -> None:
        """Credentials resolve, the bucket exists and is ours; write the Secret manifest."""
        access_key, secret_key = self.credentials()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._error(exc, f"s3://{self.bucket}") from None
        self._write_secret(access_key, secret_key)

    def probe(self) -> None:
        """Before a wave starts: the credentials resolve and can write here — a small
        object is put under the prefix and deleted again; raise :class:`TransferError`
        naming what is wrong (no bucket, access denied, endpoint unreachable)."""
        self.credentials()
        key = (f"{self.prefix}/" if self.prefix else "") + f".vmmove-probe-{os.getpid()}"
        what = f"s3://{self.bucket}/{key}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._error(exc, f"s3://{self.bucket}") from None
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"vmmove preflight\n")
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise self._error(exc, what) from None

    def _write_secret(self, access_key: str, secret_key: str) -> None:
        o = self.options
        endpoint = self.client.meta.endpoint_url
        tag = hashlib.sha256(f"{endpoint}\0{access_key}".encode()).hexdigest()[:6]
        name = o.secret_name or f"vmmove-s3-{tag}"
        name = dns1123_label(name, 253)
        from manifests.transfer import s3_secret

        manifest = s3_secret(name, endpoint, access_key, secret_key, o.secret_namespace)
        path = Path(o.workdir) / f"{name}.secret.yaml"
        atomic_write(path, yaml.safe_dump(manifest, sort_keys=False), private=True)
        self.secret_name, self.secret_file = name, path

    def target_for(self, name: str, dv_name: str | None = None) -> dict[str, Any]:
        return {"backend": self.name, "endpoint": self.options.endpoint_url or "aws",
                "bucket": self.bucket,
                "key": f"{self.prefix}/{name}" if self.prefix else name}

    def key_for(self, item: TransferItem) -> str:
        return f"{self.prefix}/{item.name}" if self.prefix else item.name

    def url_for(self, key: str) -> str:
        """The path-style URL CDI's s3 source wants: ``http(s)://host:port/bucket/key``."""
        endpoint = self.client.meta.endpoint_url.rstrip("/")
        return f"{endpoint}/{self.bucket}/{urllib.parse.quote(key)}"

    # -- errors ---------------------------------------------------------------------------
    def _error(self, exc: BaseException, what: str) -> TransferError:
        """One line naming ``what`` and the problem; never a credential."""
        import botocore.exceptions

        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",) or (code == "404" and "/" not in what[5:]):
                return TransferError(f"{what}: no such bucket")
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                        "Forbidden", "InvalidToken", "ExpiredToken") or status == 403:
                return TransferError(
                    f"{what}: access denied ({code}): the S3 server refused these credentials "
                    "(check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or --profile: a plan's "
                    "transfer.profile)")
            message = err.get("Message") or code or str(status)
            return TransferError(f"{what}: {message}")
        if isinstance(exc, botocore.exceptions.EndpointConnectionError):
            return TransferError(f"{what}: cannot reach {self.client.meta.endpoint_url}")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return TransferError(f"{what}: no AWS credentials (environment, or --profile: a "
                                 "plan's transfer.profile)")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return TransferError(f"{what}: {exc}")
        if isinstance(exc, OSError):
            return TransferError(f"{what}: {exc.strerror or exc}")
        return TransferError(f"{what}: {exc}")

    # -- one object -----------------------------------------------------------------------
    def transfer(self, item: TransferItem, step: Step, journal: Journal,
                 progress: Subscriber) -> TransferResult:
        if item.growth is not None:  # a stream conversion still writing it: follow it
            from converters.transfer.growing import send_growing

            return send_growing(self, item, item.growth, step, journal, progress)
        key = self.key_for(item)
        where = f"{item.label} → s3://{self.bucket}/{key}"
        form = checksum_form(item)  # the form the object's checksum takes
        known = item.checksum or None  # what conversion recorded
        state = step.s3_state
        fingerprint = item.fingerprint()
        same_content = state.get("fingerprint") == fingerprint
        try:
            skipped = self._already_there(item, key, known, state if same_content else {},
                                          progress)
            if skipped is not None:
                return self._result(item, key, SKIPPED, skipped, 0)
            if item.size < self.options.part_size:
                if state.get("upload_id"):  # an earlier, bigger image under this item
                    self._abort(str(state.get("key") or key), str(state["upload_id"]))
                digest, sent = self._put_small(item, key, known, form, progress)
                return self._result(item, key, UPLOADED, digest, sent)
            digest, sent, resumed, has_meta = self._multipart(
                item, key, known, form, state, same_content, fingerprint, journal, progress)
            if not has_meta:
                self._store_checksum(key, digest, item)
            self._verify(item, key, digest)
            current = journal.get(KIND_UPLOAD, item.item)
            state = current.s3_state if current else {}
            journal.update(KIND_UPLOAD, item.item, s3={**state, "upload_id": None,
                                                        "fingerprint": fingerprint,
                                                        "completed": digest})
            return self._result(item, key, RESUMED if resumed else UPLOADED, digest, sent)
        except TransferError as exc:
            if str(exc).startswith(item.label):
                raise
            raise TransferError(f"{where}: {exc}") from None
        except Exception as exc:
            raise self._error(exc, where) from None

    def _result(self, item: TransferItem, key: str, status: str, digest: str,
                sent: int) -> TransferResult:
        return TransferResult(
            item.item, self.name, status, item.size, checksum=digest, sent=sent,
            url=self.url_for(key), secret=self.secret_name,
            secret_file=str(self.secret_file) if self.secret_file else None,
            extra={"bucket": self.bucket, "key": key,
                   "endpoint": self.client.meta.endpoint_url})

    def _head(self, key: str) -> dict[str, Any] | None:
        import botocore.exceptions

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _already_there(self, item: TransferItem, key: str, known: str | None,
                       state: dict[str, Any], progress: Subscriber) -> str | None:
        """The checksum (``FORM:HEX``) when the object is complete with the right size and
        checksum."""
        head = self._head(key)
        if head is None or head.get("ContentLength") != item.size:
            return None
        remote = _remote_checksum(head)
        completed = _completed(state.get("completed"))
        if known is not None:
            if remote == known:
                progress.on_queued(item, item.size, item.size)
                return known
            if completed == known and remote is None:  # crashed before the checksum copy
                self._store_checksum(key, known, item)
                progress.on_queued(item, item.size, item.size)
                return known
            return None
        if completed and remote in (completed, None):
            if remote is None:
                self._store_checksum(key, completed, item)
            progress.on_queued(item, item.size, item.size)
            return str(completed)
        if remote and item.path is not None:  # hash locally (reading only) and compare
            if checksums.matches(item.path, remote):
                progress.on_queued(item, item.size, item.size)
                return remote
        return None

    def _put_small(self, item: TransferItem, key: str, known: str | None, form: str,
                   progress: Subscriber) -> tuple[str, int]:
        """Below one part: one PutObject, the checksum (``form``) computed before sending
        and compared with ``known`` (the recorded one, if any)."""
        if item.stream is not None:
            data = item.stream.read(item.size)
        else:
            assert item.path is not None
            with open(item.path, "rb") as fh:
                data = fh.read(item.size)
        if len(data) != item.size:
            raise TransferError(f"{item.label}: short read ({len(data)} of {item.size} bytes)")
        running = checksums.new(form)
        running.update(data)
        digest = running.hexdigest()
        if known is not None and digest != known:
            raise _changed(item, known)
        progress.on_queued(item, item.size, 0)
        _Limiter(self.options.max_bandwidth).take(len(data))
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                               ContentType="application/octet-stream",
                               Metadata=_metadata(digest))
        progress.on_progress(item, len(data))
        return digest, len(data)

    def _open_read(self, item: TransferItem) -> BinaryIO:
        if item.stream is not None:
            return item.stream
        assert item.path is not None
        return open(item.path, "rb")  # noqa: SIM115 - closed by the caller's with/GC

    def _stored_parts(self, key: str, upload_id: str) -> dict[int, tuple[int, str]] | None:
        """Parts the server holds for ``upload_id``; None when the upload is gone."""
        import botocore.exceptions

        parts: dict[int, tuple[int, str]] = {}
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=key, UploadId=upload_id)
            for page in pages:
                for p in page.get("Parts", []):
                    parts[int(p["PartNumber"])] = (int(p["Size"]), str(p["ETag"]))
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                return None
            raise
        return parts

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception:  # already gone or not ours: nothing to clean up
            pass

    def _multipart(self, item: TransferItem, key: str, known: str | None, form: str,
                   state: dict[str, Any], same_content: bool, fingerprint: dict[str, Any],
                   journal: Journal, progress: Subscriber) -> tuple[str, int, bool, bool]:
        """Send what the server lacks, hashing in ``form``; (checksum ``FORM:HEX``, bytes
        sent, resumed, metadata set)."""
        stored: dict[int, tuple[int, str]] = {}
        upload_id = state.get("upload_id")
        part_size = int(state.get("part_size") or 0)
        if upload_id and (not same_content or state.get("key") != key
                          or state.get("bucket") != self.bucket):
            self._abort(str(state.get("key") or key), upload_id)  # the file changed: start over
            upload_id = None
        if upload_id:
            found = self._stored_parts(key, upload_id)
            if found is None:
                upload_id = None
            else:
                stored = found
        resumed = bool(upload_id)
        if not upload_id:
            part_size = part_size_for(item.size, self.options.part_size)
            extra: dict[str, Any] = {"ContentType": "application/octet-stream"}
            if known:
                extra["Metadata"] = _metadata(known)
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, **extra)["UploadId"]
            state = {"bucket": self.bucket, "key": key, "upload_id": upload_id,
                     "part_size": part_size, "fingerprint": fingerprint,
                     "metadata_at_create": bool(known)}
            journal.update(KIND_UPLOAD, item.item, s3=state)
            stored = {}
        has_meta = bool(state.get("metadata_at_create"))
        if not has_meta:
            known = None  # no checksum on this upload: hash everything, copy at the end
        digest, sent, etags = self._send_parts(item, key, upload_id, part_size, stored,
                                               hash_stored=known is None or item.stream is not None,
                                               form=form, progress=progress)
        if known is not None and digest is not None and digest != known:
            self._abort(key, upload_id)
            journal.update(KIND_UPLOAD, item.item, s3={**state, "upload_id": None})
            raise _changed(item, known)
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]})
        return digest or str(known), sent, resumed, has_meta

    def _send_parts(self, item: TransferItem, key: str, upload_id: str, part_size: int,
                    stored: dict[int, tuple[int, str]], hash_stored: bool, form: str,
                    progress: Subscriber) -> tuple[str | None, int, dict[int, str]]:
        """Read the image once, in order: hash it (``form``), send the parts the server
        lacks; (``FORM:HEX`` or None when the parts held were not hashed, bytes sent,
        ETags)."""
        o = self.options
        count = max(1, -(-item.size // part_size))
        lengths = {n: min(part_size, item.size - (n - 1) * part_size) for n in range(1, count + 1)}
        have = {n for n, (size, _) in stored.items() if n in lengths and size == lengths[n]}
        etags = {n: stored[n][1] for n in have}
        in_flight = max(1, min(o.workers, o.memory_budget // part_size))
        slots = threading.BoundedSemaphore(in_flight)
        lock = threading.Lock()
        sent = [0]
        failure: list[BaseException] = []
        digest = checksums.new(form)
        hashing = hash_stored or not have
        limiter = _Limiter(o.max_bandwidth)
        progress.on_queued(item, item.size, sum(lengths[n] for n in have))

        def send(n: int, data: bytes) -> None:
            try:
                etag = self._upload_part(key, upload_id, n, data)
                with lock:
                    etags[n] = etag
                    sent[0] += len(data)
                progress.on_progress(item, len(data))
            except BaseException as exc:
                failure.append(exc)
            finally:
                slots.release()

        pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="s3-part")
        futures: list[Future[None]] = []
        fh = self._open_read(item)
        try:
            for n in range(1, count + 1):
                if failure:
                    break
                length = lengths[n]
                if n in have:
                    if hashing:
                        data = _read_exact(fh, length, item)
                        digest.update(data)
                        del data
                    else:
                        fh.seek(length, os.SEEK_CUR)
                    continue
                slots.acquire()
                if failure:
                    slots.release()
                    break
                data = _read_exact(fh, length, item)
                if hashing:
                    digest.update(data)
                limiter.take(length)
                futures.append(pool.submit(send, n, data))
                del data
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            if item.stream is None:
                fh.close()
        pool.shutdown(wait=True)
        if failure:
            raise failure[0]
        missing = [n for n in lengths if n not in etags]
        if missing:  # pragma: no cover - every part either stored or sent above
            raise TransferError(f"{item.label}: parts {missing[:5]} were not sent")
        return (digest.hexdigest() if hashing else None), sent[0], etags

    def _upload_part(self, key: str, upload_id: str, n: int, data: bytes) -> str:
        """One part, retried beyond botocore's own retries (a restarting server)."""
        import botocore.exceptions

        delay = 2.0
        for attempt in range(4):
            try:
                resp = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                               PartNumber=n, Body=data)
                return str(resp["ETag"])
            except (botocore.exceptions.EndpointConnectionError,
                    botocore.exceptions.ConnectionClosedError,
                    botocore.exceptions.ReadTimeoutError) as exc:
                if attempt == 3:
                    raise exc
            except botocore.exceptions.ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                if status < 500 or attempt == 3:
                    raise
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _store_checksum(self, key: str, digest: str, item: TransferItem) -> None:
        """Write the checksum metadata (``digest``: ``FORM:HEX``) with a server-side copy in
        place (no bytes resent)."""
        from boto3.s3.transfer import TransferConfig

        self.client.copy(
            {"Bucket": self.bucket, "Key": key}, self.bucket, key,
            ExtraArgs={"Metadata": _metadata(digest), "MetadataDirective": "REPLACE",
                       "ContentType": "application/octet-stream"},
            Config=TransferConfig(multipart_threshold=SINGLE_COPY_LIMIT,
                                  multipart_chunksize=max(self.options.part_size, 64 * MiB)))

    def _verify(self, item: TransferItem, key: str, digest: str) -> None:
        head = self._head(key)
        if head is None:
            raise TransferError(f"{item.label}: s3://{self.bucket}/{key} is missing after upload")
        size = head.get("ContentLength")
        remote = _remote_checksum(head)
        if size != item.size or remote != digest:
            raise TransferError(
                f"{item.label}: s3://{self.bucket}/{key} holds {size} bytes with checksum "
                f"{remote}, expected {item.size} bytes with checksum {digest}")


def _changed(item: TransferItem, known: str) -> TransferError:
    return TransferError(f"{item.label}: content read does not match its recorded checksum "
                         f"{checksums.short(known)}: the image changed since it was converted")


def _read_exact(fh: BinaryIO, length: int, item: TransferItem) -> bytes:
    data = fh.read(length)
    if len(data) != length:
        raise TransferError(f"{item.label}: the image ended early (it changed while reading?)")
    return data
