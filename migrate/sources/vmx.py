"""VMware ``.vmx`` files: one VM each, with its ``.vmdk`` disks when they sit alongside.

The mapping follows libvirt's VMX driver (src/vmx/vmx.c) so that a VM scanned from its
``.vmx`` looks the same as one read through ``esx://``: disk targets ``sd``/``hd``/``fd``
from the controller slot (SCSI ``controller*15 + unit`` skipping unit 7, IDE
``bus*2 + unit``, SATA ``controller*30 + unit``), bridged NICs as ``bridge`` on the
network name, raw CD-ROMs as ``lun``.  libvirt's own test data
(``vmx2xmldata``) is the oracle the tests hold this module against.
"""

from __future__ import annotations

import codecs
import os
import re
import uuid as uuidlib
from collections.abc import Callable

from migrate.core.model import (
    MAC_RE,
    VM,
    CpuTopology,
    Device,
    Disk,
    Firmware,
    HOST_CDROM,
    Nic,
    PowerState,
    Source,
    SourceKind,
)
from migrate.core.errors import SourceError
from migrate.sources import read_bounded
from migrate.sources import vmdk
from migrate.sources.containment import Export, protocol_of
from migrate.sources.vmware_os import from_vmware

MAX_VMX_BYTES = 4 * 1024 * 1024  # real .vmx files are a few KiB
MAX_MEMORY = 24 * 1024**4  # 24 TiB, the most any VMware VM can have
MAX_VCPUS = 4096

_LINE = re.compile(r'^(?P<key>[^=\s][^=]*?)\s*=\s*(?P<value>.*?)\s*$')
_ENCODING = re.compile(rb'^[ \t]*\.encoding[ \t]*=[ \t]*"([^"\r\n]*)"', re.IGNORECASE | re.MULTILINE)
_DISK_SLOT = re.compile(r"^(scsi|ide|sata|nvme)(\d+):(\d+)\.present$")
_FLOPPY = re.compile(r"^floppy(\d+)\.(present|filename)$")


class VmxConfig:
    """The key/value pairs of a .vmx: keys are case-insensitive, later lines win."""

    def __init__(self, path: str, values: dict[str, str]) -> None:
        self.path = path
        self.values = values

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key.lower(), default)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.get(key)
        if value is None or value.strip() == "":
            return default
        low = value.strip().lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise SourceError(f"{self.path}: {key} = {value!r} is not a boolean")

    def integer(self, key: str, default: int | None = None) -> int | None:
        value = self.get(key)
        if value is None or value.strip() == "":
            return default
        text = value.strip()
        try:
            return int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise SourceError(f"{self.path}: {key} = {value!r} is not a number") from None


def _decode(data: bytes, path: str) -> str:
    """Text of a .vmx in the encoding its ``.encoding`` line names (UTF-8 when absent)."""
    if b"\x00" in data:
        raise SourceError(f"{path}: binary data, not a .vmx file")
    match = _ENCODING.search(data)
    name = match.group(1).decode("ascii", errors="replace").strip() if match else "UTF-8"
    try:
        codecs.lookup(name)
    except LookupError:
        raise SourceError(f"{path}: unknown .encoding {name!r}") from None
    try:
        return data.decode(name)
    except UnicodeDecodeError as exc:
        if match is None:
            # No .encoding: old Workstation files are in the host's 8-bit code page.
            return data.decode("windows-1252", errors="replace")
        raise SourceError(f"{path}: not valid {name} at byte {exc.start}") from None


def parse_vmx_text(text: str, path: str) -> VmxConfig:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            # The line's text is not quoted: the file may not be a .vmx (or not the user's).
            raise SourceError(f"{path}: line {number}: expected key = \"value\"")
        value = match["value"]
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise SourceError(f"{path}: line {number}: unterminated quoted value")
            value = value[1:-1]
        values[match["key"].strip().lower()] = value
    if not values:
        raise SourceError(f"{path}: no settings: not a .vmx file")
    return VmxConfig(path, values)


def unescape_pipe(value: str) -> str:
    """``|7C`` → ``|``, ``|0A`` → newline: how VMware escapes annotations and names."""
    return re.sub(r"\|([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def unescape_percent(value: str) -> str:
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def index_to_name(index: int, prefix: str) -> str:
    """libvirt's virIndexToDiskName: 0 → sda, 25 → sdz, 26 → sdaa."""
    name = ""
    index += 1
    while index > 0:
        index, rem = divmod(index - 1, 26)
        name = chr(ord("a") + rem) + name
    return prefix + name


def disk_target(bus: str, controller: int, unit: int) -> str:
    """The libvirt target name of a VMware disk slot."""
    if bus == "scsi":
        return index_to_name(controller * 15 + (unit if unit < 7 else unit - 1), "sd")
    if bus == "sata":
        return index_to_name(controller * 30 + unit, "sd")
    if bus == "ide":
        return index_to_name(controller * 2 + unit, "hd")
    if bus == "nvme":
        return f"nvme{controller}n{unit + 1}"
    return index_to_name(unit, "fd")


def unique_target(target: str, used: set[str]) -> str:
    """``target`` or, when another slot already took it, the next free name of its kind.

    libvirt names SCSI and SATA disks from the same ``sd`` sequence, so ``scsi0:0`` and
    ``sata0:0`` would both be ``sda``; journal items are keyed by target, so ours stay unique.
    """
    if target not in used:
        used.add(target)
        return target
    match = re.fullmatch(r"(sd|hd|fd|vd)([a-z]+)", target)
    if match:
        index = 0
        for ch in match.group(2):
            index = index * 26 + (ord(ch) - ord("a") + 1)
        index -= 1
        while (candidate := index_to_name(index, match.group(1))) in used:
            index += 1
        used.add(candidate)
        return candidate
    n = 2
    while f"{target}-{n}" in used:
        n += 1
    used.add(f"{target}-{n}")
    return f"{target}-{n}"


def _uuid(value: str | None, path: str) -> str | None:
    if value is None or not value.strip():
        return None
    hexdigits = re.sub(r"[\s-]", "", value)
    try:
        return str(uuidlib.UUID(hex=hexdigits))
    except ValueError:
        raise SourceError(f"{path}: uuid.bios = {value!r} is not a UUID") from None


def _resolve(file_name: str, folder: str) -> str:
    """Datastore paths (``[ds] dir/x.vmdk``), absolute paths and protocol names (refused
    later, by containment) stay; others join the folder."""
    if file_name.startswith("[") or os.path.isabs(file_name) or protocol_of(file_name):
        return file_name
    return os.path.normpath(os.path.join(folder, file_name))


def _fill_from_vmdk(disk: Disk, inspect: Callable[[str], vmdk.DiskFacts]) -> None:
    if disk.path is None:
        return
    if disk.path.startswith("["):
        datastore = disk.path[1:].split("]", 1)[0]
        disk.error = f"{disk.path}: on datastore '{datastore}', not reachable from this host"
        return
    facts = inspect(disk.path)
    disk.format = facts.format
    disk.virtual_size = facts.virtual_size
    disk.allocated_size = facts.allocated_size
    disk.backing_chain = facts.backing_chain
    disk.error = facts.error
    disk.layout = facts.layout


def _storage_disk(cfg: VmxConfig, bus: str, ctrl: int, unit: int, folder: str,
                  models: dict[int, str | None]) -> Disk | None:
    """One disk or CD-ROM at ``bus ctrl:unit``; None when libvirt would not list it."""
    prefix = f"{bus}{ctrl}:{unit}"
    if not cfg.flag(f"{prefix}.present"):
        return None
    if cfg.flag(f"{prefix}.clientDevice"):
        return None  # the vSphere client's own drive: nothing on the host to migrate
    device_type = (cfg.get(f"{prefix}.deviceType") or "").strip()
    dtype = device_type.lower()
    file_name = cfg.get(f"{prefix}.fileName")
    low_name = (file_name or "").lower()
    disk = Disk(target=disk_target(bus, ctrl, unit), bus=bus)
    if bus == "scsi":
        disk.controller_model = models.get(ctrl)
    elif bus == "sata":
        disk.controller_model = "ahci"
    is_cd_passthru = dtype == "scsi-passthru" and low_name.startswith("/vmfs/devices/cdrom/")
    if low_name.endswith(".vmdk") and dtype not in ("cdrom-image", "atapi-cdrom", "cdrom-raw"):
        disk.device = "disk"
        disk.path = _resolve(file_name or "", folder)
    elif dtype == "cdrom-image" or low_name.endswith(".iso") or file_name == "emptyBackingString":
        disk.device, disk.readonly = "cdrom", True
        if file_name and file_name != "emptyBackingString":
            disk.path = _resolve(file_name, folder)
        else:
            disk.source_type = "none"
    elif dtype == "atapi-cdrom":
        disk.device, disk.readonly, disk.source_type = "cdrom", True, "block"
        disk.path = None if low_name in ("", "auto detect") else file_name
        disk.layout = HOST_CDROM
    elif dtype == "cdrom-raw" or is_cd_passthru:
        disk.device, disk.source_type = "lun", "block"  # as libvirt's VMX driver names it
        disk.path = None if low_name in ("", "auto detect") else file_name
        disk.layout = HOST_CDROM
    elif dtype == "scsi-passthru":
        disk.device, disk.source_type, disk.path = "lun", "block", file_name
    elif dtype in ("", "disk", "scsi-hardDisk".lower(), "ata-hardDisk".lower(), "rawdisk"):
        disk.device = "disk"
        if file_name:
            disk.path = _resolve(file_name, folder)
        else:
            disk.source_type = "none"
            disk.error = f"{prefix}: disk without a fileName"
    else:
        disk.device = "disk"
        disk.path = _resolve(file_name, folder) if file_name else None
        disk.error = f"{prefix}: unsupported deviceType {device_type!r}"
    return disk


def _floppy(cfg: VmxConfig, unit: int, folder: str) -> Disk | None:
    prefix = f"floppy{unit}"
    if not cfg.flag(f"{prefix}.present"):
        return None
    if cfg.flag(f"{prefix}.clientDevice"):
        return None
    file_type = (cfg.get(f"{prefix}.fileType") or "").lower()
    file_name = cfg.get(f"{prefix}.fileName")
    disk = Disk(target=disk_target("fdc", 0, unit), device="floppy", bus="fdc")
    if file_type == "device":
        disk.source_type, disk.path = "block", file_name
    elif file_name:
        disk.path = _resolve(file_name, folder)
    else:
        disk.source_type = "none"
    return disk


def _nic(cfg: VmxConfig, index: int) -> Nic | None:
    prefix = f"ethernet{index}"
    if not cfg.flag(f"{prefix}.present"):
        return None
    path = cfg.path
    address_type = (cfg.get(f"{prefix}.addressType") or "generated").strip().lower()
    if address_type in ("generated", "vpx"):
        mac = cfg.get(f"{prefix}.generatedAddress")
    elif address_type == "static":
        mac = cfg.get(f"{prefix}.address")
    else:
        raise SourceError(
            f"{path}: {prefix}.addressType = {address_type!r}: expected generated, static or vpx"
        )
    if mac is not None:
        mac = mac.strip().lower().replace("-", ":")
        if not MAC_RE.match(mac):
            raise SourceError(f"{path}: {prefix} MAC address {mac!r} is not a MAC address")
    model = cfg.get(f"{prefix}.virtualDev")
    if model:
        model = model.strip().lower()
        if model == "vmxnet" and cfg.integer(f"{prefix}.features", 0) == 15:
            model = "vmxnet2"
    connection = (cfg.get(f"{prefix}.connectionType") or "bridged").strip().lower()
    network = cfg.get(f"{prefix}.networkName")
    if connection in ("bridged", "custom"):
        nic_type = "bridge"
        network = network or ""
    elif connection == "hostonly":
        nic_type = "network"
        network = network or "hostonly"
    elif connection == "nat":
        nic_type = "user"
        network = network or None
    else:
        nic_type = connection
    return Nic(mac=mac or None, model=model or None, type=nic_type, network=network)


def _devices(cfg: VmxConfig) -> list[Device]:
    devices: list[Device] = []
    keys = cfg.values
    for n in sorted({int(m.group(1)) for k in keys if (m := re.match(r"^serial(\d+)\.present$", k))}):
        if cfg.flag(f"serial{n}.present"):
            details = {"port": str(n)}
            if cfg.get(f"serial{n}.fileName"):
                details["path"] = cfg.get(f"serial{n}.fileName") or ""
            devices.append(Device("serial", model=(cfg.get(f"serial{n}.fileType") or None),
                                  details=details))
    for n in sorted({int(m.group(1)) for k in keys if (m := re.match(r"^parallel(\d+)\.present$", k))}):
        if cfg.flag(f"parallel{n}.present"):
            devices.append(Device("parallel", model=cfg.get(f"parallel{n}.fileType") or None,
                                  details={"port": str(n), "path": cfg.get(f"parallel{n}.fileName") or ""}))
    if cfg.flag("sound.present"):
        devices.append(Device("sound", model=cfg.get("sound.virtualDev") or None))
    if cfg.flag("usb.present"):
        devices.append(Device("controller", model="usb-ehci" if cfg.flag("ehci.present") else "usb"))
    if cfg.flag("usb_xhci.present"):
        devices.append(Device("controller", model="usb-xhci"))
    for n in sorted({int(m.group(1)) for k in keys if (m := re.match(r"^pcipassthru(\d+)\.present$", k))}):
        if cfg.flag(f"pciPassthru{n}.present"):
            details = {"slot": str(n)}
            for field in ("id", "deviceId", "vendorId", "pciSlotNumber", "vgpu"):
                value = cfg.get(f"pciPassthru{n}.{field}")
                if value:
                    details[field] = value
            devices.append(Device("pci-passthrough", model="vgpu" if "vgpu" in details else None,
                                  details=details))
    for n in sorted({int(m.group(1)) for k in keys if (m := re.match(r"^sharedfolder(\d+)\.present$", k))}):
        if cfg.flag(f"sharedFolder{n}.present") and cfg.flag(f"sharedFolder{n}.enabled"):
            devices.append(Device("filesystem", details={
                "source": cfg.get(f"sharedFolder{n}.hostPath") or "",
                "target": cfg.get(f"sharedFolder{n}.guestName") or ""}))
    if cfg.flag("RemoteDisplay.vnc.enabled"):
        devices.append(Device("graphics", model="vnc",
                              details={"port": cfg.get("RemoteDisplay.vnc.port") or "auto"}))
    video = Device("video", model="vmvga")
    vram = cfg.integer("svga.vramSize")
    if vram is not None:
        video.details["vram"] = str(vram)
    devices.append(video)
    if cfg.flag("vmci0.present"):
        devices.append(Device("other", model="vmci"))
    return devices


def read_vmx(path: str) -> VM:
    """The VM a ``.vmx`` describes; :class:`SourceError` naming the file when it is bad input."""
    path, data = read_bounded(path, MAX_VMX_BYTES, "a .vmx file")
    cfg = parse_vmx_text(_decode(data, path), path)
    return vm_from_config(cfg)


def vm_from_config(cfg: VmxConfig,
                   inspect: Callable[[str], vmdk.DiskFacts] | None = None) -> VM:
    """The VM of a parsed .vmx; ``inspect`` reads a disk (default: :func:`vmdk.inspect`
    confined to the .vmx's folder, the export)."""
    path = cfg.path
    folder = os.path.dirname(path)
    if inspect is None:
        export = Export.of_descriptor(path)

        def inspect(disk_path: str) -> vmdk.DiskFacts:
            return vmdk.inspect(disk_path, export)

    stem = os.path.splitext(os.path.basename(path))[0]

    name = cfg.get("displayName")
    if name is not None:
        name = unescape_pipe(unescape_percent(name)).strip()
    annotation = cfg.get("annotation")

    memsize = cfg.integer("memsize", 32)
    assert memsize is not None
    if memsize <= 0 or memsize * 1024**2 > MAX_MEMORY:
        raise SourceError(f"{path}: memsize = {memsize} MiB is not a possible memory size")
    vcpus = cfg.integer("numvcpus", 1)
    assert vcpus is not None
    if vcpus <= 0 or vcpus > MAX_VCPUS:
        raise SourceError(f"{path}: numvcpus = {vcpus} is not a possible CPU count")
    topology = None
    cores = cfg.integer("cpuid.coresPerSocket")
    if cores is not None:
        if cores <= 0 or cores > MAX_VCPUS:
            raise SourceError(f"{path}: cpuid.coresPerSocket = {cores} is not a possible count")
        if vcpus % cores == 0:
            topology = CpuTopology(sockets=vcpus // cores, cores=cores, threads=1)

    firmware = Firmware()
    fw = (cfg.get("firmware") or "").strip().lower()
    if fw == "efi":
        firmware.type = "efi"
    elif fw not in ("", "bios"):
        raise SourceError(f"{path}: firmware = {fw!r}: expected efi or bios")
    firmware.secure_boot = cfg.flag("uefi.secureBoot.enabled")
    if cfg.flag("vtpm.present"):
        firmware.tpm_version = "2.0"

    guest_id = cfg.get("guestOS")
    guest = from_vmware(guest_id)
    hw = cfg.integer("virtualHW.version")
    machine = f"vmx-{hw:02d}" if hw is not None else None

    # SCSI controllers and their models
    models: dict[int, str | None] = {}
    slots: set[tuple[str, int, int]] = set()
    for key in cfg.values:
        match = _DISK_SLOT.match(key)
        if match:
            slots.add((match.group(1), int(match.group(2)), int(match.group(3))))
    for bus, ctrl, _ in slots:
        if bus == "scsi" and ctrl not in models:
            model = cfg.get(f"scsi{ctrl}.virtualDev")
            models[ctrl] = model.strip().lower() if model else None
    order = {"scsi": 0, "sata": 1, "ide": 2, "nvme": 3}
    disks: list[Disk] = []
    used: set[str] = set()
    modes: dict[str, str] = {}
    for bus, ctrl, unit in sorted(slots, key=lambda s: (order[s[0]], s[1], s[2])):
        if bus == "scsi" and (unit == 7 or not cfg.flag(f"scsi{ctrl}.present")):
            continue
        if bus in ("sata", "nvme") and not cfg.flag(f"{bus}{ctrl}.present", default=True):
            continue
        disk = _storage_disk(cfg, bus, ctrl, unit, folder, models)
        if disk is None:
            continue
        shared = (cfg.get(f"{bus}{ctrl}.sharedBus") or "none").strip().lower()
        if bus == "scsi" and shared in ("physical", "virtual") and disk.device in ("disk", "lun"):
            disk.shareable = True  # a SCSI bus shared with other VMs (guest clustering)
        disk.target = unique_target(disk.target, used)
        mode = (cfg.get(f"{bus}{ctrl}:{unit}.mode") or "").strip().lower()
        if mode and mode != "persistent":
            modes[disk.target] = mode
        if disk.device == "disk" and disk.path and disk.error is None:
            _fill_from_vmdk(disk, inspect)
        disks.append(disk)
    floppies = sorted({int(m.group(1)) for k in cfg.values if (m := _FLOPPY.match(k))})
    for unit in floppies:
        disk = _floppy(cfg, unit, folder)
        if disk is not None:
            disk.target = unique_target(disk.target, used)
            disks.append(disk)

    nic_ids = sorted({int(m.group(1)) for k in cfg.values
                      if (m := re.match(r"^ethernet(\d+)\.present$", k))})
    nics = [nic for n in nic_ids if (nic := _nic(cfg, n)) is not None]

    metadata: dict[str, str] = {}
    for key in ("virtualHW.version", "guestOS", "nvram", "vc.uuid", "uuid.location",
                "guestOSAltName"):
        value = cfg.get(key)
        if value:
            metadata[f"vmx.{key}"] = value
    for target, mode in modes.items():
        metadata[f"vmx.disk.{target}.mode"] = mode  # independent disks are left out of snapshots

    power = PowerState.SUSPENDED if (cfg.get("checkpoint.vmState") or "").strip() else PowerState.UNKNOWN
    affinity = (cfg.get("sched.cpu.affinity") or "all").strip().lower()

    vm = VM(
        name=name or stem,
        source=Source(SourceKind.VMX, path),
        uuid=_uuid(cfg.get("uuid.bios"), path),
        description=unescape_pipe(annotation) if annotation else None,
        hypervisor="vmware",
        os_type="hvm",
        arch="x86_64" if (guest_id or "").strip().lower().endswith("-64") else "i686",
        machine=machine,
        power_state=power,
        vcpus=vcpus,
        topology=topology,
        memory=memsize * 1024**2,
        firmware=firmware,
        disks=disks,
        nics=nics,
        devices=_devices(cfg),
        guest_os=guest,
        metadata=metadata,
    )
    vm.tuning.cpu_pinning = affinity not in ("", "all")
    if cfg.flag("vhv.enable"):
        vm.features.append("nested-virt")
    return vm
