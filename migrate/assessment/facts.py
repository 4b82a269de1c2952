"""Small questions rules ask of a VM (is it Windows? which disks hold data?) and labels."""

from __future__ import annotations

import re

from migrate.model import VM, Device, Disk, Nic

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
    return [d for d in vm.disks if d.device in DATA_DEVICES]


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
