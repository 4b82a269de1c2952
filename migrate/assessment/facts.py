"""Small questions rules ask of a VM (is it Windows? which disks hold data?) and labels."""

from __future__ import annotations

import re

from migrate.core.model import HOST_CDROM, VM, Device, Disk, Nic

DATA_DEVICES = ("disk", "lun")  # disk devices whose contents are converted

_WINDOWS_RE = re.compile(r"(^|[^a-z])win|microsoft")  # not "darwin"


def is_windows(vm: VM) -> bool:
    """True when the source says the guest is Windows (libosinfo id, VMX guestOS, OVF osType)."""
    os = vm.guest_os
    if os is None:
        return False
    if os.family:
        return os.family.lower() == "windows"
    text = " ".join(v for v in (os.id, os.name, os.distro) if v).lower()
    return bool(_WINDOWS_RE.search(text))


def guest_known(vm: VM) -> bool:
    """True when the source says anything at all about the guest OS."""
    os = vm.guest_os
    return os is not None and any((os.id, os.name, os.family, os.distro))


def data_disks(vm: VM) -> list[Disk]:
    """Disks whose data is converted (a host CD-ROM passed through as a LUN holds none)."""
    return [d for d in vm.disks if d.device in DATA_DEVICES and d.layout != HOST_CDROM]


#: dracut-based distributions whose installer builds a host-only initramfs by default
#: (dracut.conf(5) ``hostonly="yes"``): only the storage drivers of the install hardware.
DRACUT_HOSTONLY_DISTROS = {"rhel", "centos", "rocky", "almalinux", "ol", "fedora"}
#: Source hypervisors whose virtual storage hardware is not virtio/AHCI.
FOREIGN_HYPERVISORS = {"vmware": "VMware", "hyperv": "Hyper-V", "xen": "Xen",
                       "virtualbox": "VirtualBox"}


def hostonly_initramfs(vm: VM) -> str | None:
    """The source hypervisor's name when the guest is a RHEL-family Linux moved from it.

    Such a guest boots from a host-only dracut initramfs with the source's storage drivers
    (mptspi, vmw_pvscsi, ata_piix, hv_storvsc, xen-blkfront) and without virtio_blk,
    virtio_scsi or ahci, so on KubeVirt it stops at ``dracut-initqueue timeout``
    (kubevirt/kubevirt#11133); virt-v2v rebuilds the initrd for this reason
    (virt-v2v convert/convert_linux.ml).  None for other guests and sources, and for guests
    whose initramfs ``vmmove inspect`` has read: the ``guest-*`` rules then speak from what
    it holds, not from where the guest came from.
    """
    if vm.inspection is not None and vm.inspection.has_driver("virtio_blk") is not None:
        return None
    os = vm.guest_os
    if os is None or (os.family or "linux").lower() != "linux":
        return None
    if (os.distro or "").lower() not in DRACUT_HOSTONLY_DISTROS:
        return None
    return FOREIGN_HYPERVISORS.get((vm.hypervisor or "").lower())


def disk_where(disk: Disk) -> str:
    """Where a disk's data lives, for messages: a path, ``rbd:pool/img``, ``volume pool/vol``."""
    if disk.source_type == "network":
        name = disk.path or ""
        hosts = f" on {','.join(disk.hosts)}" if disk.hosts else ""
        return f"{disk.protocol or 'network'}:{name}{hosts}"
    if disk.source_type == "volume" and not disk.path:
        return f"volume {disk.pool or '?'}/{disk.volume or '?'}"
    return disk.path or "no source"


def has_source(disk: Disk) -> bool:
    """True when the disk points at something that could hold data."""
    if disk.source_type == "none":
        return False
    if disk.source_type == "network":
        return bool(disk.path or disk.hosts)
    if disk.source_type == "volume":
        return bool(disk.path or disk.volume)
    return bool(disk.path)


def nic_label(vm: VM, nic: Nic) -> str:
    """A NIC's MAC, or its position when it has none."""
    return nic.mac or f"nic{vm.nics.index(nic)}"


def device_label(device: Device) -> str:
    """The most specific name a device has: host address, mdev UUID, vendor:product, model."""
    d = device.details
    for key in ("address", "uuid", "source_dir", "source_name", "source", "name", "path"):
        if d.get(key):
            return d[key]
    if d.get("vendor") and d.get("product"):
        return f"{d['vendor']}:{d['product']}"
    return device.model or device.kind


def devices(vm: VM, *kinds: str) -> list[Device]:
    return [d for d in vm.devices if d.kind in kinds]
