"""Where each disk's data went, so that its DataVolume imports it from there.

The transfer step (``vmmove upload``) records one journal step per disk, kind ``upload``,
item ``<vm key>/<disk target>`` (see :mod:`migrate.core.workdir`).  This module reads only those
records — never the transfer code — and turns each into a CDI source:

* ``s3``: ``url`` + ``secret`` (the Secret manifest was written to ``secret_file``);
* ``http``: ``url``;
* ``upload``: the DataVolume ``dv`` in ``namespace`` was already filled through the
  upload proxy; the VM references it instead of importing anything;
* ``blank``: only for disks the operator names (``--blank VM/DISK``) or that have no
  source at all on the host: a disk that holds data is never silently made blank.

Disks with no transfer record can be served from a plain web server (``--http-base URL``):
the source is ``URL/<image file name>``, the converted image when ``vmmove convert`` made
one (with its checksum), otherwise the source image file — but only when that file
is a self-contained image CDI can import from one URL (see :func:`unservable`); anything
else needs a convert record and is refused with one line saying why.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from migrate.core.model import MULTI_FILE, RDM_PHYSICAL, RDM_VIRTUAL, VM, VSAN, Disk
from migrate.core.journal import DONE, Journal, Step
from migrate.core.workdir import disk_item, journal_path
from migrate.core.records import KIND_CONVERT, KIND_UPLOAD

S3 = "s3"
HTTP = "http"
UPLOAD = "upload"
BLANK = "blank"
DIRECT = "direct"  # transfer mode direct: a worker Job filled the DataVolume ``dv`` in place


@dataclass(frozen=True)
class DiskSource:
    """A CDI source for one disk, with the facts the manifest needs."""

    kind: str  # s3 | http | upload | blank
    url: str | None = None
    secret: str | None = None  # s3: name of the Secret with accessKeyId/secretKey
    secret_file: str | None = None  # s3: the Secret manifest the upload step wrote
    dv: str | None = None  # upload: the already-filled DataVolume
    namespace: str | None = None  # upload: its namespace
    checksum: str | None = None  # http: FORM:HEX of the served file (migrate.core.digest), when known
    size: int | None = None  # bytes, when the journal knows the image's virtual size
    origin: str = ""  # where this came from, for annotations: journal / http-base / blank


@dataclass(frozen=True)
class MissingSource:
    """Why a disk has no source; the generator lists every one of them in one error."""

    reason: str


def unservable(disk: Disk, vm_name: str = "VM") -> str | None:
    """Why the disk's source file cannot be served as is over ``--http-base``, or None.

    CDI's http source imports exactly the one file at the URL (qcow2, raw, vmdk, vdi,
    vhd(x), optionally gz/xz: CDI doc/supported_operations.md).  So only a single
    self-contained image file qualifies: not a disk the scan could not read, not a member
    inside an OVA, not a compressed or chunked package file, not a VMDK descriptor whose
    data lives in extent files, not an image on a backing chain, and never a raw device map,
    vSAN object or host device.
    """
    convert = "; convert it first (vmmove convert) and pass --workdir"
    if disk.layout in (RDM_PHYSICAL, RDM_VIRTUAL):
        return ("VMware raw device map: the data is on a SAN LUN; copy the LUN (storage team) or "
                f"leave the disk out with --blank {vm_name}/{disk.target}")
    if disk.layout == VSAN:
        return "vSAN object: no local data; export the VM through vCenter (OVF or VDDK)"
    if disk.error:
        return f"the scan could not read it ({disk.error})"
    if disk.packing is not None:
        how = " and ".join(w for w in ((f"{disk.packing.compression}-compressed"
                                        if disk.packing.compression else ""),
                                       "split into chunks" if disk.packing.chunk_size else "") if w)
        return f"{disk.packing.href} is stored {how} in the package{convert}"
    if disk.source_type != "file" or not disk.path:
        return f"a {disk.source_type} disk, not an image file{convert}"
    if disk.path.startswith("json:") or "#" in os.path.basename(disk.path):
        return f"the disk is inside an archive, not a file of its own{convert}"
    if disk.layout == MULTI_FILE:
        return f"{os.path.basename(disk.path)} is a VMDK descriptor whose data is in separate extent files{convert}"
    if disk.backing_chain:
        return (f"{os.path.basename(disk.path)} sits on {len(disk.backing_chain)} backing file(s) "
                f"and CDI imports one file{convert}")
    return None


@dataclass
class SourceResolver:
    """Finds each disk's source: journal first, then ``--http-base``, then ``--blank``."""

    uploads: dict[str, Step] = field(default_factory=dict)
    converts: dict[str, Step] = field(default_factory=dict)
    http_base: str | None = None
    blank: frozenset[str] = frozenset()  # "vm/target" items, by VM name or key
    workdir: str | None = None

    @classmethod
    def from_workdir(
        cls,
        workdir: str | os.PathLike[str] | None,
        http_base: str | None = None,
        blank: frozenset[str] | set[str] = frozenset(),
    ) -> SourceResolver:
        uploads: dict[str, Step] = {}
        converts: dict[str, Step] = {}
        if workdir is not None:
            path = journal_path(workdir)
            if path.is_file():
                with Journal(path) as journal:
                    uploads = {s.item: s for s in journal.steps(KIND_UPLOAD)}
                    converts = {s.item: s for s in journal.steps(KIND_CONVERT)}
        return cls(
            uploads,
            converts,
            http_base.rstrip("/") if http_base else None,
            frozenset(blank),
            str(workdir) if workdir is not None else None,
        )

    def _converted(self, item: str) -> Step | None:
        step = self.converts.get(item)
        return step if step is not None and step.status == DONE else None

    def resolve(self, vm: VM, disk: Disk) -> DiskSource | MissingSource:
        item = disk_item(vm, disk)
        converted = self._converted(item)
        size = converted.virtual_size if converted else None
        step = self.uploads.get(item)
        if step is not None:
            return self._from_upload(step, size)
        if {f"{vm.name}/{disk.target}", f"{vm.key}/{disk.target}"} & self.blank:
            return DiskSource(BLANK, origin="--blank")
        if disk.source_type == "none" and not disk.path and disk.device == "disk":
            return DiskSource(BLANK, origin="no source on the host")
        if self.http_base:
            if converted and converted.output:
                name = Path(str(converted.output)).name
                checksum = converted.checksum
            elif (why := unservable(disk, vm.name)) is None:
                assert disk.path is not None
                name, checksum = Path(disk.path).name, None
            else:
                return MissingSource(
                    f"no transfer record and no image file to serve from --http-base: {why}")
            url = f"{self.http_base}/{urllib.parse.quote(name)}"
            return DiskSource(HTTP, url=url, checksum=checksum, size=size, origin="--http-base")
        where = f" in {self.workdir}" if self.workdir else " (no --workdir given)"
        return MissingSource(
            f"no transfer record{where}: send the disk first (vmmove migrate PLAN --wave N "
            f"--stage, or vmmove upload), or write the manifests with vmmove manifests "
            f"--http-base URL or --blank {vm.name}/{disk.target}")

    def _from_upload(self, step: Step, size: int | None) -> DiskSource | MissingSource:
        if step.status != DONE:
            detail = f": {step.error}" if step.error else ""
            return MissingSource(f"transfer not finished (journal status {step.status}{detail})")
        data = step.data
        backend = data.get("backend")
        size = data.get("size") or size
        if backend == S3:
            if not data.get("url"):
                return MissingSource("s3 transfer record has no url")
            return DiskSource(
                S3,
                url=data["url"],
                secret=data.get("secret"),
                secret_file=data.get("secret_file"),
                size=size,
                origin="journal",
            )
        if backend == HTTP:
            if not data.get("url"):
                return MissingSource("http transfer record has no url")
            return DiskSource(HTTP, url=data["url"], checksum=step.checksum, size=size, origin="journal")
        if backend in (UPLOAD, DIRECT):
            if not data.get("dv"):
                return MissingSource("upload transfer record has no DataVolume name (dv)")
            return DiskSource(
                UPLOAD, dv=data["dv"], namespace=data.get("namespace"), size=size, origin="journal"
            )
        return MissingSource(f"transfer record has unknown backend {backend!r}")
