"""OVF dialects and multi-valued fields (issue 12 kinds 6, 7, 9, 11), and the unpacking of
compressed/chunked package files (kind 2), from descriptors written the way their tools
write them.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
import yaml

from converters.unpack import UnpackError, unpack
from migrate.core.model import Packing, Piece
from migrate.core.serialize import load_inventory
from migrate.core.errors import SourceError
from migrate.sources.ova import read_ova
from migrate.sources.ovf import read_ovf
from tests.conftest import Cli, qemu_img, qemu_io
from tests.offline_support import error_lines, manifest, ovf_text

MiB, GiB = 1024**2, 1024**3
IMAGE, VOLUME = "1f0a8e4c-5d6b-4c2a-9e8f-0a1b2c3d4e5f", "5b2c9d7e-8f10-4a21-b3c4-d5e6f7a8b9c0"
VM_ID = "3c9a2b1e-7d6f-4e5a-8b9c-0d1e2f3a4b5c"

# What ovirt-engine's OvfWriter (and virt-v2v -o rhv's create_ovf.ml) write: the envelope
# namespace with a trailing slash, unqualified elements, Section/Content with xsi:type, disks
# named <image group>/<volume>, ovf:size in GiB, a nil-UUID Parent, numeric NIC subtypes.
OVIRT_OVF = f"""<?xml version='1.0' encoding='UTF-8'?>
<ovf:Envelope xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" ovf:version="4.4.0.0">
  <References>
    <File ovf:href="{IMAGE}/{VOLUME}" ovf:id="{VOLUME}" ovf:size="{{size}}" ovf:description="Active VM" ovf:disk_storage_type="IMAGE" ovf:cinder_volume_type=""/>
  </References>
  <NetworkSection><Info>List of networks</Info><Network ovf:name="ovirtmgmt"/></NetworkSection>
  <Section xsi:type="ovf:DiskSection_Type">
    <Info>List of Virtual Disks</Info>
    <Disk ovf:diskId="{VOLUME}" ovf:size="1" ovf:actual_size="1" ovf:vm_snapshot_id="8c1d2e3f-0000-4000-8000-000000000001" ovf:parentRef="" ovf:fileRef="{IMAGE}/{VOLUME}" ovf:format="http://www.vmware.com/specifications/vmdk.html#sparse" ovf:volume-format="COW" ovf:volume-type="Sparse" ovf:disk-interface="VirtIO_SCSI" ovf:read-only="false" ovf:shareable="false" ovf:boot="true" ovf:pass-discard="false" ovf:disk-alias="rhel8-app_Disk1" ovf:disk-description="" ovf:wipe-after-delete="false"/>
  </Section>
  <Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type">
    <Name>rhel8-app</Name>
    <Description></Description>
    <TemplateId>00000000-0000-0000-0000-000000000000</TemplateId>
    <TemplateName>Blank</TemplateName>
    <CreationDate>2024/03/01 10:00:00</CreationDate>
    <IsAutoSuspend>false</IsAutoSuspend>
    <Origin>1</Origin>
    <BiosType>4</BiosType>
    <Section ovf:id="{VM_ID}" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type">
      <Info>Guest Operating System</Info>
      <Description>rhel_8x64</Description>
    </Section>
    <Section xsi:type="ovf:VirtualHardwareSection_Type">
      <Info>2 CPU, 4096 Memory</Info>
      <System><vssd:VirtualSystemType>ENGINE 4.4.0.0</vssd:VirtualSystemType></System>
      <Item><rasd:Caption>2 virtual cpu</rasd:Caption><rasd:Description>Number of virtual CPU</rasd:Description><rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType><rasd:num_of_sockets>2</rasd:num_of_sockets><rasd:cpu_per_socket>1</rasd:cpu_per_socket><rasd:threads_per_cpu>1</rasd:threads_per_cpu><rasd:max_num_of_vcpus>16</rasd:max_num_of_vcpus></Item>
      <Item><rasd:Caption>4096 MB of memory</rasd:Caption><rasd:Description>Memory Size</rasd:Description><rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:VirtualQuantity>4096</rasd:VirtualQuantity></Item>
      <Item><rasd:Caption>rhel8-app_Disk1</rasd:Caption><rasd:InstanceId>{VOLUME}</rasd:InstanceId><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>{IMAGE}/{VOLUME}</rasd:HostResource><rasd:Parent>00000000-0000-0000-0000-000000000000</rasd:Parent><rasd:Template>00000000-0000-0000-0000-000000000000</rasd:Template><rasd:ApplicationList></rasd:ApplicationList><rasd:StorageId>6e1b3c5d-0000-4000-8000-000000000009</rasd:StorageId><rasd:StoragePoolId>00000000-0000-0000-0000-000000000000</rasd:StoragePoolId><rasd:CreationDate>2024/03/01 10:00:00</rasd:CreationDate><rasd:LastModified>2024/03/01 10:00:00</rasd:LastModified><rasd:last_modified_date>2024/03/01 10:00:00</rasd:last_modified_date><Type>disk</Type><Device>disk</Device><rasd:Address>{{{{type=drive, bus=0, controller=0, target=0, unit=0}}}}</rasd:Address><BootOrder>1</BootOrder><IsPlugged>true</IsPlugged><IsReadOnly>false</IsReadOnly><Alias>ua-5b2c9d7e</Alias></Item>
      <Item><rasd:Caption>Ethernet adapter on ovirtmgmt</rasd:Caption><rasd:InstanceId>7d4e8f90-0000-4000-8000-000000000002</rasd:InstanceId><rasd:ResourceType>10</rasd:ResourceType><rasd:OtherResourceType>ovirtmgmt</rasd:OtherResourceType><rasd:ResourceSubType>3</rasd:ResourceSubType><rasd:Connection>ovirtmgmt</rasd:Connection><rasd:Linked>true</rasd:Linked><rasd:Name>nic1</rasd:Name><rasd:ElementName>nic1</rasd:ElementName><rasd:MACAddress>56:6f:1a:2b:00:01</rasd:MACAddress><rasd:speed>10000</rasd:speed><Type>interface</Type><Device>bridge</Device></Item>
      <Item><rasd:Caption>USB Controller</rasd:Caption><rasd:InstanceId>3</rasd:InstanceId><rasd:ResourceType>23</rasd:ResourceType><rasd:UsbPolicy>DISABLED</rasd:UsbPolicy></Item>
      <Item><rasd:Caption>Graphical Controller</rasd:Caption><rasd:InstanceId>9f2a3b4c-0000-4000-8000-000000000003</rasd:InstanceId><rasd:ResourceType>20</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity><rasd:SinglePciQxl>false</rasd:SinglePciQxl><Type>video</Type><Device>qxl</Device></Item>
      <Item><rasd:Caption>CDROM</rasd:Caption><rasd:InstanceId>a1b2c3d4-0000-4000-8000-000000000004</rasd:InstanceId><rasd:ResourceType>15</rasd:ResourceType><Type>disk</Type><Device>cdrom</Device></Item>
    </Section>
  </Content>
</ovf:Envelope>
"""


def _ovirt_volume(folder: Path) -> Path:
    vol = folder / IMAGE / VOLUME
    vol.parent.mkdir(parents=True)
    qemu_img("create", "-q", "-f", "qcow2", str(vol), "1G")
    qemu_io(str(vol), "write -P 0x6f 0 1M", fmt="qcow2")
    return vol


def test_ovirt_export_is_read_converted_and_gets_valid_manifests(cli: Cli, shared: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    vol = _ovirt_volume(export / "images")
    (export / "rhel8-app.ovf").write_text(OVIRT_OVF.format(size=vol.stat().st_size))
    inv = tmp_path / "inv.yaml"
    scan = cli("scan", str(export), "--output-file", str(inv))
    assert scan.exit_code == 0, scan.stderr
    [vm] = load_inventory(inv).vms
    assert (vm.name, vm.uuid, vm.vcpus, vm.memory) == ("rhel8-app", VM_ID, 2, 4 * GiB)
    assert (vm.topology.sockets, vm.topology.cores) == (2, 1)
    assert (vm.firmware.type, vm.firmware.secure_boot, vm.machine, vm.hypervisor) == ("efi", True, "q35", "kvm")
    assert (vm.guest_os.distro, vm.guest_os.version) == ("rhel", "8")
    disk, cdrom = vm.disks
    assert (disk.target, disk.bus, disk.controller_model, disk.format) == ("sda", "scsi", "virtio-scsi", "qcow2")
    assert (disk.path, disk.virtual_size, disk.error) == (str(vol), GiB, None)
    assert (cdrom.device, cdrom.source_type) == ("cdrom", "none")
    assert [(n.mac, n.model, n.network) for n in vm.nics] == [("56:6f:1a:2b:00:01", "virtio", "ovirtmgmt")]
    assert [d.model for d in vm.devices if d.kind == "video"] == ["qxl"]
    assess = yaml.safe_load(cli("assess", str(inv), "-o", "json").stdout)
    ids = {c["id"] for c in assess["rhel8-app"]["concerns"]}
    assert "initramfs-hostonly" not in ids and not any(c["severity"] == "critical" for c in assess["rhel8-app"]["concerns"])
    conv = cli("convert", str(inv), "--batch", "--to", str(tmp_path / "conv"))
    assert conv.exit_code == 0, conv.stderr
    man = cli("manifests", str(inv), "--out", str(tmp_path / "man"), "--workdir", str(tmp_path / "conv"),
              "--http-base", "http://h/vms", "--network", "*=pod", "--validate-schemas", str(shared / "schemas"))
    assert man.exit_code == 0, man.stderr
    doc = yaml.safe_load((tmp_path / "man" / "default" / "rhel8-app.yaml").read_text())
    domain = doc["spec"]["template"]["spec"]["domain"]
    assert domain["firmware"]["bootloader"] == {"efi": {"secureBoot": True}}
    assert domain["devices"]["disks"] == [{"name": "sda", "disk": {"bus": "scsi"}}]
    assert domain["devices"]["interfaces"][0]["macAddress"] == "56:6f:1a:2b:00:01"


def test_ovirt_ova_keeps_its_volumes_under_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    vol = _ovirt_volume(src / "images")
    data = vol.read_bytes()
    desc = OVIRT_OVF.format(size=len(data)).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, body in (("vm.ovf", desc), (f"images/{IMAGE}/{VOLUME}", data)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    ova = tmp_path / "rhel8-app.ova"
    ova.write_bytes(buf.getvalue())
    [vm] = read_ova(str(ova))
    disk = vm.disks[0]
    assert disk.error is None and disk.virtual_size == GiB and disk.path.startswith("json:")


# -- VirtualBox: settings only in vbox:Machine ---------------------------------------------

VBOX = """<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References><File ovf:id="file1" ovf:href="old-disk001.vmdk"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="1073741824" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="0a1b2c3d-0000-4000-8000-000000000001"/>
  </DiskSection>
  <VirtualSystem ovf:id="old"><Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="80"><Info>os</Info><Description>RedHat_64</Description></OperatingSystemSection>
    <VirtualHardwareSection><Info>hw</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemIdentifier>old</vssd:VirtualSystemIdentifier><vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>PIIX4</rasd:ResourceSubType><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>Bridged</rasd:Connection><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>PCNet32</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>HostOnly</rasd:Connection><rasd:InstanceID>6</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{0a1b2c3d-0000-4000-8000-0000000000aa}" name="old" OSType="RedHat_64">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <Firmware type="EFI64"/>
        <Network>
          <Adapter slot="1" enabled="true" MACAddress="0800270A0B0C" type="82545EM"><HostOnlyInterface name="vboxnet0"/></Adapter>
          <Adapter slot="2" enabled="false" MACAddress="080027FFFFFF" type="Am79C973"/>
          <Adapter slot="0" enabled="true" MACAddress="080027010203" type="virtio"><BridgedInterface name="eth0"/></Adapter>
        </Network>
      </Hardware>
      <StorageControllers>
        <StorageController name="SAS" type="LsiLogicSas" PortCount="8" Bootable="true">
          <AttachedDevice type="HardDisk" port="2" device="0"><Image uuid="{0A1B2C3D-0000-4000-8000-000000000001}"/></AttachedDevice>
        </StorageController>
      </StorageControllers>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
"""


def test_virtualbox_machine_settings_win_over_the_coarse_hardware_items(tmp_path: Path) -> None:
    path = tmp_path / "old.ovf"
    path.write_text(VBOX)
    [vm] = read_ovf(str(path))
    assert vm.firmware.type == "efi" and vm.hypervisor == "virtualbox"
    # enabled adapters in slot order (0, then 1) pair with the NIC items in order
    assert [(n.mac, n.model, n.network) for n in vm.nics] == [
        ("08:00:27:01:02:03", "virtio", "Bridged"), ("08:00:27:0a:0b:0c", "e1000", "HostOnly")]
    [disk] = vm.disks
    assert (disk.target, disk.bus, disk.controller_model) == ("sdc", "scsi", "lsisas1068")


# -- multi-valued fields (DSP0243) and deployment configurations -----------------------------

CONFIGS = """
  <DeploymentOptionSection><Info>sizes</Info>
    <Configuration ovf:id="small"><Label>Small</Label><Description>1 vCPU</Description></Configuration>
    <Configuration ovf:id="large" ovf:default="true"><Label>Large</Label><Description>8 vCPU</Description></Configuration>
  </DeploymentOptionSection>"""
CONFIG_ITEMS = """
      <Item ovf:configuration="small"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item ovf:configuration="large"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>8</rasd:VirtualQuantity></Item>
      <Item ovf:configuration="large"><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>16384</rasd:VirtualQuantity></Item>"""


def _multi(tmp_path: Path) -> Path:
    text = ovf_text(disk_size=None, extra_top=CONFIGS)
    # the generic CPU/memory items are overridden per configuration (same InstanceIDs)
    text = text.replace("<rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>",
                        "<rasd:ResourceSubType>vmxnet3 e1000</rasd:ResourceSubType>")
    text = text.replace("<rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>",
                        "<rasd:ResourceSubType>VirtualSCSI lsilogic</rasd:ResourceSubType>")
    text = text.replace("""    <OperatingSystemSection ovf:id="80" vmw:osType="rhel8_64Guest">""",
                        """    <OperatingSystemSection ovf:id="36"><Info>generic</Info><Description>Linux</Description></OperatingSystemSection>
    <OperatingSystemSection ovf:id="80" vmw:osType="rhel8_64Guest">""")
    text = text.replace("      </Item>\n      <Item>\n        <rasd:Address>0</rasd:Address>",
                        f"      </Item>{CONFIG_ITEMS}\n      <Item>\n        <rasd:Address>0</rasd:Address>", 1)
    path = tmp_path / "multi.ovf"
    path.write_text(text)
    return path


def test_multi_valued_fields_follow_the_documented_preferences(tmp_path: Path) -> None:
    [vm] = read_ovf(str(_multi(tmp_path)))
    assert vm.metadata["ovf.configuration"] == "large"  # ovf:default="true"
    assert (vm.vcpus, vm.memory) == (8, 16 * GiB)  # the configuration's items override the generic ones
    assert vm.nics[0].model == "e1000"  # KubeVirt emulates e1000: preferred over vmxnet3
    assert vm.disks[0].controller_model == "lsilogic"  # lsilogic before pvscsi
    assert vm.guest_os.distro == "rhel"  # the specific hint wins over CIM 36 "LINUX"
    assert vm.metadata["ovf.os.hints"].startswith("cim:36; rhel8_64Guest")


def test_scan_ovf_configuration_picks_another_configuration(cli: Cli, tmp_path: Path) -> None:
    path = _multi(tmp_path)
    inv = tmp_path / "inv.yaml"
    assert cli("scan", str(path), "--ovf-configuration", "small", "--output-file", str(inv)).exit_code == 0
    [vm] = load_inventory(inv).vms
    assert (vm.vcpus, vm.memory, vm.metadata["ovf.configuration"]) == (1, 512 * MiB, "small")
    bad = cli("scan", str(path), "--ovf-configuration", "huge")
    assert bad.exit_code == 1
    assert error_lines(bad) == [f"vmmove: error: {path}: no deployment configuration 'huge' "
                                "(the descriptor offers small, large)"]


# -- one bad disk file never drops the VM (kind 9) -------------------------------------------


def _ova(path: Path, members: list[tuple[str, bytes]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    path.write_bytes(buf.getvalue())
    return path


def test_bad_manifest_lines_and_sizes_stay_with_their_disk(cli: Cli, tmp_path: Path) -> None:
    disk = b"KDMV" + b"\0" * 1020
    ovf = ovf_text(disk_size=len(disk)).encode()
    good = manifest({"app.ovf": ovf})
    mf = good + b"SHA256(disk1.vmdk)= not-hex\nthis line names nothing\n"
    ova = _ova(tmp_path / "app.ova", [("app.ovf", ovf), ("app.mf", mf), ("disk1.vmdk", disk)])
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "web.ovf").write_bytes(ovf_text(disk_size=len(disk) + 1, name="web02").encode())
    (folder / "disk1.vmdk").write_bytes(disk)
    inv = tmp_path / "inv.yaml"
    scan = cli("scan", str(ova), str(folder), "--output-file", str(inv))
    assert scan.exit_code == 1
    assert error_lines(scan) == [
        f"vmmove: error: {ova}: VM 'web01': disk sda: {ova}#disk1.vmdk: app.mf line 2 is not 'ALGO(file)= digest'",
        f"vmmove: error: {ova}: app.mf line 3 is not 'ALGO(file)= digest'",
        f"vmmove: error: {folder / 'web.ovf'}: VM 'web02': disk sda: {folder / 'disk1.vmdk'}: disk1.vmdk is "
        f"{len(disk)} bytes but the descriptor says ovf:size {len(disk) + 1} (truncated or replaced)",
    ]
    assert [v.name for v in load_inventory(inv).vms] == ["web01", "web02"]


# -- unpacking (kind 2): streamed, size-checked, bounded -------------------------------------


def _packing(tmp_path: Path, data: bytes, compression: str | None = "gzip", chunk: int | None = None,
             size: int | None = None) -> Packing:
    pieces = []
    step = chunk or len(data)
    for n, off in enumerate(range(0, len(data), step)):
        p = tmp_path / f"f.{n:09d}"
        p.write_bytes(data[off:off + step])
        pieces.append(Piece(str(p), 0, len(data[off:off + step])))
    return Packing("f", pieces, compression, chunk, len(data) if size is None else size)


def test_unpack_gzip_members_chunks_and_refusals(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 5000
    two_members = gzip.compress(payload[:600000]) + gzip.compress(payload[600000:])
    out = unpack(_packing(tmp_path, two_members, chunk=4096), tmp_path, "x", 2 * len(payload))
    assert out.read_bytes() == payload
    with pytest.raises(UnpackError, match="ends early"):
        unpack(_packing(tmp_path, gzip.compress(payload)[:-20]), tmp_path, "t", 10 * len(payload))
    bomb = gzip.compress(b"\0" * (8 * MiB))
    with pytest.raises(UnpackError, match="unpacks to more than 1048576 bytes"):
        unpack(_packing(tmp_path, bomb), tmp_path, "b", MiB)
    with pytest.raises(UnpackError, match="descriptor says ovf:size 7"):
        unpack(_packing(tmp_path, b"abc", compression=None, size=7), tmp_path, "s", 100)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("f.")) == ["x"]


def test_a_bad_digest_of_a_member_no_disk_reads_is_one_scan_line(cli: Cli, tmp_path: Path) -> None:
    disk = b"KDMV" + b"\0" * 1020
    ovf = ovf_text(disk_size=len(disk)).encode()
    mf = manifest({"app.ovf": ovf, "disk1.vmdk": disk, "app.cert": b"other"})
    ova = _ova(tmp_path / "app.ova", [("app.ovf", ovf), ("app.mf", mf), ("disk1.vmdk", disk),
                                      ("app.cert", b"tampered")])
    [vm] = read_ova(str(ova))
    assert "checksum" not in (vm.disks[0].error or "")  # the disk member itself is fine
    assert vm.metadata["ova.manifest"] == "app.mf: 2 digests verified"
    assert vm.metadata["ova.manifest.problems"].startswith("SHA256 checksum mismatch for app.cert")
