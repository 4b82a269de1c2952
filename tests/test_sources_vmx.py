"""VMware .vmx files with their .vmdk disks: the mapping, snapshot chains, bad input."""

from __future__ import annotations

import json
import os

from pathlib import Path

import pytest

from migrate.core.model import SourceKind
from migrate.core.errors import SourceError
from migrate.sources.vmdk import parse_descriptor, VmdkError
from migrate.sources.vmx import disk_target, read_vmx
from tests.conftest import qemu_img
from tests.offline_support import make_vmdk

FULL_VMX = """.encoding = "windows-1252"
config.version = "8"
virtualHW.version = "19"
displayName = "Caf\xe9 |22db|22 %32"
annotation = "first line|0Asecond |7C line"
guestOS = "windows2019srv-64"
uuid.bios = "56 4d 9e 12 34 56 78 9a-bc de f0 12 34 56 78 9a"
memsize = "8192"
numvcpus = "4"
cpuid.coresPerSocket = "2"
firmware = "efi"
uefi.secureBoot.enabled = "TRUE"
vtpm.present = "TRUE"
vhv.enable = "TRUE"
sched.cpu.affinity = "0,1,2,3"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "app.vmdk"
scsi0:0.deviceType = "scsi-hardDisk"
scsi0:8.present = "TRUE"
scsi0:8.fileName = "delta-000001.vmdk"
scsi0:8.mode = "independent-persistent"
scsi1.present = "TRUE"
scsi1.virtualDev = "lsisas1068"
scsi1:2.present = "TRUE"
scsi1:2.fileName = "sparse.vmdk"
scsi1:3.present = "TRUE"
scsi1:3.fileName = "gone.vmdk"
scsi1:4.present = "FALSE"
scsi1:4.fileName = "ignored.vmdk"
sata0.present = "TRUE"
sata0:1.present = "TRUE"
sata0:1.deviceType = "cdrom-image"
sata0:1.fileName = "/isos/install.iso"
nvme0.present = "TRUE"
nvme0:0.present = "TRUE"
nvme0:0.fileName = "[datastore1] app/nvme.vmdk"
ide1:0.present = "TRUE"
ide1:0.deviceType = "atapi-cdrom"
ide1:0.fileName = "/dev/cdrom"
ide1:1.present = "TRUE"
ide1:1.clientDevice = "TRUE"
ide1:1.deviceType = "cdrom-raw"
floppy0.present = "TRUE"
floppy0.fileType = "file"
floppy0.fileName = "boot.flp"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "Prod LAN"
ethernet0.addressType = "static"
ethernet0.address = "00:50:56:00:11:22"
ethernet1.present = "TRUE"
ethernet1.virtualDev = "e1000e"
ethernet1.connectionType = "nat"
ethernet1.addressType = "generated"
ethernet1.generatedAddress = "00:0C:29:AA:BB:CC"
ethernet2.present = "FALSE"
serial0.present = "TRUE"
serial0.fileType = "file"
serial0.fileName = "serial.log"
sound.present = "TRUE"
sound.virtualDev = "hdaudio"
usb_xhci.present = "TRUE"
pciPassthru0.present = "TRUE"
pciPassthru0.id = "00000:004:00.0"
pciPassthru0.deviceId = "0x10d3"
svga.vramSize = "8388608"
"""


def _flat_descriptor(folder: Path, name: str, size: str = "16M") -> Path:
    """A monolithicFlat VMDK: text descriptor + -flat extent, as ESX stores disks."""
    path = folder / name
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(path), size)
    return path


@pytest.fixture
def vm_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "my vm"
    folder.mkdir()
    _flat_descriptor(folder, "app.vmdk", "16M")
    _flat_descriptor(folder, "base.vmdk", "8M")
    (folder / "delta-000001-delta.vmdk").write_bytes(b"\0" * 4096)
    (folder / "delta-000001.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=fffffffe\n'
        'createType="vmfsSparse"\nparentFileNameHint="base.vmdk"\n'
        'RW 16384 VMFSSPARSE "delta-000001-delta.vmdk"\n'
        'ddb.adapterType = "lsilogic"\n')
    base_sparse = make_vmdk(folder, "sparse-base.vmdk", size="24M", subformat="monolithicSparse")
    qemu_img("create", "-q", "-f", "vmdk", "-b", base_sparse.name, "-F", "vmdk",
             str(folder / "sparse.vmdk"))
    (folder / "x.vmx").write_bytes(FULL_VMX.encode("windows-1252"))
    return folder


def test_full_mapping(vm_folder: Path) -> None:
    vmx = vm_folder / "x.vmx"
    vm = read_vmx(str(vmx))
    assert vm.source.kind is SourceKind.VMX and vm.source.location == str(vmx)
    assert vm.name == 'Café "db" 2' and vm.description == "first line\nsecond | line"
    assert vm.uuid == "564d9e12-3456-789a-bcde-f0123456789a"
    assert vm.memory == 8 * 1024**3 and vm.vcpus == 4
    assert (vm.topology.sockets, vm.topology.cores) == (2, 2)
    assert (vm.firmware.type, vm.firmware.secure_boot, vm.firmware.tpm_version) == ("efi", True, "2.0")
    assert vm.machine == "vmx-19" and vm.arch == "x86_64" and vm.hypervisor == "vmware"
    assert vm.guest_os.family == "windows" and vm.guest_os.version == "2019"
    assert vm.tuning.cpu_pinning and "nested-virt" in vm.features

    disks = {d.target: d for d in vm.disks}
    assert list(disks) == ["sda", "sdh", "sdr", "sds", "sdb", "hdc", "nvme0n1", "fda"]
    app = disks["sda"]
    assert (app.bus, app.controller_model, app.format) == ("scsi", "pvscsi", "vmdk")
    assert app.path == str(vm_folder / "app.vmdk") and app.error is None
    assert app.virtual_size == 16 * 1024**2
    assert app.allocated_size == (vm_folder / "app-flat.vmdk").stat().st_size
    delta = disks["sdh"]  # scsi0:8 -> 0*15 + 8 - 1 = 7 -> sdh
    assert delta.virtual_size == 16384 * 512 and delta.allocated_size == 4096
    assert [b.path for b in delta.backing_chain] == [str(vm_folder / "base.vmdk")]
    assert vm.metadata["vmx.disk.sdh.mode"] == "independent-persistent"
    sparse = disks["sdr"]  # scsi1:2 -> 15 + 2 = 17 -> sdr; a sparse file read by qemu-img
    assert sparse.controller_model == "lsisas1068" and sparse.virtual_size == 24 * 1024**2
    assert [Path(b.path).name for b in sparse.backing_chain] == ["sparse-base.vmdk"]
    gone = disks["sds"]
    assert gone.virtual_size is None and gone.allocated_size is None
    assert "disk file is missing" in gone.error and "gone.vmdk" in gone.error
    cd = disks["sdb"]  # sata0:1 -> sdb
    assert (cd.device, cd.bus, cd.path, cd.readonly) == ("cdrom", "sata", "/isos/install.iso", True)
    nvme = disks["nvme0n1"]
    assert nvme.path == "[datastore1] app/nvme.vmdk" and "datastore1" in nvme.error
    host_cd = disks["hdc"]
    assert (host_cd.device, host_cd.source_type, host_cd.path) == ("cdrom", "block", "/dev/cdrom")
    assert disks["fda"].path == str(vm_folder / "boot.flp")

    assert [(n.mac, n.model, n.type, n.network) for n in vm.nics] == [
        ("00:50:56:00:11:22", "vmxnet3", "bridge", "Prod LAN"),
        ("00:0c:29:aa:bb:cc", "e1000e", "user", None)]
    kinds = {d.kind: d for d in vm.devices}
    assert kinds["pci-passthrough"].details["deviceId"] == "0x10d3"
    assert kinds["serial"].details["path"] == "serial.log"
    assert kinds["sound"].model == "hdaudio" and kinds["video"].details["vram"] == "8388608"


def test_minimal_vmx_defaults_like_libvirt(tmp_path: Path) -> None:
    vmx = tmp_path / "tiny.vmx"
    vmx.write_text('config.version = "8"\nvirtualHW.version = "08"\n')
    vm = read_vmx(str(vmx))
    assert vm.machine == "vmx-08"  # a leading zero is still decimal
    assert vm.name == "tiny" and vm.memory == 32 * 1024**2 and vm.vcpus == 1
    assert vm.uuid is None and vm.firmware.type == "bios" and vm.disks == [] and vm.nics == []


@pytest.mark.parametrize("text, expected", [
    (b"\x00\x01KDMV binary", "binary data"),
    (b'displayName = "x"\nthis line has no equals sign\n', "line 2: expected key"),
    (b'displayName = "unterminated\n', "unterminated quoted value"),
    (b"# only a comment\n", "no settings"),
    (b'memsize = "-4"\n', "memsize = -4 MiB"),
    (b'memsize = "999999999999"\n', "not a possible memory size"),
    (b'memsize = "lots"\n', "is not a number"),
    (b'numvcpus = "0"\n', "numvcpus = 0"),
    (b'uuid.bios = "not a uuid"\n', "is not a UUID"),
    (b'firmware = "coreboot"\n', "expected efi or bios"),
    (b'ethernet0.present = "TRUE"\nethernet0.addressType = "static"\n'
     b'ethernet0.address = "zz:zz"\n', "is not a MAC address"),
    (b'ethernet0.present = "TRUE"\nethernet0.addressType = "weird"\n', "expected generated"),
    (b'scsi0.present = "maybe"\nscsi0:0.present = "TRUE"\n', "is not a boolean"),
    (b'.encoding = "klingon"\n', "unknown .encoding"),
    (b'.encoding = "UTF-8"\ndisplayName = "\xff\xfe"\n', "not valid UTF-8"),
])
def test_bad_vmx_gives_one_line_naming_the_file(tmp_path: Path, text: bytes, expected: str) -> None:
    vmx = tmp_path / "bad vm.vmx"
    vmx.write_bytes(text)
    with pytest.raises(SourceError) as err:
        read_vmx(str(vmx))
    message = str(err.value)
    assert message.startswith(f"{vmx}: ") and "\n" not in message and expected in message


def test_broken_vmdk_descriptor_is_a_disk_error(tmp_path: Path) -> None:
    (tmp_path / "d.vmdk").write_text('createType="monolithicFlat"\nRW -5 FLAT "d-flat.vmdk" 0\n')
    (tmp_path / "big.vmdk").write_text('createType="monolithicFlat"\n'
                                       'RW 999999999999999 FLAT "big-flat.vmdk" 0\n')
    (tmp_path / "v.vmx").write_text(
        'scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "d.vmdk"\n'
        'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "big.vmdk"\n')
    vm = read_vmx(str(tmp_path / "v.vmx"))
    assert "negative extent size" in vm.disks[0].error
    assert "64 TiB" in vm.disks[1].error
    assert "extent file 'big-flat.vmdk'" not in vm.disks[1].error  # one clear reason


def test_descriptor_parser_and_target_names() -> None:
    desc = parse_descriptor('# Disk DescriptorFile\ncreateType="twoGbMaxExtentSparse"\n'
                            'RW 4192256 SPARSE "x-s001.vmdk"\nRW 2048 SPARSE "x-s002.vmdk"\n'
                            'RW 100 ZERO\n', "x.vmdk")
    assert desc.virtual_size == (4192256 + 2048 + 100) * 512 and len(desc.extents) == 3
    with pytest.raises(VmdkError, match="not a VMDK descriptor"):
        parse_descriptor("just = words\n", "y.vmdk")
    with pytest.raises(VmdkError, match="line 1: not a descriptor line"):
        parse_descriptor("hello world\n", "y.vmdk")
    assert disk_target("scsi", 0, 6) == "sdg" and disk_target("scsi", 0, 8) == "sdh"
    assert disk_target("scsi", 1, 0) == "sdp" and disk_target("scsi", 3, 15) == "sdbh"
    assert disk_target("ide", 1, 1) == "hdd" and disk_target("sata", 1, 0) == "sdae"


def test_scan_reports_a_missing_vmdk_as_one_line_and_keeps_the_vm(cli, tmp_path: Path) -> None:
    vmx = tmp_path / "lost.vmx"
    vmx.write_text(
        'displayName = "lost"\nmemsize = "512"\nscsi0.present = "TRUE"\n'
        'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "lost.vmdk"\n'
    )
    result = cli("scan", str(tmp_path), "-o", "json", ok=False)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "lost.vmx" in lines[0] and "VM 'lost': disk sda" in lines[0]
    assert "lost.vmdk" in lines[0]
    data = json.loads(result.stdout)
    assert [vm["name"] for vm in data["vms"]] == ["lost"] and data["vms"][0]["disks"][0]["error"]


def _truncated_export(folder: Path, subformat: str = "monolithicFlat") -> Path:
    """``vm1.vmx`` with one 64 MiB disk ``x.vmdk`` (qemu-img ``subformat``)."""
    folder.mkdir()
    qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}",
             str(folder / "x.vmdk"), "64M")
    vmx = folder / "vm1.vmx"
    vmx.write_text('displayName = "vm1"\nmemSize = "256"\nscsi0.present = "TRUE"\n'
                   'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "x.vmdk"\n')
    return vmx


def test_truncated_flat_extent_is_refused_at_scan_assess_and_convert(cli, tmp_path: Path) -> None:
    # the descriptor declares RW 131072 FLAT "x-flat.vmdk" 0 (64 MiB); the file is 1 MiB
    vmx = _truncated_export(tmp_path / "export")
    assert 'RW 131072 FLAT "x-flat.vmdk" 0' in (vmx.parent / "x.vmdk").read_text()
    os.truncate(vmx.parent / "x-flat.vmdk", 1 << 20)
    expected = ("x.vmdk: extent file 'x-flat.vmdk' is 1048576 bytes, the descriptor declares "
                "67108864 bytes (131072 sectors at offset 0): truncated")
    (disk,) = read_vmx(str(vmx)).disks
    assert disk.error == f"{vmx.parent / 'x.vmdk'}: extent file 'x-flat.vmdk' is 1048576 bytes, " \
        "the descriptor declares 67108864 bytes (131072 sectors at offset 0): truncated"
    inventory = tmp_path / "inv.yaml"
    scanned = cli("scan", str(vmx), "--output-file", str(inventory), ok=False)
    assert scanned.exit_code == 1 and expected in scanned.stderr
    assessed = cli("assess", str(inventory), "-o", "json", ok=False)
    assert assessed.exit_code != 0
    (concern,) = [c for c in json.loads(assessed.stdout)["vm1"]["concerns"]
                  if c["id"] == "disk-unreadable"]
    assert concern["severity"] == "critical" and expected in concern["message"]
    converted = cli("convert", str(inventory), "vm1", "--to", str(tmp_path / "out"), ok=False)
    assert converted.exit_code != 0 and expected in converted.stderr
    assert not list((tmp_path / "out").rglob("*.qcow2"))


def test_extent_truncated_after_scan_is_refused_at_convert(cli, tmp_path: Path) -> None:
    # twoGbMaxExtentFlat: two extents; the second shrinks between scan and convert
    vmx = _truncated_export(tmp_path / "export", "twoGbMaxExtentFlat")
    inventory = tmp_path / "inv.yaml"
    cli("scan", str(vmx), "--output-file", str(inventory), ok=True)
    extents = sorted(vmx.parent.glob("x-f*.vmdk"))
    assert len(extents) == 1  # 64 MiB fits one 2 GiB extent: add a second by hand
    text = (vmx.parent / "x.vmdk").read_text()
    os.truncate(extents[0], 48 << 20)
    (vmx.parent / "x-f002.vmdk").write_bytes(b"\x5a" * (16 << 20))
    (vmx.parent / "x.vmdk").write_text(text.replace(
        'RW 131072 FLAT "x-f001.vmdk" 0',
        'RW 98304 FLAT "x-f001.vmdk" 0\nRW 32768 FLAT "x-f002.vmdk" 0'))
    cli("scan", str(vmx), "--output-file", str(inventory), ok=True)
    os.truncate(vmx.parent / "x-f002.vmdk", 8 << 20)  # after the scan
    converted = cli("convert", str(inventory), "vm1", "--to", str(tmp_path / "out"), ok=False)
    assert converted.exit_code != 0
    assert "x.vmdk: extent file 'x-f002.vmdk' is 8388608 bytes, the descriptor declares " \
        "16777216 bytes (32768 sectors at offset 0): truncated" in converted.stderr


def test_sparse_extent_smaller_than_declared_is_a_disk_error(tmp_path: Path) -> None:
    vmx = _truncated_export(tmp_path / "export", "twoGbMaxExtentSparse")
    text = (vmx.parent / "x.vmdk").read_text()
    assert 'RW 131072 SPARSE "x-s001.vmdk"' in text
    (vmx.parent / "x.vmdk").write_text(text.replace("RW 131072 SPARSE", "RW 262144 SPARSE"))
    (disk,) = read_vmx(str(vmx)).disks
    assert disk.error == f"{vmx.parent / 'x.vmdk'}: extent file 'x-s001.vmdk' holds 67108864 " \
        "bytes (sparse header), the descriptor declares 134217728 bytes"
