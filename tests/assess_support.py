"""Model objects for assessment tests: a VM that raises no concern at all, to mutate."""

from __future__ import annotations

from migrate.core.model import (
    VM,
    Device,
    Disk,
    Firmware,
    GuestOS,
    Nic,
    PowerState,
    Source,
    SourceKind,
)

GiB = 1024**3


def clean_vm(name: str = "web", uuid: str | None = "0b0f2f7e-0000-4000-8000-000000000001", mac: str = "52:54:00:00:00:01") -> VM:
    """A shut-off q35 Linux VM with one virtio disk and NIC: every rule stays silent on it."""
    return VM(
        name=name,
        uuid=uuid,
        source=Source(SourceKind.LIBVIRT, "test:///default"),
        hypervisor="kvm",
        os_type="hvm",
        arch="x86_64",
        machine="pc-q35-8.2",
        power_state=PowerState.SHUTOFF,
        vcpus=2,
        memory=2 * GiB,
        firmware=Firmware(type="efi"),
        clock_offset="utc",
        disks=[
            Disk(
                target="vda",
                bus="virtio",
                path=f"/var/lib/libvirt/images/{name}.qcow2",
                format="qcow2",
                virtual_size=10 * GiB,
                allocated_size=GiB,
            )
        ],
        nics=[Nic(mac=mac, model="virtio", type="network", network="default")],
        devices=[
            Device(kind="graphics", model="vnc"),
            Device(kind="video", model="virtio"),
            Device(kind="serial", model="isa-serial", details={"port": "0"}),
            Device(kind="watchdog", model="i6300esb"),
            Device(kind="sound", model="ich9"),
            Device(kind="memballoon", model="virtio"),
        ],
        guest_os=GuestOS(id="http://redhat.com/rhel/9.4", name="Red Hat Enterprise Linux 9.4", family="linux", distro="rhel"),
    )
