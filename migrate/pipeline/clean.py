"""``vmmove clean``: remove what staging left behind for VMs that are done.

Staging leaves a converted image per disk in the plan's work folder and, with an S3
transfer, an object per disk in the bucket: as large as the VMs' data, and useless once the
VM runs in KubeVirt (``cut over``).  This removes them, and only them:

* only the image and the object the journal records for a disk (convert ``output``,
  upload ``key``), never a path found by looking around;
* an image only inside the plan's work folder, a regular file (not a link), and never a
  path any VM of the inventory reads as a source disk: sources are never touched;
* by default only VMs whose phase is ``cut over`` (:mod:`migrate.views.status`); ``force``
  cleans the other VMs too (their staged copies are gone: staging them again converts
  and uploads anew, which the convert and upload steps do by themselves);
* each removal is journalled (kind ``clean``, item ``<vm key>/<disk>``) with what was
  removed and how many bytes, so the record survives the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.plan import Plan, PlannedVM
from migrate.core.journal import DONE, Journal
from migrate.core.workdir import disk_item
from migrate.core.records import KIND_CLEAN, KIND_CONVERT, KIND_UPLOAD

REMOVED = "removed"
GONE = "already gone"
KEPT = "kept"
FAILED = "failed"
WOULD = "would remove"  # a dry run: what a real run would remove


@dataclass
class Removal:
    """One thing cleaned (or kept, with why): an image file or an S3 object."""

    vm: str
    disk: str
    what: str  # image | s3
    where: str  # path, or s3://bucket/key
    bytes: int | None
    result: str  # REMOVED | GONE | KEPT | FAILED | WOULD (dry run)
    why: str = ""

    def to_data(self) -> dict[str, Any]:
        return {"vm": self.vm, "disk": self.disk, "what": self.what, "where": self.where,
                "bytes": self.bytes, "result": self.result, "why": self.why or None}


def _data_disks(p: PlannedVM) -> list[Any]:
    return [d for d in p.vm.disks if d.device in ("disk", "lun")]


#: The phase (``vmmove status``) of a VM that is cut over.
CUT_OVER = "cut over"


def chosen_vms(plan: Plan, wave: int | None, force: bool,
               phases: dict[str, str]) -> tuple[list[PlannedVM], list[str]]:
    """The VMs to clean and, for the others, why not (not cut over, without ``force``);
    ``phases``: each VM's phase by key, as :func:`migrate.views.status.plan_status` says."""
    vms = plan.vms if wave is None else plan.wave(wave, include_skipped=True)
    chosen, passed = [], []
    for p in vms:
        if force or phases.get(p.key) == CUT_OVER:
            chosen.append(p)
        else:
            passed.append(f"{p.vm.name}: {phases.get(p.key, 'scanned')}, not cut over "
                          "(--force cleans it anyway)")
    return chosen, passed


def _source_paths(plan: Plan) -> set[str]:
    """Every source disk path of the inventory, resolved: never to be removed."""
    paths = set()
    for vm in plan.inventory.vms:
        for d in vm.disks:
            if d.path:
                paths.add(os.path.realpath(d.path))
    return paths


def _remove_image(plan: Plan, step: Any, sources: set[str],
                  dry_run: bool = False) -> tuple[str, int | None, str]:
    """Remove a convert step's output when it is safe (``dry_run``: only say it would);
    (result, bytes, why)."""
    output = step.output if step is not None and step.status == DONE else None
    if not output:
        return GONE, None, "nothing converted"
    path = Path(output)
    workdir = os.path.realpath(plan.workdir)
    real = os.path.realpath(path)
    if os.path.commonpath([workdir, real]) != workdir:
        return KEPT, None, f"outside the work folder {plan.workdir}"
    if real in sources:
        return KEPT, None, "a source disk of the inventory"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return GONE, None, ""
    if not path.is_file() or path.is_symlink():
        return KEPT, None, "not a regular file"
    if dry_run:
        return WOULD, st.st_blocks * 512, ""
    path.unlink()
    return REMOVED, st.st_blocks * 512, ""


def _remove_object(s3: Any, bucket: str, key: str,
                   dry_run: bool = False) -> tuple[str, int | None, str]:
    """Delete one S3 object (HEAD first, for its size and whether it is there; ``dry_run``:
    only the HEAD)."""
    import botocore.exceptions

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return GONE, None, ""
        return FAILED, None, f"{code}: {exc.response.get('Error', {}).get('Message', exc)}"
    if dry_run:
        return WOULD, int(head.get("ContentLength") or 0), ""
    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except botocore.exceptions.BotoCoreError as exc:  # network
        return FAILED, None, str(exc)
    except botocore.exceptions.ClientError as exc:
        return FAILED, None, str(exc.response.get("Error", {}).get("Message", exc))
    return REMOVED, int(head.get("ContentLength") or 0), ""


def clean(plan: Plan, vms: list[PlannedVM], images: bool, s3: Any | None,
          bucket: str | None, dry_run: bool = False) -> list[Removal]:
    """Remove the images (``images``) and the S3 objects (``s3``: a boto3 client, with
    ``bucket`` the plan's, used when a record names none) of ``vms``' disks; journalled.
    ``dry_run``: remove and journal nothing, each removal's result :data:`WOULD`."""
    sources = _source_paths(plan)
    removals: list[Removal] = []
    with Journal(plan.journal_path) as journal:
        for p in vms:
            for d in _data_disks(p):
                item = disk_item(p.vm, d)
                done: dict[str, Any] = {}
                if images:
                    step = journal.get(KIND_CONVERT, item)
                    where = str(step.output) if step is not None and \
                        step.output else "-"
                    result, size, why = _remove_image(plan, step, sources, dry_run)
                    removals.append(Removal(p.vm.name, d.target, "image", where, size,
                                            result, why))
                    if result == REMOVED:
                        done.update(image=where, image_bytes=size)
                if s3 is not None:
                    up = journal.get(KIND_UPLOAD, item)
                    key = up.key if up is not None and up.status == DONE and \
                        up.backend == "s3" else None
                    if not key:
                        removals.append(Removal(p.vm.name, d.target, "s3", "-", None, GONE,
                                                "nothing uploaded to S3"))
                    else:
                        b = up.bucket or bucket
                        result, size, why = _remove_object(s3, b, key, dry_run)
                        removals.append(Removal(p.vm.name, d.target, "s3", f"s3://{b}/{key}",
                                                size, result, why))
                        if result == REMOVED:
                            done.update(s3=f"s3://{b}/{key}", s3_bytes=size)
                if done:
                    before = journal.get(KIND_CLEAN, item)
                    history = before.removed if before else []
                    journal.start(KIND_CLEAN, item, vm=p.vm.name, disk=d.target,
                                  removed=history + [done])
                    journal.done(KIND_CLEAN, item, bytes=sum(
                        int(v or 0) for k, v in done.items() if k.endswith("_bytes")))
            removals += _clean_warm(plan, p, journal, dry_run)
    return removals


def _clean_warm(plan: Plan, p: PlannedVM, journal: Journal,
                dry_run: bool = False) -> list[Removal]:
    """A warm VM: what vmmove left on its host (this plan's ``vmmove-`` checkpoints and
    bitmaps, the scratch folder) and its block hashes in the work folder; never the
    domain's own checkpoints (:meth:`migrate.pipeline.warm.Warm.cleanup`)."""
    from migrate.core.errors import VmmoveError
    from migrate.core.records import KIND_WARM
    from migrate.pipeline.warm import Warm, data_disks

    if journal.get(KIND_WARM, p.key) is None:
        return []
    warm = Warm(plan, journal)
    out: list[Removal] = []
    if dry_run:  # the host is not contacted: what it holds is listed by the real run
        out.append(Removal(p.vm.name, "-", "host", "this plan's vmmove- checkpoints, bitmaps "
                           "and scratch folder", None, WOULD, "not listed in a dry run"))
        for d in data_disks(p.vm):
            path = warm.hashes(p, d).path
            if path.exists():
                out.append(Removal(p.vm.name, d.target, "hashes", str(path),
                                   path.stat().st_size, WOULD, ""))
        return out
    try:
        removed = warm.cleanup(p)
    except VmmoveError as exc:
        return [Removal(p.vm.name, "-", "host", p.vm.source.location, None, FAILED, str(exc))]
    for what in removed or ["nothing left"]:
        out.append(Removal(p.vm.name, "-", "host", what, None,
                           REMOVED if removed else GONE, ""))
    for d in data_disks(p.vm):
        store = warm.hashes(p, d)
        if store.path.exists():
            size = store.path.stat().st_size
            store.remove()
            out.append(Removal(p.vm.name, d.target, "hashes", str(store.path), size,
                               REMOVED, ""))
    journal.update(KIND_WARM, p.key, cleaned=removed)
    return out


def clean_plan(plan: Plan, wave: int | None, images: bool, s3: bool, force: bool,
               phases: dict[str, str], dry_run: bool = False) -> tuple[list[Removal], list[str]]:
    """``vmmove clean``: the removals made for the chosen VMs (:func:`chosen_vms`), and
    why the others were kept; the S3 client is the plan's transfer backend's."""
    vms, passed = chosen_vms(plan, wave, force, phases)
    client, bucket = None, None
    if s3 and vms:
        from migrate.pipeline.stages import backend_for

        backend = backend_for(plan)
        client, bucket = backend.client, backend.bucket  # type: ignore[attr-defined]
    removals = clean(plan, vms, images, client, bucket, dry_run) if vms else []
    return removals, passed
