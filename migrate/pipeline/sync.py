"""The cutover's final sync: make the target's disks equal the stopped source's disks.

A stage of the cutover itinerary (:data:`migrate.pipeline.itinerary.CUTOVER`, ``sync``).
It takes the stop step's explicit fact that the source is stopped
(:class:`~migrate.pipeline.cutover.SourceStopped`) and tells the converter so
(``ConvertOptions.source_stopped``), rather than forging an inventory in which the VM is
shut off.  It composes the converter, the transfer stage and the import watch, which is
why it lives in the pipeline.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from migrate.core.errors import VmmoveError
from migrate.core.progress import SILENT, Reporters

if TYPE_CHECKING:
    from migrate.clients.cluster import Kube
    from migrate.core.journal import Journal
    from migrate.pipeline.cutover import SourceStopped
    from migrate.pipeline.stages import KubeArgs
    from migrate.plan import Plan, PlannedVM

#: The part of a final sync that sends disks again (convert, upload) runs for one VM at a
#: time: the converter takes the work folder's journal lock for its run and removes partial
#: outputs it finds there (another VM's, mid-write), and the upload sends the whole wave's
#: converted images, so it must not run while another VM's disk is being converted.
#: The comparison of unchanged disks and the re-import watch run in parallel.
SEND_LOCK = threading.Lock()


def final_sync(plan: Plan, kube: Kube, kube_args: KubeArgs, import_timeout: float,
               p: PlannedVM, journal: Journal, stopped: SourceStopped, *,
               reporters: Reporters = SILENT) -> dict[str, Any]:
    """Make the target's disks equal the stopped source's disks; what to journal.

    ``full``: staging read a running disk (``qemu-img -U``), so every disk is converted
    again now that the source is stopped, uploaded again and re-imported (the DataVolume
    is deleted; KubeVirt recreates it from the VM's ``dataVolumeTemplates`` and CDI
    imports the new image).  ``verify``: staging read a shut-off disk; the stopped source
    is compared with the staged image (``qemu-img compare``) and the staged image's checksum
    with the journal's; only a disk that differs is converted and sent again.

    ``stopped``: the stop step's fact that the source is off (the scanned power state is
    stale by now).  Returns what the sync step journals: ``mode``, per-disk ``disks``,
    ``bytes`` sent, ``converted``, ``reimported``, ``lock_wait_seconds``, ``seconds``.
    Raises :class:`~migrate.pipeline.cutover.CutoverError` naming the VM and disk.
    """
    from converters import qemuimg
    from converters.convert import source_chain
    from migrate.apply import watch_imports
    from migrate.core import digest
    from migrate.core.records import KIND_IMPORT
    from migrate.pipeline.cutover import CutoverError
    from migrate.pipeline.stages import build_manifests, data_disks, vm_objects
    from migrate.clients.cluster import delete_datavolume
    from migrate.core.progress import log
    from migrate.core.journal import DONE
    from migrate.core.workdir import disk_item
    from migrate.core.records import KIND_CONVERT
    from migrate.sources.remote_disks import is_remote
    from migrate.pipeline.warm import Warm, WarmError, is_warm

    if is_warm(plan, p):  # the final delta since the last precopy round, checked
        try:
            data = Warm(plan, journal, log, kube).final(p)
        except WarmError as exc:
            raise CutoverError(str(exc)) from None
        data["full_copy_seconds"] = _full_copy_seconds(journal, p)
        return data
    started = time.monotonic()
    disks = data_disks(p)
    staged = {d.target: journal.get(KIND_CONVERT, disk_item(p.vm, d)) for d in disks}
    missing = [t for t, s in staged.items() if s is None or s.status != DONE]
    if missing:
        raise CutoverError(f"{p.vm.name}: disk(s) {', '.join(missing)} were never staged "
                           "(vmmove migrate --stage first)")
    # Copied again in full: a staged copy read while the VM ran (-U, or a backup job's
    # point in time), and any disk of a remote host (its source is not a local file to
    # compare with; migrate/sources/remote_disks.py reads it again, shut off).
    full = is_remote(p.vm) or any(s.read_running for s in staged.values() if s is not None)
    mode = "full" if full else "verify"
    report: dict[str, dict[str, Any]] = {}
    redo: list[str] = []
    if not full:
        for d in disks:
            step = staged[d.target]
            assert step is not None
            output = step.output or ""
            entry: dict[str, Any] = {"staged_checksum": step.checksum}
            same_file = bool(output) and _exists(output) and digest.matches(output, step.checksum)
            compared = None
            if same_file:
                try:  # the source as convert reads it: the checked chain, never the headers
                    chain = source_chain(p.vm, d)
                except VmmoveError as exc:
                    raise CutoverError(f"{p.vm.name}/{d.target}: {exc}") from None
                compared = qemuimg.compare(chain.qemu_name(), chain.format, output,
                                           str(step.format), label=d.path)
            if same_file and compared is not None and compared.identical:
                entry.update(status="unchanged", compare="identical", checksum=step.checksum)
            else:
                entry.update(status="changed", compare=compared.message if compared else
                             "staged image missing or altered")
                redo.append(d.target)
            report[d.target] = entry
        log(f"{p.vm.name}: final sync (verify): "
            + ", ".join(f"{t} {e['status']}" for t, e in report.items()))
    else:
        redo = [d.target for d in disks]
    converted: list[str] = []
    sent, upload_seconds, lock_wait = 0, 0.0, 0.0
    if redo:
        t_lock = time.monotonic()
        with SEND_LOCK:
            lock_wait = time.monotonic() - t_lock
            if lock_wait >= 1:
                log(f"{p.vm.name}: final sync: waited {lock_wait:.0f}s for another VM's "
                    "sync to send its disks")
            converted, sent, upload_seconds = _send_again(plan, kube_args, p, journal, redo,
                                                          report, stopped, reporters)
    reimported: list[str] = []
    if converted:
        objects = vm_objects(plan, build_manifests(plan, [p]))
        items = [i for o in objects for i in o.imports
                 if i.item.rsplit("/", 1)[-1] in converted]
        for i in items:
            delete_datavolume(kube, i.namespace, i.dv)
            journal.reset(KIND_IMPORT, i.item)
        states = watch_imports(kube, items, journal, timeout=import_timeout,
                               progress=reporters.imports())
        bad = [s for s in states if s.outcome != "imported"]
        if bad:
            raise CutoverError(f"{p.vm.name}: final sync: re-import failed: " + " | ".join(
                f"{s.item.dv}: {s.outcome} {s.reason or ''}".strip() for s in bad))
        reimported = [s.item.dv for s in states]
        for target in converted:
            report[target]["upload_seconds"] = round(upload_seconds, 3)
    return {"mode": mode, "disks": report, "bytes": sent,
            "converted": converted, "reimported": reimported,
            "lock_wait_seconds": round(lock_wait, 3),
            "seconds": round(time.monotonic() - started, 3)}


def _send_again(plan: Plan, kube_args: KubeArgs, p: PlannedVM, journal: Journal,
                redo: list[str], report: dict[str, dict[str, Any]], stopped: SourceStopped,
                reporters: Reporters) -> tuple[list[str], int, float]:
    """Convert the disks ``redo`` from the stopped source and upload them (the caller holds
    :data:`SEND_LOCK`); the disks converted, bytes sent, upload seconds."""
    from converters.convert import CONVERTED, FAILED, ConvertOptions, convert_disks
    from migrate.pipeline.stages import data_disks, upload_wave
    from migrate.pipeline.cutover import CutoverError
    from migrate.core.progress import log
    from migrate.core.journal import DONE
    from migrate.core.workdir import disk_item
    from migrate.core.records import KIND_UPLOAD

    disks = data_disks(p)
    converted: list[str] = []
    c = plan.convert
    options = ConvertOptions(format=c.format, compress=c.compress, verify=True,
                             force_share=False, redo=True,
                             source_stopped=frozenset({stopped.key}))
    if c.jobs:
        options.jobs = c.jobs
    results = convert_disks(plan.inventory, (), plan.workdir, options,
                            disks=[(p.key, t) for t in redo])
    failed = [r for r in results if r.status == FAILED]
    if failed:
        raise CutoverError(f"{p.vm.name}: final sync: convert failed: "
                           + " | ".join(str(r.error) for r in failed))
    for r in results:
        converted.append(r.disk)
        report.setdefault(r.disk, {}).update(
            status="converted" if r.status == CONVERTED else r.status,
            checksum=r.checksum, bytes=r.allocated, convert_seconds=r.seconds,
            compare="identical" if r.verified else None)
    sent = 0
    upload_seconds = 0.0
    if converted:
        if plan.transfer.backend != "s3":
            raise CutoverError(f"{p.vm.name}: final sync needs the disks sent again, which "
                               "vmmove does through an S3 transfer target only (the plan uses "
                               f"{plan.transfer.backend or 'none'}); stage the VM shut off, "
                               "or use transfer.s3")
        t0 = time.monotonic()
        summary = upload_wave(plan, p.wave, kube_args, reporters=reporters)
        upload_seconds = time.monotonic() - t0
        log(f"{p.vm.name}: final sync: {summary}")
        for target in converted:
            up = journal.get(KIND_UPLOAD, disk_item(p.vm, next(d for d in disks
                                                                if d.target == target)))
            if up is None or up.status != DONE or up.checksum != report[target]["checksum"]:
                raise CutoverError(f"{p.vm.name}/{target}: final sync: the upload does not "
                                   "hold the new image's checksum")
            report[target]["uploaded"] = up.checksum
            report[target]["sent"] = up.sent or up.bytes or 0
            sent += report[target]["sent"]
    return converted, sent, upload_seconds


def _full_copy_seconds(journal: Journal, p: PlannedVM) -> float | None:
    """What the last full precopy round of ``p`` took: the downtime a cold cutover would
    have spent copying."""
    from migrate.core.records import KIND_WARM

    step = journal.get(KIND_WARM, p.key)
    full = [r for r in (step.history if step else [])
            if r.get("kind") == "full"]
    return float(full[-1].get("seconds") or 0) if full else None


def _exists(path: str) -> bool:
    return os.path.isfile(path)
