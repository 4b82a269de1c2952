"""The one data model that flows through vmmove's pipeline.

A scan produces an :class:`Inventory` of :class:`VM` records; assessment, planning,
conversion, transfer and manifest generation all read the same records.  Every class
is a plain dataclass so that an inventory round-trips through JSON or YAML without loss
(see :mod:`migrate.core.serialize`).  Sizes and memory are in bytes, always.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

#: A MAC address as the model stores it: six lower-case hex pairs joined by colons.
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_ANY_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


def normalize_mac(text: str | None, bare: bool = False) -> str | None:
    """``00:1A:4b:…`` or ``00-1a-…`` (and, with ``bare``, ``001a4b…``: twelve hex digits)
    as the model's form (:data:`MAC_RE`); None when ``text`` is not a MAC address."""
    if not text:
        return None
    if bare and re.fullmatch(r"[0-9A-Fa-f]{12}", text):
        return ":".join(text[i:i + 2] for i in range(0, 12, 2)).lower()
    if _ANY_MAC.match(text):
        return text.lower().replace("-", ":")
    return None


class PowerState(str, Enum):
    """Power state as libvirt reports it; offline descriptors are ``shutoff`` or ``unknown``."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    SHUTDOWN = "shutdown"  # in the middle of shutting down
    CRASHED = "crashed"
    SUSPENDED = "suspended"  # pmsuspended, or a VMware suspended state
    UNKNOWN = "unknown"


class SourceKind(str, Enum):
    """Where a VM description came from."""

    LIBVIRT = "libvirt"  # a live libvirt connection (URI)
    DOMAIN_XML = "domain-xml"  # an offline libvirt domain XML file
    OVF = "ovf"
    OVA = "ova"
    VMX = "vmx"
    PVE = "pve"  # a Proxmox VE qemu-server/<vmid>.conf file


@dataclass
class Source:
    """Provenance of a VM: the URI or file it was read from."""

    kind: SourceKind
    location: str  # libvirt URI, or an absolute file path
    member: str | None = None  # OVF inside an OVA, VirtualSystem id inside a vApp OVF
    # Proxmox VE: storage ID -> the local folder its volumes were found in (--pve-storage);
    # these folders, not the .conf's, are where the VM's disks may be (containment).
    storage: dict[str, str] | None = None


@dataclass
class CpuTopology:
    sockets: int = 1
    cores: int = 1
    threads: int = 1

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


@dataclass
class Firmware:
    type: str = "bios"  # "bios" or "efi"
    secure_boot: bool = False
    loader: str | None = None  # loader/NVRAM template path on the source host, informative only
    tpm_version: str | None = None  # "1.2", "2.0", or None when the VM has no TPM
    tpm_model: str | None = None  # tpm-tis, tpm-crb, …


@dataclass
class BackingFile:
    """One layer below a disk image, nearest first."""

    path: str
    format: str | None = None


@dataclass
class Piece:
    """A byte range of a file on the host: a whole chunk file, or a member inside an OVA."""

    path: str
    offset: int = 0
    size: int = 0


@dataclass
class Packing:
    """How an OVF package stores a disk file that is not an image as it stands.

    DMTF DSP0243 (OVF 2.1.1) §5.3: with ``ovf:compression="gzip"`` the referenced file is a
    gzip stream of the image; with ``ovf:chunkSize`` it is split into ``href.000000000``,
    ``href.000000001``, … to be concatenated in order (chunking applies after compression).
    ``vmmove convert`` joins/decompresses the pieces into its work folder before qemu-img
    reads them.
    """

    href: str  # the file name the descriptor gives
    pieces: list[Piece] = field(default_factory=list)  # in order
    compression: str | None = None  # "gzip"
    chunk_size: int | None = None  # bytes, when chunked
    size: int | None = None  # ovf:size: bytes of the stored file (compressed, before chunking)


#: Values of :attr:`Disk.layout`: data that is not one self-contained image file at ``path``.
MULTI_FILE = "multi-file"  # a VMDK text descriptor whose data lives in extent files beside it
RDM_PHYSICAL = "rdm-physical"  # VMware raw device map, pass-through (vmfsPassthroughRawDeviceMap)
RDM_VIRTUAL = "rdm-virtual"  # VMware raw device map, virtual mode (vmfsRawDeviceMap)
VSAN = "vsan"  # a vSAN object descriptor: the data is an object on the vSAN datastore
HOST_CDROM = "host-cdrom"  # the source host's optical drive passed through (no media file)
NOT_IMAGES = (RDM_PHYSICAL, RDM_VIRTUAL, VSAN, HOST_CDROM)  # never handed to qemu-img or CDI


@dataclass
class Disk:
    """A block device of the VM, as the guest sees it and where its data lives."""

    target: str  # guest device name: vda, sda, hdc; for VMware the controller slot, e.g. scsi0:0
    device: str = "disk"  # disk | cdrom | floppy | lun
    bus: str | None = None  # virtio | sata | scsi | ide | usb | fdc | xen | sd | nvme
    source_type: str = "file"  # file | block | network | volume | dir | none
    path: str | None = None  # file, block device, volume path or network name (pool/image)
    protocol: str | None = None  # for network disks: rbd, iscsi, nbd, http, gluster, …
    hosts: list[str] = field(default_factory=list)  # network disk servers, host[:port]
    pool: str | None = None  # storage pool, for source_type volume
    volume: str | None = None
    format: str | None = None  # qcow2, raw, vmdk, vdi, vhdx, …
    virtual_size: int | None = None  # bytes seen by the guest
    allocated_size: int | None = None  # bytes the image occupies on the host
    backing_chain: list[BackingFile] = field(default_factory=list)
    readonly: bool = False
    shareable: bool = False
    boot_order: int | None = None
    serial: str | None = None
    controller_model: str | None = None  # e.g. lsilogic, pvscsi, virtio-scsi
    error: str | None = None  # why the image could not be read, when it could not
    layout: str | None = None  # None: one image file (or device, volume); else see MULTI_FILE…
    packing: Packing | None = None  # an OVF package's compressed or chunked file
    # bytes the source file must have (an OVF's ovf:size, checked at scan): convert and
    # sync refuse the file when its size changed since (truncated or replaced)
    stored_size: int | None = None


@dataclass
class Nic:
    """A network interface and what it is plugged into on the source."""

    mac: str | None = None
    model: str | None = None  # virtio, e1000, e1000e, rtl8139, vmxnet3, …
    type: str = "network"  # network | bridge | direct | user | ethernet | hostdev | vhostuser | …
    network: str | None = None  # libvirt network, bridge, direct dev, or VMware network name
    portgroup: str | None = None
    boot_order: int | None = None

    @property
    def attachment(self) -> str:
        """The key a network map matches on: ``type:name`` (``network:default``, ``bridge:br0``)."""
        name = self.network or ""
        if self.portgroup:
            name = f"{name}/{self.portgroup}"
        return f"{self.type}:{name}"


@dataclass
class Device:
    """Any other device that matters for migration (passthrough, graphics, serial, …).

    ``kind`` is one of: ``pci-passthrough``, ``usb-passthrough``, ``mdev``, ``scsi-passthrough``,
    ``graphics``, ``video``, ``serial``, ``console``, ``channel``, ``watchdog``, ``rng``,
    ``sound``, ``input``, ``smartcard``, ``redirdev``, ``filesystem``, ``vsock``, ``memballoon``,
    ``controller``, ``shmem``, ``iommu``, ``panic``, ``parallel``, ``hub``, ``other``.
    """

    kind: str
    model: str | None = None  # e.g. vnc, i6300esb, virtio, ich9, the device's type attribute
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class GuestOS:
    """What runs inside, as far as the source says."""

    id: str | None = None  # libosinfo id (http://microsoft.com/win/2k22), VMX guestOS, OVF osType
    name: str | None = None  # human name, e.g. "Microsoft Windows Server 2022"
    family: str | None = None  # linux | windows | bsd | solaris | other
    version: str | None = None
    distro: str | None = None  # rhel, centos, ubuntu, debian, fedora, sles, win, …


@dataclass
class GuestNetwork:
    """One interface's configuration as the guest itself holds it (``vmmove inspect``)."""

    interface: str  # eth0, ens3, a connection id, a Windows interface GUID
    method: str = "dhcp"  # dhcp | static | manual | unknown
    addresses: list[str] = field(default_factory=list)  # CIDR: 10.1.2.3/24
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)
    mac: str | None = None  # when the configuration pins the interface to a MAC
    source: str | None = None  # the file (or registry key) it was read from


@dataclass
class Inspection:
    """What libguestfs found inside a VM's staged disks (:mod:`migrate.guest.inspect`).

    ``drivers`` maps a driver the KubeVirt hardware needs to whether the guest can load it
    at boot: Linux ``virtio_blk``, ``virtio_scsi``, ``virtio_net``, ``ahci`` (in the default
    kernel's initramfs, or built into it); Windows ``viostor``, ``vioscsi``, ``netkvm``
    (services present in the SYSTEM hive).  A driver not named is unknown.
    """

    os_type: str | None = None  # linux | windows | … (libguestfs inspect-get-type)
    distro: str | None = None  # debian, rhel, ubuntu, windows, …
    version: str | None = None  # major.minor
    product_name: str | None = None
    arch: str | None = None
    hostname: str | None = None
    root: str | None = None  # the root device inside the appliance, e.g. /dev/sda1
    bootloader: str | None = None  # grub2 | grub | extlinux | systemd-boot | windows | None
    efi: bool = False  # an EFI system partition is present (the guest needs UEFI firmware)
    kernel: str | None = None  # the default (newest) kernel version, Linux
    initramfs: str | None = None  # its initramfs, e.g. /boot/initrd.img-6.1.0-28-amd64
    drivers: dict[str, bool] = field(default_factory=dict)
    agents: list[str] = field(default_factory=list)  # qemu-guest-agent, cloud-init, …
    foreign_tools: list[str] = field(default_factory=list)  # open-vm-tools, hyperv-daemons, …
    device_names: list[str] = field(default_factory=list)  # "fstab: /dev/sda1 on /", …
    network: list[GuestNetwork] = field(default_factory=list)
    disk: str | None = None  # target of the VM disk that holds the OS
    inspected_at: str | None = None  # RFC 3339, UTC
    seconds: float | None = None  # how long the inspection took
    error: str | None = None  # why nothing (or only part) could be read

    def has_driver(self, name: str) -> bool | None:
        """True/False when inspected, None when unknown."""
        return self.drivers.get(name)


@dataclass
class Tuning:
    """Host-bound tuning KubeVirt cannot carry over as is."""

    numa_nodes: int = 0
    cpu_pinning: bool = False
    hugepages: bool = False
    cpu_mode: str | None = None  # host-passthrough, host-model, custom
    cpu_model: str | None = None


@dataclass
class VM:
    """One virtual machine, however it was described."""

    name: str
    source: Source
    uuid: str | None = None
    title: str | None = None
    description: str | None = None
    hypervisor: str | None = None  # libvirt domain type: kvm, qemu, xen, lxc, vmware, …
    os_type: str | None = None  # hvm | xen (PV) | linux (pv) | exe (container)
    arch: str | None = None  # x86_64, i686, aarch64, …
    machine: str | None = None  # pc-q35-7.2, pc-i440fx-2.9, VMware hardware version, …
    power_state: PowerState = PowerState.UNKNOWN
    vcpus: int = 1
    max_vcpus: int | None = None
    topology: CpuTopology | None = None
    memory: int = 0  # bytes the guest gets at boot
    max_memory: int | None = None  # bytes, when hot-plug memory is configured
    firmware: Firmware = field(default_factory=Firmware)
    clock_offset: str | None = None  # utc | localtime | timezone:<tz> | variable
    disks: list[Disk] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    guest_os: GuestOS | None = None
    tuning: Tuning = field(default_factory=Tuning)
    snapshots: int = 0
    features: list[str] = field(default_factory=list)  # acpi, apic, smm, hyperv, pae, …
    metadata: dict[str, str] = field(default_factory=dict)  # free-form facts from the source
    # Set by ``vmmove inspect`` (libguestfs, read-only, on the staged copy): the guest's own facts
    inspection: Inspection | None = None
    # Set by :func:`distinguish` when another VM of the inventory has this VM's UUID (or
    # name) but comes from another source: 8 hex digits of the source's SHA-1.
    instance: str | None = None

    @property
    def key(self) -> str:
        """A stable identity for journals and plans: the UUID when known, else the name;
        ``<uuid or name>@<instance>`` when VMs from different sources share that (see
        :func:`distinguish`)."""
        base = self.uuid or self.name
        return f"{base}@{self.instance}" if self.instance else base

    def data_bytes(self) -> int:
        """Bytes of data held by the VM's disks: allocated size, or virtual when unknown."""
        total = 0
        for disk in self.disks:
            if disk.device in ("disk", "lun"):
                total += disk.allocated_size or disk.virtual_size or 0
        return total


def source_id(source: Source) -> str:
    """8 hex digits naming a source (kind, location, member): the ``@…`` of a VM key."""
    text = f"{source.kind.value}\0{source.location}\0{source.member or ''}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def distinguish(vms: list[VM]) -> None:
    """Key VMs that share a UUID (or, without one, a name) by their source as well.

    Copies of one VM exported to different files (or seen through a libvirt host and an
    XML dump) are different VMs to migrate: each gets ``instance`` = :func:`source_id` of
    its source, so ``VM.key`` becomes ``<uuid>@<8 hex>`` for every member of the group,
    whatever the scan order.  VMs from one source (a file scanned twice) keep one key: they
    are the same VM, which the ``duplicate-vm`` concern reports.  A UUID shared only by VMs
    of one source, or not shared at all, leaves the key as it was.  Idempotent.
    """
    groups: dict[str, list[VM]] = {}
    for vm in vms:
        groups.setdefault(vm.uuid or vm.name, []).append(vm)
    for members in groups.values():
        ids = {source_id(vm.source) for vm in members}
        for vm in members:
            vm.instance = source_id(vm.source) if len(ids) > 1 else None


@dataclass
class ScanError:
    """A source that yielded no VM, with one line saying why."""

    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass
class Inventory:
    """The output of ``vmmove scan`` and the input of everything after it."""

    vms: list[VM] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    scanned_at: str | None = None  # ISO 8601, UTC
    vmmove_version: str | None = None
    format_version: int = 1

    def __post_init__(self) -> None:
        distinguish(self.vms)

    def find(self, ref: str) -> VM | None:
        """A VM by key (:attr:`VM.key`), else by name or UUID (the first that has it)."""
        for vm in self.vms:
            if vm.key == ref:
                return vm
        for vm in self.vms:
            if vm.name == ref or vm.uuid == ref:
                return vm
        return None

    def find_all(self, ref: str) -> list[VM]:
        """Every VM ``ref`` names: the one with that key, else all with that name or UUID
        (copies of one VM from different files share both)."""
        exact = [vm for vm in self.vms if vm.key == ref]
        return exact or [vm for vm in self.vms if ref in (vm.name, vm.uuid)]

    def select(self, refs: Sequence[str]) -> list[VM]:
        """The VMs ``refs`` name (:meth:`find_all`, each once, in the order named); every
        VM when ``refs`` is empty.  UsageError listing the refs that name no VM."""
        if not refs:
            return list(self.vms)
        missing = [ref for ref in refs if self.find(ref) is None]
        if missing:
            from migrate.core.errors import UsageError

            raise UsageError(f"no such VM in the inventory: {', '.join(missing)}")
        return list({id(vm): vm for ref in refs for vm in self.find_all(ref)}.values())
