"""Proxmox VE ``qemu-server/<vmid>.conf`` files as an offline source (issue 12 kind 12).

The configurations are written the way ``qm config`` / /etc/pve/qemu-server keeps them
(pve-qemu-server PVE/QemuServer.pm parse_vm_config; qm.conf(5)); volumes resolve with
pve-storage's Plugin.pm rules (dir: images/<vmid>/<file>, iso: template/iso/<file>,
LVM/ZFS: <vg or pool folder>/<name>) under the folders given with --pve-storage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from migrate.core.serialize import load_inventory
from migrate.core.errors import SourceError
from migrate.sources.pve import guest_os_from_ostype, parse_size, read_pve_config, volume_path
from tests.conftest import qemu_img
from tests.manifests_support import schema_validator

WIN_UUID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
LINUX_UUID = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"

# Windows Server 2022 on OVMF with Secure Boot keys, a TPM 2.0 and q35, disks on LVM-thin.
WINDOWS = f"""\
#Domain controller%2C site A
agent: 1
bios: ovmf
boot: order=sata0;ide2;net0
cores: 4
cpu: x86-64-v2-AES
efidisk0: local-lvm:vm-101-disk-0,efitype=4m,pre-enrolled-keys=1,size=4M
ide2: local:iso/virtio-win-0.1.240.iso,media=cdrom,size=612812K
machine: pc-q35-8.1
memory: 8192
meta: creation-qemu=8.1.2,ctime=1700000000
name: DC01
net0: e1000=BC:24:11:5E:00:01,bridge=vmbr0,firewall=1
numa: 0
ostype: win11
sata0: local-lvm:vm-101-disk-1,discard=on,size=24M,ssd=1
scsihw: virtio-scsi-single
smbios1: uuid={WIN_UUID}
sockets: 1
tpmstate0: local-lvm:vm-101-disk-2,size=4M,version=v2.0
vmgenid: 1d8f2c3a-0000-4000-8000-000000000001
"""

# Debian on virtio-scsi, a qcow2 on dir storage and a raw zvol, two snapshots (whose
# sections say other things) and a pending change.
LINUX = f"""\
agent: enabled=1,fstrim_cloned_disks=1
boot: order=scsi0;net0
cores: 2
cpu: host
memory: 2048
name: web-01
net0: virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20
net1: virtio=BC:24:11:00:00:02,bridge=vmbr1
ostype: l26
parent: after-patch
scsi0: local:102/vm-102-disk-0.qcow2,discard=on,iothread=1,size=16M
scsi1: local-zfs:vm-102-disk-1,backup=0,size=8M
scsihw: virtio-scsi-single
smbios1: uuid={LINUX_UUID}
sockets: 2
vmgenid: 6c5d7b2e-0000-4000-8000-000000000002

[before-patch]
cores: 1
memory: 1024
name: web-01-old
scsi0: local:102/vm-102-disk-0.qcow2,size=8M
snaptime: 1700000000

[after-patch]
cores: 2
memory: 2048
parent: before-patch
scsi0: local:102/vm-102-disk-0.qcow2,size=16M
snaptime: 1700100000
vmstate: local:102/vm-102-state-after-patch.raw

[PENDING]
memory: 4096
"""

# Unmapped storage: one error line naming the VM and the disk, the VM stays.
CEPH = """\
boot: order=virtio0
cores: 1
memory: 1024
name: app
net0: virtio=BC:24:11:00:00:09,bridge=vmbr0
ostype: l26
virtio0: ceph-pool:vm-103-disk-0,size=8M
"""


@pytest.fixture
def pve(tmp_path: Path) -> dict[str, Path]:
    """An /etc/pve copy and the three storages' folders, with real tiny images."""
    conf = tmp_path / "pve" / "qemu-server"
    conf.mkdir(parents=True)
    (conf / "101.conf").write_text(WINDOWS)
    (conf / "102.conf").write_text(LINUX)
    (conf / "103.conf").write_text(CEPH)
    lxc = tmp_path / "pve" / "lxc"
    lxc.mkdir()
    (lxc / "200.conf").write_text("arch: amd64\nhostname: ct\nmemory: 512\nrootfs: local-lvm:vm-200-disk-0,size=8G\n")
    vz = tmp_path / "var-lib-vz"
    (vz / "images" / "102").mkdir(parents=True)
    (vz / "template" / "iso").mkdir(parents=True)
    qemu_img("create", "-q", "-f", "qcow2", str(vz / "images" / "102" / "vm-102-disk-0.qcow2"), "16M")
    (vz / "template" / "iso" / "virtio-win-0.1.240.iso").write_bytes(b"\0" * 2048)
    lvm = tmp_path / "dev-pve"  # /dev/pve: the LVs of the volume group
    lvm.mkdir()
    for lv, size in (("vm-101-disk-0", "4M"), ("vm-101-disk-1", "24M"), ("vm-101-disk-2", "4M")):
        qemu_img("create", "-q", "-f", "raw", str(lvm / lv), size)
    zvol = tmp_path / "dev-zvol-rpool-data"  # /dev/zvol/rpool/data
    zvol.mkdir()
    qemu_img("create", "-q", "-f", "raw", str(zvol / "vm-102-disk-1"), "8M")
    return {"root": tmp_path / "pve", "conf": conf, "local": vz, "local-lvm": lvm, "local-zfs": zvol}


def _storage(pve: dict[str, Path]) -> list[str]:
    return [a for sid in ("local", "local-lvm", "local-zfs") for a in ("--pve-storage", f"{sid}={pve[sid]}")]


def test_windows_efi_tpm_config_reads_firmware_disks_nics_and_guest(pve: dict[str, Path]) -> None:
    storage = {sid: str(pve[sid]) for sid in ("local", "local-lvm")}
    vm = read_pve_config(str(pve["conf"] / "101.conf"), storage)
    assert (vm.name, vm.uuid, vm.machine, vm.vcpus, vm.memory) == ("DC01", WIN_UUID, "pc-q35-8.1", 4, 8 * 2**30)
    assert vm.description == "Domain controller, site A"
    assert (vm.firmware.type, vm.firmware.secure_boot, vm.firmware.tpm_version) == ("efi", True, "2.0")
    assert vm.guest_os is not None
    assert (vm.guest_os.family, vm.guest_os.distro, vm.guest_os.version) == ("windows", "win", "11")
    assert vm.clock_offset == "localtime"  # qemu-server's default for Windows ostypes
    assert vm.tuning.cpu_model == "x86-64-v2-AES"
    # efidisk0 and tpmstate0 are firmware state, not guest disks
    assert [(d.target, d.device, d.bus, d.path, d.format, d.boot_order) for d in vm.disks] == [
        ("ide2", "cdrom", "ide", str(pve["local"] / "template/iso/virtio-win-0.1.240.iso"), "raw", 2),
        ("sata0", "disk", "sata", str(pve["local-lvm"] / "vm-101-disk-1"), "raw", 1),
    ]
    assert vm.disks[1].virtual_size == 24 * 2**20 and vm.disks[1].source_type == "block"
    assert [(n.mac, n.model, n.attachment, n.boot_order) for n in vm.nics] == [
        ("bc:24:11:5e:00:01", "e1000", "bridge:vmbr0", 3)]
    assert any(d.kind == "channel" and d.details["name"] == "org.qemu.guest_agent.0" for d in vm.devices)
    assert vm.metadata["efidisk"] == "local-lvm:vm-101-disk-0" and vm.snapshots == 0


def test_snapshot_sections_never_replace_the_current_configuration(pve: dict[str, Path]) -> None:
    storage = {sid: str(pve[sid]) for sid in ("local", "local-zfs")}
    vm = read_pve_config(str(pve["conf"] / "102.conf"), storage)
    assert (vm.name, vm.vcpus, vm.memory, vm.snapshots) == ("web-01", 4, 2 * 2**30, 2)
    assert vm.topology is not None and (vm.topology.sockets, vm.topology.cores) == (2, 2)
    assert vm.metadata["current_snapshot"] == "after-patch" and vm.metadata["pending_changes"] == "yes"
    assert (vm.machine, vm.firmware.type, vm.tuning.cpu_mode) == ("pc", "bios", "host-passthrough")
    assert [(d.target, d.path, d.format, d.controller_model, d.virtual_size) for d in vm.disks] == [
        ("scsi0", str(pve["local"] / "images/102/vm-102-disk-0.qcow2"), "qcow2", "virtio-scsi", 16 * 2**20),
        ("scsi1", str(pve["local-zfs"] / "vm-102-disk-1"), "raw", "virtio-scsi", 8 * 2**20),
    ]
    assert [n.attachment for n in vm.nics] == ["bridge:vmbr0/vlan20", "bridge:vmbr1"]
    assert vm.guest_os is not None and vm.guest_os.family == "linux"


@pytest.mark.parametrize("volume, expected", [
    ("local:../../../etc/shadow", "follows no Proxmox storage layout"),
    ("local:102/../../../../etc/shadow", "follows no Proxmox storage layout"),
    ("local:102/..", "leaves its storage"),
    ("local-lvm:..", "leaves its storage"),
    ("local-lvm:/etc/shadow", "follows no Proxmox storage layout"),
    ("local:iso/../../x.iso", "follows no Proxmox storage layout"),
    ("/dev/sdb", "host device /dev/sdb is passed through directly"),
    ("/etc/shadow", "host path /etc/shadow is passed through directly"),
    ("vm-102-disk-0", "is not a Proxmox volume ID"),
    ("local-lvm:vm-104-disk-0,size=99999999T", "size=99999999T is absurd"),
])
def test_volume_names_never_leave_their_storage(tmp_path: Path, volume: str, expected: str) -> None:
    conf = tmp_path / "qemu-server" / "104.conf"
    conf.parent.mkdir()
    size = "" if "size=" in volume else ",size=1G"
    conf.write_text(f"name: evil\nmemory: 512\nscsi0: {volume}{size}\n")
    vm = read_pve_config(str(conf), {"local": str(tmp_path / "vz"), "local-lvm": str(tmp_path / "pve")})
    (disk,) = vm.disks
    assert disk.error is not None and expected in disk.error
    assert disk.path is None


def test_volume_path_rules_follow_pve_storage() -> None:
    assert volume_path("/var/lib/vz", "100/vm-100-disk-0.qcow2") == (
        "/var/lib/vz/images/100/vm-100-disk-0.qcow2", "qcow2", "file")
    assert volume_path("/var/lib/vz", "100/base-100-disk-0.raw/101/vm-101-disk-0.qcow2") == (
        "/var/lib/vz/images/101/vm-101-disk-0.qcow2", "qcow2", "file")
    assert volume_path("/mnt/nfs", "105/vm-105-disk-1.vmdk") == ("/mnt/nfs/images/105/vm-105-disk-1.vmdk", "vmdk", "file")
    assert volume_path("/var/lib/vz", "iso/debian.iso") == ("/var/lib/vz/template/iso/debian.iso", "raw", "file")
    assert volume_path("/dev/pve", "vm-100-disk-0") == ("/dev/pve/vm-100-disk-0", "raw", "block")
    assert volume_path("/dev/zvol/rpool/data", "base-100-disk-0/vm-101-disk-0") == (
        "/dev/zvol/rpool/data/vm-101-disk-0", "raw", "block")


def test_ostype_and_size_tables() -> None:
    cases = {
        "l26": ("linux", None, None), "l24": ("linux", None, None), "win11": ("windows", "win", "11"),
        "win10": ("windows", "win", "10"), "win7": ("windows", "win", "7"), "w2k8": ("windows", "win", "2008"),
        "wxp": ("windows", "win", "xp"), "solaris": ("solaris", None, None), "other": ("other", None, None),
        "w2k19": ("windows", "win", "2019"),
    }
    for ostype, (family, distro, version) in cases.items():
        guest = guest_os_from_ostype(ostype)
        assert guest is not None and (guest.family, guest.distro, guest.version) == (family, distro, version), ostype
    assert guest_os_from_ostype(None) is None
    assert (parse_size("32G"), parse_size("612812K"), parse_size("4M"), parse_size("1.5T"), parse_size("x")) == (
        32 * 2**30, 612812 * 1024, 4 * 2**20, int(1.5 * 2**40), None)


def test_legacy_boot_line_and_defaults(tmp_path: Path) -> None:
    conf = tmp_path / "qemu-server" / "105.conf"
    conf.parent.mkdir()
    conf.write_text("bootdisk: virtio1\nboot: dcn\nide2: none,media=cdrom\nmemory: 1024\n"
                    "net0: rtl8139=52:54:00:12:34:56\nvirtio0: local:105/vm-105-disk-0.raw,size=1G\n"
                    "virtio1: local:105/vm-105-disk-1.raw,size=2G\n")
    vm = read_pve_config(str(conf), {"local": str(tmp_path)})
    assert vm.name == "VM 105" and vm.uuid is None and vm.vcpus == 1
    assert {d.target: d.boot_order for d in vm.disks} == {"ide2": 1, "virtio0": None, "virtio1": 2}
    assert vm.disks[0].source_type == "none" and vm.disks[0].error is None
    assert vm.nics[0].boot_order == 3 and vm.nics[0].type == "user" and vm.nics[0].model == "rtl8139"


@pytest.mark.parametrize("text, expected", [
    ("arch: amd64\nrootfs: local:200/vm-200-disk-0.raw,size=8G\n", "a Proxmox container (LXC) configuration"),
    ("memory: lots\n", "VM 106: memory 'lots' is not a whole number"),
    ("[snap]\nmemory: 512\n", "no configuration options"),
    ("name: x\nthis is not an option\n", "line 2 is not 'key: value'"),
    ("smbios1: uuid=nope\n", "smbios1 uuid 'nope' is not a UUID"),
])
def test_broken_configs_are_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    conf = tmp_path / "106.conf"
    conf.write_text(text)
    with pytest.raises(SourceError) as info:
        read_pve_config(str(conf), {})
    message = str(info.value)
    assert message.startswith(f"{conf}: ") and expected in message and "\n" not in message


def test_scan_assess_convert_manifests(cli, pve: dict[str, Path], tmp_path: Path, shared: Path) -> None:  # type: ignore[no-untyped-def]
    inv_file = tmp_path / "inventory.json"
    result = cli("scan", str(pve["root"]), *_storage(pve), "-o", "json", "--output-file", str(inv_file))
    assert result.exit_code == 1  # the unmapped Ceph disk
    errors = [line for line in result.stderr.splitlines() if line.startswith("vmmove: error:")]
    assert errors == [
        f"vmmove: error: {pve['conf'] / '103.conf'}: VM 'app': disk virtio0: volume ceph-pool:vm-103-disk-0 "
        "is on Proxmox storage 'ceph-pool', which is not mapped (give --pve-storage ceph-pool=PATH)"]
    inv = load_inventory(inv_file)
    assert [vm.name for vm in inv.vms] == ["DC01", "web-01", "app"]  # lxc/200.conf is not walked
    assert {vm.source.kind.value for vm in inv.vms} == {"pve"}

    report = json.loads(cli("assess", str(inv_file), "-o", "json", "--fail-on", "never", ok=True).stdout)
    ids = {name: {c["id"] for c in entry["concerns"]} for name, entry in report.items()}
    assert ids == {
        "DC01": {"clock-localtime", "tpm", "name-not-dns1123", "guest-windows", "secure-boot", "disk-block", "cdrom"},
        "web-01": {"machine-i440fx", "snapshots", "disk-block"},  # the zvol is a block device
        "app": {"disk-unreadable", "machine-i440fx"},
    }
    assert report["app"]["summary"] == "1 critical, 1 warning"
    assert "ceph-pool" in next(c["message"] for c in report["app"]["concerns"] if c["id"] == "disk-unreadable")

    work = tmp_path / "work"
    rows = json.loads(cli("convert", str(inv_file), "DC01", "web-01", "--to", str(work), "-o", "json",
                          ok=True).stdout)
    assert sorted((r["vm"], r["disk"], r["status"]) for r in rows) == [
        ("DC01", "ide2", "ignored"), ("DC01", "sata0", "converted"),
        ("web-01", "scsi0", "converted"), ("web-01", "scsi1", "converted")]
    assert sorted(p.name for p in work.glob("*.qcow2")) == ["dc01-sata0.qcow2", "web-01-scsi0.qcow2", "web-01-scsi1.qcow2"]

    out = tmp_path / "out"
    maps = tmp_path / "maps.yaml"  # a Proxmox storage ID is the disk's pool: pool:<storage ID>
    maps.write_text('storage:\n  storageClass: standard\n  overrides:\n    "pool:local-lvm": {storageClass: fast}\n')
    cli("manifests", str(inv_file), "--vm", "DC01", "--vm", "web-01", "--out", str(out), "--workdir", str(work),
        "--map", str(maps),
        "--network", "bridge:vmbr0=pod", "--network", "bridge:vmbr0/vlan20=multus:vms/vlan20",
        "--network", "bridge:vmbr1=multus:vms/lan", "--http-base", "http://images.example/",
        "--validate-schemas", str(shared / "schemas"), ok=True)
    validator = schema_validator(shared)
    win = yaml.safe_load((out / "default" / "dc01.yaml").read_text())
    web = yaml.safe_load((out / "default" / "web-01.yaml").read_text())
    for manifest in (win, web):
        assert validator.virtual_machine(manifest) == []
    domain = win["spec"]["template"]["spec"]["domain"]
    assert domain["firmware"]["bootloader"]["efi"]["secureBoot"] is True
    assert domain["devices"]["tpm"] is not None and domain["features"]["smm"]["enabled"] is True
    assert domain["machine"]["type"] == "q35"
    assert win["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"] == WIN_UUID
    assert [(d["name"], d["disk"]["bus"]) for d in domain["devices"]["disks"]] == [("sata0", "sata")]
    assert domain["devices"]["interfaces"][0]["macAddress"] == "bc:24:11:5e:00:01"
    assert [t["spec"]["storage"]["storageClassName"] for t in win["spec"]["dataVolumeTemplates"]] == ["fast"]
    assert [t["spec"]["storage"]["storageClassName"] for t in web["spec"]["dataVolumeTemplates"]] == [
        "standard", "standard"]
    sizes = {t["metadata"]["name"]: t["spec"]["storage"]["resources"]["requests"]["storage"]
             for t in web["spec"]["dataVolumeTemplates"]}
    assert sizes == {"web-01-scsi0": "16Mi", "web-01-scsi1": "8Mi"}
    web_domain = web["spec"]["template"]["spec"]["domain"]
    assert web_domain["cpu"]["sockets"] == 2 and web_domain["cpu"]["cores"] == 2
    assert web_domain["memory"]["guest"] == "2Gi"
    nets = {n["name"]: n for n in web["spec"]["template"]["spec"]["networks"]}
    assert sorted(n.get("multus", {}).get("networkName", "pod") for n in nets.values()) == ["vms/lan", "vms/vlan20"]


def test_bad_storage_options_are_usage_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "qemu-server" / "100.conf"
    conf.parent.mkdir()
    conf.write_text("memory: 512\n")
    for option, expected in (("local", "expected ID=PATH"), (f"local={tmp_path}/nope", "no such folder"),
                             (f"-bad={tmp_path}", "is not a Proxmox storage ID")):
        result = cli("scan", str(conf), "--pve-storage", option, ok=False)
        assert result.exit_code == 2 and expected in result.stderr, result.stderr


def _loop_device(image: Path) -> str:
    """A loop block device over ``image`` (root and loop support needed, else skip)."""
    import shutil
    import subprocess

    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")
    done = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no loop device here: {done.stderr.strip()}")
    return done.stdout.strip()


def test_block_storage_volumes_may_be_links_to_devices_but_nothing_else_leaves(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    backing = tmp_path / "lv.img"
    qemu_img("create", "-q", "-f", "raw", str(backing), "8M")
    device = _loop_device(backing)
    try:
        vg = tmp_path / "dev-vg"  # /dev/<vg>: links to /dev/dm-N, here to a loop device
        vg.mkdir()
        (vg / "vm-107-disk-0").symlink_to(device)
        (vg / "vm-107-disk-1").symlink_to("/etc/hostname")  # a link to a host file
        vz = tmp_path / "vz"
        (vz / "images" / "107").mkdir(parents=True)
        (vz / "images" / "107" / "vm-107-disk-2.raw").symlink_to("/etc/hostname")
        conf = tmp_path / "qemu-server" / "107.conf"
        conf.parent.mkdir()
        conf.write_text("name: db\nmemory: 1024\nscsi0: lvm:vm-107-disk-0,size=8M\n"
                        "scsi1: lvm:vm-107-disk-1,size=1M\nscsi2: local:107/vm-107-disk-2.raw,size=1M\n")
        inv_file = tmp_path / "inventory.json"
        result = cli("scan", str(conf), "--pve-storage", f"lvm={vg}", "--pve-storage", f"local={vz}",
                     "--output-file", str(inv_file), "-o", "json")
        assert result.exit_code == 1
        vm = load_inventory(inv_file).vms[0]
        assert vm.source.storage == {"local": str(vz), "lvm": str(vg)}
        lv, host_link, dir_link = vm.disks
        assert (lv.error, lv.source_type, lv.virtual_size) == (None, "block", 8 * 2**20)
        assert host_link.error is not None and "outside the export" in host_link.error
        assert dir_link.error is not None and "outside the export" in dir_link.error
        errors = [line for line in result.stderr.splitlines() if line.startswith("vmmove: error:")]
        assert len(errors) == 2 and all("VM 'db': disk scsi" in e for e in errors)
        work = tmp_path / "work"
        rows = json.loads(cli("convert", str(inv_file), "db", "--to", str(work), "-o", "json").stdout)
        status = {r["disk"]: r["status"] for r in rows}
        assert status["scsi0"] == "converted"
        assert status["scsi1"] != "converted" and status["scsi2"] != "converted"
        assert [p.name for p in work.glob("*.qcow2")] == ["db-scsi0.qcow2"]
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
