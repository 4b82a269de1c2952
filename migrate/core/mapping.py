"""Network and storage maps: where each source network and disk lands in the cluster.

A source VM is plugged into libvirt networks, bridges or VMware port groups and keeps its
disks in pools, datastores or folders; none of these names mean anything to Kubernetes.
The maps say, once per migration, what each of them becomes, so that manifests (and later
plans) never guess.  One YAML file can hold both maps::

    networks:                      # keys match Nic.attachment, then the bare name, then "*"
      "network:default": pod       # the pod network (masquerade binding), at most one per VM
      "bridge:br0": multus:vms/br0 # a NetworkAttachmentDefinition, namespace/name
      "*": multus:vms/lan
    storage:
      storageClass: ceph-rbd       # all optional: omitted fields come from the StorageProfile
      volumeMode: Block
      accessModes: [ReadWriteMany]
      overrides:                   # per source location, merged over the defaults
        "pool:ssd": {storageClass: fast}
        "datastore:datastore1": {storageClass: vsan}
        "dir:/var/lib/libvirt/images": {volumeMode: Filesystem}

Unknown keys are an error naming the file and the key: a typo must never silently send a
disk to the wrong storage class.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from migrate.core.errors import UsageError, unreadable
from migrate.core.model import Disk, Inspection, Nic

POD = "pod"
MULTUS = "multus"
VOLUME_MODES = ("Block", "Filesystem")
#: KubeVirt v1.9's disk buses and interface models (what a plan may choose per disk/NIC).
TARGET_BUSES = ("virtio", "sata", "scsi", "usb")
INTERFACE_MODELS = ("e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio")
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DATASTORE = re.compile(r"^\[([^\]]+)\]")


class MappingError(UsageError):
    """A map file or map option that cannot be used; the message names it and the key."""


# -- networks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkTarget:
    """What a source network becomes: the pod network, or a Multus network ``namespace/name``."""

    kind: str  # "pod" | "multus"
    name: str | None = None  # NetworkAttachmentDefinition, "name" or "namespace/name"

    def __str__(self) -> str:
        return POD if self.kind == POD else f"{MULTUS}:{self.name}"


def parse_network_target(text: str, where: str = "network map") -> NetworkTarget:
    """``pod`` or ``multus:[namespace/]name``."""
    value = str(text).strip()
    if value == POD:
        return NetworkTarget(POD)
    if value.startswith(f"{MULTUS}:"):
        ref = value[len(MULTUS) + 1 :]
        parts = ref.split("/")
        if len(parts) in (1, 2) and all(parts) and _DNS_SUBDOMAIN.match(parts[-1]) and (
            len(parts) == 1 or _DNS_LABEL.match(parts[0])
        ):
            return NetworkTarget(MULTUS, ref)
        raise MappingError(
            f"{where}: {value!r}: a Multus network is multus:NAME or multus:NAMESPACE/NAME "
            "(lowercase DNS names)"
        )
    raise MappingError(f"{where}: {value!r} is not 'pod' or 'multus:NAMESPACE/NAME'")


@dataclass
class NetworkMap:
    """Source attachment (``network:default``, ``bridge:br0``, a port group…) to target."""

    entries: dict[str, NetworkTarget] = field(default_factory=dict)

    def resolve(self, nic: Nic) -> NetworkTarget | None:
        """Exact ``type:name`` key, then the bare network name, then ``*``; None when unmapped."""
        key = nic.attachment
        if key in self.entries:
            return self.entries[key]
        bare = key.split(":", 1)[1]
        if bare and bare in self.entries:
            return self.entries[bare]
        return self.entries.get("*")

    def merged(self, other: NetworkMap) -> NetworkMap:
        """This map with ``other``'s entries added over it (command-line over file)."""
        return NetworkMap({**self.entries, **other.entries})

    @classmethod
    def from_data(cls, data: Any, where: str) -> NetworkMap:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise MappingError(f"{where}: expected a mapping of source network to target")
        return cls(
            {str(k): parse_network_target(v, f"{where}.{k}") for k, v in data.items()}
        )

    @classmethod
    def from_options(cls, pairs: tuple[str, ...] | list[str]) -> NetworkMap:
        """``--network SOURCE=TARGET`` options."""
        entries: dict[str, NetworkTarget] = {}
        for pair in pairs:
            source, sep, target = pair.rpartition("=")
            if not sep or not source:
                raise MappingError(f"--network {pair!r}: expected SOURCE=TARGET, e.g. network:default=pod")
            entries[source] = parse_network_target(target, f"--network {pair}")
        return cls(entries)


# -- storage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageTarget:
    """CDI ``storage`` settings; None leaves the field to the cluster's StorageProfile."""

    storage_class: str | None = None
    volume_mode: str | None = None
    access_modes: tuple[str, ...] | None = None

    def over(self, base: StorageTarget) -> StorageTarget:
        """This target's set fields over ``base``."""
        return StorageTarget(
            self.storage_class if self.storage_class is not None else base.storage_class,
            self.volume_mode if self.volume_mode is not None else base.volume_mode,
            self.access_modes if self.access_modes is not None else base.access_modes,
        )


_TARGET_KEYS = {"storageClass": "storage_class", "volumeMode": "volume_mode", "accessModes": "access_modes"}


def _storage_target(data: Any, where: str, allow: set[str] | None = None) -> StorageTarget:
    if data is None:
        return StorageTarget()
    if not isinstance(data, dict):
        raise MappingError(f"{where}: expected a mapping with storageClass/volumeMode/accessModes")
    allowed = set(_TARGET_KEYS) | (allow or set())
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise MappingError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    sc = data.get("storageClass")
    if sc is not None and not (isinstance(sc, str) and _DNS_SUBDOMAIN.match(sc)):
        raise MappingError(f"{where}.storageClass: {sc!r} is not a valid StorageClass name")
    mode = data.get("volumeMode")
    if mode is not None and mode not in VOLUME_MODES:
        raise MappingError(f"{where}.volumeMode: {mode!r} is not one of {', '.join(VOLUME_MODES)}")
    modes = data.get("accessModes")
    if modes is not None:
        if isinstance(modes, str):
            modes = [modes]
        if not isinstance(modes, list) or not modes or any(m not in ACCESS_MODES for m in modes):
            raise MappingError(
                f"{where}.accessModes: {modes!r}: expected a list of {', '.join(ACCESS_MODES)}"
            )
        modes = tuple(dict.fromkeys(modes))
    return StorageTarget(sc, mode, modes)


def storage_keys(disk: Disk) -> list[str]:
    """Override keys a disk can match, most specific first: pool, datastore, folders."""
    keys: list[str] = []
    if disk.pool:
        keys.append(f"pool:{disk.pool}")
    path = disk.path or ""
    m = _DATASTORE.match(path)
    if m:
        keys.append(f"datastore:{m.group(1).strip()}")
    elif path.startswith("/"):
        parent = os.path.dirname(os.path.normpath(path))
        while True:
            keys.append(f"dir:{parent}")
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    return keys


@dataclass
class StorageMap:
    """Default CDI storage settings and per-pool/datastore/folder overrides."""

    default: StorageTarget = field(default_factory=StorageTarget)
    overrides: dict[str, StorageTarget] = field(default_factory=dict)

    def resolve(self, disk: Disk) -> StorageTarget:
        if not self.overrides:
            return self.default
        for key in storage_keys(disk):
            if key in self.overrides:
                return self.overrides[key].over(self.default)
        return self.default

    def with_default(self, target: StorageTarget) -> StorageMap:
        """Command-line settings over the file's defaults (overrides keep their own values)."""
        return replace(self, default=target.over(self.default))

    @classmethod
    def from_data(cls, data: Any, where: str) -> StorageMap:
        if data is None:
            return cls()
        default = _storage_target(data, where, allow={"overrides"})
        raw = data.get("overrides") or {}
        if not isinstance(raw, dict):
            raise MappingError(f"{where}.overrides: expected a mapping of pool:/datastore:/dir: keys")
        overrides: dict[str, StorageTarget] = {}
        for key, value in raw.items():
            key = str(key)
            kind, _, name = key.partition(":")
            if kind not in ("pool", "datastore", "dir") or not name:
                raise MappingError(
                    f"{where}.overrides: {key!r}: keys are pool:NAME, datastore:NAME or dir:/PATH"
                )
            if kind == "dir":
                key = f"dir:{os.path.normpath(name)}"
            overrides[key] = _storage_target(value, f"{where}.overrides.{key}")
        return cls(default, overrides)


# -- disk buses ---------------------------------------------------------------------------

#: KubeVirt v1.9 disk buses (DiskTarget.bus); a cdrom takes sata or scsi only.
KUBEVIRT_DISK_BUSES = ("virtio", "sata", "scsi", "usb")
_TARGET_PREFIX_BUS = {"vd": "virtio", "sd": "scsi", "hd": "sata"}


@dataclass(frozen=True)
class BusChoice:
    """The KubeVirt bus a source disk gets, and why when it is not the source's own bus."""

    bus: str
    reason: str | None = None  # "bus nvme becomes virtio"; None when the bus is kept


def target_disk_bus(disk: Disk, windows: bool,
                    inspection: Inspection | None = None) -> BusChoice:
    """The one rule for a disk's KubeVirt bus; assessment and manifests both call it.

    In order (KubeVirt user-guide "Disks and Volumes": disk buses virtio, sata, scsi, usb;
    cdroms sata or scsi; read-only disks not on sata):

    1. a bus KubeVirt has (virtio, sata, scsi, usb) is kept;
    2. ``ide`` becomes ``sata``: AHCI is what every guest has a driver for after IDE;
    3. any other bus (``nvme``, ``xen``, ``sd``, …) becomes ``sata`` for Windows guests
       (storahci ships with Windows; viostor does not) and ``virtio`` for the others
       (virtio_blk ships with Linux; see the ``initramfs-hostonly`` concern for guests
       whose initramfs lacks it);
    4. no bus at all: the libvirt target prefix says it (``vd`` virtio, ``sd`` scsi,
       ``hd`` sata), else as in 3;
    5. the guest's own drivers, when ``vmmove inspect`` read them
       (:func:`inspected_disk_bus`): virtio where the guest can load virtio_blk/viostor at
       boot, else scsi kept with virtio_scsi/vioscsi, else sata;
    6. a cdrom on anything but sata/scsi moves to sata; a read-only disk on sata moves to
       scsi (KubeVirt refuses read-only SATA disks).
    """
    src = (disk.bus or "").lower()
    if src in KUBEVIRT_DISK_BUSES:
        bus = src
    elif src == "ide":
        bus = "sata"
    elif src:
        bus = "sata" if windows else "virtio"
    else:
        bus = _TARGET_PREFIX_BUS.get(disk.target[:2]) or ("sata" if windows else "virtio")
    guest = inspected_disk_bus(bus, disk, inspection)
    bus = guest.value
    if disk.device == "cdrom" and bus not in ("sata", "scsi"):
        bus = "sata"
    elif disk.device != "cdrom" and disk.readonly and bus == "sata":
        return BusChoice("scsi", f"bus {disk.bus or 'unknown'} becomes scsi "
                                 "(read-only, and KubeVirt has no read-only SATA disks)")
    if bus == src:
        return BusChoice(bus)
    if guest.reason and bus == guest.value:
        return BusChoice(bus, f"bus {disk.bus or 'unknown'} becomes {bus} "
                              f"({guest.reason.split('(', 1)[-1].rstrip(')')})")
    return BusChoice(bus, f"bus {disk.bus or 'unknown'} becomes {bus}")


# -- files --------------------------------------------------------------------------------


@dataclass
class Maps:
    networks: NetworkMap = field(default_factory=NetworkMap)
    storage: StorageMap = field(default_factory=StorageMap)


def maps_from_data(data: Any, where: str) -> Maps:
    """Both maps from the plain data of a map file (or of a plan's ``maps`` section)."""
    if data is None:
        return Maps()
    if not isinstance(data, dict):
        raise MappingError(f"{where}: expected a mapping with 'networks' and/or 'storage'")
    unknown = sorted(set(map(str, data)) - {"networks", "storage"})
    if unknown:
        raise MappingError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: networks, storage)")
    return Maps(
        NetworkMap.from_data(data.get("networks"), f"{where}: networks"),
        StorageMap.from_data(data.get("storage"), f"{where}: storage"),
    )


def load_maps(path: str | Path) -> Maps:
    """Read a map file; every problem is one line naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(unreadable(path, exc)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise MappingError(f"{path}: not valid YAML{at}") from None
    return maps_from_data(data, str(path))


# -- what the guest itself says (vmmove inspect) ----------------------------------------------

#: the driver each KubeVirt disk bus / NIC model needs, Linux and Windows
GUEST_DRIVERS = {
    "linux": {"virtio": "virtio_blk", "scsi": "virtio_scsi", "sata": "ahci",
              "nic-virtio": "virtio_net"},
    "windows": {"virtio": "viostor", "scsi": "vioscsi", "sata": "storahci",
                "nic-virtio": "netkvm"},
}


def guest_driver(inspection: Inspection, what: str) -> tuple[str | None, bool | None]:
    """(driver name, present?) for a bus (``virtio``/``scsi``/``sata``) or ``nic-virtio``;
    present is None when inspection did not learn it."""
    table = GUEST_DRIVERS["windows" if inspection.os_type == "windows" else "linux"]
    name = table.get(what)
    return name, (inspection.has_driver(name) if name else None)


def inspected_disk_bus(bus: str, disk: Disk, inspection: Inspection | None) -> BusFix:
    """The bus rule's last step: the guest's own drivers decide (docs/guest-readiness.md).

    ``bus`` is what the hypervisor metadata gave.  With an inspection: ``virtio`` where
    the guest can load the virtio disk driver (virtio_blk / viostor) at boot; otherwise
    the hypervisor's ``scsi`` is kept when the guest has the virtio-scsi driver, and
    everything else becomes ``sata`` (ahci / storahci), the bus every guest boots from.
    Cdroms and facts not learnt (driver unknown) leave the bus as it was.
    """
    if inspection is None or disk.device == "cdrom" or bus not in ("virtio", "scsi", "sata"):
        return BusFix(bus)
    virtio, has_virtio = guest_driver(inspection, "virtio")
    if has_virtio is True:
        return BusFix("virtio", None if bus == "virtio" else
                      f"bus {bus} becomes virtio (the guest has {virtio})")
    if has_virtio is None:
        return BusFix(bus)
    if bus == "scsi" and guest_driver(inspection, "scsi")[1] is True:
        return BusFix("scsi")
    if bus == "sata":
        return BusFix("sata")
    return BusFix("sata", f"bus {bus} becomes sata (the guest lacks {virtio}: convert the "
                          "guest to use virtio)")


def inspected_nic_model(model: str, inspection: Inspection | None) -> BusFix:
    """``virtio`` NICs become ``e1000e`` when the guest lacks virtio_net / netkvm."""
    if inspection is None or model != "virtio":
        return BusFix(model)
    name, present = guest_driver(inspection, "nic-virtio")
    if present is False:
        return BusFix("e1000e", f"model virtio becomes e1000e (the guest lacks {name})")
    return BusFix(model)


@dataclass(frozen=True)
class BusFix:
    """A bus (or NIC model) and why it changed; ``reason`` None when kept."""

    value: str
    reason: str | None = None
