"""One rule for a disk's KubeVirt bus (issue 12 kind 4): the assessment says what the manifest does.

For every source bus, guest OS family and kind of drive, the bus the assessment names
("… becomes sata") is the bus the generated VirtualMachine uses, and a bus that changes
is always named by a concern.  Both sides call :func:`migrate.core.mapping.target_disk_bus`;
this test holds them together through their public outputs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

import pytest

from migrate.assessment import assess_vm
from migrate.core.mapping import KUBEVIRT_DISK_BUSES, target_disk_bus
from migrate.core.model import Disk, GuestOS
from tests.assess_support import clean_vm
from tests.manifests_support import build

SOURCE_BUSES = ["virtio", "sata", "scsi", "usb", "ide", "nvme", "xen", "sd", "fdc-like"]
GUESTS = {
    "linux": GuestOS(id="rhel9_64Guest", name="Red Hat Enterprise Linux 9", family="linux", distro="rhel"),
    "windows": GuestOS(id="windows2019srv_64Guest", name="Windows Server 2019", family="windows", distro="win"),
    "bsd": GuestOS(id="freebsd13_64Guest", name="FreeBSD 13", family="bsd", distro="freebsd"),
    "unknown": None,
}
DRIVES = ["disk", "readonly-disk", "cdrom"]
TARGETS = {"virtio": "vdb", "sata": "sdb", "scsi": "sdb", "usb": "sdb", "ide": "hdb", "nvme": "nvme0n2",
           "xen": "xvdb", "sd": "mmcblk1", "fdc-like": "fdb"}


def _vm(bus: str, family: str, drive: str):  # type: ignore[no-untyped-def]
    vm = clean_vm()
    vm.guest_os = GUESTS[family]
    disk = Disk(target=TARGETS[bus], bus=bus, path=f"/img/{bus}.qcow2", format="qcow2",
                virtual_size=1024**3, device="cdrom" if drive == "cdrom" else "disk",
                readonly=drive != "disk")
    if drive == "cdrom":
        disk = replace(disk, path=f"/iso/{bus}.iso", format="raw")
    vm.disks.append(disk)
    return vm, disk


@pytest.mark.parametrize(("bus", "family", "drive"),
                         list(itertools.product(SOURCE_BUSES, GUESTS, DRIVES)))
def test_assessment_and_manifest_name_the_same_bus(bus: str, family: str, drive: str) -> None:
    vm, disk = _vm(bus, family, drive)
    concerns = [c for c in assess_vm(vm) if c.subject == disk.target
                and c.id in ("disk-bus-ide", "disk-bus-other", "cdrom")]
    ms = build(vm, keep_cdroms=True)
    [entry] = [d for d in ms.virtual_machine["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
               if d["name"] == disk.target]
    manifest_bus = (entry.get("disk") or entry.get("cdrom"))["bus"]
    assert manifest_bus in KUBEVIRT_DISK_BUSES
    assert manifest_bus == target_disk_bus(disk, family == "windows").bus
    said = [m.group(1) for c in concerns if (m := re.search(r"becomes (\w+)", c.message))]
    if manifest_bus != bus:
        assert said == [manifest_bus], (bus, family, drive, [c.message for c in concerns])
    else:
        assert said == [], [c.message for c in concerns]
    if drive == "cdrom":
        assert manifest_bus in ("sata", "scsi")
    if drive == "readonly-disk":
        assert manifest_bus != "sata" and entry["disk"]["readonly"] is True


def test_the_rule_in_words() -> None:
    """Spot checks of the documented order (rule numbers of target_disk_bus's docstring)."""
    def bus(src: str | None, target: str = "xda", windows: bool = False, **kw: object) -> str:
        return target_disk_bus(Disk(target=target, bus=src, **kw), windows).bus  # type: ignore[arg-type]

    assert [bus(b) for b in ("virtio", "sata", "scsi", "usb")] == ["virtio", "sata", "scsi", "usb"]  # 1
    assert bus("ide") == bus("ide", windows=True) == "sata"  # 2
    assert (bus("nvme"), bus("nvme", windows=True), bus("xen")) == ("virtio", "sata", "virtio")  # 3
    assert (bus(None, "vda"), bus(None, "sda"), bus(None, "hda"), bus(None, "xda", True)) == \
        ("virtio", "scsi", "sata", "sata")  # 4
    assert bus("virtio", device="cdrom") == "sata" and bus("sata", readonly=True) == "scsi"  # 5
