"""Rules about disks, cdroms and floppies: can the data be read, and what becomes of the bus."""

from __future__ import annotations

from collections.abc import Iterator

from migrate.assessment.concern import Severity
from migrate.assessment.facts import (
    DATA_DEVICES,
    data_disks,
    disk_where,
    has_source,
    hostonly_initramfs,
    is_windows,
)
from migrate.assessment.registry import Context, Hit, rule
from migrate.core.mapping import target_disk_bus
from migrate.core.model import HOST_CDROM, RDM_PHYSICAL, RDM_VIRTUAL, VM, VSAN
from migrate.sources.containment import outside

HOSTONLY_REMEDY = (
    "{os} guest from {source}: its host-only initramfs lacks {drivers}; before cutover run "
    "`dracut -f --regenerate-all --add-drivers '{drivers}'` in the guest (see initramfs-hostonly)."
)

CRITICAL, WARNING, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO

VIRTIO_SCSI = {"virtio-scsi", "virtio", "virtio-transitional", "virtio-non-transitional"}


@rule(
    "disk-unreadable",
    CRITICAL,
    "Make the image readable by the scanning user (permissions, a missing backing file, a "
    "locked or corrupt image: try qemu-img check), then rescan.",
)
def disk_unreadable(vm: VM, ctx: Context) -> Iterator[Hit]:
    """An image that cannot be inspected cannot be converted or sized for its PVC."""
    for disk in data_disks(vm):
        if disk.error and disk.layout not in (RDM_PHYSICAL, RDM_VIRTUAL, VSAN):
            yield Hit(f"disk {disk.target} ({disk_where(disk)}): {disk.error}", subject=disk.target)


@rule(
    "disk-no-source",
    CRITICAL,
    "Give the disk a source on the host, or remove it from the VM, then rescan.",
)
def disk_no_source(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A disk without a source has no data to put into a PVC."""
    for disk in data_disks(vm):
        if not has_source(disk):
            yield Hit(f"disk {disk.target} has no source", subject=disk.target)


@rule(
    "disk-size-unknown",
    WARNING,
    "Run the scan where the image can be read (the source host, or with access to its storage) "
    "so its size is known, or give the PVC size in the VM's plan entry (disks: {vda: {size: 20Gi}}).",
)
def disk_size_unknown(vm: VM, ctx: Context) -> Iterator[Hit]:
    """The PVC (DataVolume) must be at least the disk's virtual size, so the size must be known."""
    for disk in data_disks(vm):
        if has_source(disk) and not disk.error and disk.virtual_size is None:
            yield Hit(f"size of disk {disk.target} ({disk_where(disk)}) is unknown", subject=disk.target)


@rule(
    "backing-outside-export",
    CRITICAL,
    "Copy the backing file into the export beside the disk (or flatten the image there with "
    "qemu-img convert), fix the reference, and rescan; vmmove never reads a file an offline "
    "export names outside itself.",
)
def backing_outside_export(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A backing file outside an offline export would be read from this host's files, not
    the export's: containment refuses it (docs/security.md)."""
    for disk in data_disks(vm):
        far = [b.path for b in disk.backing_chain if outside(vm.source, b.path)]
        if far:
            yield Hit(f"disk {disk.target} names backing file {far[0]}, outside its export "
                      f"({vm.source.location}): refused", subject=disk.target)


@rule("backing-chain", INFO, "Nothing to do: convert reads through the chain.")
def backing_chain(vm: VM, ctx: Context) -> Iterator[Hit]:
    """CDI refuses a qcow2 with a backing file, so the chain is flattened into one image."""
    for disk in data_disks(vm):
        if disk.backing_chain and not any(outside(vm.source, b.path)
                                          for b in disk.backing_chain):
            n = len(disk.backing_chain)
            yield Hit(
                f"disk {disk.target} sits on {n} backing file(s) "
                f"({disk.backing_chain[-1].path} at the bottom): flattened on convert",
                subject=disk.target,
            )


@rule(
    "disk-shareable",
    WARNING,
    "Move all VMs sharing the disk together: one ReadWriteMany block PVC with shareable: true, "
    "converted once; check the cluster file system inside does fencing.",
)
def disk_shareable(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A disk shared between VMs needs one ReadWriteMany PVC that every VM mounts, not a copy each."""
    for disk in data_disks(vm):
        if disk.shareable:
            yield Hit(f"disk {disk.target} ({disk_where(disk)}) is shared with other VMs", subject=disk.target)


@rule(
    "disk-network",
    WARNING,
    "Convert from a host that can reach the storage with qemu-img (credentials included), or "
    "import it with CDI or a CSI driver (e.g. ceph-csi for rbd) instead.",
)
def disk_network(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Network disks (rbd, iscsi, nbd, gluster, http) are read over the network, not from a file."""
    for disk in data_disks(vm):
        if disk.source_type == "network":
            yield Hit(f"disk {disk.target} is a network disk ({disk_where(disk)})", subject=disk.target)


@rule(
    "disk-block",
    INFO,
    "Run convert on the source host (or one that sees the same device); the VM must be off "
    "while it is copied.",
)
def disk_block(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A host block device (LVM, multipath, NVMe) is read from the host, not copied as a file."""
    for disk in data_disks(vm):
        if disk.source_type in ("block", "nvme"):
            what = "host NVMe namespace" if disk.source_type == "nvme" else "host block device"
            yield Hit(f"disk {disk.target} is {what} {disk.path or ''}".rstrip(), subject=disk.target)


@rule(
    "disk-vhost",
    WARNING,
    "Export the data the vhost-user/vDPA backend serves into an image file (or a block device) "
    "on the source host, point the disk at it and rescan.",
)
def disk_vhost(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A vhost-user or vDPA disk is served by a host process or device qemu-img cannot read."""
    for disk in data_disks(vm):
        if disk.source_type in ("vhostuser", "vhostvdpa"):
            yield Hit(f"disk {disk.target} is a {disk.source_type} disk ({disk.path or 'no path'})", subject=disk.target)


@rule(
    "disk-lun",
    WARNING,
    "Give it a block-mode PVC and a KubeVirt lun disk if the guest needs SCSI commands "
    "(reservations, clustering); otherwise it becomes a plain disk.",
)
def disk_lun(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A LUN passes SCSI commands through; in KubeVirt that needs a block-mode PVC."""
    for disk in vm.disks:
        if disk.device == "lun" and disk.layout is None:
            yield Hit(f"disk {disk.target} is a SCSI LUN ({disk_where(disk)})", subject=disk.target)


@rule(
    "disk-rdm",
    CRITICAL,
    "Have the storage team copy the LUN's data into a PVC (or present the LUN to the cluster as a "
    "block-mode PVC attached as a lun disk), or leave the disk out explicitly (manifests --blank "
    "VM/DISK); vmmove cannot copy it.",
)
def disk_rdm(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A VMware raw device map is a stub for a SAN LUN: the data is on the LUN, in no file."""
    for disk in vm.disks:
        if disk.layout in (RDM_PHYSICAL, RDM_VIRTUAL):
            mode = "physical (pass-through)" if disk.layout == RDM_PHYSICAL else "virtual"
            shared = ", on a shared SCSI bus (guest cluster)" if disk.shareable else ""
            yield Hit(f"disk {disk.target} ({disk_where(disk)}) is a {mode} raw device map of a "
                      f"SAN LUN{shared}: its data is not in the export", subject=disk.target)


@rule(
    "disk-vsan",
    CRITICAL,
    "Export the VM through vCenter (OVF export or a VDDK-based tool) so the disk's data is a "
    "file, or leave the disk out explicitly (manifests --blank VM/DISK).",
)
def disk_vsan(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A vSAN disk descriptor names an object on the vSAN datastore; a copied folder has no data."""
    for disk in vm.disks:
        if disk.layout == VSAN:
            yield Hit(f"disk {disk.target} ({disk_where(disk)}) is a vSAN object descriptor: no "
                      "local data to convert", subject=disk.target)


@rule(
    "cdrom-passthrough",
    INFO,
    "Nothing to do: the drive is dropped. If the guest needs an ISO, upload it as a DataVolume "
    "(virtctl image-upload) and add it to the VirtualMachine as a cdrom disk.",
)
def cdrom_passthrough(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A host CD-ROM drive exists only on the source host; KubeVirt cdroms need an image volume."""
    for disk in vm.disks:
        if disk.layout == HOST_CDROM:
            yield Hit(f"disk {disk.target}: host CD-ROM drive {disk.path or '(auto detect)'} "
                      "passed through is dropped", subject=disk.target)


@rule(
    "disk-dir",
    WARNING,
    "Copy the files into a real disk image (or a PVC shared with virtiofs) instead.",
)
def disk_dir(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A directory shown as a virtual FAT disk exists only on the source host."""
    for disk in data_disks(vm):
        if disk.source_type == "dir":
            yield Hit(f"disk {disk.target} is host directory {disk.path} (virtual FAT)", subject=disk.target)


@rule(
    "disk-bus-ide",
    WARNING,
    "Linux: nothing to do (ahci is in every initramfs). Windows: enable the storahci driver "
    "before cutover, or the guest stops with INACCESSIBLE_BOOT_DEVICE.",
)
def disk_bus_ide(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt has no IDE bus (only virtio, sata, scsi, usb), so IDE disks become sata."""
    windows, source = is_windows(vm), hostonly_initramfs(vm)
    for disk in data_disks(vm):
        if disk.bus == "ide":
            bus = target_disk_bus(disk, windows, vm.inspection).bus
            yield Hit(f"disk {disk.target} on IDE becomes {bus}", subject=disk.target,
                      remediation=_hostonly(vm, source, bus))


@rule(
    "disk-bus-other",
    WARNING,
    "Make sure the guest has a sata (ahci) driver, or virtio drivers if the VM's plan entry picks virtio (disks: {sda: {bus: virtio}}).",
)
def disk_bus_other(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt has only virtio, sata, scsi and usb disk buses; others (xen, nvme, sd) change.

    The bus named is :func:`migrate.core.mapping.target_disk_bus`'s, the one the manifest uses
    (a read-only SATA disk moves to scsi as well).
    """
    windows, source = is_windows(vm), hostonly_initramfs(vm)
    for disk in data_disks(vm):
        choice = target_disk_bus(disk, windows, vm.inspection)
        if disk.bus and disk.bus != "ide" and choice.reason:
            bus = choice.bus
            remedy = _hostonly(vm, source, bus)
            if remedy is None:
                remedy = ("Linux: virtio_blk ships with the kernel; check it is in the initramfs "
                          "(lsinitrd | grep virtio_blk)." if bus == "virtio" else
                          "Make sure the guest's sata (ahci) driver is enabled (Windows: storahci "
                          "start type 0) before cutover.")
            yield Hit(f"disk {disk.target} on bus {disk.bus} becomes {bus}", subject=disk.target,
                      remediation=remedy)


_DRIVER_OF_BUS = {"virtio": "virtio_blk", "scsi": "virtio_scsi", "sata": "ahci"}


def _hostonly(vm: VM, source: str | None, bus: str) -> str | None:
    """The initramfs remedy for a RHEL-family guest from VMware/Hyper-V/Xen, else None."""
    if source is None:
        return None
    name = (vm.guest_os.name if vm.guest_os else None) or "RHEL-family"
    driver = _DRIVER_OF_BUS.get(bus, "virtio_blk")
    return HOSTONLY_REMEDY.format(os=name, source=source, drivers=driver)


@rule(
    "scsi-controller",
    WARNING,
    "Linux: nothing to do (virtio_scsi is built in). Windows: install vioscsi from virtio-win "
    "before cutover, or move the disks to sata in the VM's plan entry (disks: {sda: {bus: sata}}).",
)
def scsi_controller(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt's scsi bus is virtio-scsi; LSI Logic, PVSCSI or BusLogic controllers do not exist."""
    windows, source = is_windows(vm), hostonly_initramfs(vm)
    for disk in vm.disks:
        model = (disk.controller_model or "").lower()
        if disk.layout == HOST_CDROM:
            continue
        if disk.bus == "scsi" and model and model not in VIRTIO_SCSI:
            to = "virtio-scsi (or sata)" if windows else "virtio-scsi"
            yield Hit(f"disk {disk.target} on SCSI controller {disk.controller_model} moves to {to}",
                      subject=disk.target, remediation=_hostonly(vm, source, "scsi"))


@rule(
    "cdrom",
    INFO,
    "If the guest still needs the ISO, upload it as a DataVolume (virtctl image-upload) and "
    "add it to the VirtualMachine as a cdrom disk; otherwise nothing to do.",
)
def cdrom(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A KubeVirt cdrom needs a volume of its own; the source host's ISO files are not copied."""
    windows = is_windows(vm)
    for disk in vm.disks:
        if disk.device == "cdrom" and disk.layout != HOST_CDROM:
            media = f"with {disk_where(disk)}" if has_source(disk) else "empty"
            note = f" ({disk.error})" if disk.error else ""
            choice = target_disk_bus(disk, windows, vm.inspection)
            kept = f"; kept with --keep-cdroms, its {choice.reason}" if choice.reason else ""
            yield Hit(f"cdrom {disk.target} ({media}){note} is not converted{kept}",
                      subject=disk.target)


@rule("floppy", INFO, "Copy anything the guest still needs from the floppy image into a disk.")
def floppy(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt has no floppy controller, so floppy drives are dropped."""
    for disk in vm.disks:
        if disk.device == "floppy":
            yield Hit(f"floppy {disk.target} is dropped", subject=disk.target)


@rule(
    "no-disks",
    WARNING,
    "Check that the VM boots from the network or from a disk you add to the VirtualMachine yourself; a plan refuses a VM without disks, so plan it skip: true with a note until then.",
)
def no_disks(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A VM with no disk has nothing to convert and nothing to boot from in KubeVirt."""
    if not any(d.device in DATA_DEVICES for d in vm.disks):
        yield Hit("VM has no disks")
