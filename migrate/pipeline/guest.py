"""Guest readiness as steps of a plan: inspect, convert the guest, boot-test — journalled.

Each function works on a plan's staged images (the convert step's outputs, found through
the journal) and records one typed result per VM in the plan's journal:

* kind ``inspect``, item ``<vm key>``: an :class:`~migrate.core.model.Inspection` (also written
  into the plan's inventory file, so assess, plan and manifests read it);
* kind ``guest``, item ``<vm key>/<boot disk>``: a
  :class:`~migrate.guest.v2v.GuestConversion`; a converted image replaces the staged one
  for upload and the boot test (:func:`staged_image`);
* kind ``boot-test``, item ``<vm key>``: a :class:`~migrate.guest.boottest.BootResult`;
  ``failed`` when the verdict is not ``booted`` — cutover's preflight refuses such a VM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from migrate.core.errors import VmmoveError
from migrate.guest.boottest import BootResult, boot_test
from migrate.guest.fish import GuestfsError
from migrate.guest.inspect import inspect_disks, now_rfc3339
from migrate.guest.v2v import (
    CONVERTED,
    FAILED,
    SKIPPED,
    GuestConversion,
    GuestConvertError,
    available,
    convert_guest,
    needs_conversion,
)
from migrate.core.model import Disk, Inspection
from migrate.plan import Plan, PlannedVM
from migrate.core.serialize import from_data, save_inventory, to_data
from migrate.core.journal import DONE, Journal
from migrate.core.records import KIND_BOOT_TEST, KIND_CONVERT, KIND_GUEST, KIND_INSPECT
from migrate.core.workdir import disk_item

#: signatures that say a disk holds something to inspect: (offset, bytes)
_SIGNATURES = [(510, b"\x55\xaa"), (512, b"EFI PART"), (1080, b"\x53\xef"), (0, b"XFSB"),
               (3, b"NTFS    "), (512, b"LABELONE"), (536, b"LABELONE"), (0x8001, b"CD001")]


class NotStaged(VmmoveError):
    """A VM whose disks are not converted yet."""


def data_disks(p: PlannedVM) -> list[Disk]:
    return [d for d in p.vm.disks if d.device in ("disk", "lun")]


def boot_disk(p: PlannedVM) -> Disk:
    """The disk the VM boots from: the lowest boot order, else the first data disk."""
    disks = data_disks(p)
    if not disks:
        raise NotStaged(f"{p.vm.name}: no disk")
    ordered = [d for d in disks if d.boot_order is not None]
    return min(ordered, key=lambda d: d.boot_order or 0) if ordered else disks[0]


def staged_image(journal: Journal, item: str) -> tuple[Path, str, str | None] | None:
    """(path, format, checksum) of a disk's staged image: the converted guest's image when
    the guest was converted, else the convert step's output; None when not staged."""
    step = journal.get(KIND_CONVERT, item)
    if step is None or step.status != DONE or not step.output:
        return None
    guest = journal.get(KIND_GUEST, item)
    if guest is not None and guest.status == DONE and guest.result == CONVERTED \
            and guest.source_checksum == step.checksum:  # not an older staging's
        return Path(guest.output), str(guest.format), guest.checksum
    return Path(step.output), str(step.format or "qcow2"), step.checksum


def _staged(journal: Journal, p: PlannedVM) -> list[tuple[Disk, Path, str]]:
    out: list[tuple[Disk, Path, str]] = []
    first = boot_disk(p)
    for disk in sorted(data_disks(p), key=lambda d: d is not first):
        found = staged_image(journal, disk_item(p.vm, disk))
        if found is None:
            raise NotStaged(f"{p.vm.name}: disk {disk.target} is not converted yet (run vmmove "
                            "migrate --stage, or vmmove convert)")
        out.append((disk, found[0], found[1]))
    return out


def looks_inspectable(path: Path, fmt: str) -> bool:
    """Whether the image starts with a partition table, an LVM label or a file system."""
    from converters.qemuimg import read_head

    head = read_head(str(path), fmt, 0x8010)
    return any(head[o:o + len(sig)] == sig for o, sig in _SIGNATURES)


# -- inspect -----------------------------------------------------------------------------------


def inspect_vm(plan: Plan, p: PlannedVM, journal: Journal) -> Inspection:
    """Inspect one VM's staged disks (read-only) and journal the result."""
    staged = _staged(journal, p)
    journal.start(KIND_INSPECT, p.key, vm=p.vm.name)
    disk, path, fmt = staged[0]
    try:
        if not looks_inspectable(path, fmt):
            result = Inspection(disk=disk.target, inspected_at=now_rfc3339(), seconds=0.0,
                                error=f"no partition table or file system on {disk.target}: "
                                      "nothing to inspect")
        else:
            result = inspect_disks([(str(s[1]), s[2]) for s in staged], p.vm.name)
            result.disk = disk.target
    except VmmoveError as exc:
        journal.fail(KIND_INSPECT, p.key, str(exc))
        raise
    except BaseException:
        journal.fail(KIND_INSPECT, p.key, "interrupted: rerun to inspect")
        raise
    journal.done(KIND_INSPECT, p.key, inspection=to_data(result))
    p.vm.inspection = result
    return result


def recorded_inspection(journal: Journal, key: str) -> Inspection | None:
    step = journal.get(KIND_INSPECT, key)
    if step is None or step.status != DONE or not step.has_inspection:
        return None
    return from_data(Inspection, step.inspection, f"journal inspect {key}")


def save_inspections(plan: Plan) -> None:
    """Write the VMs' inspections into the plan's inventory file (atomically)."""
    save_inventory(plan.inventory, plan.inventory_path)


def inspect_wave(plan: Plan, vms: list[PlannedVM],
                 redo: bool | set[str] = False) -> list[Inspection]:
    """Inspect ``vms``; those inspected before are skipped unless ``redo`` (True: all; a set
    of VM keys: those)."""
    results: list[Inspection] = []
    with plan.journal() as journal:
        for p in vms:
            again = redo is True or (isinstance(redo, set) and p.key in redo)
            known = None if again else recorded_inspection(journal, p.key)
            if known is not None:
                p.vm.inspection = known
                results.append(known)
                continue
            results.append(inspect_vm(plan, p, journal))
    save_inspections(plan)
    return results


def inspect_summary(results: list[Inspection]) -> str:
    found = [r for r in results if r.os_type]
    return (f"inspect: {len(found)} of {len(results)} guest(s) inspected"
            + (f", {len(results) - len(found)} with nothing to inspect"
               if len(found) < len(results) else ""))


# -- guest conversion --------------------------------------------------------------------------


def convert_vm(plan: Plan, p: PlannedVM, journal: Journal,
               mode: str | None = None) -> GuestConversion:
    """Convert one VM's guest when ``convert.guest`` (or ``mode``) asks; journal it."""
    from migrate.core.mapping import target_disk_bus

    disk = boot_disk(p)
    item = disk_item(p.vm, disk)
    mode = mode or plan.convert.guest
    ins = p.vm.inspection or recorded_inspection(journal, p.key)
    # the bus the hypervisor gives; conversion is what lets the guest keep virtio
    bus = target_disk_bus(disk, ins is not None and ins.os_type == "windows").bus
    wanted, why = needs_conversion(ins, "virtio" if bus in ("virtio", "scsi") else bus, mode)
    done = journal.get(KIND_GUEST, item)
    staged_step = journal.get(KIND_CONVERT, item)
    if done is not None and done.status == DONE and done.result == CONVERTED \
            and staged_step is not None \
            and done.source_checksum == staged_step.checksum \
            and Path(done.output).is_file():
        fields = done.fields(tuple(GuestConversion.__dataclass_fields__))
        return GuestConversion(**{**fields, "checksum": done.checksum})
    if not wanted:
        result = GuestConversion(SKIPPED, why)
        journal.start(KIND_GUEST, item, vm=p.vm.name)
        journal.done(KIND_GUEST, item, **result.to_data())
        return result
    missing = available()
    if missing:
        result = GuestConversion(SKIPPED, f"{why}; not converted: {missing} is missing")
        journal.start(KIND_GUEST, item, vm=p.vm.name)
        journal.done(KIND_GUEST, item, **result.to_data())
        return result
    found = journal.get(KIND_CONVERT, item)
    if found is None or found.status != DONE:
        raise NotStaged(f"{p.vm.name}: disk {disk.target} is not converted yet")
    staged = Path(found.output)
    fmt = str(found.format or "qcow2")
    journal.start(KIND_GUEST, item, vm=p.vm.name)
    virtio_win = plan.convert.virtio_win
    if virtio_win and not os.path.isabs(virtio_win):
        virtio_win = str(plan.path.parent / virtio_win)
    try:
        result = convert_guest(p.vm, staged, fmt, ins, virtio_win=virtio_win,
                               preserve_static_ips=plan.convert.preserve_static_ips,
                               reason=why)
    except GuestConvertError as exc:
        journal.fail(KIND_GUEST, item, str(exc), status=FAILED)
        raise
    except BaseException:
        journal.fail(KIND_GUEST, item, "interrupted: rerun to convert the guest")
        raise
    result.source_checksum = found.checksum
    journal.done(KIND_GUEST, item, **result.to_data())  # its checksum: the step's
    # what the converted guest now holds: inspect it again (read-only)
    try:
        after = inspect_disks([(result.output or "", fmt)], p.vm.name)
        after.disk = disk.target
        p.vm.inspection = after
        journal.done(KIND_INSPECT, p.key, inspection=to_data(after), after="guest conversion")
    except GuestfsError as exc:
        journal.update(KIND_GUEST, item, reinspect_error=str(exc))
    return result


def convert_wave(plan: Plan, vms: list[PlannedVM], mode: str | None = None) -> str:
    counts: dict[str, int] = {}
    with plan.journal() as journal:
        for p in vms:
            result = convert_vm(plan, p, journal, mode)
            counts[result.status] = counts.get(result.status, 0) + 1
    save_inspections(plan)
    return "guest: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# -- boot test ---------------------------------------------------------------------------------


def vm_spec(plan: Plan, p: PlannedVM) -> tuple[dict[str, Any], dict[str, str]]:
    """The VirtualMachine spec the manifests stage makes for ``p``, and volume → disk
    target (the spec's sources point nowhere: only its domain is booted)."""
    from manifests.generate import GenerationContext, GenerationOptions, VmOverrides, build_all
    from manifests.sources import SourceResolver
    from migrate.core.workdir import target_names

    d = plan.defaults
    options = GenerationOptions(namespace=plan.namespace, run_strategy=d.run_strategy,
                                networks=plan.maps.networks, storage=plan.maps.storage,
                                keep_cdroms=False, preference=d.preference,
                                instancetype=d.instancetype, timezone=d.timezone)
    with plan.journal() as journal:
        converts = {s.item: s for s in journal.steps(KIND_CONVERT)}
    resolver = SourceResolver({}, converts, "http://boot-test.invalid", frozenset(),
                              str(plan.workdir))
    ctx = GenerationContext(options=options, sources=resolver,
                            names={**target_names(plan.inventory), **plan.names()},
                            overrides={p.key: VmOverrides(name=p.name, namespace=p.namespace)})
    sets, failed = build_all([p.vm], ctx)
    if failed:
        raise VmmoveError(f"{p.vm.name}: no manifest to boot: {failed[0]}")
    spec = sets[0].virtual_machine["spec"]
    templates = {t["metadata"]["name"]: t for t in spec.get("dataVolumeTemplates") or []}
    volumes: dict[str, str] = {}
    for vol in spec["template"]["spec"].get("volumes") or []:
        dv = (vol.get("dataVolume") or {}).get("name")
        target = ((templates.get(dv) or {}).get("metadata", {}).get("annotations", {})
                  .get("vmmove.io/source-disk"))
        if target:
            volumes[vol["name"]] = target
    return spec, volumes


def boot_test_vm(plan: Plan, p: PlannedVM, journal: Journal, *, timeout: float | None = None,
                 accel: str | None = None, uri: str = "qemu:///system") -> BootResult:
    """Boot-test one VM's staged images as its manifest says; journal the verdict."""
    spec, volumes = vm_spec(plan, p)
    by_target = {d.target: (path, fmt) for d, path, fmt in _staged(journal, p)}
    images = {vol: (str(by_target[t][0]), by_target[t][1]) for vol, t in volumes.items()
              if t in by_target}
    folder = plan.workdir / "boot-test" / p.name
    journal.start(KIND_BOOT_TEST, p.key, vm=p.vm.name)
    try:
        result = boot_test(p.name, spec, images, folder,
                           timeout=timeout or plan.boot_test.timeout,
                           marker=plan.boot_test.marker, accel=accel or plan.boot_test.accel,
                           uri=uri)
    except VmmoveError as exc:
        journal.fail(KIND_BOOT_TEST, p.key, str(exc), verdict="error")
        raise
    except BaseException:
        journal.fail(KIND_BOOT_TEST, p.key, "interrupted: rerun the boot test")
        raise
    if result.ok:
        journal.done(KIND_BOOT_TEST, p.key, **result.to_data())
    else:
        journal.fail(KIND_BOOT_TEST, p.key, f"{result.verdict}: {result.reason}",
                     **result.to_data())
    return result


def last_boot_test(journal: Journal, key: str) -> dict[str, Any] | None:
    """The last boot test's record of a VM (status, error, data), None when never run."""
    step = journal.get(KIND_BOOT_TEST, key)
    if step is None:
        return None
    return step.summary()


def inspect_selection(plan: Plan, wave: int, vms: tuple[str, ...],
                      redo: bool = False) -> list[tuple[PlannedVM, Inspection]]:
    """``vmmove inspect PLAN --wave N [VM…]``: the chosen VMs (all of the wave when none
    are named) inspected under the plan lock, each with its inspection."""
    from migrate.pipeline.cutover import select_vms
    from migrate.pipeline.wave import plan_lock

    chosen = select_vms(plan, wave, vms)
    with plan_lock(plan):
        results = inspect_wave(plan, chosen, redo=redo)
    return list(zip(chosen, results))


def boot_test_selection(plan: Plan, wave: int, vms: tuple[str, ...], *,
                        timeout: float | None, accel: str | None, uri: str,
                        log: Any) -> list[tuple[PlannedVM, BootResult]]:
    """``vmmove boot-test PLAN --wave N [VM…]``: each chosen VM boot-tested in turn under
    the plan lock (:func:`boot_test_vm`), its start and verdict told to ``log``."""
    from migrate.pipeline.cutover import select_vms
    from migrate.pipeline.wave import plan_lock

    chosen = select_vms(plan, wave, vms)
    results = []
    with plan_lock(plan), plan.journal() as journal:
        for p in chosen:
            log(f"{p.vm.name}: boot test started")
            result = boot_test_vm(plan, p, journal, timeout=timeout, accel=accel, uri=uri)
            log(f"{p.vm.name}: {result.verdict} in {result.seconds:.1f}s ({result.reason})")
            results.append((p, result))
    return results
