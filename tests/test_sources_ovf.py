"""OVF descriptors: the full mapping, disks beside or absent, hostile and inconsistent input."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.core.model import VM, PowerState, SourceKind
from migrate.core.serialize import from_data, to_data
from migrate.core.errors import SourceError
from migrate.sources.ovf import parse_ovf, read_ovf, unit_multiplier
from tests.offline_support import make_vmdk, ovf_text

FULL = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="sys disk%1.vmdk" ovf:id="f1" ovf:size="1000"/>
    <File ovf:href="data.vmdk" ovf:id="f2"/>
    <File ovf:href="tools.iso" ovf:id="f3"/>
  </References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="20" ovf:capacityAllocationUnits="byte * 2^30"
      ovf:populatedSize="900" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:diskId="d2" ovf:fileRef="f2" ovf:capacity="${datasize}" ovf:capacityAllocationUnits="byte*2^20"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:diskId="d3" ovf:capacity="1073741824"/>
  </DiskSection>
  <DeploymentOptionSection><Info>sizes</Info>
    <Configuration ovf:id="small"><Label>small</Label><Description>s</Description></Configuration>
    <Configuration ovf:id="large" ovf:default="true"><Label>large</Label><Description>l</Description></Configuration>
  </DeploymentOptionSection>
  <VirtualSystem ovf:id="app-vm">
    <Info>A virtual machine</Info>
    <Name>Ünïcode app 100%</Name>
    <AnnotationSection><Info>note</Info><Annotation>Line one
line two</Annotation></AnnotationSection>
    <ProductSection><Info>p</Info><Product>App</Product><Vendor>ACME</Vendor><Version>2.1</Version>
      <Property ovf:key="datasize" ovf:type="int" ovf:value="512"/></ProductSection>
    <OperatingSystemSection ovf:id="112" vmw:osType="windows2019srv_64Guest"><Info>os</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>hw</Info>
      <System><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemIdentifier>app-vm</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType></System>
      <Item ovf:configuration="small"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item ovf:configuration="large"><rasd:InstanceID>1b</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>8</rasd:VirtualQuantity>
        <vmw:CoresPerSocket ovf:required="false">4</vmw:CoresPerSocket></Item>
      <Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>16</rasd:VirtualQuantity></Item>
      <Item ovf:bound="max"><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:InstanceID>2max</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>64</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:InstanceID>10</rasd:InstanceID><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:Address>1</rasd:Address><rasd:InstanceID>11</rasd:InstanceID><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:InstanceID>12</rasd:InstanceID><rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:Address>1</rasd:Address><rasd:InstanceID>13</rasd:InstanceID><rasd:ResourceSubType>lsilogicsas</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:InstanceID>14</rasd:InstanceID><rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/d1</rasd:HostResource>
        <rasd:InstanceID>20</rasd:InstanceID><rasd:Parent>12</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>8</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/d2</rasd:HostResource>
        <rasd:InstanceID>21</rasd:InstanceID><rasd:Parent>13</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>1</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/d3</rasd:HostResource>
        <rasd:InstanceID>22</rasd:InstanceID><rasd:Parent>11</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>ovf:/file/f3</rasd:HostResource>
        <rasd:InstanceID>23</rasd:InstanceID><rasd:Parent>14</rasd:Parent><rasd:ResourceType>15</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>1</rasd:AddressOnParent><rasd:InstanceID>24</rasd:InstanceID>
        <rasd:Parent>10</rasd:Parent><rasd:ResourceType>15</rasd:ResourceType></Item>
      <Item><rasd:InstanceID>25</rasd:InstanceID><rasd:ResourceType>14</rasd:ResourceType></Item>
      <Item><rasd:Address>00:50:56:01:02:03</rasd:Address><rasd:Connection>Prod LAN</rasd:Connection>
        <rasd:InstanceID>30</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:Connection>Backup</rasd:Connection><rasd:InstanceID>31</rasd:InstanceID>
        <rasd:ResourceSubType>E1000e</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:InstanceID>40</rasd:InstanceID><rasd:ResourceSubType>vmware.usb.xhci</rasd:ResourceSubType><rasd:ResourceType>23</rasd:ResourceType></Item>
      <Item><rasd:InstanceID>41</rasd:InstanceID><rasd:ResourceType>24</rasd:ResourceType></Item>
      <Item><rasd:InstanceID>42</rasd:InstanceID><rasd:ResourceSubType>vmware.soundcard.hdaudio</rasd:ResourceSubType><rasd:ResourceType>35</rasd:ResourceType></Item>
      <Item><rasd:InstanceID>43</rasd:InstanceID><rasd:ResourceSubType>vmware.vtpm</rasd:ResourceSubType><rasd:ResourceType>1</rasd:ResourceType></Item>
      <Item><rasd:InstanceID>44</rasd:InstanceID><rasd:ResourceSubType>vmware.pci.passthrough</rasd:ResourceSubType><rasd:ResourceType>1</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="backing.id" vmw:value="0000:04:00.0"/></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="true"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def test_full_mapping(tmp_path: Path) -> None:
    ovf = tmp_path / "app.ovf"
    ovf.write_text(FULL, encoding="utf-8")
    [vm] = read_ovf(str(ovf))
    assert vm.name == "Ünïcode app 100%" and vm.source.kind is SourceKind.OVF
    assert vm.source.location == str(ovf) and vm.power_state is PowerState.SHUTOFF
    assert vm.description == "Line one\nline two"
    assert vm.machine == "vmx-19" and vm.hypervisor == "vmware" and vm.arch == "x86_64"
    assert vm.metadata["ovf.configuration"] == "large" and vm.metadata["ovf.product.Vendor"] == "ACME"
    assert vm.vcpus == 8 and (vm.topology.sockets, vm.topology.cores) == (2, 4)
    assert vm.memory == 16 * 1024**3  # the bound="max" item is a range marker, not the value
    assert vm.guest_os.family == "windows" and vm.guest_os.version == "2019"
    assert vm.guest_os.id == "windows2019srv_64Guest"
    assert (vm.firmware.type, vm.firmware.secure_boot, vm.firmware.tpm_version) == ("efi", True, "2.0")

    disks = {d.target: d for d in vm.disks}
    assert set(disks) == {"sda", "sdw", "hdd", "sdb", "hdb", "fda"}
    sys_disk = disks["sda"]  # pvscsi 0:0
    assert (sys_disk.bus, sys_disk.controller_model, sys_disk.format) == ("scsi", "pvscsi", "vmdk")
    assert sys_disk.path == str(tmp_path / "sys disk%1.vmdk")  # absent: sizes from the descriptor
    assert sys_disk.virtual_size == 20 * 1024**3 and sys_disk.allocated_size == 1000
    assert sys_disk.error is None
    data = disks["sdw"]  # controller 1, unit 8 -> 1*15 + 7 = 22 -> sdw (unit 7 is the HBA)
    assert data.controller_model == "lsisas1068" and data.virtual_size == 512 * 1024**2
    empty = disks["hdd"]  # IDE bus 1 unit 1, no file: created empty at deployment
    assert empty.source_type == "none" and empty.virtual_size == 1024**3
    cd = disks["sdb"]  # SATA 0:0 would be sda, taken by SCSI: the next free name
    assert cd.device == "cdrom" and cd.bus == "sata" and cd.path.endswith("tools.iso")
    assert disks["hdb"].device == "cdrom" and disks["hdb"].source_type == "none"
    assert disks["fda"].device == "floppy"

    assert [(n.mac, n.model, n.network, n.type) for n in vm.nics] == [
        ("00:50:56:01:02:03", "vmxnet3", "Prod LAN", "network"), (None, "e1000e", "Backup", "network")]
    kinds = {(d.kind, d.model) for d in vm.devices}
    assert {("controller", "usb:vmware.usb.xhci"), ("video", "vmvga"), ("sound", "hdaudio"),
            ("controller", "pvscsi"), ("controller", "ahci")} <= kinds
    [pci] = [d for d in vm.devices if d.kind == "pci-passthrough"]
    assert pci.details["id"] == "0000:04:00.0"
    assert from_data(VM, to_data(vm)) == vm  # survives the inventory round trip


def test_disk_file_beside_the_descriptor_is_inspected(tmp_path: Path) -> None:
    vmdk = make_vmdk(tmp_path, "disk1.vmdk", size="32M")
    ovf = tmp_path / "web.ovf"
    ovf.write_text(ovf_text(disk_size=vmdk.stat().st_size, capacity="32"))
    [vm] = read_ovf(str(ovf))
    [d] = vm.disks
    assert d.path == str(vmdk) and d.error is None
    assert d.virtual_size == 32 * 1024**2 and d.allocated_size == vmdk.stat().st_size
    assert vm.nics[0].mac == "00:50:56:aa:bb:cc" and vm.guest_os.distro == "rhel"


def test_damaged_disk_file_is_a_disk_error_not_a_scan_error(tmp_path: Path) -> None:
    (tmp_path / "disk1.vmdk").write_bytes(b"\0" * 4096)
    ovf = tmp_path / "web.ovf"
    ovf.write_text(ovf_text(disk_size=4096))
    [vm] = read_ovf(str(ovf))
    assert vm.disks[0].error and "disk1.vmdk" in vm.disks[0].error
    assert vm.disks[0].virtual_size == 64 * 1024**2  # still known from the DiskSection


XXE = '<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
LAUGHS = ('<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;">'
          '<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]>')


@pytest.mark.parametrize("text, expected", [
    (ovf_text(doctype=XXE, name="&xxe;"), "entity declarations are refused"),
    (ovf_text(doctype=LAUGHS, name="&lol2;"), "entity declarations are refused"),
    (ovf_text()[:-40], "malformed XML"),
    ("<html><body>404</body></html>", "not an OVF descriptor"),
    ('<Envelope xmlns="http://example.com/ovf"/>', "not an OVF descriptor"),
    ("", "empty file"),
    (ovf_text(capacity="1", units="byte * 2^60"), "absurd (more than 64 TiB)"),
    (ovf_text(capacity="-5"), "is negative"),
    (ovf_text(capacity="lots"), "is not a number"),
    (ovf_text(capacity="0"), "zero capacity"),
    (ovf_text(units="furlongs"), "unknown capacityAllocationUnits"),
    (ovf_text(memory="100000000"), "absurd (more than 24 TiB)"),
    (ovf_text(memory="-1"), "is negative"),
    (ovf_text(disk_size=-1), "is negative"),
    (ovf_text(disk_size=2**70), "absurdly large"),
    (ovf_text().replace('ovf:fileRef="file1"', 'ovf:fileRef="nope"'), "which References does not list"),
    (ovf_text().replace("ovf:/disk/vmdisk1", "ovf:/disk/nope"), "which the DiskSection does not list"),
    (ovf_text().replace("<rasd:Parent>3<", "<rasd:Parent>99<"), "Parent '99'"),
    (ovf_text().replace("<rasd:InstanceID>5<", "<rasd:InstanceID>4<"), "appears twice"),
    (ovf_text().replace("<VirtualSystem ovf:id=\"vm\">", "<VirtualSystemX>")
     .replace("</VirtualSystem>", "</VirtualSystemX>"), "no VirtualSystem"),
])
def test_bad_descriptors_give_one_line_naming_the_file(tmp_path: Path, text: str,
                                                        expected: str) -> None:
    ovf = tmp_path / "bad vm%.ovf"
    ovf.write_text(text)
    with pytest.raises(SourceError) as err:
        read_ovf(str(ovf))
    message = str(err.value)
    assert message.startswith(f"{ovf}: ") and "\n" not in message
    assert expected in message


def test_xxe_never_reads_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    text = ovf_text(doctype=f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file://{secret}">]>', name="&xxe;")
    with pytest.raises(SourceError) as err:
        parse_ovf(text, str(tmp_path / "x.ovf"))
    assert "TOP-SECRET" not in str(err.value)


def test_units() -> None:
    assert unit_multiplier("byte * 2^20", 1) == 1024**2
    assert unit_multiplier("byte*2^30", 1) == 1024**3
    assert unit_multiplier("MegaBytes", 1) == 1024**2
    assert unit_multiplier("byte * 10^6", 1) == 10**6
    assert unit_multiplier(None, 7) == 7
    with pytest.raises(ValueError):
        unit_multiplier("hertz * 10^6", 1)


def test_ovf_2_collection_and_0_9_sections(shared: Path) -> None:
    base = shared / "corpus" / "ovf" / "govmomi" / "fixtures"
    vms = read_ovf(str(base / "virtualsystemcollection.ovf"))
    assert [(vm.name, vm.source.member) for vm in vms] == [
        ("Virtual Appliance One", "storage server"), ("Virtual Appliance Two", "web-server")]
    assert all(vm.memory == 1024**3 and vm.nics[0].network == "VS Network" for vm in vms)

    [vm] = read_ovf(str(base / "external" / "smallxp-vapp" / "smallxp-vapp.ovf"))  # OVF 0.9
    assert vm.vcpus == 2 and vm.memory == 512 * 1024**2 and vm.machine == "vmx-04"
    [disk] = [d for d in vm.disks if d.device == "disk"]
    assert disk.target == "sda" and disk.virtual_size == 1610612736 and disk.format == "vmdk"
    assert vm.nics[0].model == "pcnet" and vm.nics[0].network == "VMNetwork"


def test_deeply_nested_collections_do_not_exhaust_the_stack(tmp_path: Path) -> None:
    depth = 20000
    text = ovf_text().replace('<VirtualSystem ovf:id="vm">',
                              '<VirtualSystemCollection ovf:id="c">' * depth
                              + '<VirtualSystem ovf:id="vm">')
    text = text.replace("</VirtualSystem>", "</VirtualSystem>" + "</VirtualSystemCollection>" * depth)
    [vm] = parse_ovf(text, str(tmp_path / "deep.ovf"), inspect=False)
    assert vm.name == "web01"


@pytest.mark.parametrize("change", ["truncate", "grow"])
def test_a_disk_file_whose_size_changed_after_scan_is_refused_at_convert(
        tmp_path: Path, change: str) -> None:
    """Scan records the file's ovf:size (it matched then); convert re-checks it: a file
    truncated or replaced since is one error naming the file and both sizes, nothing is
    written."""
    from converters.convert import FAILED, convert_disks
    from migrate.core.model import Inventory

    vmdk = make_vmdk(tmp_path, "disk1.vmdk", subformat="monolithicSparse")
    size = vmdk.stat().st_size
    ovf = tmp_path / "web01.ovf"
    ovf.write_text(ovf_text("disk1.vmdk", disk_size=size))
    vm = from_data(VM, to_data(read_ovf(str(ovf))[0]))  # through the inventory's form
    assert vm.disks[0].error is None and vm.disks[0].stored_size == size
    with open(vmdk, "r+b") as fh:
        fh.truncate(size - 65536 if change == "truncate" else size + 65536)
    now = vmdk.stat().st_size
    (result,) = convert_disks(Inventory(vms=[vm]), [], tmp_path / "w")
    assert result.status == FAILED
    assert result.error.endswith(
        f"{vmdk}: is {now} bytes, the scan recorded {size} (ovf:size): "
        "truncated or replaced since the scan; rescan"), result.error
    assert not [p for p in (tmp_path / "w").rglob("*") if p.suffix in (".qcow2", ".raw")]
