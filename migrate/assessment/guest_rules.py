"""Rules from the guest's own facts (``vmmove inspect``: libguestfs on the staged copy).

They fire only for VMs with an :class:`~migrate.core.model.Inspection`; the bus they name is
:func:`migrate.core.mapping.target_disk_bus`'s (with the inspection), the one the manifests use.
"""

from __future__ import annotations

from collections.abc import Iterator

from migrate.assessment.concern import Severity
from migrate.assessment.registry import Context, Hit, rule
from migrate.assessment.facts import is_windows
from migrate.core.mapping import guest_driver, target_disk_bus
from migrate.core.model import VM

CRITICAL, WARNING, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO


@rule(
    "guest-virtio-missing",
    WARNING,
    "The disk goes on sata, which boots; for virtio performance convert the guest "
    "(convert.guest: auto or always in the plan: virt-v2v rebuilds the initramfs / installs "
    "viostor), then boot-test it.",
)
def guest_virtio_missing(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Inspection found the guest cannot load the virtio disk driver at boot (initramfs/driver store)."""
    ins = vm.inspection
    if ins is None:
        return
    name, present = guest_driver(ins, "virtio")
    if present is not False:
        return
    where = "initramfs lacks" if ins.os_type != "windows" else "driver store lacks"
    for disk in vm.disks:
        if disk.device != "disk":
            continue
        bus = target_disk_bus(disk, is_windows(vm), ins).bus
        yield Hit(f"{where} {name}: disk {disk.target} uses {bus}, or convert the guest",
                  subject=disk.target)


@rule(
    "guest-no-boot-driver",
    CRITICAL,
    "Convert the guest (virt-v2v adds virtio drivers), or rebuild its initramfs with ahci "
    "and virtio_blk before moving it.",
)
def guest_no_boot_driver(vm: VM, ctx: Context) -> Iterator[Hit]:
    """The guest has neither the virtio nor the AHCI disk driver at boot: no KubeVirt bus can start it."""
    ins = vm.inspection
    if ins is None:
        return
    virtio, has_virtio = guest_driver(ins, "virtio")
    ahci, has_ahci = guest_driver(ins, "sata")
    if has_virtio is False and has_ahci is False:
        yield Hit(f"the guest lacks both {virtio} and {ahci} at boot")


@rule(
    "guest-static-ip",
    WARNING,
    "On the pod network the pod network assigns the address: switch the guest to DHCP. On a "
    "Multus bridge network set convert.preserveStaticIPs: true so the interface name stays "
    "with its MAC.",
)
def guest_static_ip(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A statically configured address moves with the guest but is only right on a network that carries it."""
    for net in (vm.inspection.network if vm.inspection else []):
        if net.method == "static" and net.addresses:
            yield Hit(f"static IP {', '.join(net.addresses)} on {net.interface} "
                      f"({net.source})", subject=net.interface)


@rule(
    "guest-device-names",
    WARNING,
    "Mount by UUID or LABEL (fstab, root= in the boot loader) before the bus changes, or "
    "convert the guest (virt-v2v remaps them).",
)
def guest_device_names(vm: VM, ctx: Context) -> Iterator[Hit]:
    """fstab and boot entries naming /dev/sdX, /dev/hdX, /dev/vdX break when the disk bus changes."""
    for entry in (vm.inspection.device_names if vm.inspection else []):
        yield Hit(f"names a device by path: {entry}")


@rule(
    "guest-foreign-tools",
    INFO,
    "Remove them after the move (virt-v2v removes VMware Tools and Hyper-V/Xen/VirtualBox "
    "tools when it converts the guest).",
)
def guest_foreign_tools(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Another hypervisor's tools fail, spin or slow boot on KubeVirt."""
    tools = vm.inspection.foreign_tools if vm.inspection else []
    if tools:
        yield Hit(f"the guest has {', '.join(tools)}")


@rule(
    "guest-efi-on-bios",
    WARNING,
    "Check the VM's firmware: the manifest uses the source's firmware; a guest whose only "
    "boot loader is on its EFI system partition needs firmware efi.",
)
def guest_efi_on_bios(vm: VM, ctx: Context) -> Iterator[Hit]:
    """The guest has an EFI system partition while the source says BIOS: it may boot only under UEFI."""
    if vm.inspection and vm.inspection.efi and vm.firmware.type != "efi":
        yield Hit("EFI system partition present, source firmware is BIOS")


@rule(
    "guest-inspect-failed",
    INFO,
    "Nothing to do for the move itself; the other guest-* rules could not look at what "
    "inspection did not read (see the error).",
)
def guest_inspect_failed(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Inspection could not read some of the guest's facts."""
    if vm.inspection and vm.inspection.error:
        yield Hit(f"inspection: {vm.inspection.error}")
