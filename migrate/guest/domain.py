"""A KubeVirt VirtualMachine spec as the libvirt domain virt-launcher would define for it.

:func:`domain_xml` follows KubeVirt's converter (``pkg/virt-launcher/virtwrap/converter``,
v1.x) for what decides whether a guest boots:

* machine ``q35`` (``spec.domain.machine.type``, default q35), ``hvm``, x86_64;
* firmware: BIOS (SeaBIOS) unless ``firmware.bootloader.efi``; EFI is OVMF as a read-only
  pflash with a per-VM NVRAM copy of the vars template, the secure-boot build and SMM when
  ``efi.secureBoot`` is true (KubeVirt's default for EFI) — ``features.smm`` likewise;
* CPU topology (``cpu.sockets/cores/threads``) and memory (``memory.guest``, else
  ``resources.requests.memory``);
* disks in ``devices.disks`` order with their bus (virtio → ``vdX``, sata → ``sdX`` on the
  q35 AHCI controller, scsi → ``sdX`` on a virtio-scsi controller, as KubeVirt does), their
  ``bootOrder``, cdroms on sata/scsi;
* NICs with the spec's model and MAC and **no network backend**: a user-mode interface
  with its link down (the guest sees the device and loads its driver; no packet leaves);
* ``firmware.kernelBoot``: direct kernel boot with ``kernelArgs`` (the kernel and initrd
  files, which KubeVirt takes from a container image, are given by the caller);
* one serial console (a file here), the guest-agent channel
  ``org.qemu.guest_agent.0``, a VNC display on 127.0.0.1 for a screenshot, ACPI.

A BIOS guest also gets QEMU's ``isa-debugcon`` on port 0x402, where SeaBIOS writes its log
(``No bootable device``): libvirt has no element for it, so it goes through
``<qemu:commandline>``.  Disk sources are given by the caller (the throwaway overlays).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

OVMF = {
    False: ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    True: ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
}
_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "Ki": 1024,
          "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


class DomainError(ValueError):
    """A spec that cannot be booted locally (the message says what is missing)."""


@dataclass
class BootDisk:
    """A disk source for the test domain: the overlay file and its format."""

    path: Path
    format: str = "qcow2"


@dataclass
class DomainFiles:
    serial: Path  # the serial console log
    bios_log: Path  # SeaBIOS debug console (BIOS guests)
    nvram: Path  # OVMF vars copy (EFI guests)
    disks: dict[str, BootDisk] = field(default_factory=dict)  # spec volume name -> source
    # firmware.kernelBoot: the kernel and initrd the spec's container holds, extracted
    kernel: Path | None = None
    initrd: Path | None = None


def quantity_bytes(text: Any) -> int:
    """A Kubernetes quantity (``2Gi``, ``512M``, ``1073741824``) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?)?", str(text).strip())
    if not match:
        raise DomainError(f"memory {text!r} is not a quantity")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def _letters(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("a") + rest) + name
    return name


def uses_efi(vm_spec: dict[str, Any]) -> tuple[bool, bool]:
    """(EFI, secure boot) of a VirtualMachine spec."""
    domain = vm_spec["template"]["spec"]["domain"]
    efi = ((domain.get("firmware") or {}).get("bootloader") or {}).get("efi")
    if efi is None:
        return False, False
    return True, bool(efi.get("secureBoot", True))


def domain_xml(name: str, vm_spec: dict[str, Any], files: DomainFiles, *,
               kvm: bool = False, uid: int = 0, gid: int = 0) -> str:
    """The libvirt domain XML for ``vm_spec`` (a VirtualMachine's ``spec``).

    ``uid``/``gid``: the user qemu runs as (see docs/guest-readiness.md: the staged images
    live in the private work folder, which only that user can traverse).
    """
    tmpl = vm_spec["template"]["spec"]
    domain = tmpl["domain"]
    cpu = domain.get("cpu") or {}
    sockets, cores, threads = (int(cpu.get(k) or 1) for k in ("sockets", "cores", "threads"))
    memory = (domain.get("memory") or {}).get("guest") or \
        ((domain.get("resources") or {}).get("requests") or {}).get("memory")
    if not memory:
        raise DomainError(f"{name}: the spec gives no memory")
    mib = max(quantity_bytes(memory) // (1024 * 1024), 64)
    machine = (domain.get("machine") or {}).get("type") or "q35"
    efi, secure = uses_efi(vm_spec)
    smm = secure or bool(((domain.get("features") or {}).get("smm") or {}).get("enabled",
                                                                               False))
    parts = [f"<domain type='{'kvm' if kvm else 'qemu'}' "
             "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
             f"<name>{escape(name)}</name>",
             f"<memory unit='MiB'>{mib}</memory>",
             f"<vcpu>{sockets * cores * threads}</vcpu>",
             f"<os><type arch='x86_64' machine={quoteattr(machine)}>hvm</type>"]
    if efi:
        code, _ = OVMF[secure]
        parts.append(f"<loader readonly='yes' secure='{'yes' if secure else 'no'}' "
                     f"type='pflash'>{escape(code)}</loader>"
                     f"<nvram>{escape(str(files.nvram))}</nvram>")
    kernel_boot = (domain.get("firmware") or {}).get("kernelBoot")
    if kernel_boot:
        if files.kernel is None:
            raise DomainError(f"{name}: the spec boots a kernel (firmware.kernelBoot) and no "
                              "kernel file was given")
        parts.append(f"<kernel>{escape(str(files.kernel))}</kernel>"
                     + (f"<initrd>{escape(str(files.initrd))}</initrd>" if files.initrd else "")
                     + f"<cmdline>{escape(str(kernel_boot.get('kernelArgs') or ''))}</cmdline>")
    parts.append("<bios rebootTimeout='-1'/></os>" if not efi else "</os>")
    parts.append("<features><acpi/><apic/>" + ("<smm state='on'/>" if smm else "")
                 + "</features>")
    parts.append(f"<cpu mode='{'host-model' if kvm else 'custom'}'>"
                 + ("" if kvm else "<model fallback='allow'>qemu64</model>")
                 + f"<topology sockets='{sockets}' dies='1' cores='{cores}' "
                   f"threads='{threads}'/></cpu>")
    parts.append("<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
                 "<on_crash>destroy</on_crash>")
    parts.append(f"<seclabel type='static' model='dac' relabel='no'>"
                 f"<label>+{uid}:+{gid}</label></seclabel>")
    parts.append("<devices>")
    parts += _disks(name, tmpl, files)
    parts += _nics(domain)
    parts.append(f"<serial type='file'><source path={quoteattr(str(files.serial))} "
                 "append='on'/><target port='0'/></serial>")
    parts.append("<channel type='unix'><target type='virtio' "
                 "name='org.qemu.guest_agent.0'/></channel>")
    parts.append("<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"
                 "<video><model type='vga'/></video>")
    parts.append("<memballoon model='virtio'/></devices>")
    if not efi:
        parts.append("<qemu:commandline>"
                     "<qemu:arg value='-chardev'/>"
                     f"<qemu:arg value={quoteattr(f'file,id=vmmove-bios,path={files.bios_log}')}/>"
                     "<qemu:arg value='-device'/>"
                     "<qemu:arg value='isa-debugcon,iobase=0x402,chardev=vmmove-bios'/>"
                     "</qemu:commandline>")
    parts.append("</domain>")
    return "".join(parts)


def _disks(name: str, tmpl: dict[str, Any], files: DomainFiles) -> list[str]:
    counters = {"vd": 0, "sd": 0}
    out: list[str] = []
    scsi = False
    for disk in tmpl["domain"]["devices"].get("disks") or []:
        source = files.disks.get(disk["name"])
        if source is None:
            raise DomainError(f"{name}: no staged image for volume {disk['name']}")
        cdrom = "cdrom" in disk
        bus = (disk.get("cdrom") if cdrom else disk.get("disk") or {}).get("bus") or \
            ("sata" if cdrom else "virtio")
        if bus not in ("virtio", "sata", "scsi"):
            raise DomainError(f"{name}: disk {disk['name']}: bus {bus} is not tested here")
        prefix = "vd" if bus == "virtio" else "sd"
        dev = prefix + _letters(counters[prefix])
        counters[prefix] += 1
        scsi = scsi or bus == "scsi"
        boot = f"<boot order='{int(disk['bootOrder'])}'/>" if disk.get("bootOrder") else ""
        readonly = "<readonly/>" if cdrom or (disk.get("disk") or {}).get("readonly") else ""
        out.append(f"<disk type='file' device='{'cdrom' if cdrom else 'disk'}'>"
                   f"<driver name='qemu' type={quoteattr(source.format)}/>"
                   f"<source file={quoteattr(str(source.path))}/>"
                   f"<target dev='{dev}' bus='{bus}'/>{boot}{readonly}</disk>")
    if scsi:
        out.append("<controller type='scsi' model='virtio-scsi'/>")
    return out


def _nics(domain: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for iface in domain["devices"].get("interfaces") or []:
        model = iface.get("model") or "virtio"
        mac = iface.get("macAddress")
        out.append("<interface type='user'>"
                   + (f"<mac address={quoteattr(mac)}/>" if mac else "")
                   + f"<model type={quoteattr(model)}/><link state='down'/></interface>")
    return out
