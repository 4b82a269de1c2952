"""Proxmox VE VM configuration files (``/etc/pve/qemu-server/<vmid>.conf``) → :class:`VM`.

The format is the one ``qm config`` prints and PVE::QemuServer's ``parse_vm_config``
reads (pve-qemu-server, PVE/QemuServer.pm; option meanings: the ``qm.conf(5)`` manual):

* one ``key: value`` per line, keys ``[a-z][a-z_]*\\d*`` (``scsi0``, ``net1``);
* ``#`` lines before the first option are the URL-encoded description;
* the current configuration comes first; a line ``[name]`` starts a snapshot section,
  ``[PENDING]`` changes not applied yet, ``[special:cloudinit]`` cloud-init state.  Only
  the current configuration describes the VM; snapshot sections are counted.

Disks are ``<bus><n>: <volume>,opt=value,…`` with ``volume`` a *volume ID*
``<storage>:<volname>``, an absolute host path (a passed-through device), ``none``
(empty drive) or ``cdrom`` (the host's drive).  A volume ID names a storage of the
Proxmox host; vmmove reads it through a storage map (``--pve-storage ID=PATH``) saying
where that storage is on this machine, and resolves the volume name with the rules of
PVE::Storage::Plugin ``parse_volname``/``filesystem_path`` (pve-storage):

* ``<vmid>/<file>`` (dir, NFS, CIFS… storages): ``PATH/images/<vmid>/<file>``, format
  from the extension (raw, qcow2, vmdk);
* ``<basevmid>/<base file>/<vmid>/<file>`` (linked clone): ``PATH/images/<vmid>/<file>``;
* ``iso/<file>``: ``PATH/template/iso/<file>``;
* a plain name (LVM ``/dev/<vg>/<lv>``, LVM-thin, ZFS ``/dev/zvol/<pool>/<name>``):
  ``PATH/<name>``, raw; ``base-…/vm-…`` (a linked clone there): ``PATH/vm-…``.

The file is untrusted input: every resolved path must stay inside its storage's mapped
path (no ``..``, no absolute volume names); a disk that breaks a rule, or names a storage
the map does not have, keeps one error naming the disk and the VM stays in the inventory.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

from migrate.core.model import (
    VM,
    CpuTopology,
    Device,
    Disk,
    Firmware,
    GuestOS,
    Nic,
    Source,
    SourceKind,
)
from migrate.core.errors import SourceError
from migrate.sources import read_bounded
from migrate.sources.containment import inside
from migrate.sources.diskprobe import MAX_DISK

MAX_CONF_BYTES = 1024**2  # a real config is a few KiB; snapshots make it grow, not to MiBs
MAX_MEMORY_MIB = 64 * 1024**2  # 64 TiB, the ceiling every reader uses
MAX_VCPUS = 16384
CONF_NAME = re.compile(r"^(\d+)\.conf$")
STORAGE_ID = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$", re.IGNORECASE)  # pve-storage-id

_KEY_LINE = re.compile(r"^([a-z][a-z_]*\d*):\s*(.*?)\s*$")
_SECTION = re.compile(r"^\[([^\]]+)\]\s*$")
_DISK_KEY = re.compile(r"^(ide|sata|scsi|virtio)(\d+)$")
_NET_KEY = re.compile(r"^net(\d+)$")
_NIC_MODELS = {
    "virtio", "e1000", "e1000e", "e1000-82540em", "e1000-82544gc", "e1000-82545em", "rtl8139",
    "vmxnet3", "i82551", "i82557b", "i82559er", "ne2k_isa", "ne2k_pci", "pcnet",
}
# qm.conf "scsihw" → the controller model names the libvirt reader gives (assessment rules)
_SCSIHW = {
    "lsi": "lsilogic", "lsi53c810": "lsi53c810", "megasas": "megasas", "pvscsi": "vmpvscsi",
    "virtio-scsi-pci": "virtio-scsi", "virtio-scsi-single": "virtio-scsi",
}
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class _Bad(Exception):
    """A problem with the whole file; becomes a SourceError naming it."""


# ------------------------------------------------------------------------------ guest OS

# qm.conf(5) "ostype": what each value stands for, as the Proxmox VE GUI lists it.
_OSTYPES: dict[str, tuple[str, str, str | None]] = {
    "l26": ("linux", "Linux 2.6 - 6.x kernel", None),
    "l24": ("linux", "Linux 2.4 kernel", None),
    "win11": ("windows", "Microsoft Windows 11/2022/2025", "11"),
    "win10": ("windows", "Microsoft Windows 10/2016/2019", "10"),
    "win8": ("windows", "Microsoft Windows 8.x/2012/2012r2", "8"),
    "win7": ("windows", "Microsoft Windows 7/2008r2", "7"),
    "wvista": ("windows", "Microsoft Windows Vista", "vista"),
    "w2k8": ("windows", "Microsoft Windows 2008", "2008"),
    "w2k3": ("windows", "Microsoft Windows 2003", "2003"),
    "w2k": ("windows", "Microsoft Windows 2000", "2000"),
    "wxp": ("windows", "Microsoft Windows XP", "xp"),
    "solaris": ("solaris", "Solaris/OpenSolaris/OpenIndiana kernel", None),
    "other": ("other", "unspecified OS", None),
}


def guest_os_from_ostype(ostype: str | None) -> GuestOS | None:
    """GuestOS (family, name, version, ``distro`` ``win`` for Windows) of a qm.conf ``ostype``.

    ``l26`` says Linux without naming a distribution; ``win10`` covers Windows 10, Server
    2016 and 2019 alike, so the version is the desktop one.  An ostype Proxmox does not
    define (``w2k19`` from a hand-written file) still says Windows Server 20xx.
    """
    if not ostype:
        return None
    value = ostype.strip().lower()
    known = _OSTYPES.get(value)
    if known:
        family, name, version = known
        return GuestOS(id=f"pve:{value}", name=name, family=family, version=version,
                       distro="win" if family == "windows" else None)
    server = re.match(r"^w(?:in)?2k(\d\d)(r2)?$", value)
    if server:
        version = f"20{server.group(1)}{'r2' if server.group(2) else ''}"
        return GuestOS(id=f"pve:{value}", name=f"Microsoft Windows Server {version.replace('r2', ' R2')}",
                       family="windows", version=version, distro="win")
    if value.startswith("win"):
        return GuestOS(id=f"pve:{value}", name="Microsoft Windows", family="windows", distro="win")
    return GuestOS(id=f"pve:{value}", name=value)


# ------------------------------------------------------------------------------ parsing


def parse_config(text: str) -> tuple[dict[str, str], list[str], bool]:
    """The current configuration (key → value), the snapshot names, and whether a
    ``[PENDING]`` section exists.  Description lines become ``description``."""
    current: dict[str, str] = {}
    snapshots: list[str] = []
    pending = False
    section: str | None = None
    description: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        head = _SECTION.match(line)
        if head:
            name = head.group(1)
            if name.upper() == "PENDING":
                pending = True
            elif not name.lower().startswith("special:"):
                snapshots.append(name)
            section = name
            continue
        if section is not None:
            continue  # snapshot, pending and special sections never describe the VM now
        if line.startswith("#"):
            description.append(unquote(line[1:]))
            continue
        match = _KEY_LINE.match(line)
        if not match:
            raise _Bad(f"line {number} is not 'key: value' ({_short(line)!r})")
        key, value = match.groups()
        if key == "description":
            description.append(unquote(value))
        else:
            current[key] = value
    if description:
        current["description"] = "\n".join(description).strip()
    return current, snapshots, pending


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _options(value: str) -> tuple[str | None, dict[str, str]]:
    """``vol,opt=x,flag`` → (``vol``, {opt: x}): the first part without ``=`` is the head."""
    head: str | None = None
    opts: dict[str, str] = {}
    for i, part in enumerate(value.split(",")):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            opts[k.strip()] = v.strip()
        elif i == 0:
            head = part
        else:
            opts[part] = "1"
    if head is None and "file" in opts:
        head = opts.pop("file")
    return head, opts


def _int(value: str | None, what: str, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    if not re.fullmatch(r"\d+", value):
        raise _Bad(f"{what} {value!r} is not a whole number")
    return int(value)


def parse_size(text: str) -> int | None:
    """Bytes of a qm.conf size (``32G``, ``512M``, ``4K``, a byte count): binary units."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", text.strip(), re.IGNORECASE)
    if not match:
        return None
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


# ------------------------------------------------------------------------- volume paths


def _inside(root: str, relative: str) -> str | None:
    """``root/relative`` when it stays inside ``root``, else None.

    Lexical (:func:`migrate.sources.containment.inside` on normalised names): LVM and ZFS
    device nodes are links out of their folder by design.  The containment module checks
    the real files again when the images are opened (``Export.of`` for a Proxmox disk).
    """
    if not relative or "\0" in relative or os.path.isabs(relative):
        return None
    if any(p in ("", ".", "..") for p in relative.split("/")):
        return None
    base = os.path.normpath(root)
    path = os.path.normpath(os.path.join(base, relative))
    return path if path != base and inside(base, path) else None


_FILE_FORMATS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "iso": "raw", "img": "raw"}


def volume_path(root: str, volname: str) -> tuple[str, str | None, str]:
    """The local path, format and ``Disk.source_type`` (file | block) of ``volname`` on a
    storage mapped to ``root``.

    Raises ValueError with the reason when the name follows no pve-storage rule or would
    leave ``root``.
    """
    parts = volname.split("/")
    if len(parts) == 4 and parts[0].isdigit() and parts[2].isdigit():  # linked clone
        relative, name, kind = f"images/{parts[2]}/{parts[3]}", parts[3], "file"
    elif len(parts) == 2 and parts[0].isdigit():
        relative, name, kind = f"images/{parts[0]}/{parts[1]}", parts[1], "file"
    elif len(parts) == 2 and parts[0] == "iso":
        relative, name, kind = f"template/iso/{parts[1]}", parts[1], "file"
    elif len(parts) == 2 and parts[0].startswith("base-") and parts[1].startswith("vm-"):
        relative, name, kind = parts[1], parts[1], "block"  # linked clone on LVM-thin / ZFS
    elif len(parts) == 1:
        relative, name, kind = volname, volname, "block"
    else:
        raise ValueError(f"volume name {volname!r} follows no Proxmox storage layout")
    path = _inside(root, relative)
    if path is None:
        raise ValueError(f"volume name {volname!r} leaves its storage {root}")
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in _FILE_FORMATS:
        return path, _FILE_FORMATS[ext], "file"
    return path, "raw" if kind == "block" else None, kind


# --------------------------------------------------------------------------------- disks


def _disk(key: str, value: str, storage: dict[str, str], scsihw: str | None) -> Disk:
    bus = _DISK_KEY.match(key).group(1)  # type: ignore[union-attr]
    volume, opts = _options(value)
    media = opts.get("media", "disk")
    device = "cdrom" if media == "cdrom" else "disk"
    disk = Disk(target=key, device=device, bus=bus)
    if bus == "scsi":
        disk.controller_model = _SCSIHW.get(scsihw or "lsi", scsihw or "lsi")
    if opts.get("size"):
        disk.virtual_size = parse_size(opts["size"])
        if disk.virtual_size is not None and disk.virtual_size > MAX_DISK:
            disk.virtual_size = None
            disk.error = f"size={opts['size']} is absurd (more than 1 PiB)"
            return disk
    disk.serial = opts.get("serial") or None
    disk.readonly = opts.get("ro") == "1" or device == "cdrom"
    disk.shareable = opts.get("shared") == "1"
    fmt = opts.get("format")
    if not volume or volume == "none":
        disk.source_type = "none"
        if device == "disk":
            disk.error = "the drive has no volume"
        return disk
    if volume == "cdrom":
        disk.source_type, disk.path = "block", None
        disk.error = "the Proxmox host's physical CD-ROM drive (passthrough), not an image"
        return disk
    if volume.startswith("/"):
        disk.source_type = "block" if volume.startswith("/dev/") else "file"
        disk.error = (f"host {'device' if volume.startswith('/dev/') else 'path'} {volume} is passed "
                      "through directly, outside any Proxmox storage: copy its data some other way "
                      "or leave the disk out")
        return disk
    if ":" not in volume:
        disk.error = f"volume {volume!r} is not a Proxmox volume ID (storage:name)"
        return disk
    storage_id, volname = volume.split(":", 1)
    disk.source_type, disk.pool, disk.volume = "volume", storage_id, volname
    root = storage.get(storage_id)
    if root is None:
        disk.error = (f"volume {volume} is on Proxmox storage '{storage_id}', which is not mapped "
                      f"(give --pve-storage {storage_id}=PATH)")
        return disk
    try:
        disk.path, guessed, disk.source_type = volume_path(root, volname)
    except ValueError as exc:
        disk.error = str(exc)
        return disk
    disk.format = fmt or guessed
    return disk


def _nic(key: str, value: str) -> Nic:
    head, opts = _options(value)
    model, mac = None, None
    # "virtio=BC:24:11:00:00:01,bridge=vmbr0": the model is the key, the MAC its value
    for k, v in list(opts.items()):
        if k in _NIC_MODELS:
            model, mac = k, v or None
            break
    if model is None:
        model = opts.get("model") or head
        mac = opts.get("macaddr")
    nic = Nic(mac=mac.lower() if mac else None, model=model)
    bridge = opts.get("bridge")
    if bridge:
        nic.type, nic.network = "bridge", bridge
        if opts.get("tag"):
            nic.portgroup = f"vlan{opts['tag']}"
    else:
        nic.type, nic.network = "user", None  # no bridge: QEMU user-mode NAT
    return nic


# ------------------------------------------------------------------------------- the VM


def _cpu(conf: dict[str, str], vm: VM) -> None:
    sockets = _int(conf.get("sockets"), "sockets", 1) or 1
    cores = _int(conf.get("cores"), "cores", 1) or 1
    total = sockets * cores
    if total > MAX_VCPUS:
        raise _Bad(f"sockets × cores = {total} is absurd (more than {MAX_VCPUS})")
    vm.topology = CpuTopology(sockets=sockets, cores=cores, threads=1)
    vm.vcpus = total
    online = _int(conf.get("vcpus"), "vcpus")
    if online and online < total:
        vm.vcpus, vm.max_vcpus = online, total
    cpu = conf.get("cpu")
    if cpu:
        cputype, opts = _options(cpu)
        cputype = cputype or opts.get("cputype")
        if cputype == "host":
            vm.tuning.cpu_mode = "host-passthrough"
        elif cputype:
            vm.tuning.cpu_mode, vm.tuning.cpu_model = "custom", cputype
    if conf.get("affinity"):
        vm.tuning.cpu_pinning = True
        vm.metadata["affinity"] = conf["affinity"]
    if conf.get("hugepages"):
        vm.tuning.hugepages = True
    if conf.get("numa") == "1":
        vm.tuning.numa_nodes = max(1, sum(1 for k in conf if re.fullmatch(r"numa\d+", k)))


def _memory(conf: dict[str, str], vm: VM) -> None:
    value = conf.get("memory", "512")  # qm.conf(5): default 512 MiB
    head, opts = _options(value)
    mib = _int(opts.get("current", head), "memory")
    if not mib:
        raise _Bad("memory is 0")
    if mib > MAX_MEMORY_MIB:
        raise _Bad(f"memory of {mib} MiB is absurd (more than 64 TiB)")
    vm.memory = mib * 1024**2
    if conf.get("balloon") not in (None, ""):
        vm.metadata["balloon_min_memory"] = str((_int(conf["balloon"], "balloon") or 0) * 1024**2)


def _firmware(conf: dict[str, str], vm: VM) -> None:
    fw = Firmware(type="efi" if conf.get("bios") == "ovmf" else "bios")
    efidisk = conf.get("efidisk0")
    if efidisk:
        volume, opts = _options(efidisk)
        vm.metadata["efidisk"] = volume or ""
        # pre-enrolled-keys=1: the EFI vars hold Microsoft's keys and Secure Boot is on
        fw.secure_boot = fw.type == "efi" and opts.get("pre-enrolled-keys") == "1"
        if opts.get("efitype"):
            vm.metadata["efitype"] = opts["efitype"]
    tpm = conf.get("tpmstate0")
    if tpm:
        volume, opts = _options(tpm)
        fw.tpm_version = "2.0" if opts.get("version", "v1.2") == "v2.0" else "1.2"
        fw.tpm_model = "tpm-tis"  # what qemu-server gives x86 guests for either version
        vm.metadata["tpmstate"] = volume or ""
    vm.firmware = fw


def _boot_order(conf: dict[str, str], vm: VM) -> None:
    """``boot: order=scsi0;ide2;net0`` (PVE 6.2+) or legacy ``boot: cdn`` + ``bootdisk``."""
    value = conf.get("boot", "")
    head, opts = _options(value) if value else (None, {})
    by_key = {d.target: d for d in vm.disks}
    nics = {f"net{i}": n for i, n in zip(_nic_indexes(conf), vm.nics)}
    if "order" in opts:
        items = [by_key.get(k) or nics.get(k) for k in opts["order"].split(";")]
    else:
        legacy = opts.get("legacy") or head or "cdn"
        items = []
        for letter in legacy:
            if letter == "c":
                items.append(by_key.get(conf.get("bootdisk", "")) or
                             next((d for d in vm.disks if d.device == "disk"), None))
            elif letter == "d":
                items.append(next((d for d in vm.disks if d.device == "cdrom"), None))
            elif letter == "n":
                items.append(vm.nics[0] if vm.nics else None)
    order = 0
    for item in items:
        if item is not None and item.boot_order is None:
            order += 1
            item.boot_order = order


def _nic_indexes(conf: dict[str, str]) -> list[int]:
    return sorted(int(m.group(1)) for k in conf if (m := _NET_KEY.match(k)))


def _devices(conf: dict[str, str], vm: VM) -> None:
    for key in sorted(conf):
        value = conf[key]
        if re.fullmatch(r"hostpci\d+", key):
            head, opts = _options(value)
            vm.devices.append(Device(kind="pci-passthrough", details={"address": opts.get("host", head or "")}))
        elif re.fullmatch(r"usb\d+", key):
            head, opts = _options(value)
            host = opts.get("host", head or "")
            if host and host != "spice":
                vm.devices.append(Device(kind="usb-passthrough", details={"host": host}))
        elif re.fullmatch(r"serial\d+", key):
            vm.devices.append(Device(kind="serial", model=value, details={"name": key}))
        elif re.fullmatch(r"parallel\d+", key):
            vm.devices.append(Device(kind="parallel", details={"name": key, "host": value}))
        elif key == "vga":
            head, opts = _options(value)
            vm.devices.append(Device(kind="video", model=opts.get("type", head or "std")))
        elif key == "watchdog":
            head, opts = _options(value)
            vm.devices.append(Device(kind="watchdog", model=opts.get("model", head or "i6300esb"),
                                     details={"action": opts.get("action", "")}))
        elif re.fullmatch(r"rng\d+", key):
            vm.devices.append(Device(kind="rng", model="virtio"))
        elif re.fullmatch(r"audio\d+", key):
            head, opts = _options(value)
            vm.devices.append(Device(kind="sound", model=opts.get("device", head or "")))
        elif key == "ivshmem":
            vm.devices.append(Device(kind="shmem", details={"spec": value}))
        elif re.fullmatch(r"virtiofs\d+", key):
            vm.devices.append(Device(kind="filesystem", model="virtiofs", details={"spec": value}))
    agent = conf.get("agent")
    if agent:
        head, opts = _options(agent)
        if opts.get("enabled", head) == "1":
            vm.devices.append(Device(kind="channel", model="unix",
                                     details={"type": "virtio", "name": "org.qemu.guest_agent.0"}))


def _vm(conf: dict[str, str], snapshots: list[str], pending: bool, vmid: str, source: Source,
        storage: dict[str, str]) -> VM:
    if "rootfs" in conf:
        raise _Bad("a Proxmox container (LXC) configuration, not a virtual machine: vmmove migrates VMs only")
    vm = VM(name=conf.get("name") or f"VM {vmid}", source=source)
    vm.metadata["pve_vmid"] = vmid
    smbios = conf.get("smbios1")
    if smbios:
        _, opts = _options(smbios)
        if opts.get("uuid"):
            uuid = opts["uuid"].lower()
            if not re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", uuid):
                raise _Bad(f"smbios1 uuid {opts['uuid']!r} is not a UUID")
            vm.uuid = uuid
    vm.description = conf.get("description") or None
    vm.hypervisor = "qemu" if conf.get("kvm") == "0" else "kvm"
    vm.os_type = "hvm"
    vm.arch = {"aarch64": "aarch64", "x86_64": "x86_64"}.get(conf.get("arch", "x86_64"), conf.get("arch"))
    machine = conf.get("machine")
    if machine:
        head, opts = _options(machine)
        vm.machine = opts.get("type", head)
    else:
        vm.machine = "pc"  # qemu-server's default: the latest i440fx
    _cpu(conf, vm)
    _memory(conf, vm)
    _firmware(conf, vm)
    if conf.get("localtime") == "1":
        vm.clock_offset = "localtime"
    elif conf.get("localtime") == "0":
        vm.clock_offset = "utc"
    if conf.get("vmgenid"):
        vm.metadata["genid"] = conf["vmgenid"]
    vm.guest_os = guest_os_from_ostype(conf.get("ostype"))
    if vm.clock_offset is None and vm.guest_os and vm.guest_os.family == "windows":
        vm.clock_offset = "localtime"  # qemu-server: localtime defaults on for Windows ostypes

    scsihw = conf.get("scsihw")
    order = {"ide": 0, "sata": 1, "scsi": 2, "virtio": 3}
    disk_keys = sorted((k for k in conf if _DISK_KEY.match(k)),
                       key=lambda k: (order[_DISK_KEY.match(k).group(1)], int(_DISK_KEY.match(k).group(2))))  # type: ignore[union-attr]
    for key in disk_keys:
        vm.disks.append(_disk(key, conf[key], storage, scsihw))
    for index in _nic_indexes(conf):
        vm.nics.append(_nic(f"net{index}", conf[f"net{index}"]))
    _boot_order(conf, vm)
    _devices(conf, vm)

    vm.snapshots = len(snapshots)
    if conf.get("parent"):
        vm.metadata["current_snapshot"] = conf["parent"]
    if pending:
        vm.metadata["pending_changes"] = "yes"
    for key in ("lock", "template", "onboot", "tags"):
        if conf.get(key):
            vm.metadata[key] = conf[key]
    unused = sorted(k for k in conf if re.fullmatch(r"unused\d+", k))
    if unused:
        vm.metadata["unused_volumes"] = ",".join(conf[k] for k in unused)
    return vm


def parse_storage_map(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``ID=PATH`` options as {storage ID: absolute folder}; SourceError (one line) when one
    is malformed, names no folder, or repeats an ID."""
    result: dict[str, str] = {}
    for pair in pairs:
        storage_id, sep, path = pair.partition("=")
        storage_id, path = storage_id.strip(), path.strip()
        if not sep or not storage_id or not path:
            raise SourceError(f"--pve-storage {pair!r}: expected ID=PATH, e.g. local-lvm=/dev/pve")
        if not STORAGE_ID.match(storage_id):
            raise SourceError(f"--pve-storage {pair!r}: {storage_id!r} is not a Proxmox storage ID")
        if storage_id in result:
            raise SourceError(f"--pve-storage {storage_id}: given twice")
        absolute = os.path.abspath(path)
        if not os.path.isdir(absolute):
            raise SourceError(f"--pve-storage {storage_id}={path}: no such folder")
        result[storage_id] = absolute
    return result


def read_pve_config(path: str, storage: dict[str, str] | None = None) -> VM:
    """One VM from a Proxmox VE ``<vmid>.conf`` file; SourceError (one line) when the file
    is not one.  ``storage`` maps storage IDs to local folders (:func:`parse_storage_map`)."""
    name = os.path.basename(path)
    match = CONF_NAME.match(name)
    if not match:
        raise SourceError(f"{os.path.abspath(path)}: a Proxmox VE VM configuration is named <vmid>.conf")
    abspath, data = read_bounded(path, MAX_CONF_BYTES, "a Proxmox VE VM configuration")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"{abspath}: not a Proxmox VE VM configuration (not UTF-8 text)") from None
    if "\0" in text:
        raise SourceError(f"{abspath}: not a Proxmox VE VM configuration (binary data)")
    try:
        conf, snapshots, pending = parse_config(text)
        if not conf:
            raise _Bad("no configuration options (empty, or only snapshot sections)")
        source = Source(SourceKind.PVE, abspath)
        vm = _vm(conf, snapshots, pending, match.group(1), source, storage or {})
        used = {d.pool: (storage or {})[d.pool] for d in vm.disks if d.pool in (storage or {})}
        source.storage = dict(sorted(used.items())) or None
        return vm
    except _Bad as exc:
        vmid = match.group(1)
        raise SourceError(f"{abspath}: VM {vmid}: {exc}") from None
