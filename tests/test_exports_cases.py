"""The real-world export cases of ../shared/cases/exports (issue 12), rebuilt in Python.

Each test makes its case's inputs at test time (qemu-img/qemu-io, gzip, tarfile), runs
scan → assess → convert → manifests through the CLI exactly as ``run.sh`` does (manifests
strictly validated against ../shared/schemas with ``--validate-schemas``, and again here),
and asserts the right behaviour the case's NOTES.md gives.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate.core.serialize import load_inventory
from tests.conftest import Cli, qemu_img, qemu_io
from tests.manifests_support import schema_validator
from tests.offline_support import error_lines

BASE = "http://images.example.test/vms"
MiB, GiB = 1024**2, 1024**3


# -- helpers --------------------------------------------------------------------------------


@dataclass
class Run:
    """What the four steps did, like run.sh's log, plus the files they wrote."""

    work: Path
    scan: Any
    assess: Any
    convert: Any
    manifests: Any
    inventory: Any = None
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)  # manifest by source name

    def vm(self, name: str) -> Any:
        found = [v for v in self.inventory.vms if v.name == name]
        assert len(found) == 1, [v.name for v in self.inventory.vms]
        return found[0]

    def concerns(self, vm: str) -> list[tuple[str, str, str, str]]:
        """(severity, id, message, remediation) of one VM, from ``assess -o json``."""
        data = yaml.safe_load(self.assess.stdout)  # {VM name: {target, concerns, …}}
        assert vm in data, f"{vm} not in the assessment: {list(data)}"
        return [(c["severity"], c["id"], c["message"], c["remediation"])
                for c in data[vm]["concerns"]]


def pipeline(cli: Cli, shared: Path, work: Path, inputs: list[Path],
             manifests_args: tuple[str, ...] = ("--network", "*=pod")) -> Run:
    inv = work / "inv.yaml"
    scan = cli("scan", *map(str, inputs), "--output-file", str(inv))
    assess = cli("assess", str(inv), "-o", "json")
    convert = cli("convert", str(inv), "--batch", "--to", str(work / "conv"))
    manifests = cli("manifests", str(inv), "--out", str(work / "man"), "--workdir",
                    str(work / "conv"), "--http-base", BASE, "--validate-schemas",
                    str(shared / "schemas"), *manifests_args)
    run = Run(work, scan, assess, convert, manifests, load_inventory(inv))
    validator = schema_validator(shared)
    for path in sorted((work / "man").rglob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") == "VirtualMachine":
            assert validator.virtual_machine(doc) == [], path
            run.vms[doc["metadata"]["annotations"]["vmmove.io/source-name"]] = doc
    return run


def no_convert_manifests(cli: Cli, run: Run, *args: str) -> Any:
    """``manifests --http-base`` without any convert record (the documented fallback)."""
    out = run.work / "man-noconv"
    return cli("manifests", str(run.work / "inv.yaml"), "--out", str(out), "--http-base", BASE,
               "--network", "*=pod", *args)


def dv_urls(vm: dict[str, Any]) -> dict[str, str]:
    return {t["metadata"]["annotations"]["vmmove.io/source-disk"]: t["spec"]["source"]["http"]["url"]
            for t in vm["spec"].get("dataVolumeTemplates", []) if "http" in t["spec"]["source"]}


def disk_buses(vm: dict[str, Any]) -> dict[str, str]:
    disks = vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
    return {d["name"]: (d.get("disk") or d.get("cdrom"))["bus"] for d in disks}


def identical(a: Path | str, fmt_a: str, b: Path | str, fmt_b: str = "qcow2") -> bool:
    proc = subprocess.run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, str(a), str(b)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def vmdk(path: Path, size: str, subformat: str, *writes: str) -> Path:
    """A VMDK made as the case's make.sh makes it: all writes in one qemu-io run (a
    streamOptimized image is append-only, so each run would add its own grains)."""
    qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(path), size)
    if writes:
        args = [a for w in writes for a in ("-c", w)]
        proc = subprocess.run(["qemu-io", "-f", "vmdk", *args, str(path)], capture_output=True, text=True)
        assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout + proc.stderr
    return path


def tar(out: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out


NS = ('xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" '
      'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" '
      'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" '
      'xmlns:vmw="http://www.vmware.com/schema/ovf"')


def ovf(name: str, file_attrs: str, disk_attrs: str, os_section: str = "", scsi: str = "lsilogic",
        nic: str = "", extra_hw: str = "", extra_vs: str = "", vmx: str = "vmx-13",
        cpus: int = 1, mem: int = 1024) -> bytes:
    """A VMware-style OVF 1.x descriptor with one SCSI disk (and an optional NIC)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope {NS}>
  <References><File ovf:id="file1" {file_attrs}/></References>
  <DiskSection><Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" {disk_attrs}
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection><Info>Networks</Info><Network ovf:name="VM Network"/></NetworkSection>
  <VirtualSystem ovf:id="{name}"><Info>A virtual machine</Info><Name>{name}</Name>
    {os_section}
    <VirtualHardwareSection><Info>Virtual hardware</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>{vmx}</vssd:VirtualSystemType></System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>vCPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>mem</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity></Item>
      <Item><rasd:ElementName>SCSI controller 0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>{scsi}</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      {nic}
      {extra_hw}
    </VirtualHardwareSection>
    {extra_vs}
  </VirtualSystem>
</Envelope>
""".encode()


VMXNET3 = ('<Item><rasd:Address>{mac}</rasd:Address><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>'
           '<rasd:Connection>VM Network</rasd:Connection><rasd:ElementName>Network adapter 1</rasd:ElementName>'
           '<rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>{sub}</rasd:ResourceSubType>'
           '<rasd:ResourceType>10</rasd:ResourceType></Item>')


def vmx(path: Path, lines: dict[str, str]) -> Path:
    base = {".encoding": "UTF-8", "config.version": "8"}
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in {**base, **lines}.items()))
    return path


# -- 01 gzip-compressed OVA member -----------------------------------------------------------


def test_01_gzip_member_is_decompressed_converted_and_served_as_the_converted_image(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = vmdk(src / "data.vmdk", "64M", "streamOptimized", "write -P 0x5a 0 1M")
    packed = gzip.compress(data.read_bytes(), compresslevel=9)
    desc = ovf("appliance", 'ovf:href="appliance-disk1.vmdk" ovf:compression="gzip"',
               'ovf:capacity="64" ovf:capacityAllocationUnits="byte * 2^20"',
               '<OperatingSystemSection ovf:id="101"><Info>Guest OS</Info></OperatingSystemSection>',
               scsi="VirtualSCSI", nic=VMXNET3.format(mac="", sub="VmxNet3"))
    inp = tmp_path / "in"
    inp.mkdir()
    ova = tar(inp / "appliance.ova", [("appliance.ovf", desc), ("appliance-disk1.vmdk", packed)])
    run = pipeline(cli, shared, tmp_path / "w", [inp])

    assert run.scan.exit_code == 0, run.scan.stderr
    [disk] = run.vm("appliance").disks
    assert disk.error is None and disk.virtual_size == 64 * MiB
    assert disk.packing is not None and disk.packing.compression == "gzip"
    assert disk.packing.pieces[0].path == str(ova) and disk.packing.pieces[0].size == len(packed)
    assert "not assessed" not in run.assess.stderr
    assert not [c for c in run.concerns("appliance") if c[0] == "critical"]
    assert run.convert.exit_code == 0, run.convert.stderr
    out = run.work / "conv" / "appliance-sda.qcow2"
    assert identical(data, "vmdk", out)  # the gzip's content, not the gzip bytes
    assert [p.name for p in (run.work / "conv").iterdir() if "unpacked" in p.name] == []
    again = cli("convert", str(run.work / "inv.yaml"), "--batch", "--to", str(run.work / "conv"), "-o", "json")
    assert again.exit_code == 0 and [r["status"] for r in yaml.safe_load(again.stdout)] == ["skipped"]
    assert run.manifests.exit_code == 0, run.manifests.stderr
    assert dv_urls(run.vms["appliance"]) == {"sda": f"{BASE}/appliance-sda.qcow2"}

    refused = no_convert_manifests(cli, run)
    assert refused.exit_code != 0
    [line] = error_lines(refused)
    assert "appliance-disk1.vmdk is stored gzip-compressed in the package; convert it first" in line
    assert "%22" not in refused.stdout + refused.stderr


def test_01_convert_refuses_what_the_scan_could_not_read_before_qemu_img(
        cli: Cli, tmp_path: Path) -> None:
    # kind 1: a member declared gzip that is not a gzip stream is a scan error; convert says so
    desc = ovf("appliance", 'ovf:href="d.vmdk" ovf:compression="gzip"', 'ovf:capacity="67108864"')
    ova = tar(tmp_path / "a.ova", [("a.ovf", desc), ("d.vmdk", b"\0" * 648)])
    inv = tmp_path / "inv.yaml"
    scan = cli("scan", str(ova), "--output-file", str(inv))
    assert scan.exit_code == 1
    assert error_lines(scan) == [f"vmmove: error: {ova}: VM 'appliance': disk sda: {ova}#d.vmdk: "
                                 "d.vmdk: declared gzip-compressed but is not a gzip stream"]
    conv = cli("convert", str(inv), "--batch", "--to", str(tmp_path / "c"))
    assert conv.exit_code == 1
    assert ("appliance/sda: d.vmdk: declared gzip-compressed but is not a gzip stream (as the "
            "scan recorded; not handed to qemu-img)") in conv.stdout
    assert "Could not open" not in conv.stderr and "json:" not in conv.stderr


# -- 02 disk member before the descriptor ----------------------------------------------------


def test_02_ova_with_the_disk_first_converts_and_the_fallback_refuses_a_member(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    disk = vmdk(src / "edge-disk1.vmdk", "128M", "streamOptimized",
                "write -P 0x11 0 1M", "write -P 0x22 100M 1M").read_bytes()
    desc = ovf("edge", 'ovf:href="edge-disk1.vmdk"', 'ovf:capacity="134217728"',
               '<OperatingSystemSection ovf:id="80" vmw:osType="rhel8_64Guest"><Info>OS</Info></OperatingSystemSection>',
               nic=VMXNET3.format(mac="00:50:56:aa:01:02", sub="VmxNet3"), cpus=2, mem=2048, vmx="vmx-15")
    mf = "".join(f"SHA256 ({n}) = {hashlib.sha256(d).hexdigest()}\n"
                 for n, d in (("edge.ovf", desc), ("edge-disk1.vmdk", disk))).encode()
    inp = tmp_path / "in"
    inp.mkdir()
    ova = tar(inp / "edge.ova", [("edge-disk1.vmdk", disk), ("edge.ovf", desc), ("edge.mf", mf)])
    run = pipeline(cli, shared, tmp_path / "w", [inp])

    assert run.scan.exit_code == 0
    vm = run.vm("edge")
    assert (vm.vcpus, vm.memory, vm.guest_os.distro) == (2, 2 * GiB, "rhel")
    assert vm.metadata["ova.manifest"] == "edge.mf: 2 digests verified"
    assert vm.nics[0].mac == "00:50:56:aa:01:02"
    assert run.convert.exit_code == 0
    assert identical(src / "edge-disk1.vmdk", "vmdk", run.work / "conv" / "edge-sda.qcow2")
    assert dv_urls(run.vms["edge"]) == {"sda": f"{BASE}/edge-sda.qcow2"}
    [dv] = run.vms["edge"]["spec"]["dataVolumeTemplates"]
    assert dv["spec"]["storage"]["resources"]["requests"]["storage"] == "128Mi"

    refused = no_convert_manifests(cli, run)
    assert refused.exit_code != 0 and not (run.work / "man-noconv").exists()
    [line] = error_lines(refused)
    assert "the disk is inside an archive, not a file of its own; convert it first" in line
    assert f"{ova}" not in refused.stdout and "%22" not in refused.stdout


# -- 03 chunked disk (ovf:chunkSize) ---------------------------------------------------------


def _chunked(tmp_path: Path) -> tuple[Path, Path, list[tuple[str, bytes]], int]:
    src = tmp_path / "src"
    src.mkdir()
    whole = vmdk(src / "whole.vmdk", "64M", "streamOptimized",
                 "write -P 0x33 0 512k", "write -P 0x44 32M 512k")
    data = whole.read_bytes()
    chunk = 65536
    chunks = [(f"store-disk1.vmdk.{i:09d}", data[o:o + chunk])
              for i, o in enumerate(range(0, len(data), chunk))]
    return src, whole, chunks, len(data)


def _chunked_ovf(name: str, size: int) -> bytes:
    return ovf(name, f'ovf:href="store-disk1.vmdk" ovf:size="{size}" ovf:chunkSize="65536"',
               'ovf:capacity="67108864"', extra_hw="")


def test_03_chunked_disks_in_an_ova_and_a_folder_are_joined_and_converted(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    _, whole, chunks, size = _chunked(tmp_path)
    assert len(chunks) == 3 and size == 138752  # as in the case's NOTES.md
    inp = tmp_path / "in"
    (inp / "folder").mkdir(parents=True)
    tar(inp / "chunked.ova", [("chunked.ovf", _chunked_ovf("chunk-ova", size)), *chunks])
    (inp / "folder" / "chunked-dir.ovf").write_bytes(_chunked_ovf("chunk-dir", size))
    for name, data in chunks:
        (inp / "folder" / name).write_bytes(data)
    run = pipeline(cli, shared, tmp_path / "w", [inp / "chunked.ova", inp / "folder" / "chunked-dir.ovf"])

    assert run.scan.exit_code == 0, run.scan.stderr
    for name in ("chunk-ova", "chunk-dir"):
        [disk] = run.vm(name).disks
        assert disk.error is None and disk.virtual_size == 64 * MiB
        assert disk.packing.chunk_size == 65536 and len(disk.packing.pieces) == len(chunks)
        assert sum(p.size for p in disk.packing.pieces) == size
        assert not [c for c in run.concerns(name) if c[1] in ("disk-no-source", "disk-unreadable")]
        assert identical(whole, "vmdk", run.work / "conv" / f"{name}-sda.qcow2")
        assert dv_urls(run.vms[name]) == {"sda": f"{BASE}/{name}-sda.qcow2"}
    assert run.convert.exit_code == 0 and run.manifests.exit_code == 0

    refused = no_convert_manifests(cli, run, "--vm", "chunk-dir")
    assert refused.exit_code != 0
    assert "store-disk1.vmdk is stored split into chunks in the package" in refused.stderr
    assert "url:" not in refused.stdout


def test_03_a_missing_or_resized_chunk_is_that_disks_error_and_the_vm_stays(
        cli: Cli, tmp_path: Path) -> None:
    _, _, chunks, size = _chunked(tmp_path)
    missing = tar(tmp_path / "missing.ova", [("m.ovf", _chunked_ovf("gap", size)), chunks[0], chunks[2]])
    short = tar(tmp_path / "short.ova", [("s.ovf", _chunked_ovf("short", size)), *chunks[:2],
                                         (chunks[2][0], chunks[2][1][:-10])])
    inv = tmp_path / "inv.yaml"
    scan = cli("scan", str(missing), str(short), "--output-file", str(inv))
    assert scan.exit_code == 1
    assert error_lines(scan) == [
        f"vmmove: error: {missing}: VM 'gap': disk sda: {missing}#store-disk1.vmdk: store-disk1.vmdk: "
        "chunk store-disk1.vmdk.000000001 is missing from the package",
        f"vmmove: error: {short}: VM 'short': disk sda: {short}#store-disk1.vmdk: store-disk1.vmdk: "
        f"the package holds {size - 10} bytes of it but the descriptor says ovf:size {size}",
    ]
    assert [v.name for v in load_inventory(inv).vms] == ["gap", "short"]


# -- 05 NVMe disk: one bus rule for assessment and manifests ----------------------------------


def test_05_nvme_disk_bus_is_the_same_in_the_assessment_and_the_manifest(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    for name, os_id, mac in (("nvme-linux", "rhel9-64", "11"), ("nvme-win", "windows2019srv-64", "12")):
        (inp / name).mkdir(parents=True)
        vmdk(inp / name / f"{name}.vmdk", "48M", "monolithicSparse", "write -P 0x77 0 256k")
        vmx(inp / name / f"{name}.vmx", {
            "virtualHW.version": "19", "displayName": name, "guestOS": os_id, "memsize": "4096",
            "numvcpus": "2", "firmware": "efi", "nvme0.present": "TRUE", "nvme0:0.present": "TRUE",
            "nvme0:0.fileName": f"{name}.vmdk", "ethernet0.present": "TRUE",
            "ethernet0.virtualDev": "vmxnet3", "ethernet0.networkName": "VM Network",
            "ethernet0.addressType": "static", "ethernet0.address": f"00:50:56:3F:00:{mac}"})
    run = pipeline(cli, shared, tmp_path / "w", [inp])
    assert run.manifests.exit_code == 0
    for name, bus in (("nvme-linux", "virtio"), ("nvme-win", "sata")):
        said = [c[2] for c in run.concerns(name) if c[1] == "disk-bus-other"]
        assert said == [f"disk nvme0n1 on bus nvme becomes {bus}"]
        assert disk_buses(run.vms[name]) == {"nvme0n1": bus}
        notes = run.vms[name]["metadata"]["annotations"]["vmmove.io/notes"]
        assert f"disk nvme0n1: bus nvme becomes {bus}" in notes


# -- 06 twoGbMaxExtentSparse, NUL-padded descriptor ------------------------------------------


def test_06_split_vmdk_descriptors_padded_or_not_are_read_and_never_served_as_is(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    for d in ("split-qemu", "split-vmw"):
        (inp / d).mkdir(parents=True)
        vmdk(inp / d / f"{d}.vmdk", "5G", "twoGbMaxExtentSparse", "write -P 0x11 0 1M",
             "write -P 0x22 4G 1M")
        vmx(inp / d / f"{d}.vmx", {"virtualHW.version": "14", "displayName": d,
                                  "guestOS": "ubuntu-64", "memsize": "2048", "numvcpus": "1",
                                  "scsi0.present": "TRUE", "scsi0.virtualDev": "pvscsi",
                                  "scsi0:0.present": "TRUE", "scsi0:0.fileName": f"{d}.vmdk"})
    padded = (inp / "split-qemu" / "split-qemu.vmdk").read_bytes()
    assert padded.endswith(b"\0") and len(padded) % 512 == 0  # as qemu-img writes it
    unpadded = inp / "split-vmw" / "split-vmw.vmdk"
    unpadded.write_bytes(unpadded.read_bytes().rstrip(b"\0"))
    run = pipeline(cli, shared, tmp_path / "w", [inp])

    assert run.scan.exit_code == 0, run.scan.stderr
    for d in ("split-qemu", "split-vmw"):
        [disk] = run.vm(d).disks
        assert (disk.error, disk.virtual_size, disk.layout) == (None, 5 * GiB, "multi-file")
        assert identical(inp / d / f"{d}.vmdk", "vmdk", run.work / "conv" / f"{d}-sda.qcow2")
    assert run.manifests.exit_code == 0 and set(run.vms) == {"split-qemu", "split-vmw"}

    refused = no_convert_manifests(cli, run, "--vm", "split-vmw")
    assert refused.exit_code != 0
    assert ("split-vmw.vmdk is a VMDK descriptor whose data is in separate extent files; convert "
            "it first") in refused.stderr


def test_06_a_descriptor_with_data_after_its_nul_padding_is_still_binary(tmp_path: Path) -> None:
    from migrate.sources.vmdk import VmdkError, parse_descriptor

    text = '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 8 FLAT "f.vmdk" 0\n'
    assert parse_descriptor(text + "\0" * 71, "d.vmdk").virtual_size == 4096
    with pytest.raises(VmdkError, match="binary data"):
        parse_descriptor(text + "\0\0KDMV\0", "d.vmdk")


# -- 07 RDM, vSAN object, host CD-ROM passthrough --------------------------------------------

DESCRIPTOR = ('# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\nCID={cid}\nparentCID=ffffffff\n'
              'createType="{create}"\n\n# Extent description\n{extent}\n\n# The Disk Data Base\n#DDB\n\n'
              'ddb.adapterType = "lsilogic"\nddb.virtualHWVersion = "19"\n')


def _dbnode(folder: Path, cdrom: bool = False) -> None:
    folder.mkdir(parents=True)
    flat = folder / "dbnode-flat.vmdk"
    with open(flat, "wb") as fh:
        fh.write(b"BOOTDATA")
        fh.truncate(64 * MiB)
    (folder / "dbnode.vmdk").write_text(DESCRIPTOR.format(cid="4f2a9c01", create="vmfs",
                                                          extent='RW 131072 VMFS "dbnode-flat.vmdk"'))
    with open(folder / "dbnode_1-rdmp.vmdk", "wb") as fh:
        fh.truncate(20 * GiB)
    (folder / "dbnode_1.vmdk").write_text(DESCRIPTOR.format(
        cid="fffffffe", create="vmfsPassthroughRawDeviceMap", extent='RW 41943040 VMFSRDM "dbnode_1-rdmp.vmdk"'))
    (folder / "dbnode_2.vmdk").write_text(DESCRIPTOR.format(
        cid="a1b2c3d4", create="vmfs",
        extent='RW 83886080 VMFS "vsan://52aa5c0e-0000-4000-8000-00000000beef"'))
    lines = {"virtualHW.version": "19", "displayName": "dbnode", "guestOS": "rhel8-64",
             "memsize": "8192", "numvcpus": "4", "scsi0.present": "TRUE",
             "scsi0.virtualDev": "lsisas1068", "scsi0.sharedBus": "physical",
             "scsi0:0.present": "TRUE", "scsi0:0.fileName": "dbnode.vmdk",
             "scsi0:1.present": "TRUE", "scsi0:1.fileName": "dbnode_1.vmdk",
             "scsi0:1.mode": "independent-persistent", "scsi0:2.present": "TRUE",
             "scsi0:2.fileName": "dbnode_2.vmdk", "ethernet0.present": "TRUE",
             "ethernet0.virtualDev": "vmxnet3", "ethernet0.networkName": "DB Network",
             "ethernet0.addressType": "vpx", "ethernet0.generatedAddress": "00:50:56:9a:10:20"}
    if cdrom:
        lines = {k: v for k, v in lines.items() if not k.startswith(("scsi0:1", "scsi0:2"))}
        lines.update({"sata0.present": "TRUE", "sata0:1.present": "TRUE",
                      "sata0:1.deviceType": "cdrom-raw", "sata0:1.fileName": "auto detect",
                      "ide1:0.present": "TRUE", "ide1:0.deviceType": "atapi-cdrom",
                      "ide1:0.fileName": "/dev/sr0"})
    vmx(folder / "dbnode.vmx", lines)


def test_07_rdm_and_vsan_descriptors_are_recognised_and_never_handed_to_qemu_img_or_cdi(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    _dbnode(tmp_path / "in" / "dbnode")
    run = pipeline(cli, shared, tmp_path / "w", [tmp_path / "in"],
                   ("--network", "*=pod", "--blank", "dbnode/sdc"))
    sda, sdb, sdc = run.vm("dbnode").disks
    assert (sda.layout, sda.error, sda.virtual_size) == ("multi-file", None, 64 * MiB)
    assert (sdb.layout, sdb.error, sdb.virtual_size, sdb.shareable) == ("rdm-physical", None, 20 * GiB, True)
    assert (sdc.layout, sdc.error) == ("vsan", None)
    critical = {c[1]: c for c in run.concerns("dbnode") if c[0] == "critical"}
    assert set(critical) == {"disk-rdm", "disk-vsan"}
    assert "physical (pass-through) raw device map of a SAN LUN, on a shared SCSI bus" in critical["disk-rdm"][2]
    assert "storage team copy the LUN" in critical["disk-rdm"][3]
    assert "vSAN object descriptor" in critical["disk-vsan"][2]

    assert run.convert.exit_code == 1
    assert "Unsupported image type" not in run.convert.stderr
    assert (f"dbnode/sdb: {sdb.path} is a VMware raw device map: its data is on a SAN LUN"
            in run.convert.stdout)
    assert f"dbnode/sdc: {sdc.path} names a vSAN object" in run.convert.stdout
    assert identical(sda.path, "vmdk", run.work / "conv" / "dbnode-sda.qcow2")
    assert run.manifests.exit_code == 1 and run.vms == {}
    [line] = error_lines(run.manifests)
    assert ("disk sdb: no transfer record and no image file to serve from --http-base: VMware raw "
            "device map: the data is on a SAN LUN; copy the LUN (storage team) or leave the disk "
            "out with --blank dbnode/sdb") in line
    # left out explicitly: the VM gets manifests, the LUN's volume is blank, no URL at a stub
    left = cli("manifests", str(run.work / "inv.yaml"), "--out", str(run.work / "m2"), "--workdir",
               str(run.work / "conv"), "--http-base", BASE, "--network", "*=pod", "--blank",
               "dbnode/sdb", "--blank", "dbnode/sdc", "--validate-schemas", str(shared / "schemas"))
    assert left.exit_code == 0, left.stderr
    doc = yaml.safe_load((run.work / "m2" / "default" / "dbnode.yaml").read_text())
    sources = {t["metadata"]["annotations"]["vmmove.io/source-disk"]: t["spec"]["source"]
               for t in doc["spec"]["dataVolumeTemplates"]}
    assert sources == {"sda": {"http": {"url": f"{BASE}/dbnode-sda.qcow2"}}, "sdb": {"blank": {}},
                       "sdc": {"blank": {}}}


def test_07_host_cdrom_passthrough_is_dropped_with_a_note_and_does_not_block(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    _dbnode(tmp_path / "in" / "dbnode", cdrom=True)
    run = pipeline(cli, shared, tmp_path / "w", [tmp_path / "in"])
    vm = run.vm("dbnode")
    cds = {d.target: (d.device, d.layout) for d in vm.disks if d.layout == "host-cdrom"}
    assert cds == {"sdb": ("lun", "host-cdrom"), "hdc": ("cdrom", "host-cdrom")}
    concerns = run.concerns("dbnode")
    assert not [c for c in concerns if c[0] == "critical"]
    assert [c[2] for c in concerns if c[1] == "cdrom-passthrough"] == [
        "disk sdb: host CD-ROM drive (auto detect) passed through is dropped",
        "disk hdc: host CD-ROM drive /dev/sr0 passed through is dropped"]
    assert run.convert.exit_code == 0, run.convert.stderr
    assert run.manifests.exit_code == 0
    doc = run.vms["dbnode"]
    assert set(disk_buses(doc)) == {"sda"}
    assert "disk sdb: host CD-ROM drive passthrough dropped" in doc["metadata"]["annotations"]["vmmove.io/notes"]


# -- 10 VirtualBox OVF 2.0 export ---------------------------------------------------------------

VBOX_OVF = """<?xml version="1.0"?>
<Envelope ovf:version="2.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine"
    xmlns:epasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData.xsd"
    xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData.xsd">
  <References><File ovf:id="file1" ovf:href="labdesk-disk001.vmdk"/></References>
  <DiskSection><Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="314572800" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="7d3c2b1a-0000-4000-8000-000000000001"/>
  </DiskSection>
  <NetworkSection><Info>Logical networks</Info><Network ovf:name="NAT"><Description>Logical network</Description></Network></NetworkSection>
  <VirtualSystem ovf:id="labdesk"><Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="94"><Info>guest</Info><Description>Ubuntu_64</Description><vbox:OSType ovf:required="false">Ubuntu_64</vbox:OSType></OperatingSystemSection>
    <VirtualHardwareSection><Info>Virtual hardware requirements for a virtual machine</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemIdentifier>labdesk</vssd:VirtualSystemIdentifier><vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>
      <Item><rasd:Caption>2 virtual CPU</rasd:Caption><rasd:ElementName>2 virtual CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:Caption>3072 MB of memory</rasd:Caption><rasd:ElementName>3072 MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>3072</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:Caption>sataController0</rasd:Caption><rasd:ElementName>sataController0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <StorageItem><sasd:AddressOnParent>0</sasd:AddressOnParent><sasd:Caption>disk1</sasd:Caption><sasd:ElementName>disk1</sasd:ElementName><sasd:HostResource>/disk/vmdisk1</sasd:HostResource><sasd:InstanceID>4</sasd:InstanceID><sasd:Parent>3</sasd:Parent><sasd:ResourceType>17</sasd:ResourceType></StorageItem>
      <StorageItem><sasd:AddressOnParent>1</sasd:AddressOnParent><sasd:AutomaticAllocation>true</sasd:AutomaticAllocation><sasd:Caption>cdrom1</sasd:Caption><sasd:ElementName>cdrom1</sasd:ElementName><sasd:InstanceID>5</sasd:InstanceID><sasd:Parent>3</sasd:Parent><sasd:ResourceType>15</sasd:ResourceType></StorageItem>
      <EthernetPortItem><epasd:AutomaticAllocation>true</epasd:AutomaticAllocation><epasd:Caption>Ethernet adapter on 'NAT'</epasd:Caption><epasd:Connection>NAT</epasd:Connection><epasd:InstanceID>6</epasd:InstanceID><epasd:ResourceSubType>E1000</epasd:ResourceSubType><epasd:ResourceType>10</epasd:ResourceType></EthernetPortItem>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.19-linux" uuid="{7d3c2b1a-0000-4000-8000-0000000000aa}" name="labdesk" OSType="Ubuntu_64" snapshotFolder="Snapshots">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <CPU count="2"><PAE enabled="false"/><LongMode enabled="true"/></CPU>
        <Memory RAMSize="3072"/>
        <Firmware type="EFI"/>
        <Network><Adapter slot="0" enabled="true" MACAddress="080027C0FFEE" type="82540EM"><NAT/></Adapter></Network>
        <RTC localOrUTC="UTC"/>
      </Hardware>
      <StorageControllers>
        <StorageController name="SATA" type="AHCI" PortCount="2" useHostIOCache="false" Bootable="true">
          <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0"><Image uuid="{7d3c2b1a-0000-4000-8000-000000000001}"/></AttachedDevice>
          <AttachedDevice passthrough="false" type="DVD" hotpluggable="false" port="1" device="0"/>
        </StorageController>
      </StorageControllers>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
"""


def test_10_virtualbox_export_keeps_its_mac_firmware_and_controller(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    disk = vmdk(src / "labdesk-disk001.vmdk", "300M", "streamOptimized", "write -P 0x31 0 256k")
    inp = tmp_path / "in"
    inp.mkdir()
    tar(inp / "labdesk.ova", [("labdesk.ovf", VBOX_OVF.encode()), ("labdesk-disk001.vmdk", disk.read_bytes())])
    run = pipeline(cli, shared, tmp_path / "w", [inp])
    vm = run.vm("labdesk")
    assert (vm.vcpus, vm.memory, vm.firmware.type, vm.guest_os.distro) == (2, 3 * GiB, "efi", "ubuntu")
    assert [(d.target, d.device, d.bus, d.virtual_size) for d in vm.disks] == [
        ("sda", "disk", "sata", 300 * MiB), ("sdb", "cdrom", "sata", None)]
    assert [(n.model, n.network, n.mac) for n in vm.nics] == [("e1000", "NAT", "08:00:27:c0:ff:ee")]
    assert run.convert.exit_code == 0 and run.manifests.exit_code == 0
    domain = run.vms["labdesk"]["spec"]["template"]["spec"]["domain"]
    assert domain["firmware"]["bootloader"] == {"efi": {"secureBoot": False}}
    assert domain["devices"]["interfaces"][0]["macAddress"] == "08:00:27:c0:ff:ee"
    assert domain["devices"]["interfaces"][0]["model"] == "e1000"
    assert disk_buses(run.vms["labdesk"]) == {"sda": "sata"}


# -- 15 RHEL/CentOS from VMware: host-only initramfs -------------------------------------------


def test_15_rhel_family_from_vmware_gets_the_initramfs_warning_not_nothing_to_do(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    for vm, os_id, slot, nic in (("rhel7-app", "rhel7-64", "scsi0:0", "vmxnet3"),
                                 ("centos7-ide", "centos7-64", "ide0:0", "e1000")):
        (inp / vm).mkdir(parents=True)
        qemu_img("create", "-q", "-f", "vmdk", str(inp / vm / f"{vm}.vmdk"), "64M")
        lines = {"virtualHW.version": "13", "displayName": vm, "guestOS": os_id, "memsize": "2048",
                 f"{slot}.present": "TRUE", f"{slot}.fileName": f"{vm}.vmdk",
                 "ethernet0.present": "TRUE", "ethernet0.virtualDev": nic,
                 "ethernet0.networkName": "VM Network", "ethernet0.addressType": "generated",
                 "ethernet0.generatedAddress": "00:0c:29:11:22:33" if vm == "rhel7-app" else "00:0c:29:44:55:66"}
        if slot.startswith("scsi"):
            lines.update({"scsi0.present": "TRUE", "scsi0.virtualDev": "lsilogic"})
        vmx(inp / vm / f"{vm}.vmx", lines)
    run = pipeline(cli, shared, tmp_path / "w", [inp])
    for vm, name, bus_rule, bus in (("rhel7-app", "Red Hat Enterprise Linux 7 (64-bit)", "scsi-controller", "scsi"),
                                    ("centos7-ide", "CentOS 7 (64-bit)", "disk-bus-ide", "sata")):
        concerns = run.concerns(vm)
        [warning] = [c for c in concerns if c[1] == "initramfs-hostonly"]
        assert warning[0] == "warning"
        assert warning[2].startswith(f"{name} guest from VMware: its host-only dracut initramfs")
        assert "dracut-initqueue timeout" in warning[2]
        assert "dracut -f --regenerate-all --add-drivers 'virtio_blk virtio_scsi ahci'" in warning[3]
        assert "virt-v2v-in-place" in warning[3]
        [bus_concern] = [c for c in concerns if c[1] == bus_rule]
        driver = {"scsi": "virtio_scsi", "sata": "ahci"}[bus]
        assert f"--add-drivers '{driver}'" in bus_concern[3]
        assert not [c for c in concerns if "nothing to do" in c[3].lower() and c[1] != "machine-other"
                    and c[1] != "video-model"]
        assert list(disk_buses(run.vms[vm]).values()) == [bus]


# -- cases that were right and must stay right ------------------------------------------------


def test_08_uefi_guests_get_secure_boot_only_with_smm(cli: Cli, shared: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    (inp / "vmw").mkdir(parents=True)
    qemu_img("create", "-q", "-f", "qcow2", str(inp / "guest.qcow2"), "256M")
    loader = {"efi-plain": "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>",
              "efi-sb": "<loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>"}
    for n, (name, body) in enumerate(loader.items(), 1):
        smm = "<smm state='on'/>" if name == "efi-sb" else ""
        (inp / f"{name}.xml").write_text(
            f"<domain type='kvm'><name>{name}</name><uuid>6c1e0f3a-8b2d-4e5f-9a01-00000000000{n}</uuid>"
            "<memory unit='GiB'>2</memory><vcpu>2</vcpu><os><type arch='x86_64' machine='pc-q35-8.2'>hvm</type>"
            f"{body}</os><features><acpi/><apic/>{smm}</features><devices><disk type='file' device='disk'>"
            f"<driver name='qemu' type='qcow2'/><source file='{inp / 'guest.qcow2'}'/>"
            "<target dev='vda' bus='virtio'/></disk></devices></domain>")
    qemu_img("create", "-q", "-f", "vmdk", str(inp / "vmw" / "w.vmdk"), "64M")
    for name, extra in (("vmx-efi", {}), ("vmx-efi-sb", {"uefi.secureBoot.enabled": "TRUE"})):
        vmx(inp / "vmw" / f"{name}.vmx", {"virtualHW.version": "17", "displayName": name,
                                          "guestOS": "windows2019srv-64", "memsize": "4096",
                                          "firmware": "efi", **extra, "sata0.present": "TRUE",
                                          "sata0:0.present": "TRUE", "sata0:0.fileName": "w.vmdk"})
    run = pipeline(cli, shared, tmp_path / "w", [inp])
    assert run.manifests.exit_code == 0 and len(run.vms) == 4
    for name, sb in (("efi-plain", False), ("efi-sb", True), ("vmx-efi", False), ("vmx-efi-sb", True)):
        domain = run.vms[name]["spec"]["template"]["spec"]["domain"]
        assert domain["firmware"]["bootloader"] == {"efi": {"secureBoot": sb}}
        assert (domain.get("features") or {}).get("smm") == ({"enabled": True} if sb else None)


def test_09_ova_firmware_only_in_vmw_config(cli: Cli, shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    disk = vmdk(src / "disk.vmdk", "96M", "streamOptimized", "write -P 0x21 0 128k").read_bytes()
    inp = tmp_path / "in"
    inp.mkdir()
    for name, extra in (("tmpl-efi", ""), ("tmpl-efi-sb", '<vmw:ExtraConfig ovf:required="false" '
                                                         'vmw:key="uefi.secureBoot.enabled" vmw:value="TRUE"/>')):
        desc = ovf(name, f'ovf:href="{name}-disk1.vmdk"', 'ovf:capacity="96" ovf:capacityAllocationUnits="byte * 2^20"',
                   '<OperatingSystemSection ovf:id="94" vmw:osType="ubuntu64Guest"><Info>OS</Info></OperatingSystemSection>',
                   scsi="VirtualSCSI", vmx="vmx-17",
                   extra_hw=f'<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>{extra}',
                   extra_vs='<vmw:BootOrderSection vmw:instanceId="4" vmw:type="disk"><Info>Boot order</Info></vmw:BootOrderSection>')
        tar(inp / f"{name}.ova", [(f"{name}.ovf", desc), (f"{name}-disk1.vmdk", disk)])
    run = pipeline(cli, shared, tmp_path / "w", [inp])
    assert run.convert.exit_code == 0 and run.manifests.exit_code == 0
    for name, sb in (("tmpl-efi", False), ("tmpl-efi-sb", True)):
        assert (run.vm(name).firmware.type, run.vm(name).firmware.secure_boot) == ("efi", sb)
        domain = run.vms[name]["spec"]["template"]["spec"]["domain"]
        assert domain["firmware"]["bootloader"] == {"efi": {"secureBoot": sb}}


def _libvirt_domain(name: str, uuid: str, disks: list[tuple[Path, str, str]], mem_mib: int = 1024) -> str:
    body = "".join(f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
                   f"<source file='{path}'/><target dev='{dev}' bus='{'virtio' if dev.startswith('vd') else 'scsi'}'/></disk>"
                   for path, fmt, dev in disks)
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>{mem_mib}</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
            f"{body}<controller type='scsi' index='0' model='virtio-scsi'/></devices></domain>")


@pytest.mark.slow
def test_12_a_3_tib_disk_keeps_its_size_and_data(cli: Cli, shared: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", str(inp / "os.qcow2"), "1G")
    qemu_img("create", "-q", "-f", "qcow2", str(inp / "data.qcow2"), "3T")
    for cmd in ("write -P 0x5c 0 1M", "write -P 0x5d 2T 1M", "write -P 0x5e 3145727M 1M"):
        qemu_io(str(inp / "data.qcow2"), cmd, fmt="qcow2")
    (inp / "archive.xml").write_text(_libvirt_domain(
        "archive", "3b9d7e41-2c55-4b0e-9d3a-5a0c1f2e3d4c",
        [(inp / "os.qcow2", "qcow2", "vda"), (inp / "data.qcow2", "qcow2", "vdb")]))
    run = pipeline(cli, shared, tmp_path / "w", [inp])
    assert run.convert.exit_code == 0
    assert identical(inp / "data.qcow2", "qcow2", run.work / "conv" / "archive-vdb.qcow2")
    sizes = {t["metadata"]["annotations"]["vmmove.io/source-disk"]: t["spec"]["storage"]["resources"]["requests"]["storage"]
             for t in run.vms["archive"]["spec"]["dataVolumeTemplates"]}
    assert sizes == {"vda": "1Gi", "vdb": "3072Gi"}  # = 3Ti = 3298534883328 bytes, the virtual size


def test_13_names_that_are_not_dns_labels_become_valid_unique_names(
        cli: Cli, shared: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", str(inp / "base.qcow2"), "64M")
    names = ["Finance_Reporting.Server-PRIMARY.datacenter-north.example.internal_v2", "DB_Server",
             "db-server", "数据库服务器"]
    for n, name in enumerate(names, 1):
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(inp / "base.qcow2"), "-F", "qcow2",
                 str(inp / f"vm{n}.qcow2"))
        (inp / f"vm{n}.xml").write_text(_libvirt_domain(
            name, f"9e0c1d2a-7b6f-4c3d-8e9f-00000000000{n}", [(inp / f"vm{n}.qcow2", "qcow2", "sda")]))
    run = pipeline(cli, shared, tmp_path / "w", [inp])
    assert run.manifests.exit_code == 0 and set(run.vms) == set(names)
    label = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    import re

    vm_names = [doc["metadata"]["name"] for doc in run.vms.values()]
    assert len(set(vm_names)) == 4
    for doc in run.vms.values():
        for n in [doc["metadata"]["name"]] + [t["metadata"]["name"] for t in doc["spec"]["dataVolumeTemplates"]]:
            assert len(n) <= 63 and re.match(label, n), n


def test_14_odd_virtual_sizes_round_up_never_down(cli: Cli, shared: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    (inp / "vmw").mkdir(parents=True)
    (inp / "odd.img").write_bytes(b"\0" * 10000000 + b"Z")
    (inp / "odd-raw.xml").write_text(
        "<domain type='kvm'><name>odd-raw</name><uuid>0d1e2f3a-4b5c-4d6e-8f70-818283848586</uuid>"
        "<memory unit='MiB'>512</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os>"
        f"<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{inp / 'odd.img'}'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>")
    flat = inp / "vmw" / "flat-flat.vmdk"
    with open(flat, "wb") as fh:
        fh.truncate(20481 * 512)  # as the case's make.sh: the full size, ending in END
        fh.seek(20481 * 512 - 3)
        fh.write(b"END")
    (inp / "vmw" / "flat.vmdk").write_text(DESCRIPTOR.format(cid="12345678", create="monolithicFlat",
                                                             extent='RW 20481 FLAT "flat-flat.vmdk" 0'))
    vmx(inp / "vmw" / "odd-vmdk.vmx", {"virtualHW.version": "14", "displayName": "odd-vmdk",
                                       "guestOS": "debian10-64", "memsize": "512",
                                       "scsi0.present": "TRUE", "scsi0.virtualDev": "lsilogic",
                                       "scsi0:0.present": "TRUE", "scsi0:0.fileName": "flat.vmdk"})
    run = pipeline(cli, shared, tmp_path / "w", [inp])
    assert run.convert.exit_code == 0
    assert run.vm("odd-raw").disks[0].virtual_size == 10000384
    assert run.vm("odd-vmdk").disks[0].virtual_size == 10486272
    assert identical(inp / "odd.img", "raw", run.work / "conv" / "odd-raw-vda.qcow2")
    assert identical(inp / "vmw" / "flat.vmdk", "vmdk", run.work / "conv" / "odd-vmdk-sda.qcow2")
    req = {n: d["spec"]["dataVolumeTemplates"][0]["spec"]["storage"]["resources"]["requests"]["storage"]
           for n, d in run.vms.items()}
    assert req == {"odd-raw": "10Mi", "odd-vmdk": "11Mi"}
