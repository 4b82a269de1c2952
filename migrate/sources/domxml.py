"""libvirt domain XML → :class:`~migrate.core.model.VM`.

One reader serves both the live libvirt source (``XMLDesc`` of each domain) and offline
files (``/etc/libvirt/qemu/*.xml``, ``virsh dumpxml`` output), so a VM reads the same
whichever way it was found.  Everything the model can carry is mapped; what it cannot
(host-only details that still matter to a migration, such as the NVRAM path or the
emulator) goes into ``VM.metadata``.  Parsing goes through defusedxml, so entity
expansion and external entities are refused instead of being expanded.

Malformed input never escapes as a traceback: every problem becomes one
:class:`~migrate.sources.SourceError` line naming the file (or URI and domain).
"""

from __future__ import annotations

import re
from pyexpat import ExpatError
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from migrate.core.model import (
    VM,
    BackingFile,
    CpuTopology,
    Device,
    Disk,
    Firmware,
    GuestOS,
    Nic,
    PowerState,
    Source,
    SourceKind,
)
from migrate.core.errors import SourceError
from migrate.sources import read_bounded

LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

MAX_XML_BYTES = 16 * 1024**2  # the biggest real domain XML is a few hundred KiB
MAX_MEMORY = 64 * 1024**4  # 64 TiB: beyond any VM a libvirt host runs; a typo or a unit slip
MAX_VCPUS = 16384


class _Bad(Exception):
    """A problem found while parsing; turned into a SourceError with the location."""


# ---------------------------------------------------------------------------- numbers


def _int(text: str | None, what: str, default: int | None = None) -> int | None:
    if text is None or not text.strip():
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise _Bad(f"{what} {text.strip()!r} is not a whole number") from None
    if value < 0:
        raise _Bad(f"{what} {value} is negative")
    return value


_POWERS = "kmgtpe"


def scale(value: str | None, unit: str | None, what: str, default_unit: str = "KiB") -> int | None:
    """A libvirt scaled integer in bytes (``<memory unit='GiB'>4</memory>``).

    Units follow libvirt's virScaleInteger: ``b``/``bytes``; ``k``/``KiB`` (1024) but
    ``KB`` (1000); the same for M, G, T, P, E; case does not matter; no unit means
    ``default_unit``.
    """
    number = _int(value, what)
    if number is None:
        return None
    return number * unit_factor(unit or default_unit, what)


def unit_factor(unit: str, what: str = "size") -> int:
    u = unit.strip().lower()
    if u in ("b", "byte", "bytes"):
        return 1
    if u and u[0] in _POWERS:
        power = _POWERS.index(u[0]) + 1
        rest = u[1:]
        if rest in ("", "ib"):
            return 1024**power
        if rest == "b":
            return 1000**power
    raise _Bad(f"{what}: unknown unit {unit!r}")


def _sized(el: Element | None, what: str, default_unit: str = "KiB") -> int | None:
    if el is None:
        return None
    return scale(el.text, el.get("unit"), what, default_unit)


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "on", "true", "1")


def _text(el: Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    text = el.text.strip()
    return text or None


_UUID_RE = re.compile(r"^[0-9a-fA-F]{32}$")


def _uuid(text: str | None) -> str | None:
    if not text:
        return None
    compact = re.sub(r"[-\s]", "", text)
    if not _UUID_RE.match(compact):
        raise _Bad(f"<uuid> {text.strip()!r} is not a UUID")
    c = compact.lower()
    return f"{c[:8]}-{c[8:12]}-{c[12:16]}-{c[16:20]}-{c[20:]}"


def _pci_address(el: Element | None) -> str | None:
    """``0000:03:00.0`` from a libvirt ``<address domain= bus= slot= function=/>``."""
    if el is None:
        return None
    try:
        domain = int(el.get("domain", "0"), 0)
        bus = int(el.get("bus", "0"), 0)
        slot = int(el.get("slot", "0"), 0)
        function = int(el.get("function", "0"), 0)
    except ValueError:
        raise _Bad(f"PCI address {dict(el.attrib)} is not numeric") from None
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


# ------------------------------------------------------------------------- guest OS

_WIN_SERVER = re.compile(r"^2k(\d\d)(r2)?$")
_PRETTY = {
    "rhel": "Red Hat Enterprise Linux",
    "centos": "CentOS",
    "centos-stream": "CentOS Stream",
    "fedora": "Fedora",
    "ubuntu": "Ubuntu",
    "debian": "Debian",
    "sles": "SUSE Linux Enterprise Server",
    "sled": "SUSE Linux Enterprise Desktop",
    "opensuse": "openSUSE",
    "rocky": "Rocky Linux",
    "almalinux": "AlmaLinux",
    "ol": "Oracle Linux",
    "alpinelinux": "Alpine Linux",
    "archlinux": "Arch Linux",
    "gentoo": "Gentoo",
    "freebsd": "FreeBSD",
    "openbsd": "OpenBSD",
    "netbsd": "NetBSD",
    "solaris": "Solaris",
    "linux": "Linux",
}
_BSD = {"freebsd", "openbsd", "netbsd", "dragonflybsd", "dragonfly"}
_SOLARIS = {"solaris", "opensolaris", "openindiana", "illumos", "omnios"}
_OTHER = {"unknown", "msdos", "haiku", "reactos", "macosx", "hurd", "generic"}


def guest_os_from_libosinfo(os_id: str) -> GuestOS:
    """Family, distro, version and a readable name derived from a libosinfo id.

    Ids look like ``http://microsoft.com/win/2k22`` or ``http://redhat.com/rhel/9.2``:
    a vendor, then distro and version path segments.
    """
    match = re.match(r"^[a-z]+://[^/]+/(.*)$", os_id.strip())
    parts = [p for p in (match.group(1) if match else "").split("/") if p]
    distro = parts[0].lower() if parts else None
    version = "/".join(parts[1:]) or None
    if distro is None:
        return GuestOS(id=os_id, family="other")
    if distro == "win":
        family = "windows"
        server = _WIN_SERVER.match(version or "")
        if server:
            version = f"20{server.group(1)}{'r2' if server.group(2) else ''}"
            name = f"Microsoft Windows Server {version.replace('r2', ' R2')}"
        elif version == "2k":
            version, name = "2000", "Microsoft Windows 2000"
        else:
            name = f"Microsoft Windows {version}" if version else "Microsoft Windows"
        return GuestOS(id=os_id, name=name, family=family, distro="win", version=version)
    if distro in _BSD:
        family = "bsd"
    elif distro in _SOLARIS:
        family = "solaris"
    elif distro in _OTHER:
        family = "other"
    else:
        family = "linux"
    pretty = _PRETTY.get(distro, distro)
    name = f"{pretty} {version}" if version else pretty
    return GuestOS(id=os_id, name=name, family=family, distro=distro, version=version)


# ---------------------------------------------------------------------------- disks

_BUS_BY_PREFIX = (("xvd", "xen"), ("vd", "virtio"), ("hd", "ide"), ("sd", "scsi"), ("fd", "fdc"))
_FORMAT_ALIASES = {"aio": "raw", "iso": "raw"}  # Xen blktap "tap:aio" is a raw file


def _backing_chain(disk_el: Element, what: str) -> list[BackingFile]:
    chain: list[BackingFile] = []
    node = disk_el.find("backingStore")
    while node is not None and len(node) and len(chain) < 64:
        src = node.find("source")
        path = None
        if src is not None:
            path = src.get("file") or src.get("dev") or src.get("name") or src.get("dir")
        fmt = node.find("format")
        chain.append(BackingFile(path=path or "", format=fmt.get("type") if fmt is not None else None))
        node = node.find("backingStore")
    return chain


def _disk(el: Element, idx: int, controllers: dict[tuple[str, int], str | None]) -> Disk:
    source_type = el.get("type") or "file"
    device = el.get("device") or "disk"
    target = el.find("target")
    dev = target.get("dev") if target is not None else None
    if not dev:
        raise _Bad(f"disk #{idx + 1} has no <target dev=…>")
    what = f"disk {dev}"
    bus = target.get("bus") if target is not None else None
    if not bus:
        bus = next((b for prefix, b in _BUS_BY_PREFIX if dev.startswith(prefix)), None)
    driver = el.find("driver")
    fmt = driver.get("type") if driver is not None else None
    if fmt:
        fmt = _FORMAT_ALIASES.get(fmt, fmt)
    disk = Disk(target=dev, device=device, bus=bus, source_type=source_type, format=fmt)

    src = el.find("source")
    if src is not None:
        if source_type == "file":
            disk.path = src.get("file") or None
        elif source_type == "block":
            disk.path = src.get("dev") or None
        elif source_type == "dir":
            disk.path = src.get("dir") or None
        elif source_type == "network":
            disk.protocol = src.get("protocol")
            disk.path = src.get("name") or None
            for host in src.findall("host"):
                if host.get("socket"):
                    disk.hosts.append(f"unix:{host.get('socket')}")
                elif host.get("name"):
                    port = host.get("port")
                    disk.hosts.append(f"{host.get('name')}:{port}" if port else host.get("name"))
        elif source_type == "volume":
            disk.pool = src.get("pool") or None
            disk.volume = src.get("volume") or None
        else:  # nvme, vhostuser, vhostvdpa, …
            disk.path = src.get("path") or src.get("dev") or None
    if src is None or not (disk.path or disk.volume or disk.hosts):
        disk.source_type = "none" if source_type in ("file", "block", "dir") else source_type

    disk.readonly = el.find("readonly") is not None
    disk.shareable = el.find("shareable") is not None
    boot = el.find("boot")
    if boot is not None:
        disk.boot_order = _int(boot.get("order"), f"{what} boot order")
    disk.serial = _text(el.find("serial"))
    disk.backing_chain = _backing_chain(el, what)
    if bus in ("scsi", "sata", "ide", "fdc"):
        address = el.find("address")
        ctrl = 0
        if address is not None and address.get("type", "drive") == "drive":
            ctrl = _int(address.get("controller"), f"{what} controller", 0) or 0
        disk.controller_model = controllers.get((bus, ctrl))
    return disk


# ----------------------------------------------------------------------------- NICs


def _nic(el: Element, idx: int) -> Nic:
    nic_type = el.get("type") or "network"
    mac = el.find("mac")
    model = el.find("model")
    nic = Nic(
        mac=(mac.get("address") or "").lower() or None if mac is not None else None,
        model=model.get("type") if model is not None else None,
        type=nic_type,
    )
    src = el.find("source")
    if src is not None:
        if nic_type == "network":
            nic.network = src.get("network")
            nic.portgroup = src.get("portgroup")
        elif nic_type == "bridge":
            nic.network = src.get("bridge")
        elif nic_type in ("direct", "vdpa"):
            nic.network = src.get("dev")
        elif nic_type == "hostdev":
            nic.network = _pci_address(src.find("address"))
        elif nic_type == "vhostuser":
            nic.network = src.get("path")
        elif nic_type in ("server", "client", "mcast", "udp"):
            addr, port = src.get("address"), src.get("port")
            nic.network = f"{addr}:{port}" if addr and port else addr or port
        else:
            nic.network = src.get("network") or src.get("bridge") or src.get("dev")
    if nic.network is None and nic_type == "ethernet":
        target = el.find("target")
        nic.network = target.get("dev") if target is not None else None
    boot = el.find("boot")
    if boot is not None:
        nic.boot_order = _int(boot.get("order"), f"interface #{idx + 1} boot order")
    return nic


# -------------------------------------------------------------------------- devices

_SIMPLE_MODEL = {  # element -> (kind, attribute holding the model)
    "graphics": ("graphics", "type"),
    "serial": ("serial", "type"),
    "console": ("console", "type"),
    "channel": ("channel", "type"),
    "parallel": ("parallel", "type"),
    "watchdog": ("watchdog", "model"),
    "rng": ("rng", "model"),
    "sound": ("sound", "model"),
    "input": ("input", "type"),
    "smartcard": ("smartcard", "mode"),
    "redirdev": ("redirdev", "bus"),
    "filesystem": ("filesystem", "type"),
    "vsock": ("vsock", "model"),
    "memballoon": ("memballoon", "model"),
    "iommu": ("iommu", "model"),
    "panic": ("panic", "model"),
    "hub": ("hub", "type"),
}


def _attrs(el: Element | None, *names: str, prefix: str = "") -> dict[str, str]:
    if el is None:
        return {}
    return {f"{prefix}{n}": el.get(n, "") for n in names if el.get(n)}


def _hostdev(el: Element) -> Device:
    mode = el.get("mode") or "subsystem"
    htype = el.get("type") or ""
    src = el.find("source")
    details: dict[str, str] = {"managed": el.get("managed", "")} if el.get("managed") else {}
    if mode != "subsystem":
        return Device(kind="other", model=f"hostdev-{mode}", details={"type": htype})
    if htype == "pci":
        addr = _pci_address(src.find("address")) if src is not None else None
        if addr:
            details["address"] = addr
        driver = el.find("driver")
        if driver is not None and driver.get("name"):
            details["driver"] = driver.get("name", "")
        return Device(kind="pci-passthrough", model="pci", details=details)
    if htype == "usb":
        if src is not None:
            vendor, product, address = src.find("vendor"), src.find("product"), src.find("address")
            if vendor is not None:
                details["vendor"] = vendor.get("id", "")
            if product is not None:
                details["product"] = product.get("id", "")
            if address is not None:
                details.update(_attrs(address, "bus", "device"))
        return Device(kind="usb-passthrough", model="usb", details=details)
    if htype in ("scsi", "scsi_host"):
        if src is not None:
            details.update(_attrs(src, "protocol", "wwpn", "name"))
            adapter = src.find("adapter")
            if adapter is not None and adapter.get("name"):
                details["adapter"] = adapter.get("name", "")
            address = src.find("address")
            details.update(_attrs(address, "bus", "target", "unit"))
            host = src.find("host")
            if host is not None and host.get("name"):
                details["host"] = host.get("name", "")
        return Device(kind="scsi-passthrough", model=htype, details=details)
    if htype == "mdev":
        if src is not None:
            address = src.find("address")
            if address is not None and address.get("uuid"):
                details["uuid"] = address.get("uuid", "")
        return Device(kind="mdev", model=el.get("model"), details=details)
    return Device(kind="other", model=f"hostdev-{htype or 'unknown'}", details=details)


def _qualify_shared_targets(disks: list[Disk]) -> None:
    """Give disks that share a target name on different buses distinct ``bus:target`` names.

    libvirt keeps targets unique per bus, not per domain: its ESX driver writes ``sda`` on
    the SCSI bus and ``sda`` on the SATA bus for a VM with a SCSI disk and a SATA CD-ROM
    (libvirt formatdomain, "target": *dev* is "the logical device name ... not guaranteed
    to map to the device name in the guest OS"; esx_vmx.c numbers each bus from ``sda``).
    Journals, image files and KubeVirt volume names key disks by ``Disk.target``, so every
    member of such a group becomes ``<bus>:<target>`` (``scsi:sda``, ``sata:sda``): the
    same for the same XML whatever the order of its ``<disk>`` elements.  Two disks with one
    target on one bus are a broken domain: ``_Bad``.
    """
    groups: dict[str, list[Disk]] = {}
    for disk in disks:
        groups.setdefault(disk.target, []).append(disk)
    for target, members in groups.items():
        if len(members) == 1:
            continue
        buses = [d.bus or "" for d in members]
        if len(set(buses)) != len(buses):
            bus = next(b for b in buses if buses.count(b) > 1)
            raise _Bad(f"two disks with target '{target}' on bus {bus or 'unknown'}")
        for disk in members:
            disk.target = f"{disk.bus}:{target}"


def _device(el: Element) -> Device | None:
    tag = el.tag
    if tag == "hostdev":
        return _hostdev(el)
    if tag in _SIMPLE_MODEL:
        kind, attr = _SIMPLE_MODEL[tag]
        details: dict[str, str] = {}
        target = el.find("target")
        if tag in ("serial", "console", "channel", "parallel"):
            details.update(_attrs(target, "type", "name", "port"))
        elif tag == "watchdog":
            details.update(_attrs(el, "action"))
        elif tag == "rng":
            backend = el.find("backend")
            if backend is not None:
                details["backend"] = backend.get("model", "")
                if _text(backend):
                    details["source"] = _text(backend) or ""
        elif tag == "input":
            details.update(_attrs(el, "bus"))
        elif tag == "graphics":
            details.update(_attrs(el, "port", "autoport", "listen"))
        elif tag == "filesystem":
            src = el.find("source")
            details.update(_attrs(src, "dir", "name", "file", "socket", prefix="source_"))
            details.update(_attrs(target, "dir", prefix="target_"))
            driver = el.find("driver")
            details.update(_attrs(driver, "type", prefix="driver_"))
        elif tag == "redirdev":
            details.update(_attrs(el, "type"))
        elif tag == "vsock":
            cid = el.find("cid")
            details.update(_attrs(cid, "address", "auto", prefix="cid_"))
        return Device(kind=kind, model=el.get(attr), details=details)
    if tag == "video":
        model = el.find("model")
        return Device(
            kind="video",
            model=model.get("type") if model is not None else None,
            details=_attrs(model, "vram", "heads", "ram", "vgamem"),
        )
    if tag == "controller":
        details = _attrs(el, "type", "index", "model", "ports")
        return Device(kind="controller", model=el.get("model") or el.get("type"), details=details)
    if tag == "shmem":
        model = el.find("model")
        size = el.find("size")
        details = {"name": el.get("name", "")}
        if size is not None:
            details["size"] = str(_sized(size, f"shmem {el.get('name')} size", "b"))
        return Device(kind="shmem", model=model.get("type") if model is not None else None, details=details)
    if tag in ("disk", "interface", "tpm", "emulator"):
        return None  # mapped elsewhere
    # memory (dimm/nvdimm/virtio-mem), lease, nvram, audio, crypto, pstore, …
    return Device(kind="other", model=el.get("model") or el.get("type"), details={"element": tag})


# ---------------------------------------------------------------------------- domain

_RUNSTATES = {
    1: PowerState.RUNNING,
    2: PowerState.RUNNING,  # blocked on a resource: still running
    3: PowerState.PAUSED,
    4: PowerState.SHUTDOWN,
    5: PowerState.SHUTOFF,
    6: PowerState.CRASHED,
    7: PowerState.SUSPENDED,
}
_EFI_LOADER = re.compile(r"ovmf|edk2|aavmf|qemu_efi|uefi|\.fd$", re.IGNORECASE)


def _firmware(os_el: Element | None, devices: Element | None, vm: VM) -> Firmware:
    fw = Firmware()
    if os_el is not None:
        loader = os_el.find("loader")
        loader_path = _text(loader)
        loader_type = loader.get("type") if loader is not None else None
        declared = os_el.get("firmware")
        efi = declared == "efi" or loader_type == "pflash"
        if declared != "bios" and loader_path and _EFI_LOADER.search(loader_path):
            efi = True
        fw.type = "efi" if efi else "bios"
        fw.secure_boot = efi and loader is not None and _yes(loader.get("secure"))
        for feature in os_el.findall("firmware/feature"):
            if feature.get("name") == "secure-boot":
                fw.secure_boot = _yes(feature.get("enabled"))
                if fw.secure_boot:
                    fw.type = "efi"
        nvram = os_el.find("nvram")
        if nvram is not None:
            nvram_path = _text(nvram)
            if nvram_path:
                vm.metadata["nvram"] = nvram_path
            if nvram.get("template"):
                vm.metadata["nvram_template"] = nvram.get("template", "")
        fw.loader = loader_path or vm.metadata.get("nvram_template")
    tpm = devices.find("tpm") if devices is not None else None
    if tpm is not None:
        fw.tpm_model = tpm.get("model") or "tpm-tis"
        backend = tpm.find("backend")
        version = backend.get("version") if backend is not None else None
        if not version:  # libvirt's default when the XML leaves it out
            version = "2.0" if fw.tpm_model in ("tpm-crb", "tpm-spapr") else "1.2"
        fw.tpm_version = version
        if backend is not None and backend.get("type"):
            vm.metadata["tpm_backend"] = backend.get("type", "")
    return fw


def _features(root: Element, vm: VM) -> list[str]:
    features: list[str] = []
    feat = root.find("features")
    if feat is None:
        return features
    for child in feat:
        if not isinstance(child.tag, str):
            continue
        if child.get("state", "on") == "off":
            continue
        features.append(child.tag)
        if len(child):
            enabled = [
                sub.tag
                for sub in child
                if isinstance(sub.tag, str) and sub.get("state", "on") != "off"
            ]
            if enabled:
                vm.metadata[child.tag] = ",".join(enabled)
    return features


def _memory(root: Element, numa_cells: list[Element], vm: VM) -> None:
    memory = _sized(root.find("memory"), "<memory>")
    if memory is None and numa_cells:
        memory = sum(_sized_attr(cell, "memory", "NUMA cell memory") for cell in numa_cells)
    if memory is None:
        raise _Bad("no <memory>")
    if memory == 0:
        raise _Bad("<memory> is 0")
    if memory > MAX_MEMORY:
        raise _Bad(f"<memory> of {memory} bytes is absurd (more than 64 TiB)")
    vm.memory = memory
    current = _sized(root.find("currentMemory"), "<currentMemory>")
    if current is not None and current != memory:
        vm.metadata["current_memory"] = str(current)
    max_el = root.find("maxMemory")
    if max_el is not None:
        vm.max_memory = _sized(max_el, "<maxMemory>")  # a hot-plug ceiling: large is fine
        if max_el.get("slots"):
            vm.metadata["memory_slots"] = max_el.get("slots", "")


def _sized_attr(el: Element, attr: str, what: str) -> int:
    return scale(el.get(attr), el.get("unit"), what) or 0


def _cpu(root: Element, vm: VM) -> list[Element]:
    vcpu_el = root.find("vcpu")
    total = _int(_text(vcpu_el), "<vcpu>", 1) if vcpu_el is not None else 1
    assert total is not None
    current = _int(vcpu_el.get("current"), "<vcpu current>") if vcpu_el is not None else None
    if total == 0:
        raise _Bad("<vcpu> is 0")
    if total > MAX_VCPUS:
        raise _Bad(f"<vcpu> {total} is absurd (more than {MAX_VCPUS})")
    if current:
        vm.vcpus = min(current, total)
        if current < total:
            vm.max_vcpus = total
    else:
        vm.vcpus = total
    if vcpu_el is not None:
        if vcpu_el.get("placement"):
            vm.metadata["vcpu_placement"] = vcpu_el.get("placement", "")
        if vcpu_el.get("cpuset"):
            vm.tuning.cpu_pinning = True
            vm.metadata["vcpu_cpuset"] = vcpu_el.get("cpuset", "")

    cells: list[Element] = []
    cpu = root.find("cpu")
    if cpu is not None:
        model = _text(cpu.find("model"))
        vm.tuning.cpu_mode = cpu.get("mode") or ("custom" if model else None)
        vm.tuning.cpu_model = model
        topo = cpu.find("topology")
        if topo is not None:
            sockets = _int(topo.get("sockets"), "<topology sockets>", 1) or 1
            dies = _int(topo.get("dies"), "<topology dies>", 1) or 1
            cores = _int(topo.get("cores"), "<topology cores>", 1) or 1
            threads = _int(topo.get("threads"), "<topology threads>", 1) or 1
            if sockets * dies * cores * threads > MAX_VCPUS:
                raise _Bad("<topology> describes an absurd number of vCPUs")
            # KubeVirt (and most targets) know no dies: they fold into sockets.
            vm.topology = CpuTopology(sockets=sockets * dies, cores=cores, threads=threads)
            if dies > 1:
                vm.metadata["cpu_dies"] = str(dies)
        cells = cpu.findall("numa/cell")
        vm.tuning.numa_nodes = len(cells)

    cputune = root.find("cputune")
    if cputune is not None and any(
        cputune.find(tag) is not None for tag in ("vcpupin", "emulatorpin", "iothreadpin")
    ):
        vm.tuning.cpu_pinning = True
    numatune = root.find("numatune/memory")
    if numatune is not None:
        vm.metadata["numatune"] = (
            f"{numatune.get('mode', 'strict')}:{numatune.get('nodeset') or numatune.get('placement', '')}"
        )
    if root.find("memoryBacking/hugepages") is not None:
        vm.tuning.hugepages = True
    return cells


def _os(root: Element, vm: VM) -> Element | None:
    os_el = root.find("os")
    if os_el is None:
        return None
    type_el = os_el.find("type")
    if type_el is not None:
        vm.os_type = _text(type_el)
        vm.arch = type_el.get("arch")
        vm.machine = type_el.get("machine")
    for tag in ("kernel", "initrd", "cmdline", "init"):
        value = _text(os_el.find(tag))
        if value:
            vm.metadata[tag] = value
    bootloader = _text(root.find("bootloader"))
    if bootloader:
        vm.metadata["bootloader"] = bootloader
    return os_el


def _apply_os_boot_order(os_el: Element | None, vm: VM) -> None:
    """``<os><boot dev=…/>`` order onto devices, when no device has its own ``<boot order>``."""
    if any(d.boot_order for d in vm.disks) or any(n.boot_order for n in vm.nics):
        return
    devs = [b.get("dev") for b in os_el.findall("boot")] if os_el is not None else []
    if not devs and vm.os_type == "hvm" and os_el is not None and os_el.find("kernel") is None:
        devs = ["hd"]  # libvirt's default for HVM guests
    order = 0
    for dev in devs:
        if dev == "network":
            item = next((n for n in vm.nics if n.boot_order is None), None)
        else:
            wanted = {"hd": ("disk", "lun"), "cdrom": ("cdrom",), "fd": ("floppy",)}.get(dev or "")
            if not wanted:
                continue
            item = next((d for d in vm.disks if d.device in wanted and d.boot_order is None), None)
        if item is not None:
            order += 1
            item.boot_order = order


_LIBOSINFO = f"{{{LIBOSINFO_NS}}}libosinfo"
_LIBOSINFO_OS = f"{{{LIBOSINFO_NS}}}os"


def _libosinfo(root: Element) -> GuestOS | None:
    metadata = root.find("metadata")
    info = metadata.find(_LIBOSINFO) if metadata is not None else None
    os_el = info.find(_LIBOSINFO_OS) if info is not None else None
    if os_el is None or not os_el.get("id"):
        return None
    return guest_os_from_libosinfo(os_el.get("id", ""))


def _domain(root: Element, source: Source) -> VM:
    if root.tag != "domain":
        hint = ""
        if root.tag == "node":
            hint = "; it is a libvirt test-driver node: scan it with -c test:///ABSOLUTE/PATH"
        raise _Bad(f"not a libvirt domain XML (root element <{root.tag}>){hint}")
    name = _text(root.find("name"))
    if not name:
        raise _Bad("no <name>")
    try:
        return _domain_named(root, source, name)
    except _Bad as exc:
        raise _Bad(f"domain '{name}': {exc}") from None


def _domain_named(root: Element, source: Source, name: str) -> VM:
    vm = VM(name=name, source=source)
    vm.uuid = _uuid(_text(root.find("uuid")))
    vm.title = _text(root.find("title"))
    vm.description = _text(root.find("description"))
    vm.hypervisor = root.get("type")
    os_el = _os(root, vm)
    if vm.os_type == "exe":
        raise _Bad(
            f"a container ({vm.hypervisor or 'unknown'} domain with os type 'exe'), "
            "not a virtual machine: vmmove migrates VMs only"
        )
    cells = _cpu(root, vm)
    _memory(root, cells, vm)

    devices = root.find("devices")
    vm.firmware = _firmware(os_el, devices, vm)
    clock = root.find("clock")
    if clock is not None and clock.get("offset"):
        offset = clock.get("offset", "")
        vm.clock_offset = f"timezone:{clock.get('timezone', '')}" if offset == "timezone" else offset
    vm.features = _features(root, vm)
    genid = root.find("genid")
    if genid is not None:
        vm.metadata["genid"] = _text(genid) or "auto"
    if root.find(f"{{{QEMU_NS}}}commandline") is not None:
        vm.metadata["qemu_commandline"] = "yes"

    if devices is not None:
        controllers: dict[tuple[str, int], str | None] = {}
        for ctrl in devices.findall("controller"):
            idx = _int(ctrl.get("index"), "controller index", 0) or 0
            controllers[(ctrl.get("type") or "", idx)] = ctrl.get("model")
        for child in devices:
            if not isinstance(child.tag, str):
                continue  # comments
            if child.tag == "disk":
                vm.disks.append(_disk(child, len(vm.disks), controllers))
            elif child.tag == "interface":
                vm.nics.append(_nic(child, len(vm.nics)))
            elif child.tag == "emulator":
                emulator = _text(child)
                if emulator:
                    vm.metadata["emulator"] = emulator
            else:
                device = _device(child)
                if device is not None:
                    vm.devices.append(device)
    _qualify_shared_targets(vm.disks)
    _apply_os_boot_order(os_el, vm)

    vm.guest_os = _libosinfo(root)
    runstate = _text(root.find(f"{{{TEST_NS}}}runstate"))
    if runstate is not None:
        vm.power_state = _RUNSTATES.get(_int(runstate, "test:runstate") or 0, PowerState.UNKNOWN)
    return vm


def _where(source: Source) -> str:
    return f"{source.location} ({source.member})" if source.member else source.location


def _qualify(name: str) -> str:
    """expat's ``uri}local`` as ElementTree's ``{uri}local``."""
    return "{" + name if "}" in name and name[0] != "{" else name


_PREFIXED_ATTR = re.compile(r"\s(?!xmlns:)[\w.-]+:[\w.-]+\s*=")


def _safe_tree(data: str | bytes) -> Element:
    """defusedxml's parser (entities, external references refused) feeding C tree building.

    defusedxml runs ElementTree's pure-Python XMLParser, whose per-element Python
    callbacks cost more than reading the domain.  Here expat calls the C TreeBuilder
    directly, while the guards defusedxml installed on that same expat parser stay in
    place; namespaced names (``uri}local`` from expat) are put in ElementTree's
    ``{uri}local`` form afterwards, in one pass.
    """
    guard = DefusedXMLParser()
    builder = TreeBuilder()
    expat = guard.parser
    expat.ordered_attributes = False
    expat.StartElementHandler = builder.start
    expat.EndElementHandler = builder.end
    expat.CharacterDataHandler = builder.data
    expat.CommentHandler = None
    expat.ProcessingInstructionHandler = None
    try:
        expat.Parse(data, True)
    except ExpatError as exc:
        raise ParseError(str(exc)) from None
    root = builder.close()
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    if "xmlns" in text or "xml:" in text:  # namespaces are declared, or xml:lang & co.
        attrs = "xml:" in text or _PREFIXED_ATTR.search(text) is not None
        for el in root.iter():
            if "}" in el.tag and el.tag[0] != "{":
                el.tag = "{" + el.tag
            if attrs and el.attrib and "}" in "".join(el.attrib):
                el.attrib = {_qualify(k): v for k, v in el.attrib.items()}
    return root


def parse_xml(data: str | bytes, where: str) -> Element:
    """Parse XML safely (defusedxml); SourceError naming ``where`` when it is bad or unsafe."""
    try:
        return _safe_tree(data)
    except DefusedXmlException as exc:
        raise SourceError(f"{where}: refused unsafe XML ({type(exc).__name__}: entities/DTDs are not allowed)") from None
    except ParseError as exc:
        raise SourceError(f"{where}: malformed XML ({exc})") from None
    except (ValueError, RecursionError, TypeError) as exc:  # e.g. NUL bytes, absurd nesting
        raise SourceError(f"{where}: malformed XML ({type(exc).__name__})") from None


def parse_domain_xml(text: str | bytes, source: Source) -> VM:
    """One VM from the text of a libvirt domain XML; SourceError (one line) when it is not."""
    where = _where(source)
    root = parse_xml(text, where)
    try:
        return _domain(root, source)
    except _Bad as exc:
        raise SourceError(f"{where}: {exc}") from None


def read_domain_xml(path: str) -> VM:
    """One VM from a domain XML file (``virsh dumpxml`` output, /etc/libvirt/qemu/*.xml)."""
    abspath, data = read_bounded(path, MAX_XML_BYTES, "a domain XML")
    return parse_domain_xml(data, Source(SourceKind.DOMAIN_XML, abspath))
