"""Is a manifest one the cluster will accept?  Two independent checks.

1. :class:`SchemaValidator`: strict structural validation against the published schemas
   (KubeVirt ``openapiv3/virtualmachine.yaml``, CDI ``crds/datavolume.yaml``), as
   ``kubectl apply --validate=strict`` does: ``x-kubernetes-*`` keys dropped, ``nullable``
   read as ``[type, "null"]``, and every object schema that lists ``properties`` refuses
   fields it does not list (unless it says ``x-kubernetes-preserve-unknown-fields``).
   The schemas are not shipped with vmmove; point it at a folder holding them
   (``vmmove manifests --validate-schemas DIR``).
2. :func:`admission_errors`: the rules KubeVirt's validating webhook enforces on top of the
   schema (v1.9: pkg/virt-api/webhooks/validating-webhook, pkg/network/admitter,
   pkg/storage/admitters), written as plain checks.  The generator runs them on every VM it
   builds, so an invalid VM is a generation error, not a surprise at ``kubectl apply``.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from migrate.core.errors import UsageError
from migrate.core.mapping import INTERFACE_MODELS, TARGET_BUSES
from migrate.core.naming import DNS_SUBDOMAIN, is_label_value, is_qualified_name

# -- 1. schemas -----------------------------------------------------------------------------

VM_SCHEMA = "kubevirt-v1.9.0/openapiv3/virtualmachine.yaml"
DV_SCHEMA = "cdi-v1.66.0/crds/datavolume.yaml"


class SchemaError(UsageError):
    """The schema folder is missing or unreadable."""


def strict_schema(node: Any) -> Any:
    """An OpenAPI v3 (Kubernetes structural) schema as a strict JSON Schema."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        if "anyOf" not in out:
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    out.pop("format", None)  # int32/int64/date-time are not checked by kubectl either
    return out


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    except OSError as exc:
        raise SchemaError(f"{path}: {exc.strerror or exc}") from None


@cache
def _validators(root: str) -> tuple[Any, Any]:
    import jsonschema  # import only when schema validation is asked for

    base = Path(root)
    vm = _load_yaml(base / VM_SCHEMA)
    if not isinstance(vm, dict) or "openAPIV3Schema" not in vm:
        raise SchemaError(f"{base / VM_SCHEMA}: no openAPIV3Schema")
    crd = _load_yaml(base / DV_SCHEMA)
    try:
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
        dv = version["schema"]["openAPIV3Schema"]
    except (KeyError, TypeError, StopIteration):
        raise SchemaError(f"{base / DV_SCHEMA}: no v1beta1 openAPIV3Schema") from None
    cls = jsonschema.Draft202012Validator
    return cls(strict_schema(vm["openAPIV3Schema"])), cls(strict_schema(copy.deepcopy(dv)))


class SchemaValidator:
    """Strict validation of VirtualMachine and DataVolume objects against ``root``'s schemas."""

    def __init__(self, root: str | Path) -> None:
        base = Path(root)
        for rel in (VM_SCHEMA, DV_SCHEMA):
            if not (base / rel).is_file():
                raise SchemaError(f"{base}: no {rel} (expected the ../shared/schemas folder)")
        self.vm, self.dv = _validators(str(base.resolve()))

    @staticmethod
    def _errors(validator: Any, obj: Any, prefix: str) -> list[str]:
        out = []
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            path = ".".join(str(p) for p in err.absolute_path) or "(root)"
            out.append(f"{prefix}{path}: {err.message}")
        return out

    def virtual_machine(self, obj: dict[str, Any]) -> list[str]:
        """Schema errors of a VirtualMachine, its dataVolumeTemplates checked as DataVolumes too."""
        errors = self._errors(self.vm, obj, "")
        for i, tpl in enumerate((obj.get("spec") or {}).get("dataVolumeTemplates") or []):
            errors += self.data_volume(as_data_volume(tpl, obj), f"spec.dataVolumeTemplates[{i}] as DataVolume: ")
        return errors

    def data_volume(self, obj: dict[str, Any], prefix: str = "") -> list[str]:
        return self._errors(self.dv, obj, prefix)


def as_data_volume(template: dict[str, Any], vm: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DataVolume a dataVolumeTemplate becomes once KubeVirt creates it."""
    meta = dict(template.get("metadata") or {})
    ns = ((vm or {}).get("metadata") or {}).get("namespace")
    if ns and "namespace" not in meta:
        meta["namespace"] = ns
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": meta, "spec": template.get("spec")}


# -- 2. admission rules --------------------------------------------------------------------

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IFACE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SERIAL = re.compile(r"^[A-Za-z0-9_.+-]+$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")
_DNS_SUBDOMAIN = DNS_SUBDOMAIN

MACHINE_TYPES = ("q35*", "pc-q35*")  # KubeVirt's default emulatedMachines on x86_64
RUN_STRATEGIES = ("Always", "Halted", "Manual", "RerunOnFailure", "Once")
DISK_BUSES = {"disk": TARGET_BUSES, "cdrom": ("sata", "scsi"), "lun": TARGET_BUSES}
RESERVED_MAC = "02:00:00:00:00:00"
_VOLUME_SOURCES = (
    "cloudInitConfigDrive", "cloudInitNoCloud", "configMap", "containerDisk", "dataVolume",
    "downwardAPI", "downwardMetrics", "emptyDisk", "ephemeral", "hostDisk", "memoryDump",
    "persistentVolumeClaim", "secret", "serviceAccount", "sysprep", "containerPath",
)
_CDI_SOURCES = ("blank", "gcs", "http", "imageio", "pvc", "registry", "s3", "snapshot", "upload", "vddk")


def _check_metadata(meta: dict[str, Any], where: str, errors: list[str], label_name: bool = True) -> None:
    name = meta.get("name")
    if label_name and (not isinstance(name, str) or len(name) > 63 or not DNS_LABEL.match(name)):
        errors.append(f"{where}metadata.name {name!r} is not a DNS-1123 label (lowercase, at most 63 characters)")
    ns = meta.get("namespace")
    if ns is not None and (len(ns) > 63 or not DNS_LABEL.match(ns)):
        errors.append(f"{where}metadata.namespace {ns!r} is not a DNS-1123 label")
    for key, value in (meta.get("labels") or {}).items():
        if not is_qualified_name(key):
            errors.append(f"{where}metadata.labels: invalid key {key!r}")
        if not isinstance(value, str) or not is_label_value(value):
            errors.append(f"{where}metadata.labels[{key}]: invalid value {value!r}")
    total = sum(len(k) + len(str(v)) for k, v in (meta.get("annotations") or {}).items())
    if total > 256 * 1024:
        errors.append(f"{where}metadata.annotations: larger than 256 KiB")


def _enabled(state: Any) -> bool:
    """KubeVirt counts a Hyper-V feature as enabled only when ``enabled: true`` is explicit."""
    return isinstance(state, dict) and state.get("enabled") is True


def _hyperv_errors(hyperv: dict[str, Any]) -> list[str]:
    base = "spec.template.spec.domain.features.hyperv."
    rules = [("evmcs", "vapic"), ("ipi", "vpindex"), ("tlbflush", "vpindex"), ("synictimer", "synic"), ("synic", "vpindex")]
    return [
        f"'{base}{feat}' requires '{base}{need}', which was disabled."
        for feat, need in rules
        if _enabled(hyperv.get(feat)) and not _enabled(hyperv.get(need))
    ]


def admission_errors(vm: dict[str, Any]) -> list[str]:
    """Reasons KubeVirt's admission webhook would refuse this VirtualMachine (empty: accepted)."""
    errors: list[str] = []
    meta = vm.get("metadata") or {}
    _check_metadata(meta, "", errors)
    spec = vm.get("spec") or {}
    if "running" in spec and "runStrategy" in spec:
        errors.append("spec: running and runStrategy are mutually exclusive")
    if "running" not in spec and spec.get("runStrategy") not in RUN_STRATEGIES:
        errors.append(f"spec.runStrategy {spec.get('runStrategy')!r} is not one of {', '.join(RUN_STRATEGIES)}")
    template = (spec.get("template") or {})
    tspec = template.get("spec") or {}
    domain = tspec.get("domain") or {}
    devices = domain.get("devices") or {}
    _check_metadata(template.get("metadata") or {}, "spec.template.", errors, label_name=False)

    machine = (domain.get("machine") or {}).get("type")
    if machine is not None and not any(fnmatch.fnmatchcase(machine, p) for p in MACHINE_TYPES):
        errors.append(f"spec.template.spec.domain.machine.type {machine!r} is not supported (allowed: {', '.join(MACHINE_TYPES)})")

    # instancetype / memory
    cpu = domain.get("cpu") or {}
    memory = domain.get("memory") or {}
    resources = domain.get("resources") or {}
    if spec.get("instancetype"):
        for fld in ("sockets", "cores", "threads"):
            if fld in cpu:
                errors.append(f"spec.template.spec.domain.cpu.{fld} conflicts with spec.instancetype")
        if "guest" in memory:
            errors.append("spec.template.spec.domain.memory.guest conflicts with spec.instancetype")
        for kind in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res in (resources.get(kind) or {}):
                    errors.append(f"spec.template.spec.domain.resources.{kind}.{res} conflicts with spec.instancetype")
    elif "guest" not in memory and "hugepages" not in memory and "memory" not in (resources.get("requests") or {}):
        errors.append("no memory requested: set domain.memory.guest, memory.hugepages.pageSize or resources.requests.memory")
    if cpu.get("maxSockets") and cpu.get("sockets", 1) > cpu["maxSockets"]:
        errors.append("spec.template.spec.domain.cpu: sockets greater than maxSockets")

    # firmware
    firmware = domain.get("firmware") or {}
    bootloader = firmware.get("bootloader") or {}
    if "bios" in bootloader and "efi" in bootloader:
        errors.append("spec.template.spec.domain.firmware.bootloader has both EFI and BIOS configured")
    efi = bootloader.get("efi")
    features = domain.get("features") or {}
    smm = features.get("smm")
    smm_on = isinstance(smm, dict) and smm.get("enabled", True) is not False
    if isinstance(efi, dict) and efi.get("secureBoot", True) is not False and not smm_on:
        errors.append("spec.template.spec.domain has EFI SecureBoot enabled. SecureBoot requires SMM, which is currently disabled.")
    if isinstance(features.get("hyperv"), dict):
        errors += _hyperv_errors(features["hyperv"])
        if "hypervPassthrough" in features:
            errors.append("spec.template.spec.domain.features: hyperv and hypervPassthrough are exclusive")

    # disks and volumes
    volumes = tspec.get("volumes") or []
    volume_names = [v.get("name") for v in volumes]
    for name, count in Counter(volume_names).items():
        if count > 1:
            errors.append(f"spec.template.spec.volumes: name {name!r} used {count} times")
    for i, vol in enumerate(volumes):
        kinds = [k for k in _VOLUME_SOURCES if k in vol]
        if len(kinds) != 1:
            errors.append(f"spec.template.spec.volumes[{i}] must have exactly one source type set")
        if "dataVolume" in vol and not (vol["dataVolume"] or {}).get("name"):
            errors.append(f"spec.template.spec.volumes[{i}]: DataVolume 'name' must be set")
    disks = devices.get("disks") or []
    disk_names = [d.get("name") for d in disks]
    for name, count in Counter(disk_names).items():
        if count > 1:
            errors.append(f"spec.template.spec.domain.devices.disks: name {name!r} used {count} times")
    boot_orders: list[tuple[str, Any]] = []
    for i, disk in enumerate(disks):
        where = f"spec.template.spec.domain.devices.disks[{i}]"
        name = disk.get("name")
        if not isinstance(name, str) or len(name) > 63 or not DNS_LABEL.match(name):
            errors.append(f"{where}.name {name!r} is not a DNS-1123 label")
        if name not in volume_names:
            errors.append(f"{where}.name {name!r}: no volume of that name")
        types = [t for t in ("disk", "cdrom", "lun") if t in disk]
        if len(types) > 1:
            errors.append(f"{where} can only have a single target type defined")
        dtype = types[0] if types else "disk"
        target = disk.get(dtype) or {}
        bus = target.get("bus")
        if bus is not None and bus not in DISK_BUSES[dtype]:
            errors.append(f"{where}: bus {bus!r} is not allowed for a {dtype} (allowed: {', '.join(DISK_BUSES[dtype])})")
        if dtype == "disk" and bus == "sata" and target.get("readonly"):
            errors.append(f"{where}: sata hard-disks do not support read-only")
        if disk.get("dedicatedIOThread") and bus != "virtio":
            errors.append(f"{where}: IOThreads are not supported for disks on a {bus} bus")
        serial = disk.get("serial")
        if serial is not None and (not _SERIAL.match(serial) or len(serial) > 256):
            errors.append(f"{where}.serial must be made of [A-Za-z0-9_.+-], at most 256 characters")
        if "bootOrder" in disk:
            boot_orders.append((where, disk["bootOrder"]))
        vol = next((v for v in volumes if v.get("name") == name), None)
        if dtype == "lun" and vol is not None and not ({"dataVolume", "persistentVolumeClaim"} & set(vol)):
            errors.append(f"{where}.lun can only be mapped to a DataVolume or PersistentVolumeClaim volume")
    for i, name in enumerate(volume_names):
        if name not in disk_names and "memoryDump" not in volumes[i]:
            errors.append(f"spec.template.spec.volumes[{i}].name {name!r}: no disk of that name")

    # dataVolumeTemplates
    referenced = {(v.get("dataVolume") or {}).get("name") for v in volumes} | {
        (v.get("persistentVolumeClaim") or {}).get("claimName") for v in volumes
    }
    ns = meta.get("namespace")
    for i, tpl in enumerate(spec.get("dataVolumeTemplates") or []):
        where = f"spec.dataVolumeTemplates[{i}]"
        tmeta = tpl.get("metadata") or {}
        name = tmeta.get("name")
        if not name:
            errors.append(f"{where}: 'name' field must not be empty")
            continue
        if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
            errors.append(f"{where}.metadata.name {name!r} is not a DNS-1123 subdomain")
        if tmeta.get("namespace") and ns and tmeta["namespace"] != ns:
            errors.append(f"{where}: namespace {tmeta['namespace']} differs from VM namespace {ns}")
        tspec_dv = tpl.get("spec") or {}
        if ("pvc" in tspec_dv) == ("storage" in tspec_dv):
            errors.append(f"{where}: exactly one of spec.pvc and spec.storage must be set")
        source = tspec_dv.get("source")
        if source is None and tspec_dv.get("sourceRef") is None:
            errors.append(f"{where}: Data volume should have either Source, SourceRef, or be externally populated")
        elif source is not None and len([k for k in _CDI_SOURCES if source.get(k) is not None]) != 1:
            errors.append(f"{where}.spec.source must have exactly one source")
        if name not in referenced:
            errors.append(f"{where} ({name}) must be referenced in the VMI template's 'volumes' list")

    # interfaces and networks
    interfaces = devices.get("interfaces") or []
    networks = tspec.get("networks") or []
    nets = {n.get("name"): n for n in networks}
    iface_names = [i.get("name") for i in interfaces]
    if len(nets) != len(networks):
        errors.append("spec.template.spec.networks: every network must have a unique name")
    if len(set(iface_names)) != len(iface_names):
        errors.append("spec.template.spec.domain.devices.interfaces: only one interface can be connected to one network")
    pods = [n for n in networks if "pod" in n]
    if len(pods) > 1:
        errors.append("more than one interface is connected to a pod network")
    multus_default = [n for n in networks if (n.get("multus") or {}).get("default")]
    if len(multus_default) > 1:
        errors.append("Multus CNI should only have one default network")
    if pods and multus_default:
        errors.append("Pod network cannot be defined when Multus default network is defined")
    for i, net in enumerate(networks):
        kinds = [k for k in ("pod", "multus", "resourceClaim") if k in net]
        if len(kinds) != 1:
            errors.append(f"spec.template.spec.networks[{i}] should have exactly one network type")
        if "multus" in net and not (net["multus"] or {}).get("networkName"):
            errors.append(f"spec.template.spec.networks[{i}]: CNI delegating plugin must have a networkName")
        if net.get("name") not in iface_names:
            errors.append(f"spec.template.spec.networks[{i}].name {net.get('name')!r}: no interface of that name")
    for i, iface in enumerate(interfaces):
        where = f"spec.template.spec.domain.devices.interfaces[{i}]"
        name = iface.get("name")
        if not isinstance(name, str) or not _IFACE_NAME.match(name):
            errors.append(f"{where}.name {name!r}: only letters, digits, '-' and '_'")
        net = nets.get(name)
        if net is None:
            errors.append(f"{where}.name {name!r}: no network of that name")
            net = {}
        bindings = [k for k in ("bridge", "masquerade", "sriov", "passtBinding", "binding") if k in iface]
        if len(bindings) != 1:
            errors.append(f"{where}: logical {name} interface must have exactly one binding method")
        if "masquerade" in iface and "pod" not in net:
            errors.append(f"{where}: Masquerade interface only implemented with pod network")
        if "masquerade" in iface and str(iface.get("macAddress", "")).lower() == RESERVED_MAC:
            errors.append(f"{where}.macAddress is reserved for the in-pod bridge")
        if "bridge" in iface and "pod" in net:
            errors.append(f"{where}: Bridge on pod network configuration is not enabled under kubevirt-config")
        model = iface.get("model")
        if model is not None and model not in INTERFACE_MODELS:
            errors.append(f"{where}: model {model!r} is not supported (allowed: {', '.join(INTERFACE_MODELS)})")
        mac = iface.get("macAddress")
        if mac is not None and not _MAC.match(str(mac)):
            errors.append(f"{where}: malformed MAC address ({mac})")
        if "bootOrder" in iface:
            boot_orders.append((where, iface["bootOrder"]))
    seen: dict[Any, str] = {}
    for where, order in boot_orders:
        if not isinstance(order, int) or order < 1:
            errors.append(f"{where} must have a boot order > 0, if supplied")
        elif order in seen:
            errors.append(f"Boot order for {where} already set for a different device ({seen[order]})")
        else:
            seen[order] = where
    return errors
