"""Disk and VM identity across scan, convert and manifests (issue 12, kinds 8 and 10).

Kind 8: libvirt keeps disk targets unique per bus, not per domain; the ESX driver writes
``sda`` on SCSI and ``sda`` on SATA for a VM with a SCSI disk and a SATA CD-ROM.
Kind 10: VMs with one name and UUID read from different files are different VMs.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from migrate.serialize import load_inventory
from migrate.sources import SourceError
from migrate.sources.domxml import read_domain_xml
from migrate.workdir import disk_item
from tests.conftest import qemu_img
from tests.manifests_support import schema_validator

UUID = "564d0a63-6f58-4a46-9e1c-1b2a3c4d5e6f"


def esx_domain(name: str, disks: str, uuid: str = UUID) -> str:
    """A domain XML the way libvirt's ESX driver writes one (``virsh -c esx://… dumpxml``)."""
    return f"""<domain type='vmware'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
{disks}
    <controller type='scsi' index='0' model='lsilogic'/>
    <controller type='sata' index='0'/>
    <interface type='bridge'>
      <mac address='00:50:56:aa:bb:01'/>
      <source bridge='VM Network'/>
      <model type='e1000'/>
    </interface>
  </devices>
</domain>
"""


def _disk(path: Path, target: str, bus: str, device: str = "disk", fmt: str = "qcow2") -> str:
    return f"""    <disk type='file' device='{device}'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{path}'/>
      <target dev='{target}' bus='{bus}'/>
    </disk>"""


def test_scsi_disk_and_sata_cdrom_both_named_sda_are_kept_with_distinct_names(tmp_path: Path) -> None:
    disk = tmp_path / "web-disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "16M")
    iso = tmp_path / "tools.iso"
    iso.write_bytes(b"\0" * 4096)
    xml = tmp_path / "web.xml"
    xml.write_text(esx_domain("web", _disk(disk, "sda", "scsi") + "\n" + _disk(iso, "sda", "sata", "cdrom", "raw")))
    vm = read_domain_xml(str(xml))
    assert [(d.target, d.bus, d.device) for d in vm.disks] == [
        ("scsi:sda", "scsi", "disk"), ("sata:sda", "sata", "cdrom")]
    assert vm.disks[0].controller_model == "lsilogic"
    # the same XML with the disks the other way round gives the same names
    xml.write_text(esx_domain("web", _disk(iso, "sda", "sata", "cdrom", "raw") + "\n" + _disk(disk, "sda", "scsi")))
    assert sorted(d.target for d in read_domain_xml(str(xml)).disks) == ["sata:sda", "scsi:sda"]


def test_two_disks_with_one_target_on_one_bus_are_still_refused(tmp_path: Path) -> None:
    xml = tmp_path / "bad.xml"
    xml.write_text(esx_domain("bad", _disk(tmp_path / "a", "sda", "scsi") + _disk(tmp_path / "b", "sda", "scsi")))
    try:
        read_domain_xml(str(xml))
    except SourceError as exc:
        assert str(exc) == f"{xml}: domain 'bad': two disks with target 'sda' on bus scsi"
    else:
        raise AssertionError("a duplicate target on one bus was accepted")


def test_shared_target_disks_scan_convert_and_manifest_apart(cli, tmp_path: Path, shared: Path) -> None:  # type: ignore[no-untyped-def]
    scsi = tmp_path / "data-scsi.qcow2"
    sata = tmp_path / "data-sata.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(scsi), "16M")
    qemu_img("create", "-q", "-f", "qcow2", str(sata), "32M")
    iso = tmp_path / "tools.iso"
    iso.write_bytes(b"\0" * 4096)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "esx.xml").write_text(esx_domain("esx-vm", "\n".join([
        _disk(scsi, "sda", "scsi"), _disk(sata, "sda", "sata"), _disk(iso, "sdb", "sata", "cdrom", "raw")])))
    inv = tmp_path / "inventory.json"
    cli("scan", str(tmp_path / "src"), "-o", "json", "--output-file", str(inv), ok=True)
    vm = load_inventory(inv).vms[0]
    assert [(d.target, d.virtual_size) for d in vm.disks] == [
        ("scsi:sda", 16 * 2**20), ("sata:sda", 32 * 2**20), ("sdb", 4096)]
    assert [disk_item(vm, d) for d in vm.disks[:2]] == [f"{UUID}/scsi:sda", f"{UUID}/sata:sda"]

    work = tmp_path / "work"
    rows = json.loads(cli("convert", str(inv), "--batch", "--to", str(work), "-o", "json", ok=True).stdout)
    assert sorted((r["disk"], r["status"]) for r in rows) == [
        ("sata:sda", "converted"), ("scsi:sda", "converted"), ("sdb", "ignored")]
    assert sorted(p.name for p in work.glob("*.qcow2")) == ["esx-vm-sata-sda.qcow2", "esx-vm-scsi-sda.qcow2"]

    out = tmp_path / "out"
    cli("manifests", str(inv), "--out", str(out), "--workdir", str(work), "--network", "bridge:VM Network=pod",
        "--http-base", "http://images.example/", "--validate-schemas", str(shared / "schemas"), ok=True)
    manifest = yaml.safe_load((out / "default" / "esx-vm.yaml").read_text())
    assert schema_validator(shared).virtual_machine(manifest) == []
    spec = manifest["spec"]["template"]["spec"]
    disks = {d["name"]: d for d in spec["domain"]["devices"]["disks"]}
    assert sorted(disks) == ["sata-sda", "scsi-sda"]
    assert disks["scsi-sda"]["disk"]["bus"] == "scsi" and disks["sata-sda"]["disk"]["bus"] == "sata"
    dvs = {t["metadata"]["name"]: t for t in manifest["spec"]["dataVolumeTemplates"]}
    assert sorted(dvs) == ["esx-vm-sata-sda", "esx-vm-scsi-sda"]
    assert dvs["esx-vm-scsi-sda"]["spec"]["storage"]["resources"]["requests"]["storage"] == "16Mi"
    assert dvs["esx-vm-sata-sda"]["spec"]["storage"]["resources"]["requests"]["storage"] == "32Mi"
    volumes = {v["name"]: v["dataVolume"]["name"] for v in spec["volumes"]}
    assert volumes == {"scsi-sda": "esx-vm-scsi-sda", "sata-sda": "esx-vm-sata-sda"}
