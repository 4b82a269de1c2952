"""One source VM → one KubeVirt VirtualMachine (+ the Secrets its disks' imports need).

:func:`build_vm_manifests` applies the mapping rules documented in docs/manifests.md to one
:class:`~migrate.core.model.VM` and returns a :class:`ManifestSet`.  Everything that can vary per
migration comes in through :class:`GenerationContext` (options, maps, where each disk went,
names, the cluster catalog, per-VM overrides), so that a plan can drive the same function
later.  Every VM built is checked against KubeVirt's admission rules before it is returned:
a VM that cannot be made valid is a :class:`GenerationError` naming the VM and why.
"""

from __future__ import annotations

import math
import re
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from manifests import preferences as prefs
from manifests.sources import BLANK, HTTP, S3, UPLOAD, DiskSource, MissingSource, SourceResolver
from manifests.validate import INTERFACE_MODELS, RESERVED_MAC, RUN_STRATEGIES, admission_errors
from migrate import __version__
from migrate.core.errors import VmmoveError
from migrate.core.mapping import POD, NetworkMap, StorageMap, inspected_nic_model, target_disk_bus
from migrate.core.model import HOST_CDROM, MAC_RE, VM, Disk, Inventory, Nic
from migrate.core.naming import assign_names, dns1123_label
from migrate.core.workdir import image_basename, target_names

DOMAIN = "vmmove.io"
MANAGED_BY = {"app.kubernetes.io/managed-by": "vmmove"}
GiB, MiB, KiB = 1024**3, 1024**2, 1024


class GenerationError(VmmoveError):
    """A VM that cannot become a valid VirtualMachine; the message names the VM and why."""


@dataclass(frozen=True)
class VmOverrides:
    """Per-VM choices a plan may make; None keeps the command-wide option."""

    name: str | None = None
    namespace: str | None = None
    run_strategy: str | None = None
    preference: str | None = None  # "auto", "none" or a preference name
    instancetype: str | None = None  # "auto", "none" or an instancetype name
    memory: int | None = None  # bytes: replaces the source's memory size
    cpu_model: str | None = None  # spec.domain.cpu.model
    disk_bus: dict[str, str] = field(default_factory=dict)  # disk target → bus
    disk_size: dict[str, int] = field(default_factory=dict)  # disk target → PVC bytes
    nic_mac: dict[int, str] = field(default_factory=dict)  # NIC index → MAC
    nic_model: dict[int, str] = field(default_factory=dict)  # NIC index → model
    labels: dict[str, str] = field(default_factory=dict)  # VM and VMI template labels
    annotations: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    affinity: dict[str, Any] | None = None


@dataclass
class GenerationOptions:
    """Command-wide choices (``vmmove manifests`` options)."""

    namespace: str = "default"
    run_strategy: str = "Halted"
    networks: NetworkMap = field(default_factory=NetworkMap)
    storage: StorageMap = field(default_factory=StorageMap)
    keep_cdroms: bool = False
    preference: str = "none"  # "auto", "none" or a name
    instancetype: str = "none"  # "auto", "none" or a name
    timezone: str | None = None  # zone of local-time guest clocks; None: UTC, with a note


@dataclass
class GenerationContext:
    """Everything :func:`build_vm_manifests` reads besides the VM itself."""

    options: GenerationOptions = field(default_factory=GenerationOptions)
    sources: SourceResolver = field(default_factory=SourceResolver)
    names: dict[str, str] = field(default_factory=dict)  # VM key -> target name
    catalog: prefs.Catalog = field(default_factory=prefs.Catalog)
    overrides: dict[str, VmOverrides] = field(default_factory=dict)  # by VM key
    scanned_at: str | None = None

    @classmethod
    def for_inventory(cls, inventory: Inventory, **kwargs: Any) -> GenerationContext:
        ctx = cls(**kwargs)
        if not ctx.names:
            ctx.names = target_names(inventory)
        if ctx.scanned_at is None:
            ctx.scanned_at = inventory.scanned_at
        return ctx


@dataclass
class ManifestSet:
    """The objects generated for one VM."""

    vm_key: str
    name: str
    namespace: str
    virtual_machine: dict[str, Any]
    secrets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def data_volumes(self) -> list[dict[str, Any]]:
        return list(self.virtual_machine["spec"].get("dataVolumeTemplates") or [])


# -- small rules ----------------------------------------------------------------------------


def quantity(n: int) -> str:
    """Bytes as the shortest exact Kubernetes binary quantity (``2Gi``, ``1536Mi``, ``4095``)."""
    for unit, suffix in ((GiB, "Gi"), (MiB, "Mi"), (KiB, "Ki")):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def disk_request(virtual_size: int) -> str:
    """A PVC request for a disk: its virtual size rounded up to a whole MiB."""
    return quantity(math.ceil(virtual_size / MiB) * MiB)


_NIC_MODELS = {
    "virtio": "virtio", "virtio-net": "virtio", "virtio-net-pci": "virtio",
    "virtio-transitional": "virtio", "virtio-non-transitional": "virtio",
    "e1000": "e1000", "e1000-82545em": "e1000", "e1000-82544gc": "e1000", "e1000-82540em": "e1000",
    "e1000e": "e1000e", "igb": "igb", "rtl8139": "rtl8139", "ne2k_pci": "ne2k_pci",
    "ne2k-pci": "ne2k_pci", "pcnet": "pcnet", "vlance": "pcnet",
}
_NOT_CARRIED = {
    "pci-passthrough", "usb-passthrough", "mdev", "scsi-passthrough", "smartcard", "redirdev",
    "filesystem", "shmem", "parallel", "watchdog", "sound",
}


def _architecture(vm: VM) -> str:
    arch = (vm.arch or "x86_64").lower()
    if arch in ("x86_64", "amd64", "i686", "i386", "i586"):
        return "amd64"
    raise GenerationError(
        f"VM {vm.name}: architecture {vm.arch} cannot run as a q35 (x86_64) KubeVirt VM"
    )


def _labels_value(value: str | None) -> str | None:
    """``value`` if it is a valid label value, else None (it stays in an annotation)."""
    if value and len(value) <= 63 and re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", value):
        return value
    return None


def _valid_uuid(value: str | None) -> str | None:
    try:
        return str(uuidlib.UUID(value)) if value else None
    except ValueError:
        return None


# -- the builder ----------------------------------------------------------------------------


class _Builder:
    def __init__(self, vm: VM, ctx: GenerationContext) -> None:
        self.vm = vm
        self.ctx = ctx
        self.opt = ctx.options
        over = ctx.overrides.get(vm.key) or VmOverrides()
        self.over = over
        self.name = over.name or ctx.names.get(vm.key) or dns1123_label(vm.name)
        self.namespace = over.namespace or self.opt.namespace
        self.notes: list[str] = []
        self.problems: list[str] = []
        self.secrets: dict[str, dict[str, Any]] = {}
        self.windows = prefs.is_windows(vm.guest_os)

    def fail(self, message: str) -> GenerationError:
        return GenerationError(f"VM {self.vm.name}: {message}")

    # ---- cpu, memory, firmware, clock ----
    def cpu(self) -> dict[str, int]:
        vm = self.vm
        vcpus = max(1, vm.vcpus or 1)
        topo = vm.topology
        if topo is not None and min(topo.sockets, topo.cores, topo.threads) < 1:
            self.notes.append("cpu: source topology has a zero count; one socket per vCPU")
            topo = None
        if topo is not None and topo.vcpus == vcpus:
            return {"sockets": topo.sockets, "cores": topo.cores, "threads": topo.threads}
        if topo is not None and vcpus % (topo.cores * topo.threads) == 0:
            sockets = vcpus // (topo.cores * topo.threads)
            self.notes.append(
                f"cpu: source topology {topo.sockets}x{topo.cores}x{topo.threads} describes "
                f"{topo.vcpus} vCPUs; {sockets} socket(s) keep the {vcpus} vCPUs the VM boots with"
            )
            return {"sockets": sockets, "cores": topo.cores, "threads": topo.threads}
        if topo is not None:
            self.notes.append(
                f"cpu: source topology {topo.sockets}x{topo.cores}x{topo.threads} does not divide "
                f"{vcpus} vCPUs; one socket per vCPU"
            )
        return {"sockets": vcpus, "cores": 1, "threads": 1}

    def firmware(self, domain: dict[str, Any], features: dict[str, Any], devices: dict[str, Any]) -> None:
        fw = self.vm.firmware
        firmware: dict[str, Any] = {}
        if (fw.type or "bios").lower() == "efi":
            firmware["bootloader"] = {"efi": {"secureBoot": bool(fw.secure_boot)}}
            if fw.secure_boot:
                features["smm"] = {"enabled": True}
        else:
            if fw.secure_boot:
                self.notes.append("firmware: secure boot without EFI in the source; ignored")
            firmware["bootloader"] = {"bios": {}}
        uid = _valid_uuid(self.vm.uuid)
        if uid:
            firmware["uuid"] = uid  # SMBIOS UUID: licences and cloud-init instance ids follow it
        domain["firmware"] = firmware
        if fw.tpm_version:
            devices["tpm"] = {"persistent": True}
            self.notes.append(
                f"tpm: a persistent TPM 2.0 replaces the source TPM {fw.tpm_version}; its contents "
                "(keys, BitLocker/LUKS secrets) are not carried over: suspend BitLocker before moving"
            )

    def clock(self, domain: dict[str, Any]) -> None:
        offset = (self.vm.clock_offset or "").strip()
        if not offset and self.windows:
            offset = "localtime"  # VMware and libvirt defaults for Windows guests
        clock: dict[str, Any] = {}
        if offset.startswith("timezone:") and offset[9:]:
            clock["timezone"] = offset[9:]
        elif offset == "localtime":
            if self.opt.timezone:
                clock["timezone"] = self.opt.timezone
            else:
                clock["timezone"] = "UTC"
                self.notes.append(
                    "clock: the source guest keeps local time; time zone UTC assumed "
                    "(--timezone, or defaults.timezone in a plan, names the source host's zone)"
                )
        elif offset == "variable":
            adjust = self.vm.metadata.get("clock_adjustment") or self.vm.metadata.get("clock.adjustment")
            try:
                clock["utc"] = {"offsetSeconds": int(adjust)} if adjust else {}
            except ValueError:
                clock["utc"] = {}
            if not adjust:
                self.notes.append("clock: variable offset of unknown adjustment; UTC")
        elif self.windows:
            clock["utc"] = {}
        if self.windows:
            clock["timer"] = {
                "hpet": {"present": False},
                "hyperv": {"present": True},
                "pit": {"tickPolicy": "delay"},
                "rtc": {"tickPolicy": "catchup"},
            }
        if clock:
            domain["clock"] = clock

    # ---- disks ----
    def disks(self, devices: dict[str, Any], volumes: list[dict[str, Any]], templates: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int | None]]:
        vm = self.vm
        kept: list[Disk] = []
        for disk in vm.disks:
            if disk.device == "floppy":
                self.notes.append(f"disk {disk.target}: floppy dropped (KubeVirt has no floppy drive)")
                continue
            if disk.layout == HOST_CDROM:
                self.notes.append(f"disk {disk.target}: host CD-ROM drive passthrough dropped "
                                  "(no media to carry; attach an ISO DataVolume if needed)")
                continue
            if disk.device == "cdrom":
                if not self.opt.keep_cdroms:
                    self.notes.append(f"disk {disk.target}: cdrom dropped (--keep-cdroms keeps them)")
                    continue
                if disk.source_type == "none" or not disk.path:
                    self.notes.append(
                        f"disk {disk.target}: empty cdrom dropped (KubeVirt refuses empty CD-ROMs "
                        "without the DeclarativeHotplugVolumes feature gate)"
                    )
                    continue
            kept.append(disk)
        vol_names = assign_names((d.target, d.target) for d in kept)
        dv_names = assign_names(
            (d.target, dns1123_label(image_basename(self.name, d))) for d in kept
        )
        ordered: list[tuple[dict[str, Any], int | None]] = []
        for disk in kept:
            src = self.ctx.sources.resolve(vm, disk)
            if isinstance(src, MissingSource):
                self.problems.append(f"disk {disk.target}: {src.reason}")
                continue
            name = vol_names[disk.target]
            entry = self.disk_device(disk, name)
            ordered.append((entry, disk.boot_order))
            if src.kind == UPLOAD:
                if src.namespace and src.namespace != self.namespace:
                    self.problems.append(
                        f"disk {disk.target}: uploaded to DataVolume {src.namespace}/{src.dv}, "
                        f"not in the VM's namespace {self.namespace}"
                    )
                    continue
                volumes.append({"name": name, "dataVolume": {"name": src.dv}})
                self.notes.append(
                    f"disk {disk.target}: uses DataVolume {src.dv}, already filled through the upload proxy"
                )
                continue
            size = self.over.disk_size.get(disk.target) or disk.virtual_size or src.size
            if not size:
                self.problems.append(f"disk {disk.target}: virtual size unknown, cannot size its volume")
                continue
            dv_name = dv_names[disk.target]
            templates.append(self.data_volume(disk, src, dv_name, int(size)))
            volumes.append({"name": name, "dataVolume": {"name": dv_name}})
        devices["disks"] = [e for e, _ in ordered]
        return ordered

    def disk_device(self, disk: Disk, name: str) -> dict[str, Any]:
        if disk.target in self.over.disk_bus:
            bus = self.over.disk_bus[disk.target]
            self.notes.append(f"disk {disk.target}: bus {bus} (the plan's)")
        else:
            choice = target_disk_bus(disk, self.windows, self.vm.inspection)  # the same rule the assessment states
            bus = choice.bus
            if choice.reason:
                self.notes.append(f"disk {disk.target}: {choice.reason}")
        if disk.device == "lun":
            self.notes.append(f"disk {disk.target}: LUN passthrough becomes a plain disk on bus {bus}")
        entry: dict[str, Any] = {"name": name}
        if disk.device == "cdrom":
            entry["cdrom"] = {"bus": bus, "readonly": True}
        else:
            target: dict[str, Any] = {"bus": bus}
            if disk.readonly:
                target["readonly"] = True
            entry["disk"] = target
        if disk.shareable:
            entry["shareable"] = True
        if disk.serial:
            if re.match(r"^[A-Za-z0-9_.+-]{1,256}$", disk.serial):
                entry["serial"] = disk.serial
            else:
                self.notes.append(f"disk {disk.target}: serial {disk.serial!r} has characters KubeVirt refuses; dropped")
        return entry

    def data_volume(self, disk: Disk, src: DiskSource, dv_name: str, size: int) -> dict[str, Any]:
        storage: dict[str, Any] = {"resources": {"requests": {"storage": disk_request(size)}}}
        target = self.opt.storage.resolve(disk)
        if target.storage_class:
            storage["storageClassName"] = target.storage_class
        if target.volume_mode:
            storage["volumeMode"] = target.volume_mode
        if target.access_modes:
            storage["accessModes"] = list(target.access_modes)
        if src.kind == S3:
            source: dict[str, Any] = {"s3": {"url": src.url}}
            if src.secret:
                source["s3"]["secretRef"] = src.secret
                self.secret(disk, src)
        elif src.kind == HTTP:
            # No http.checksum: CDI v1.66 knows it, but KubeVirt v1.9's copy of the DataVolume
            # schema in dataVolumeTemplates does not, and strict validation refuses it there.
            source = {"http": {"url": src.url}}
            if src.checksum:
                self.notes.append(f"disk {disk.target}: image checksum {src.checksum}")
        elif src.kind == BLANK:
            source = {"blank": {}}
            self.notes.append(f"disk {disk.target}: blank volume ({src.origin})")
        else:  # pragma: no cover - resolve() returns only the kinds above
            raise self.fail(f"disk {disk.target}: unknown source kind {src.kind}")
        annotations = {f"{DOMAIN}/source-disk": disk.target}
        if disk.path:
            annotations[f"{DOMAIN}/source-path"] = disk.path
        return {
            "metadata": {
                "name": dv_name,
                "labels": {**MANAGED_BY, f"{DOMAIN}/vm": self.name},
                "annotations": annotations,
            },
            "spec": {"source": source, "storage": storage},
        }

    def secret(self, disk: Disk, src: DiskSource) -> None:
        if src.secret in self.secrets:
            return
        if not src.secret_file:
            self.notes.append(
                f"disk {disk.target}: Secret {src.secret} must exist in {self.namespace} (no manifest recorded)"
            )
            return
        path = Path(src.secret_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            self.problems.append(f"disk {disk.target}: Secret manifest {path}: {getattr(exc, 'strerror', None) or exc}")
            return
        if not isinstance(data, dict) or data.get("kind") != "Secret" or (data.get("metadata") or {}).get("name") != src.secret:
            self.problems.append(f"disk {disk.target}: {path} is not the Secret {src.secret}")
            return
        data = dict(data)
        data["metadata"] = {**data["metadata"], "namespace": self.namespace}
        self.secrets[src.secret] = data

    # ---- networks ----
    def nics(self, devices: dict[str, Any], networks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int | None]]:
        interfaces: list[tuple[dict[str, Any], int | None]] = []
        unmapped: list[str] = []
        pods: list[str] = []
        for idx, nic in enumerate(self.vm.nics):
            target = self.opt.networks.resolve(nic)
            label = f"{nic.attachment} ({nic.mac})" if nic.mac else nic.attachment
            if target is None:
                unmapped.append(label)
                continue
            name = f"nic{idx}"
            iface: dict[str, Any] = {"name": name}
            if target.kind == POD:
                pods.append(label)
                iface["masquerade"] = {}
                networks.append({"name": name, "pod": {}})
            else:
                iface["bridge"] = {}
                networks.append({"name": name, "multus": {"networkName": target.name}})
            model = self.over.nic_model.get(idx) or self.nic_model(nic, idx)
            if model:
                iface["model"] = model
            mac = self.over.nic_mac.get(idx) or (nic.mac or "").lower().replace("-", ":")
            if mac:
                if not MAC_RE.match(mac):
                    self.notes.append(f"nic{idx}: MAC {nic.mac!r} is malformed; KubeVirt assigns one")
                elif mac == RESERVED_MAC and target.kind == POD:
                    self.notes.append(f"nic{idx}: MAC {mac} is reserved on the pod network; KubeVirt assigns one")
                else:
                    iface["macAddress"] = mac
            interfaces.append((iface, nic.boot_order))
        if unmapped:
            self.problems.append(
                "unmapped network(s) " + ", ".join(unmapped) + " (add them to the network map)"
            )
        if len(pods) > 1:
            self.problems.append(
                "more than one NIC maps to the pod network: " + ", ".join(pods) + " (at most one; use multus for the others)"
            )
        devices["interfaces"] = [i for i, _ in interfaces]
        if not self.vm.nics:
            devices["autoattachPodInterface"] = False  # the source had no NIC; add none
        return interfaces

    def nic_model(self, nic: Nic, idx: int) -> str | None:
        model = self._nic_model(nic, idx)
        fix = inspected_nic_model(model, self.vm.inspection)
        if fix.reason:
            self.notes.append(f"nic{idx}: {fix.reason}")
        return fix.value

    def _nic_model(self, nic: Nic, idx: int) -> str:
        model = (nic.model or "").lower()
        if not model:
            if self.windows:
                self.notes.append(f"nic{idx}: no model in the source; e1000 (drivers ship with Windows)")
                return "e1000"
            return "virtio"
        mapped = _NIC_MODELS.get(model)
        if mapped in INTERFACE_MODELS:
            return mapped
        self.notes.append(
            f"nic{idx}: model {nic.model} is not available in KubeVirt; virtio"
            + (" (install the virtio-win drivers first)" if self.windows else "")
        )
        return "virtio"

    # ---- boot order ----
    def boot_order(self, items: list[tuple[dict[str, Any], int | None]]) -> None:
        orders = [(o, i) for i, (_, o) in enumerate(items) if o is not None]
        values = [o for o, _ in orders]
        if not orders:
            return
        if len(set(values)) == len(values) and min(values) >= 1:
            for entry, order in items:
                if order is not None:
                    entry["bootOrder"] = order
            return
        for rank, (_, i) in enumerate(sorted(orders), start=1):
            items[i][0]["bootOrder"] = rank
        self.notes.append("boot order: source orders repeat or are below 1; renumbered, same sequence")

    # ---- instancetype and preference ----
    def choose_preference(self, domain: dict[str, Any], arch: str) -> str | None:
        choice = self.over.preference or self.opt.preference or "none"
        if choice == "none":
            return None
        catalog = self.ctx.catalog.preferences
        cpu = domain.get("cpu")
        mem = (domain.get("memory") or {}).get("guest")
        if choice == "auto":
            name = prefs.auto_preference(self.vm.guest_os)
            if name is None:
                self.notes.append("preference: guest OS unknown, none chosen")
                return None
            if catalog:
                if name not in catalog:
                    self.notes.append(f"preference: {name} is not in the cluster's preferences; none chosen")
                    return None
                unmet = prefs.requirement_errors(catalog[name], cpu, mem, arch, self._instancetype_spec)
                if unmet:
                    self.notes.append(f"preference: {name} not used: " + "; ".join(unmet))
                    return None
            else:
                self.notes.append(f"preference: {name} chosen without the cluster's preferences (requirements unchecked)")
            return name
        if catalog:
            if choice not in catalog:
                raise self.fail(f"preference {choice} is not in the given preferences")
            unmet = prefs.requirement_errors(catalog[choice], cpu, mem, arch, self._instancetype_spec)
            if unmet:
                raise self.fail(f"preference {choice}: " + "; ".join(unmet))
        return choice

    _instancetype_spec: dict[str, Any] | None = None

    def choose_instancetype(self) -> str | None:
        choice = self.over.instancetype or self.opt.instancetype or "none"
        if choice == "none":
            return None
        catalog = self.ctx.catalog
        if not catalog.instancetypes:
            raise self.fail(f"--instancetype {choice} needs the cluster's instancetypes (--instancetypes FILE)")
        vcpus, memory = max(1, self.vm.vcpus), self.vm.memory
        exact = catalog.exact_instancetypes(vcpus, memory)
        if choice == "auto":
            plain = catalog.plain_instancetypes(exact)
            if not plain:
                self.notes.append(
                    f"instancetype: none matches {vcpus} vCPU / {quantity(memory)} exactly; explicit cpu and memory kept"
                )
                return None
            choice = plain[0]
        elif choice not in catalog.instancetypes:
            raise self.fail(f"instancetype {choice} is not in the given instancetypes")
        elif choice not in exact:
            raise self.fail(f"instancetype {choice} does not match {vcpus} vCPU / {quantity(memory)} exactly")
        self._instancetype_spec = catalog.instancetypes[choice]
        return choice

    # ---- everything ----
    def build(self) -> ManifestSet:
        vm = self.vm
        memory = self.over.memory or vm.memory
        if memory <= 0:
            raise self.fail("memory size unknown (a plan sets it: memory: 4Gi in the VM's "
                            "entry)")
        arch = _architecture(vm)
        domain: dict[str, Any] = {"machine": {"type": "q35"}}
        features: dict[str, Any] = {}
        devices: dict[str, Any] = {}
        instancetype = self.choose_instancetype()
        if instancetype is None:
            domain["cpu"] = self.cpu()
            if self.over.cpu_model:
                domain["cpu"]["model"] = self.over.cpu_model
            domain["memory"] = {"guest": quantity(memory)}
        machine = (vm.machine or "").lower()
        if "i440fx" in machine or machine in ("pc",) or machine.startswith("pc-") and "q35" not in machine:
            self.notes.append(f"machine: source machine {vm.machine} (i440fx) becomes q35")
        self.firmware(domain, features, devices)
        self.clock(domain)
        if self.windows:
            on = {"enabled": True}
            features["hyperv"] = {
                "relaxed": dict(on), "vapic": dict(on), "vpindex": dict(on), "runtime": dict(on),
                "synic": dict(on), "synictimer": {"enabled": True, "direct": dict(on)},
                "frequencies": dict(on), "reenlightenment": dict(on), "tlbflush": dict(on),
                "ipi": dict(on), "reset": dict(on), "spinlocks": {"enabled": True, "spinlocks": 8191},
            }
            features["acpi"] = {"enabled": True}
            features["apic"] = {"enabled": True}
        volumes: list[dict[str, Any]] = []
        templates: list[dict[str, Any]] = []
        networks: list[dict[str, Any]] = []
        dropped = sorted({d.kind for d in vm.devices if d.kind in _NOT_CARRIED})
        if dropped:
            self.notes.append("devices not carried: " + ", ".join(dropped) + " (see vmmove assess)")
        disk_items = self.disks(devices, volumes, templates)
        nic_items = self.nics(devices, networks)
        if self.problems:
            raise self.fail("; ".join(self.problems))
        self.boot_order(disk_items + nic_items)
        preference = self.choose_preference(domain, arch)
        if preference and not vm.firmware.tpm_version:
            devices["tpm"] = {"enabled": False}  # Windows preferences would add a TPM the source lacked
        if features:
            domain["features"] = features
        domain["devices"] = devices

        spec: dict[str, Any] = {}
        if templates:
            spec["dataVolumeTemplates"] = templates
        if instancetype:
            spec["instancetype"] = {"kind": prefs.INSTANCETYPE_KIND, "name": instancetype}
        if preference:
            spec["preference"] = {"kind": prefs.PREFERENCE_KIND, "name": preference}
        run_strategy = self.over.run_strategy or self.opt.run_strategy
        if run_strategy not in RUN_STRATEGIES:
            raise self.fail(f"run strategy {run_strategy!r} is not one of {', '.join(RUN_STRATEGIES)}")
        spec["runStrategy"] = run_strategy
        tspec: dict[str, Any] = {"architecture": arch, "domain": domain}
        if self.over.node_selector:
            tspec["nodeSelector"] = dict(self.over.node_selector)
        if self.over.affinity:
            tspec["affinity"] = self.over.affinity
        if networks:
            tspec["networks"] = networks
        if volumes:
            tspec["volumes"] = volumes
        spec["template"] = {"metadata": {"labels": {**self.over.labels, f"{DOMAIN}/vm": self.name}},
                            "spec": tspec}

        obj = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels(),
                "annotations": self.annotations(),
            },
            "spec": spec,
        }
        errors = admission_errors(obj)
        if preference and self.ctx.catalog.preferences.get(preference):
            errors += prefs.requirement_errors(
                self.ctx.catalog.preferences[preference], domain.get("cpu"),
                (domain.get("memory") or {}).get("guest"), arch, self._instancetype_spec,
            )
        if errors:
            raise self.fail("KubeVirt would refuse the VirtualMachine: " + "; ".join(errors))
        return ManifestSet(vm.key, self.name, self.namespace, obj, list(self.secrets.values()), self.notes)

    def labels(self) -> dict[str, str]:
        labels = {**self.over.labels, **MANAGED_BY, f"{DOMAIN}/source-kind": self.vm.source.kind.value}
        uid = _labels_value(_valid_uuid(self.vm.uuid))
        if uid:
            labels[f"{DOMAIN}/domain-uuid"] = uid
        return labels

    def annotations(self) -> dict[str, str]:
        vm = self.vm
        location = vm.source.location + (f"#{vm.source.member}" if vm.source.member else "")
        ann = {
            **self.over.annotations,
            f"{DOMAIN}/source-name": vm.name,
            f"{DOMAIN}/source-uri": location,
            f"{DOMAIN}/version": __version__,
        }
        if vm.uuid:
            ann[f"{DOMAIN}/domain-uuid"] = vm.uuid
        if self.ctx.scanned_at:
            ann[f"{DOMAIN}/scanned-at"] = self.ctx.scanned_at
        if vm.machine:
            ann[f"{DOMAIN}/source-machine"] = vm.machine
        if vm.guest_os and (vm.guest_os.name or vm.guest_os.id):
            ann[f"{DOMAIN}/source-os"] = vm.guest_os.name or vm.guest_os.id or ""
        if self.notes:
            ann[f"{DOMAIN}/notes"] = "\n".join(self.notes)
        return ann


def build_vm_manifests(vm: VM, ctx: GenerationContext) -> ManifestSet:
    """The VirtualMachine (with its dataVolumeTemplates) and Secrets for one VM."""
    return _Builder(vm, ctx).build()


def build_all(vms: Iterable[VM], ctx: GenerationContext) -> tuple[list[ManifestSet], list[GenerationError]]:
    """Manifests for every VM that can have them, and one error per VM that cannot."""
    done: list[ManifestSet] = []
    failed: list[GenerationError] = []
    for vm in vms:
        try:
            done.append(build_vm_manifests(vm, ctx))
        except GenerationError as exc:
            failed.append(exc)
    return done, failed
