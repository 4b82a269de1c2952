"""Typed journal records: one class per journal kind, with :class:`Kind` and :class:`Status`.

The journal (:mod:`migrate.core.journal`) stores each unit of work as one row keyed by
``(kind, item)`` with a JSON ``data`` column; this module is the only place that reads
that column.  :meth:`Journal.get <migrate.core.journal.Journal.get>` and
:meth:`~migrate.core.journal.Journal.steps` return the record class of the row's kind
(:func:`record_class`), whose properties name the fields each step writes:

========== ======================== =======================================================
kind       item                     record
========== ======================== =======================================================
convert    ``<vm key>/<disk>``      :class:`ConvertRecord` (one converted disk image)
upload     ``<vm key>/<disk>``      :class:`TransferRecord` (one image sent to S3/the proxy)
manifests  ``<vm key>``             :class:`ManifestsRecord` (the VM's manifests written)
apply      ``<vm key>``             :class:`ApplyRecord` (the VM's objects applied)
import     ``<vm key>/<disk>``      :class:`ImportRecord` (a DataVolume's CDI import)
stage      ``wave-<N>/<stage>``     :class:`StageRecord` (a wave's stage, vmmove migrate)
cutover    ``<vm key>[/<step>]``    :class:`CutoverRecord` (the VM, or one cutover step)
cutover-   as cutover               :class:`CutoverRecord` (the steps of a cutover that was
past                                rolled back, kept with their times)
rollback   ``<vm key>``             :class:`RollbackRecord`
clean      ``<vm key>/<disk>``      :class:`CleanRecord` (what vmmove clean removed)
warm       ``<vm key>[/round/<N>]`` :class:`WarmRecord` (checkpoint chain, precopy rounds)
inspect    ``<vm key>``             :class:`InspectRecord` (the guest read by libguestfs)
guest      ``<vm key>/<disk>``      :class:`GuestRecord` (virt-v2v's guest conversion)
boot-test  ``<vm key>``             :class:`BootTestRecord` (the staged image booted)
========== ======================== =======================================================

The on-disk format is unchanged: a record's fields are the keys of its ``data`` column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """The journal kinds (the ``kind`` column)."""

    CONVERT = "convert"
    UPLOAD = "upload"
    MANIFESTS = "manifests"
    APPLY = "apply"
    IMPORT = "import"
    STAGE = "stage"
    CUTOVER = "cutover"
    CUTOVER_PAST = "cutover-past"
    ROLLBACK = "rollback"
    CLEAN = "clean"
    WARM = "warm"
    INSPECT = "inspect"
    GUEST = "guest"
    BOOT_TEST = "boot-test"


class Status(StrEnum):
    """A step's status (the ``status`` column); equal to its plain string."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


KIND_CONVERT = Kind.CONVERT
KIND_UPLOAD = Kind.UPLOAD
KIND_MANIFESTS = Kind.MANIFESTS
KIND_APPLY = Kind.APPLY
KIND_IMPORT = Kind.IMPORT
KIND_STAGE = Kind.STAGE
KIND_CUTOVER = Kind.CUTOVER
KIND_CUTOVER_PAST = Kind.CUTOVER_PAST
KIND_ROLLBACK = Kind.ROLLBACK
KIND_CLEAN = Kind.CLEAN
KIND_WARM = Kind.WARM
KIND_INSPECT = Kind.INSPECT
KIND_GUEST = Kind.GUEST
KIND_BOOT_TEST = Kind.BOOT_TEST


@dataclass
class Step:
    """One journal row: ``kind``/``item`` and the common columns; ``data`` is the raw
    payload, read through the typed properties of the kind's subclass."""

    kind: str
    item: str
    status: str
    started: float | None = None
    finished: float | None = None
    bytes: int | None = None
    checksum: str | None = None
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def is_done(self) -> bool:
        return self.status == Status.DONE

    @property
    def seconds(self) -> float | None:
        """Seconds the step recorded itself (``seconds``), if any, as recorded."""
        return self.data.get("seconds")

    @property
    def moved(self) -> int:
        """Bytes the step's image holds: the byte count, else the recorded ``size``."""
        return self.bytes or int(self.data.get("size") or 0)

    def fields(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The recorded fields among ``names`` (absent ones left out), e.g. for ``-o json``."""
        return {k: self.data[k] for k in names if k in self.data}


def _field(name: str, doc: str) -> property:
    return property(lambda self: self.data.get(name), doc=doc)


class ConvertRecord(Step):
    """A converted disk (kind ``convert``); ``checksum`` is ``FORM:HEX`` of the output file
    (:mod:`migrate.core.digest`: ``xxh3-1m:`` since issue 17, ``sha256:`` before)."""

    output = _field("output", "Absolute path of the converted image.")
    format = _field("format", "Output format: qcow2 | raw.")
    source_format = _field("source_format", "Format of the source image.")
    virtual_size = _field("virtual_size", "Guest-visible size, bytes.")
    allocated = _field("allocated", "Bytes the output file allocates.")
    size = _field("size", "Bytes of the output file.")
    verified = _field("verified", "Verification passed (True), failed or skipped (--no-verify).")
    verify = _field("verify", "How it was verified: stream (checksums in the copy stream, "
                              "converters/stream.py); absent when qemu-img compare did it.")
    guest_bytes = _field("guest_bytes", "stream: guest-visible bytes read, = virtual size.")
    source_read = _field("source_read", "stream: bytes vmmove asked of the source.")
    source_read_server = _field("source_read_server", "stream: bytes qemu-nbd read from the "
                                                      "source files (/proc/PID/io).")
    growing = _field("growing", "stream: the file as it is written, for an upload that follows "
                                "it (converters/watermark.py): temp (the temporary file), "
                                "first_data, bound, written (bytes), pid (the converter).")
    identity = _field("identity", "Who the VM is across inventories (workdir.vm_identity).")
    vm = _field("vm", "The VM's name.")
    disk = _field("disk", "The disk's target (vda, sda…).")

    copy = _field("copy", "How a libvirt host's disk was read (migrate/sources/remote_disks.py): "
                          "backup | qemu-nbd | inconsistent; absent for a local file read.")
    guest_checksum = _field("guest_checksum", "FORM:HEX of the guest view as read from the "
                                              "source (xxh3-1m; sha256-1m before issue 17), "
                                              "equal on both ends.")

    @property
    def force_share(self) -> bool:
        """The source was read while running (``qemu-img -U``): not a consistent copy."""
        return bool(self.data.get("force_share"))

    @property
    def read_running(self) -> bool:
        """The staged copy is of a running disk (``-U``, or a backup job's point in time):
        the disk changed after it, so the cutover copies it again in full."""
        return self.force_share or self.copy in ("backup", "inconsistent")


class TransferRecord(Step):
    """An image sent to its transfer target (kind ``upload``)."""

    backend = _field("backend", "s3 | upload | http | direct (in-cluster worker Job).")
    url = _field("url", "Path-style URL CDI imports from (s3/http).")
    key = _field("key", "S3 object key.")
    bucket = _field("bucket", "S3 bucket.")
    secret = _field("secret", "Name of the S3 credentials Secret manifest.")
    secret_file = _field("secret_file", "Where that Secret manifest was written.")
    dv = _field("dv", "The DataVolume the upload proxy (or a direct worker) filled.")
    namespace = _field("namespace", "That DataVolume's namespace.")
    size = _field("size", "Bytes of the image.")
    name = _field("name", "The image's file name.")

    @property
    def has_target(self) -> bool:
        """The record says which target it is for (runs since targets were recorded)."""
        return "target" in self.data

    def target_or(self, default: Any) -> Any:
        """The target the record is for (backend, bucket/prefix/endpoint or proxy and
        namespace), ``default`` when it does not say."""
        return self.data.get("target", default)

    @property
    def target(self) -> Any:
        return self.data.get("target")

    @property
    def sent(self) -> int:
        """Bytes sent by the run that recorded it (0 when nothing was sent)."""
        return int(self.data.get("sent") or 0)

    @property
    def answered(self) -> bool:
        """The upload proxy answered the last request of this upload (default True)."""
        return self.data.get("answered", True) is True

    @property
    def s3_state(self) -> dict[str, Any]:
        """A multipart upload's resumable state (upload id, parts)."""
        return dict(self.data.get("s3") or {})


class ManifestsRecord(Step):
    """A VM's manifests written (kind ``manifests``)."""

    name = _field("name", "Target VirtualMachine name.")
    namespace = _field("namespace", "Target namespace.")
    file = _field("file", "The VirtualMachine manifest file.")


class ApplyRecord(Step):
    """A VM's objects applied (kind ``apply``)."""

    result = _field("result", "applied | unchanged | dry-run | …")
    resource_version = _field("resourceVersion", "The VirtualMachine's resourceVersion.")
    uid = _field("uid", "The VirtualMachine's uid.")

    @property
    def dry_run(self) -> bool:
        return self.data.get("result") == "dry-run"


class ImportRecord(Step):
    """A DataVolume import watched to its end (kind ``import``)."""

    dv = _field("dv", "DataVolume name.")
    namespace = _field("namespace", "DataVolume namespace.")
    phase = _field("phase", "Last CDI phase seen.")


class StageRecord(Step):
    """One stage of a wave (kind ``stage``, item ``wave-<N>/<stage>``)."""

    summary = _field("summary", "The stage's one-line summary.")


class CutoverRecord(Step):
    """A VM's cutover (item ``<vm key>``) or one of its steps (``<vm key>/<step>``)."""

    step = _field("step", "The step the VM is at (VM item).")
    next = _field("next", "What the operator does next, in words (VM item).")
    how = _field("how", "stop step: shutdown | already off | destroyed after timeout.")
    before = _field("before", "stop step: the source's state before the stop.")
    mode = _field("mode", "sync step: full | verify.")
    sync_mode = _field("sync_mode", "VM item: the final sync's mode.")
    full_copy_seconds = _field("full_copy_seconds", "sync step and VM item of a warm VM: "
                               "what its last full precopy round took (docs/warm-migration.md).")

    @property
    def downtime(self) -> float | None:
        value = self.data.get("downtime")
        return float(value) if value is not None else None

    @property
    def disks(self) -> dict[str, dict[str, Any]]:
        """sync step: per disk target, what the final sync found and did."""
        return dict(self.data.get("disks") or {})


class RollbackRecord(Step):
    """A VM's rollback (kind ``rollback``)."""

    target = _field("target", "What was done to the target.")
    source = _field("source", "What was done to the source.")


class CleanRecord(Step):
    """What ``vmmove clean`` removed for a disk (kind ``clean``)."""

    @property
    def removed(self) -> list[Any]:
        return list(self.data.get("removed", []))


class WarmRecord(Step):
    """Warm migration (kind ``warm``): item ``<vm key>`` is the VM's checkpoint chain and
    round state, ``<vm key>/round/<N>`` one precopy round or the final delta
    (:mod:`migrate.pipeline.warm`, docs/warm-migration.md)."""

    @property
    def state(self) -> dict[str, Any]:
        """The whole payload (a copy): the chain's checkpoints, disks, history, errors."""
        return dict(self.data)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The rounds recorded on the VM's item, oldest first."""
        return list(self.data.get("history") or [])
class InspectRecord(Step):
    """A VM's guest inspection (kind ``inspect``, docs/guest-readiness.md)."""

    inspection = _field("inspection", "The Inspection as data (migrate.core.model).")
    after = _field("after", "Set when the inspection was made again after a guest conversion.")

    @property
    def has_inspection(self) -> bool:
        return "inspection" in self.data


class GuestRecord(Step):
    """A guest conversion by virt-v2v (kind ``guest``; fields of
    :class:`migrate.guest.v2v.GuestConversion`); ``checksum`` is the converted image's."""

    result = _field("status", "converted | skipped | failed.")
    reason = _field("reason", "Why the guest was (not) converted.")
    output = _field("output", "The converted image.")
    source = _field("source", "The staged image it was made from (left as it was).")
    source_checksum = _field("source_checksum", "That image's checksum.")
    format = _field("format", "The converted image's format.")
    reinspect_error = _field("reinspect_error", "Why the converted guest could not be read.")

    def fields(self, names: tuple[str, ...]) -> dict[str, Any]:  # every name, None if absent
        return {k: self.data.get(k) for k in names}


class BootTestRecord(Step):
    """A VM's boot test (kind ``boot-test``, :class:`migrate.guest.boottest.BootResult`)."""

    verdict = _field("verdict", "booted | failed | timeout | error.")
    reason = _field("reason", "What showed the verdict (agent, login prompt, panic…).")
    console = _field("console", "The serial console log kept as evidence.")
    screenshot = _field("screenshot", "A screenshot of the display, when taken.")

    def summary(self) -> dict[str, Any]:
        """status, error and every recorded field (``vmmove boot-test -o json``)."""
        return {"status": self.status, "error": self.error, **self.data}


_CLASSES: dict[str, type[Step]] = {
    Kind.CONVERT: ConvertRecord, Kind.UPLOAD: TransferRecord,
    Kind.MANIFESTS: ManifestsRecord, Kind.APPLY: ApplyRecord, Kind.IMPORT: ImportRecord,
    Kind.STAGE: StageRecord, Kind.CUTOVER: CutoverRecord, Kind.CUTOVER_PAST: CutoverRecord,
    Kind.ROLLBACK: RollbackRecord,
    Kind.CLEAN: CleanRecord, Kind.WARM: WarmRecord,
    Kind.INSPECT: InspectRecord, Kind.GUEST: GuestRecord, Kind.BOOT_TEST: BootTestRecord,
}


def record_class(kind: str) -> type[Step]:
    """The record class of a kind (:class:`Step` for a kind this version does not know)."""
    return _CLASSES.get(kind, Step)


def from_row(row: dict[str, Any]) -> Step:
    """A journal row (``data`` already decoded) as the record of its kind."""
    return record_class(row["kind"])(**row)
