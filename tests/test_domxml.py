"""libvirt domain XML → VM: every field the model has, every unit, every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.core.model import PowerState, Source, SourceKind
from migrate.core.errors import SourceError
from migrate.sources.domxml import (
    guest_os_from_libosinfo,
    parse_domain_xml,
    read_domain_xml,
    scale,
)
from tests.conftest import FIXTURES

SRC = Source(SourceKind.DOMAIN_XML, "/in/test.xml")
GiB = 1024**3


def domain(body: str, devices: str = "", os: str = "<os><type arch='x86_64'>hvm</type></os>",
           head: str = "<domain type='kvm'>") -> str:
    return (
        f"{head}<name>t</name><memory unit='MiB'>512</memory>{os}{body}"
        f"<devices>{devices}</devices></domain>"
    )


def parse(xml: str):
    return parse_domain_xml(xml, SRC)


def bad(xml: str | bytes) -> str:
    with pytest.raises(SourceError) as info:
        parse_domain_xml(xml, SRC)
    message = str(info.value)
    assert "\n" not in message and message.startswith("/in/test.xml: "), message
    return message


# ------------------------------------------------------------------------------ units


@pytest.mark.parametrize(
    ("unit", "factor"),
    [
        (None, 1024),  # KiB by default
        ("b", 1), ("bytes", 1), ("byte", 1), ("B", 1),
        ("KB", 1000), ("k", 1024), ("K", 1024), ("KiB", 1024), ("kib", 1024),
        ("MB", 1000**2), ("M", 1024**2), ("MiB", 1024**2),
        ("GB", 1000**3), ("G", 1024**3), ("GiB", 1024**3),
        ("TB", 1000**4), ("T", 1024**4), ("TiB", 1024**4),
        ("PB", 1000**5), ("P", 1024**5), ("PiB", 1024**5),
        ("EB", 1000**6), ("E", 1024**6), ("EiB", 1024**6),
    ],
)
def test_every_libvirt_unit_scales_like_libvirt(unit: str | None, factor: int) -> None:
    assert scale("3", unit, "x") == 3 * factor


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ("<memory>524288</memory>", 512 * 1024**2),
        ("<memory unit='KiB'>524288</memory>", 512 * 1024**2),
        ("<memory unit='MiB'>512</memory>", 512 * 1024**2),
        ("<memory unit='KB'>500000</memory>", 500_000_000),
        ("<memory unit='bytes'>536870912</memory>", 512 * 1024**2),
        ("<memory unit='G'>2</memory>", 2 * GiB),
    ],
)
def test_memory_units_in_a_domain(memory: str, expected: int) -> None:
    vm = parse(f"<domain><name>m</name>{memory}<currentMemory unit='b'>1000</currentMemory></domain>")
    assert vm.memory == expected and vm.metadata["current_memory"] == "1000"


# ----------------------------------------------------------------------- full mapping

RICH = """
<domain type='kvm' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'
        xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>rich</name>
  <uuid>0F5C4A1E3B7D4C2A9E11A1B2C3D4E5FF</uuid>
  <genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90d</genid>
  <title>Rich VM</title>
  <description>every element</description>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://microsoft.com/win/2k19"/>
    </libosinfo:libosinfo>
  </metadata>
  <maxMemory slots='4' unit='GiB'>32</maxMemory>
  <memory unit='GiB'>8</memory>
  <currentMemory unit='GiB'>6</currentMemory>
  <memoryBacking><hugepages><page size='1' unit='GiB'/></hugepages></memoryBacking>
  <vcpu placement='auto' current='6'>16</vcpu>
  <cputune><emulatorpin cpuset='1-3'/></cputune>
  <numatune><memory mode='preferred' nodeset='1'/></numatune>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-8.0'>hvm</type>
    <firmware><feature enabled='yes' name='secure-boot'/></firmware>
    <nvram template='/usr/share/OVMF/OVMF_VARS.ms.fd'>/var/lib/libvirt/qemu/nvram/rich.fd</nvram>
    <boot dev='network'/>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/><apic/><pae/><vmport state='off'/><smm state='on'/>
    <hyperv mode='custom'><relaxed state='on'/><vapic state='off'/><synic state='on'/></hyperv>
  </features>
  <cpu mode='custom' match='exact'>
    <model fallback='forbid'>Cascadelake-Server</model>
    <topology sockets='2' dies='2' cores='2' threads='2'/>
    <numa>
      <cell id='0' cpus='0-7' memory='4' unit='GiB'/>
      <cell id='1' cpus='8-15' memory='4' unit='GiB'/>
    </numa>
  </cpu>
  <clock offset='variable' adjustment='3600' basis='utc'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/images/rich.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/images/mid.qcow2'/>
        <backingStore type='block'>
          <format type='raw'/>
          <source dev='/dev/vg/base'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='sda' bus='scsi'/>
      <serial>RICH-0001</serial>
      <address type='drive' controller='1' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='block' device='lun' sgio='unfiltered'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/mapper/mpatha'/>
      <target dev='sdb' bus='scsi'/>
      <shareable/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/image'>
        <host name='mon1.example' port='6789'/>
        <host name='mon2.example'/>
      </source>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='nbd' name='export'><host transport='unix' socket='/run/nbd.sock'/></source>
      <target dev='vdc'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='ssd' volume='rich-data.qcow2'/>
      <target dev='vdd' bus='virtio'/>
      <boot order='3'/>
    </disk>
    <disk type='dir' device='disk'>
      <source dir='/srv/fat'/>
      <target dev='hdd' bus='ide'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sdc' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='floppy'>
      <source file='/images/boot.img'/>
      <target dev='fda'/>
    </disk>
    <controller type='scsi' index='0' model='lsilogic'/>
    <controller type='scsi' index='1' model='virtio-scsi'/>
    <interface type='network'>
      <mac address='52:54:00:AA:BB:01'/>
      <source network='prod' portgroup='web'/>
      <model type='virtio'/>
      <boot order='1'/>
    </interface>
    <interface type='bridge'><mac address='52:54:00:aa:bb:02'/><source bridge='br0'/><model type='e1000e'/></interface>
    <interface type='direct'><source dev='eth0' mode='vepa'/><model type='rtl8139'/></interface>
    <interface type='user'><model type='e1000'/></interface>
    <interface type='ethernet'><target dev='tap7'/></interface>
    <interface type='hostdev' managed='yes'>
      <source><address type='pci' domain='0x0000' bus='0x04' slot='0x10' function='0x2'/></source>
      <boot order='2'/>
    </interface>
    <interface type='vhostuser'><source type='unix' path='/run/vhost.sock' mode='client'/><model type='virtio'/></interface>
    <interface type='mcast'><source address='230.0.0.1' port='5558'/></interface>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <driver name='vfio'/>
      <source><address domain='0x0000' bus='0x65' slot='0x00' function='0x1'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='usb'>
      <source><vendor id='0x1234'/><product id='0xbeef'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='usb'>
      <source><address bus='1' device='7'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='scsi'>
      <source><adapter name='scsi_host0'/><address bus='0' target='0' unit='3'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='scsi_host'><source protocol='vhost' wwpn='naa.50014057667280d8'/></hostdev>
    <hostdev mode='subsystem' type='mdev' model='vfio-pci'>
      <source><address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source>
    </hostdev>
    <graphics type='spice' autoport='yes'/>
    <video><model type='qxl' vram='65536' heads='2'/></video>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <parallel type='file'><source path='/tmp/lpt'/><target port='0'/></parallel>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <watchdog model='i6300esb' action='poweroff'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <sound model='ich9'/>
    <input type='tablet' bus='usb'/>
    <smartcard mode='passthrough' type='spicevmc'/>
    <redirdev bus='usb' type='spicevmc'/>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/><source dir='/srv/share'/><target dir='share'/>
    </filesystem>
    <vsock model='virtio'><cid auto='no' address='3'/></vsock>
    <memballoon model='virtio'/>
    <shmem name='ivshmem0'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>
    <iommu model='intel'/>
    <panic model='isa'/>
    <hub type='usb'/>
    <memory model='dimm'><target><size unit='GiB'>1</size><node>0</node></target></memory>
    <tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>
  </devices>
  <qemu:commandline><qemu:arg value='-no-hpet'/></qemu:commandline>
  <test:runstate>3</test:runstate>
</domain>
"""


def test_a_rich_domain_maps_every_field() -> None:
    vm = parse(RICH)
    assert vm.name == "rich" and vm.title == "Rich VM" and vm.description == "every element"
    assert vm.uuid == "0f5c4a1e-3b7d-4c2a-9e11-a1b2c3d4e5ff"
    assert (vm.hypervisor, vm.os_type, vm.arch, vm.machine) == ("kvm", "hvm", "x86_64", "pc-q35-8.0")
    assert vm.power_state is PowerState.PAUSED  # test:runstate
    # memory
    assert vm.memory == 8 * GiB and vm.max_memory == 32 * GiB
    assert vm.metadata["current_memory"] == str(6 * GiB) and vm.metadata["memory_slots"] == "4"
    # CPU: current/max, dies folded into sockets, model, NUMA, pinning, hugepages
    assert (vm.vcpus, vm.max_vcpus) == (6, 16)
    assert vm.metadata["vcpu_placement"] == "auto"
    assert vm.topology is not None
    assert (vm.topology.sockets, vm.topology.cores, vm.topology.threads) == (4, 2, 2)
    assert vm.metadata["cpu_dies"] == "2"
    assert vm.tuning.cpu_mode == "custom" and vm.tuning.cpu_model == "Cascadelake-Server"
    assert vm.tuning.numa_nodes == 2 and vm.tuning.cpu_pinning and vm.tuning.hugepages
    assert vm.metadata["numatune"] == "preferred:1"
    # firmware
    fw = vm.firmware
    assert fw.type == "efi" and fw.secure_boot
    assert fw.loader == "/usr/share/OVMF/OVMF_VARS.ms.fd"
    assert vm.metadata["nvram"] == "/var/lib/libvirt/qemu/nvram/rich.fd"
    assert (fw.tpm_model, fw.tpm_version) == ("tpm-tis", "1.2")
    assert vm.metadata["tpm_backend"] == "passthrough"
    # clock, features, misc
    assert vm.clock_offset == "variable"
    assert vm.features == ["acpi", "apic", "pae", "smm", "hyperv"]
    assert vm.metadata["hyperv"] == "relaxed,synic"
    assert vm.metadata["genid"] == "43dc0cf8-809b-4adb-9bea-a9abb5f3d90d"
    assert vm.metadata["qemu_commandline"] == "yes"
    assert vm.metadata["emulator"] == "/usr/bin/qemu-system-x86_64"
    # guest OS
    assert vm.guest_os is not None
    assert (vm.guest_os.family, vm.guest_os.distro, vm.guest_os.version) == ("windows", "win", "2019")
    assert vm.guest_os.name == "Microsoft Windows Server 2019"


def test_a_rich_domain_maps_every_disk_form() -> None:
    disks = {d.target: d for d in parse(RICH).disks}
    assert list(disks) == ["sda", "sdb", "vdb", "vdc", "vdd", "hdd", "sdc", "fda"]
    sda = disks["sda"]
    assert (sda.source_type, sda.path, sda.format, sda.bus) == ("file", "/images/rich.qcow2", "qcow2", "scsi")
    assert sda.controller_model == "virtio-scsi"  # controller='1'
    assert sda.serial == "RICH-0001"
    assert [(b.path, b.format) for b in sda.backing_chain] == [
        ("/images/mid.qcow2", "qcow2"), ("/dev/vg/base", "raw")]
    sdb = disks["sdb"]
    assert (sdb.device, sdb.source_type, sdb.path, sdb.shareable) == ("lun", "block", "/dev/mapper/mpatha", True)
    assert sdb.controller_model == "lsilogic"
    vdb = disks["vdb"]
    assert (vdb.source_type, vdb.protocol, vdb.path) == ("network", "rbd", "pool/image")
    assert vdb.hosts == ["mon1.example:6789", "mon2.example"]
    assert disks["vdc"].hosts == ["unix:/run/nbd.sock"] and disks["vdc"].bus == "virtio"
    vdd = disks["vdd"]
    assert (vdd.source_type, vdd.pool, vdd.volume, vdd.boot_order) == ("volume", "ssd", "rich-data.qcow2", 3)
    assert (disks["hdd"].source_type, disks["hdd"].path, disks["hdd"].bus) == ("dir", "/srv/fat", "ide")
    cd = disks["sdc"]
    assert (cd.device, cd.source_type, cd.readonly, cd.path) == ("cdrom", "none", True, None)
    fda = disks["fda"]
    assert (fda.device, fda.bus, fda.path) == ("floppy", "fdc", "/images/boot.img")
    # per-device <boot order> wins over <os><boot dev=…>
    assert disks["sda"].boot_order is None


def test_a_rich_domain_maps_every_interface_form() -> None:
    nics = parse(RICH).nics
    got = [(n.type, n.network, n.model, n.mac) for n in nics]
    assert got == [
        ("network", "prod", "virtio", "52:54:00:aa:bb:01"),
        ("bridge", "br0", "e1000e", "52:54:00:aa:bb:02"),
        ("direct", "eth0", "rtl8139", None),
        ("user", None, "e1000", None),
        ("ethernet", "tap7", None, None),
        ("hostdev", "0000:04:10.2", None, None),
        ("vhostuser", "/run/vhost.sock", "virtio", None),
        ("mcast", "230.0.0.1:5558", None, None),
    ]
    assert nics[0].portgroup == "web" and nics[0].attachment == "network:prod/web"
    assert (nics[0].boot_order, nics[5].boot_order) == (1, 2)


def test_a_rich_domain_maps_every_device_kind() -> None:
    devices = parse(RICH).devices
    kinds = [d.kind for d in devices]
    for kind in ("pci-passthrough", "usb-passthrough", "scsi-passthrough", "mdev", "graphics",
                 "video", "serial", "console", "parallel", "channel", "watchdog", "rng", "sound",
                 "input", "smartcard", "redirdev", "filesystem", "vsock", "memballoon",
                 "controller", "shmem", "iommu", "panic", "hub", "other"):
        assert kind in kinds, kind
    by_kind = {}
    for d in devices:
        by_kind.setdefault(d.kind, []).append(d)
    pci = by_kind["pci-passthrough"][0]
    assert pci.details == {"managed": "yes", "address": "0000:65:00.1", "driver": "vfio"}
    usb = by_kind["usb-passthrough"]
    assert usb[0].details == {"vendor": "0x1234", "product": "0xbeef"}
    assert usb[1].details == {"bus": "1", "device": "7"}
    scsi = by_kind["scsi-passthrough"]
    assert scsi[0].details == {"adapter": "scsi_host0", "bus": "0", "target": "0", "unit": "3"}
    assert scsi[1].model == "scsi_host" and scsi[1].details["wwpn"] == "naa.50014057667280d8"
    mdev = by_kind["mdev"][0]
    assert mdev.model == "vfio-pci" and mdev.details["uuid"] == "c2177883-f1bb-47f0-914d-32a22e3a8804"
    assert by_kind["watchdog"][0].model == "i6300esb" and by_kind["watchdog"][0].details == {"action": "poweroff"}
    assert by_kind["channel"][0].details["name"] == "org.qemu.guest_agent.0"
    assert by_kind["video"][0].model == "qxl" and by_kind["video"][0].details["heads"] == "2"
    assert by_kind["filesystem"][0].details == {
        "source_dir": "/srv/share", "target_dir": "share", "driver_type": "virtiofs"}
    assert by_kind["shmem"][0].details == {"name": "ivshmem0", "size": str(4 * 1024**2)}
    assert by_kind["rng"][0].details == {"backend": "random", "source": "/dev/urandom"}
    assert [c.model for c in by_kind["controller"]] == ["lsilogic", "virtio-scsi"]
    assert by_kind["other"][0].details == {"element": "memory"} and by_kind["other"][0].model == "dimm"
    assert "tpm" not in kinds  # the TPM is part of Firmware


# ----------------------------------------------------------------- smaller mappings


def test_os_boot_dev_order_goes_onto_devices() -> None:
    vm = parse(domain(
        "",
        devices="<disk type='file' device='cdrom'><target dev='hdc'/></disk>"
        "<disk type='file' device='disk'><source file='/a'/><target dev='vda'/></disk>"
        "<disk type='file' device='floppy'><target dev='fda'/></disk>"
        "<interface type='user'/>",
        os="<os><type>hvm</type><boot dev='cdrom'/><boot dev='network'/><boot dev='hd'/><boot dev='fd'/></os>",
    ))
    orders = {d.target: d.boot_order for d in vm.disks}
    assert orders == {"hdc": 1, "vda": 3, "fda": 4} and vm.nics[0].boot_order == 2


def test_hvm_without_boot_elements_boots_from_the_first_disk() -> None:
    vm = parse(domain("", devices="<disk type='file'><source file='/a'/><target dev='vda'/></disk>"
                               "<disk type='file'><source file='/b'/><target dev='vdb'/></disk>"))
    assert [d.boot_order for d in vm.disks] == [1, None]


@pytest.mark.parametrize(
    ("os_xml", "devices", "expected"),
    [
        ("<os firmware='efi'><type>hvm</type></os>", "", ("efi", False, None, None)),
        ("<os><type>hvm</type><loader readonly='yes' type='pflash'>/x/OVMF_CODE.fd</loader></os>", "",
         ("efi", False, None, None)),
        ("<os><type>hvm</type><loader readonly='yes' type='pflash' secure='yes'>/x/OVMF_CODE.secboot.fd</loader></os>",
         "", ("efi", True, None, None)),
        ("<os><type>hvm</type><loader type='rom'>/usr/share/AAVMF/AAVMF_CODE.fd</loader></os>", "",
         ("efi", False, None, None)),
        ("<os><type>hvm</type><loader type='rom'>/usr/share/seabios/bios.bin</loader></os>", "",
         ("bios", False, None, None)),
        ("<os firmware='efi'><type>hvm</type><firmware><feature enabled='no' name='secure-boot'/></firmware></os>",
         "", ("efi", False, None, None)),
        ("<os><type>hvm</type></os>", "<tpm model='tpm-crb'><backend type='emulator'/></tpm>",
         ("bios", False, "2.0", "tpm-crb")),
        ("<os><type>hvm</type></os>", "<tpm><backend type='emulator' version='2.0'/></tpm>",
         ("bios", False, "2.0", "tpm-tis")),
    ],
)
def test_firmware_forms(os_xml: str, devices: str, expected: tuple) -> None:
    fw = parse(domain("", devices=devices, os=os_xml)).firmware
    assert (fw.type, fw.secure_boot, fw.tpm_version, fw.tpm_model) == expected


@pytest.mark.parametrize(
    ("clock", "expected"),
    [("<clock offset='utc'/>", "utc"), ("<clock offset='localtime'/>", "localtime"),
     ("<clock offset='timezone' timezone='Europe/Paris'/>", "timezone:Europe/Paris"),
     ("<clock offset='variable' basis='localtime' adjustment='0'/>", "variable"), ("", None)],
)
def test_clock_offsets(clock: str, expected: str | None) -> None:
    assert parse(domain(clock)).clock_offset == expected


@pytest.mark.parametrize(
    ("os_id", "family", "distro", "version", "name"),
    [
        ("http://microsoft.com/win/2k22", "windows", "win", "2022", "Microsoft Windows Server 2022"),
        ("http://microsoft.com/win/2k12r2", "windows", "win", "2012r2", "Microsoft Windows Server 2012 R2"),
        ("http://microsoft.com/win/10", "windows", "win", "10", "Microsoft Windows 10"),
        ("http://redhat.com/rhel/9.2", "linux", "rhel", "9.2", "Red Hat Enterprise Linux 9.2"),
        ("http://ubuntu.com/ubuntu/22.04", "linux", "ubuntu", "22.04", "Ubuntu 22.04"),
        ("http://centos.org/centos-stream/9", "linux", "centos-stream", "9", "CentOS Stream 9"),
        ("http://freebsd.org/freebsd/13.2", "bsd", "freebsd", "13.2", "FreeBSD 13.2"),
        ("http://oracle.com/solaris/11", "solaris", "solaris", "11", "Solaris 11"),
        ("http://libosinfo.org/linux/2022", "linux", "linux", "2022", "Linux 2022"),
        ("http://libosinfo.org/unknown", "other", "unknown", None, "unknown"),
    ],
)
def test_libosinfo_ids(os_id: str, family: str, distro: str, version: str | None, name: str) -> None:
    g = guest_os_from_libosinfo(os_id)
    assert (g.id, g.family, g.distro, g.version, g.name) == (os_id, family, distro, version, name)
    xml = domain(
        "<metadata><libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'>"
        f"<libosinfo:os id='{os_id}'/></libosinfo:libosinfo></metadata>"
    )
    assert parse(xml).guest_os == g


def test_xen_pv_and_foreign_architectures_are_vms() -> None:
    pv = parse("<domain type='xen'><name>pv</name><memory>524288</memory><bootloader>/usr/bin/pygrub</bootloader>"
               "<os><type>linux</type></os><devices><disk type='file'><driver name='tap' type='aio'/>"
               "<source file='/xen/pv.img'/><target dev='xvda'/></disk></devices></domain>")
    assert (pv.hypervisor, pv.os_type, pv.metadata["bootloader"]) == ("xen", "linux", "/usr/bin/pygrub")
    assert (pv.disks[0].bus, pv.disks[0].format) == ("xen", "raw")
    arm = parse(domain("", os="<os><type arch='aarch64' machine='virt'>hvm</type></os>"))
    assert (arm.arch, arm.machine) == ("aarch64", "virt")


def test_memory_from_numa_cells_when_memory_is_absent() -> None:
    vm = parse("<domain><name>n</name><vcpu>2</vcpu><os><type>hvm</type></os><cpu><numa>"
               "<cell id='0' cpus='0' memory='1' unit='GiB'/><cell id='1' cpus='1' memory='512' unit='MiB'/>"
               "</numa></cpu></domain>")
    assert vm.memory == GiB + 512 * 1024**2 and vm.tuning.numa_nodes == 2


def test_comments_and_missing_optional_elements_are_fine() -> None:
    vm = parse("<domain><!-- c --><name>bare</name><memory>1024</memory></domain>")
    assert (vm.vcpus, vm.memory, vm.os_type, vm.disks, vm.firmware.type) == (1, 1024 * 1024, None, [], "bios")


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<domain><name>x</name>", "malformed XML"),
        ("", "malformed XML"),
        ("<network><name>default</name></network>", "not a libvirt domain XML (root element <network>)"),
        ("<node/>", "test-driver node"),
        ("<domain><memory>1</memory></domain>", "no <name>"),
        (domain("<vcpu>two</vcpu>"), "domain 't': <vcpu> 'two' is not a whole number"),
        (domain("<vcpu>0</vcpu>"), "<vcpu> is 0"),
        (domain("<vcpu>99999999</vcpu>"), "absurd"),
        ("<domain><name>t</name><memory unit='parsec'>1</memory></domain>", "unknown unit 'parsec'"),
        ("<domain><name>t</name><memory>-5</memory></domain>", "negative"),
        ("<domain><name>t</name><memory>0</memory></domain>", "<memory> is 0"),
        ("<domain><name>t</name><memory unit='EiB'>1</memory></domain>", "absurd"),
        ("<domain><name>t</name><memory>12abc</memory></domain>", "not a whole number"),
        ("<domain><name>t</name></domain>", "no <memory>"),
        (domain("<uuid>not-a-uuid</uuid>"), "is not a UUID"),
        (domain("", devices="<disk type='file'><source file='/a'/></disk>"), "disk #1 has no <target dev"),
        (domain("", devices="<disk><target dev='vda'/></disk><disk><target dev='vda'/></disk>"),
         "two disks with target 'vda'"),
        (domain("", devices="<hostdev mode='subsystem' type='pci'><source><address bus='zz'/></source></hostdev>"),
         "PCI address"),
        (domain("<cpu><topology sockets='x' cores='1' threads='1'/></cpu>"), "<topology sockets> 'x'"),
        (domain("", devices="<disk><target dev='vda'/><boot order='first'/></disk>"), "boot order"),
    ],
)
def test_bad_domains_give_one_clear_line(xml: str, expected: str) -> None:
    assert expected in bad(xml)


def test_containers_are_refused_clearly() -> None:
    msg = bad("<domain type='lxc'><name>ct</name><memory>1024</memory><os><type>exe</type><init>/sbin/init</init></os></domain>")
    assert "domain 'ct'" in msg and "container" in msg and "not a virtual machine" in msg


def test_xxe_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0")
    xml = (f"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM 'file://{secret}'>]>"
           "<domain><name>&x;</name><memory>1</memory></domain>")
    msg = bad(xml)
    assert "refused unsafe XML" in msg and "root:x" not in msg


def test_entity_expansion_is_refused() -> None:
    lol = "<!ENTITY a 'lol'>" + "".join(
        f"<!ENTITY {chr(98 + i)} '{('&' + chr(97 + i) + ';') * 10}'>" for i in range(8))
    xml = f"<?xml version='1.0'?><!DOCTYPE d [{lol}]><domain><name>&i;</name><memory>1</memory></domain>"
    assert "refused unsafe XML" in bad(xml)


def test_binary_garbage_is_malformed() -> None:
    assert "malformed XML" in bad(b"\x00\x01\x02\xff" * 100)


def test_read_domain_xml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"/nope\.xml: No such file"):
        read_domain_xml(str(tmp_path / "nope.xml"))
    huge = tmp_path / "huge.xml"
    with open(huge, "wb") as fh:
        fh.truncate(17 * 1024**2)
    with pytest.raises(SourceError, match="too large"):
        read_domain_xml(str(huge))
    good = tmp_path / "good.xml"
    good.write_text(domain("<uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>"))
    vm = read_domain_xml(str(good))
    assert vm.source.kind is SourceKind.DOMAIN_XML and vm.source.location == str(good)
    assert vm.power_state is PowerState.UNKNOWN  # an offline file does not know


# ------------------------------------------------------------------- fixture domains


def test_fixture_domains_read_offline() -> None:
    vms = {p.stem: read_domain_xml(str(p)) for p in sorted((FIXTURES / "libvirt" / "domains").glob("*.xml"))}
    assert set(vms) == {"web-01", "win2k22-sql", "app-multi", "gpu-worker", "legacy-i440fx",
                        "web-01-clone", "DB_Server.Prod"}
    win = vms["win2k22-sql"]
    assert (win.firmware.type, win.firmware.secure_boot, win.firmware.tpm_version) == ("efi", True, "2.0")
    assert [d.bus for d in win.disks] == ["ide", "ide", "ide"] and win.nics[0].model == "e1000"
    assert win.clock_offset == "localtime" and win.guest_os and win.guest_os.family == "windows"
    gpu = vms["gpu-worker"]
    assert [d.details["address"] for d in gpu.devices if d.kind == "pci-passthrough"] == [
        "0000:65:00.0", "0000:65:00.1"]
    assert gpu.tuning.cpu_pinning and gpu.tuning.hugepages and gpu.tuning.numa_nodes == 2
    assert vms["legacy-i440fx"].machine == "pc-i440fx-2.9"
    assert vms["web-01"].nics[0].mac == vms["web-01-clone"].nics[0].mac
    assert vms["app-multi"].power_state is PowerState.PAUSED
