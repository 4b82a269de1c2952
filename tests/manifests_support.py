"""Shared helpers of the manifests tests: representative VMs, journals, the schema validator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from manifests.generate import GenerationContext, GenerationOptions, ManifestSet, build_vm_manifests
from manifests.sources import SourceResolver
from manifests.validate import SchemaValidator
from migrate.core.mapping import NetworkMap, parse_network_target
from migrate.core.model import (
    VM,
    CpuTopology,
    Disk,
    Firmware,
    GuestOS,
    Inventory,
    Nic,
    PowerState,
    Source,
    SourceKind,
)
from migrate.core.journal import Journal
from migrate.core.workdir import disk_item, journal_path
from migrate.core.records import KIND_CONVERT, KIND_UPLOAD

GiB = 1024**3
SCANNED_AT = "2024-05-01T12:00:00Z"


def linux_bios_vm() -> VM:
    """A RHEL 9 guest on BIOS with one virtio disk and one virtio NIC."""
    return VM(
        name="web01",
        uuid="c7a5fdbd-edaf-9455-926a-d65c16db1809",
        source=Source(SourceKind.LIBVIRT, "qemu+ssh://kvm1.example.com/system"),
        hypervisor="kvm",
        os_type="hvm",
        arch="x86_64",
        machine="pc-q35-7.2",
        power_state=PowerState.RUNNING,
        vcpus=2,
        topology=CpuTopology(sockets=1, cores=2, threads=1),
        memory=4 * GiB,
        firmware=Firmware(type="bios"),
        clock_offset="utc",
        disks=[
            Disk(target="vda", bus="virtio", path="/var/lib/libvirt/images/web01.qcow2",
                 format="qcow2", virtual_size=20 * GiB, allocated_size=3 * GiB, boot_order=1),
        ],
        nics=[Nic(mac="52:54:00:12:34:56", model="virtio", type="network", network="default")],
        guest_os=GuestOS(id="http://redhat.com/rhel/9.2", name="Red Hat Enterprise Linux 9.2",
                         family="linux", version="9.2", distro="rhel"),
    )


def windows_efi_vm() -> VM:
    """Windows Server 2022 on EFI with secure boot and a TPM, IDE disks, an e1000 NIC."""
    return VM(
        name="DC01 (Prod)",
        uuid="9b1a3c2e-5f4d-4e6a-8b7c-1d2e3f4a5b6c",
        source=Source(SourceKind.DOMAIN_XML, "/srv/export/dc01.xml"),
        hypervisor="kvm",
        arch="x86_64",
        machine="pc-i440fx-6.2",
        vcpus=4,
        topology=CpuTopology(sockets=2, cores=2, threads=1),
        memory=8 * GiB,
        firmware=Firmware(type="efi", secure_boot=True, tpm_version="2.0", tpm_model="tpm-crb"),
        clock_offset="localtime",
        disks=[
            Disk(target="hda", bus="ide", path="/var/lib/libvirt/images/dc01-c.qcow2", format="qcow2",
                 virtual_size=60 * GiB + 512, boot_order=2),
            Disk(target="hdb", bus="ide", path="/var/lib/libvirt/images/dc01-logs.raw", format="raw",
                 virtual_size=10 * GiB, readonly=True),
            Disk(target="hdc", device="cdrom", bus="ide", source_type="file",
                 path="/iso/virtio-win.iso", readonly=True, virtual_size=600 * 1024**2, boot_order=1),
        ],
        nics=[Nic(mac="52:54:00:ab:cd:ef", model="e1000", type="bridge", network="br0")],
        guest_os=GuestOS(id="http://microsoft.com/win/2k22", name="Microsoft Windows Server 2022",
                         family="windows", version="2022", distro="win"),
    )


def multi_vm() -> VM:
    """Ubuntu with three disks (virtio, scsi, a shareable one) and three NICs (one vmxnet3)."""
    return VM(
        name="app-cluster-node",
        uuid="5e0f7d0c-2b1a-4c3d-9e8f-7a6b5c4d3e2f",
        source=Source(SourceKind.VMX, "/vmfs/volumes/datastore1/app/app.vmx"),
        hypervisor="vmware",
        arch="x86_64",
        machine="vmx-19",
        vcpus=8,
        topology=CpuTopology(sockets=2, cores=4, threads=1),
        memory=16 * GiB,
        firmware=Firmware(type="efi", secure_boot=False),
        disks=[
            Disk(target="scsi0:0", bus="scsi", path="[datastore1] app/app.vmdk", format="vmdk",
                 virtual_size=40 * GiB, boot_order=1, controller_model="pvscsi", serial="6000c29a1b2c"),
            Disk(target="scsi0:1", bus="scsi", path="[ssd1] app/app_1.vmdk", format="vmdk",
                 virtual_size=100 * GiB),
            Disk(target="scsi1:0", bus="scsi", path="[datastore1] shared/quorum.vmdk", format="vmdk",
                 virtual_size=1 * GiB, shareable=True),
        ],
        nics=[
            Nic(mac="00:50:56:aa:bb:01", model="vmxnet3", type="bridge", network="VM Network"),
            Nic(mac="00:50:56:aa:bb:02", model="e1000e", type="bridge", network="Storage"),
            Nic(mac="00:50:56:aa:bb:03", model="virtio", type="bridge", network="Heartbeat", boot_order=2),
        ],
        guest_os=GuestOS(id="ubuntu-64", name="Ubuntu Linux (64-bit)", family="linux", distro="ubuntu"),
    )


def inventory(*vms: VM) -> Inventory:
    return Inventory(vms=list(vms), scanned_at=SCANNED_AT, vmmove_version="0.1.0")


def networks(**pairs: str) -> NetworkMap:
    """A network map from ``key=target`` pairs (``__`` in keys stands for ``:``)."""
    return NetworkMap({k: parse_network_target(v) for k, v in pairs.items()})


def all_pod_or_multus() -> NetworkMap:
    """Every source network to one Multus network: valid for any number of NICs."""
    return NetworkMap({"*": parse_network_target("multus:vms/lan")})


def context(inv: Inventory, resolver: SourceResolver | None = None, **options: Any) -> GenerationContext:
    options.setdefault("networks", all_pod_or_multus())
    return GenerationContext.for_inventory(
        inv,
        options=GenerationOptions(**options),
        sources=resolver or SourceResolver(http_base="http://images.example.com/vm"),
    )


def build(vm: VM, resolver: SourceResolver | None = None, **options: Any) -> ManifestSet:
    return build_vm_manifests(vm, context(inventory(vm), resolver, **options))


def record_upload(workdir: Path, vm: VM, disk: Disk, status: str = "done", **data: Any) -> None:
    """A transfer record as ``vmmove upload`` writes it (kind ``upload``)."""
    with Journal(journal_path(workdir)) as journal:
        item = disk_item(vm, disk)
        journal.start(KIND_UPLOAD, item, **data)
        if status == "done":
            journal.done(KIND_UPLOAD, item, checksum=data.get("checksum"))
        elif status == "failed":
            journal.fail(KIND_UPLOAD, item, "connection reset")


def record_convert(workdir: Path, vm: VM, disk: Disk, output: Path, checksum: str) -> None:
    with Journal(journal_path(workdir)) as journal:
        item = disk_item(vm, disk)
        journal.start(KIND_CONVERT, item, output=str(output), format="raw",
                      virtual_size=disk.virtual_size, verified=True)
        journal.done(KIND_CONVERT, item, checksum=checksum)


def write_s3_secret(path: Path, name: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
        "stringData": {"accessKeyId": "AKIDEXAMPLE", "secretKey": "wJalrXUtnFEMI"},
    }))
    return path


def schema_validator(shared: Path) -> SchemaValidator:
    return SchemaValidator(shared / "schemas")
