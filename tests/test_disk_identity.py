"""Disk and VM identity across scan, convert and manifests (issue 12, kinds 8 and 10).

Kind 8: libvirt keeps disk targets unique per bus, not per domain; the ESX driver writes
``sda`` on SCSI and ``sda`` on SATA for a VM with a SCSI disk and a SATA CD-ROM.
Kind 10: VMs with one name and UUID read from different files are different VMs.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from migrate.core.serialize import load_inventory
from migrate.core.errors import SourceError
from migrate.sources.domxml import read_domain_xml
from migrate.core.workdir import disk_item
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
    (tmp_path / "src").mkdir()  # the export: the XML and the images it names
    scsi = tmp_path / "src" / "data-scsi.qcow2"
    sata = tmp_path / "src" / "data-sata.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(scsi), "16M")
    qemu_img("create", "-q", "-f", "qcow2", str(sata), "32M")
    iso = tmp_path / "src" / "tools.iso"
    iso.write_bytes(b"\0" * 4096)
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


# ---------------------------------------------------------------- kind 10: same name and UUID


def _copies(tmp_path: Path, count: int) -> Path:
    """``count`` exports of one VM (same name, same UUID) in their own folders, each with its
    own disk image of a different size, so a merge would show."""
    src = tmp_path / "exports"
    for i in range(count):
        folder = src / f"copy{i}"
        folder.mkdir(parents=True)
        image = folder / "disk.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(image), f"{16 + 8 * i}M")
        xml = esx_domain("app", _disk(image, "sda", "scsi")).replace(
            "00:50:56:aa:bb:01", f"00:50:56:aa:bb:{i + 1:02x}")
        (folder / "app.xml").write_text(xml)
    return src


def test_copies_sharing_name_and_uuid_stay_apart_through_every_step(cli, tmp_path: Path, shared: Path) -> None:  # type: ignore[no-untyped-def]
    src = _copies(tmp_path, 3)
    inv_file = tmp_path / "inventory.json"
    cli("scan", str(src), "-o", "json", "--output-file", str(inv_file), ok=True)
    inv = load_inventory(inv_file)
    keys = [vm.key for vm in inv.vms]
    assert len(inv.vms) == 3 and len(set(keys)) == 3
    assert all(k.startswith(f"{UUID}@") and len(k) == len(UUID) + 9 for k in keys)
    # the key depends on the source alone: scanning the folders in another order keeps it
    again = tmp_path / "again.json"
    cli("scan", *(str(src / f"copy{i}") for i in (2, 0, 1)), "-o", "json", "--output-file", str(again), ok=True)
    assert {vm.source.location: vm.key for vm in load_inventory(again).vms} == {
        vm.source.location: vm.key for vm in inv.vms}

    data = json.loads(cli("assess", str(inv_file), "-o", "json", "--fail-on", "never", ok=True).stdout)
    assert len(data) == 3
    assert sorted(e["source"] for e in data.values()) == sorted(vm.source.location for vm in inv.vms)
    assert sorted(e["key"] for e in data.values()) == sorted(keys)
    assert all(label == f"app ({e['key']})" for label, e in data.items())
    assert not any(c["id"] == "duplicate-vm" for e in data.values() for c in e["concerns"])
    for entry in data.values():
        (copies,) = [c for c in entry["concerns"] if c["id"] == "vm-copies"]
        assert copies["severity"] == "warning"
        others = sorted(e["source"] for e in data.values() if e is not entry)
        assert copies["message"] == (
            f"3 VMs from different sources share the UUID {UUID}; this one ({entry['source']}) is "
            f"{entry['key']}, the others are in {', '.join(others)}")
    targets = sorted(e["target"] for e in data.values())
    assert len(set(targets)) == 3 and all(t.startswith("app-") for t in targets)

    plan_file = tmp_path / "plan.yaml"
    cli("plan", str(inv_file), "--out", str(plan_file), "--by", "size", "--network", "bridge:VM Network=pod",
        "--s3", "s3://images/vms", ok=True)
    plan = yaml.safe_load(plan_file.read_text())
    assert sorted(e for w in plan["waves"] for e in w["vms"]) == sorted(keys)
    cli("plan", "--check", str(plan_file), ok=True)

    work = tmp_path / "work"
    rows = json.loads(cli("convert", str(inv_file), "--batch", "--to", str(work), "-o", "json", ok=True).stdout)
    assert sorted(r["item"] for r in rows) == sorted(f"{k}/sda" for k in keys)
    images = sorted(p.name for p in work.glob("*.qcow2"))
    assert images == sorted(f"{t}-sda.qcow2" for t in targets)

    out = tmp_path / "out"
    cli("manifests", str(inv_file), "--out", str(out), "--workdir", str(work), "--network", "bridge:VM Network=pod",
        "--http-base", "http://images.example/", "--validate-schemas", str(shared / "schemas"), ok=True)
    validator = schema_validator(shared)
    sizes = {}
    for target in targets:
        manifest = yaml.safe_load((out / "default" / f"{target}.yaml").read_text())
        assert validator.virtual_machine(manifest) == []
        (dv,) = manifest["spec"]["dataVolumeTemplates"]
        sizes[target] = dv["spec"]["storage"]["resources"]["requests"]["storage"]
    assert sorted(sizes.values()) == ["16Mi", "24Mi", "32Mi"]
    # one VM of the three, by its key
    one = keys[1]
    rows = json.loads(cli("assess", str(inv_file), one, "-o", "json", "--fail-on", "never", ok=True).stdout)
    assert [e["key"] for e in rows.values()] == [one]


def test_one_file_scanned_twice_is_still_one_vm_reported_as_duplicate(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = _copies(tmp_path, 1)
    inv_file = tmp_path / "inventory.json"
    cli("scan", str(src), str(src / "copy0" / "app.xml"), "-o", "json", "--output-file", str(inv_file), ok=True)
    inv = load_inventory(inv_file)
    assert [vm.key for vm in inv.vms] == [UUID, UUID]
    data = json.loads(cli("assess", str(inv_file), "-o", "json", "--fail-on", "never", ok=True).stdout)
    (entry,) = data.values()
    assert [c["message"] for c in entry["concerns"] if c["id"] == "duplicate-vm"] == [
        f"2 VMs in the inventory share the UUID {UUID}"]
    assert not any(c["id"] == "vm-copies" for c in entry["concerns"])


def test_names_of_copies_with_one_valid_name_all_get_a_suffix() -> None:
    from migrate.core.naming import assign_names

    names = assign_names([("u@1", "app"), ("u@2", "app"), ("v", "other")])
    assert names["v"] == "other"
    assert names["u@1"] != names["u@2"] and all(names[k].startswith("app-") for k in ("u@1", "u@2"))
    assert assign_names([("u@2", "app"), ("u@1", "app")]) == {k: names[k] for k in ("u@2", "u@1")}
