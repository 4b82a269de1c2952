"""Test helpers for the offline VMware/OVF sources: real VMDKs, OVF text, hand-built OVAs."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from tests.conftest import qemu_img, qemu_io

CORPUS_OVF = ("ovf", "govmomi")
CORPUS_VMX = ("vmx", "vmx2xmldata")


def make_vmdk(folder: Path, name: str, size: str = "64M", subformat: str = "streamOptimized",
              pattern: int = 0xAB) -> Path:
    """A real VMDK with recognisable data (two written ranges), made by qemu-img/qemu-io."""
    scratch = folder / f".{name}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(scratch), size)
    qemu_io(str(scratch), f"write -P {pattern} 1M 256k", fmt="qcow2")
    qemu_io(str(scratch), "write -P 0x11 5M 64k", fmt="qcow2")
    out = folder / name
    qemu_img("convert", "-q", "-f", "qcow2", "-O", "vmdk", "-o", f"subformat={subformat}",
             str(scratch), str(out))
    scratch.unlink()
    return out


def ovf_text(disk_href: str = "disk1.vmdk", disk_size: int | None = None,
             capacity: str = "64", units: str = "byte * 2^20", memory: str = "512",
             extra_items: str = "", extra_top: str = "", doctype: str = "",
             name: str = "web01") -> str:
    """A small VMware-style OVF 1.0 descriptor with one SCSI disk and one NIC."""
    size_attr = f' ovf:size="{disk_size}"' if disk_size is not None else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>{doctype}
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
          xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
          xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="{disk_href}" ovf:id="file1"{size_attr}/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="{units}" ovf:diskId="vmdisk1"
          ovf:fileRef="file1"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  {extra_top}
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="80" vmw:osType="rhel8_64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-15</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>00:50:56:aa:bb:cc</rasd:Address>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      {extra_items}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A tar built in memory, members in the given order (TarInfo for links and devices)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def manifest(files: dict[str, bytes], algo: str = "SHA256", tag_style: bool = False) -> bytes:
    """An OVF manifest: ``SHA256(name)= hex`` (or ``sha1sum --tag`` spacing)."""
    lines = []
    for name, data in files.items():
        digest = hashlib.new(algo.lower(), data).hexdigest()
        lines.append(f"{algo} ({name}) = {digest}" if tag_style else f"{algo}({name})= {digest}")
    return ("\n".join(lines) + "\n").encode()


def error_lines(result) -> list[str]:  # type: ignore[no-untyped-def]
    """The ``vmmove: error:`` lines of a CLI result's stderr."""
    return [ln for ln in result.stderr.splitlines() if ln.startswith("vmmove: error:")]


VMX_APP = ('config.version = "8"\nvirtualHW.version = "19"\ndisplayName = "app"\n'
           'guestOS = "debian11-64"\nmemSize = "256"\nnumvcpus = "1"\n'
           'scsi0.present = "TRUE"\nscsi0.virtualDev = "pvscsi"\n'
           'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "app.vmdk"\n')


def vmx_export(folder: Path) -> tuple[Path, Path, Path]:
    """A VMware export as a datastore folder holds it: ``app.vmx``, the descriptor
    ``app.vmdk`` and its extent ``app-flat.vmdk`` (32 MiB, 6 MiB of patterns)."""
    folder.mkdir()
    descriptor = folder / "app.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(descriptor),
             "32M")
    for i, off in enumerate((0, 2, 4)):
        qemu_io(str(descriptor), f"write -P {0x31 + i} {off}M 2M", "vmdk")
    vmx = folder / "app.vmx"
    vmx.write_text(VMX_APP)
    return vmx, descriptor, folder / "app-flat.vmdk"


def warm_plan(cli, vmx: Path, folder: Path, *extra: str):  # type: ignore[no-untyped-def]
    """``vmmove scan VMX`` into ``folder/inventory.yaml``, then ``vmmove plan … -n vms --warm
    --warm-volumes volumes`` into ``folder/plan.yaml``; (inventory, plan file, plan's result)."""
    inventory, plan_file = folder / "inventory.yaml", folder / "plan.yaml"
    cli("scan", str(vmx), "--output-file", str(inventory), "-o", "json", ok=True)
    made = cli("plan", str(inventory), "--out", str(plan_file), "-n", "vms", *extra, "--warm",
               "--warm-volumes", "volumes", ok=True)
    return inventory, plan_file, made
