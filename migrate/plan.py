"""Migration plans: which VMs move in which wave, where to, and how.

A plan is a YAML file an operator generates (``vmmove plan INVENTORY --out plan.yaml``),
reads, edits and then runs wave by wave (``vmmove migrate PLAN --wave N --stage``).  It
names one inventory, one work folder (whose journal is the plan's one journal: convert,
upload, manifests, apply, import, cutover and rollback all record there), the network and
storage maps, the transfer target and the waves, with per-VM overrides::

    apiVersion: vmmove.io/v1alpha1
    kind: Plan
    inventory: inventory.yaml          # relative to this file
    workdir: plan.work                 # default: <plan file stem>.work beside the plan
    namespace: vms
    networks: {"network:default": pod, "bridge:br0": "multus:vms/br0"}
    storage: {storageClass: ceph-rbd}
    transfer: {s3: "s3://images/vms", endpointUrl: "http://minio:9000"}
    convert: {format: qcow2}
    defaults: {runStrategy: Halted, preference: none}
    waves:
      - name: small-first
        vms:
          - web-01
          - {vm: db-01, targetName: db, runStrategy: Always, preference: rhel.9}
          - {vm: gpu-worker, skip: true, note: "PCI passthrough"}

Why strict: a plan drives real changes in a real cluster, so a typo must never be
silently ignored.  :func:`load_plan` checks everything it can without a cluster —
unknown keys, VMs missing from the inventory, VMs planned twice, unmapped networks,
duplicate target names, MAC collisions, invalid names — and reports *all* problems at
once in one :class:`PlanError`, so the operator fixes the file in one pass.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from migrate.core.errors import UsageError, listed, unreadable
from migrate.core.mapping import (
    INTERFACE_MODELS,
    POD,
    TARGET_BUSES,
    MappingError,
    Maps,
    NetworkMap,
    NetworkTarget,
    StorageMap,
    parse_network_target,
)
from migrate.core.model import MAC_RE, VM, Inventory, SourceKind
from migrate.core.naming import is_dns1123_label, is_label_value, is_qualified_name
from migrate.core.serialize import InventoryError, atomic_write, load_inventory
from migrate.core.journal import Journal
from migrate.core.workdir import journal_path, target_names
from migrate.plan_workers import WorkerSettings, parse_workers

API_VERSION = "vmmove.io/v1alpha1"
KIND = "Plan"
RUN_STRATEGIES = ("Always", "Halted", "Manual", "RerunOnFailure", "Once")
CONVERT_FORMATS = ("qcow2", "raw")
_NAME_CHOICE = re.compile(r"^(auto|none|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")

TOP_KEYS = ("apiVersion", "kind", "inventory", "workdir", "namespace", "networks", "storage",
            "transfer", "convert", "defaults", "waves", "workers", "warm", "bootTest")
TRANSFER_KEYS = ("s3", "endpointUrl", "profile", "region", "secretName", "parallel",
                 "uploadProxy", "insecure", "storageClass", "forceBind", "mode")
TRANSFER_MODES = ("s3", "upload", "direct")  # direct: in-cluster workers (docs/remote-hosts.md)
CONVERT_KEYS = ("format", "compress", "verify", "jobs", "inconsistentCopy", "forceShare",
                "guest", "virtioWin", "preserveStaticIPs")
GUEST_CONVERT = ("auto", "never", "always")
BOOT_TEST_KEYS = ("timeout", "marker", "accel")
BOOT_ACCELS = ("auto", "kvm", "tcg")
WARM_KEYS = ("default", "volumes", "maxRoundAge", "writer")
WARM_WRITERS = ("local", "worker", "s3")
DEFAULT_KEYS = ("runStrategy", "preference", "instancetype", "keepCdroms", "timezone")
WAVE_KEYS = ("name", "vms")
VM_KEYS = ("vm", "targetName", "namespace", "runStrategy", "preference", "instancetype",
           "memory", "cpuModel", "disks", "nics", "labels", "annotations", "nodeSelector",
           "affinity", "skip", "note", "warm")
DISK_KEYS = ("bus", "size")
NIC_KEYS = ("mac", "model")
AFFINITY_KEYS = ("nodeAffinity", "podAffinity", "podAntiAffinity")
_CPU_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NIC_NAME = re.compile(r"^nic(0|[1-9][0-9]*)$")


class PlanError(UsageError):
    """A plan that cannot run; ``problems`` lists every one, each naming where it is."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        count = len(self.problems)
        self.head = f"{self.path}: {count} problem{'s' if count != 1 else ''}, nothing was run"
        super().__init__(listed(self.head, self.problems))


# -- the model -----------------------------------------------------------------------------


@dataclass
class TransferSettings:
    """Where ``upload`` puts the images: S3 (bucket/prefix) or CDI's upload proxy."""

    s3: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    secret_name: str | None = None
    parallel: int = 8
    upload_proxy: str | None = None
    insecure: bool = False
    storage_class: str | None = None  # upload proxy DataVolumes
    force_bind: bool = False
    mode: str | None = None  # "direct": in-cluster workers; else implied by s3/uploadProxy

    @property
    def backend(self) -> str | None:
        if self.mode == "direct":
            return "direct"
        return "s3" if self.s3 else "upload" if self.upload_proxy else None


@dataclass
class ConvertSettings:
    format: str = "qcow2"
    compress: bool = False
    verify: bool = True
    jobs: int | None = None
    force_share: bool = False
    # guest conversion with virt-v2v (docs/guest-readiness.md): auto = when inspection says
    # the guest lacks a driver its target bus needs; never; always
    guest: str = "auto"
    virtio_win: str | None = None  # virtio-win ISO for Windows guests (virt-v2v --virtio-win)
    preserve_static_ips: bool = False


@dataclass
class BootTestSettings:
    """``bootTest`` in a plan: how ``vmmove boot-test`` judges a boot."""

    timeout: float = 300.0  # seconds until a login prompt, the marker or the agent
    marker: str | None = None  # a text the guest prints on its serial console when up
    accel: str = "auto"  # auto (KVM when /dev/kvm works) | kvm | tcg


@dataclass
class WarmSettings:
    """Warm migration (docs/warm-migration.md): ``default`` marks every VM warm unless
    its entry says ``warm: false``; ``volumes`` is where the target volumes are written
    (``<volumes>/<namespace>/<DataVolume>/disk.img``); ``max_round_age`` (seconds) is the
    oldest precopy round a cutover accepts."""

    default: bool = False
    volumes: Path | None = None
    max_round_age: float = 3600.0
    #: ``local``: vmmove writes the volumes itself; ``worker``: a Job per disk and round
    #: runs ``vmmove worker`` in the cluster, reading the host's TLS export
    writer: str = "local"


@dataclass
class Defaults:
    """Plan-wide manifest choices; a VM entry may override the first three."""

    run_strategy: str = "Halted"
    preference: str = "none"
    instancetype: str = "none"
    keep_cdroms: bool = False
    timezone: str | None = None


@dataclass
class VmEntry:
    """One VM of a wave as the plan names it, with its overrides."""

    ref: str  # name, UUID or key (uuid@source, when copies share both) in the inventory
    target_name: str | None = None
    namespace: str | None = None
    run_strategy: str | None = None
    preference: str | None = None
    instancetype: str | None = None
    memory: int | None = None  # bytes (the plan says a quantity: 4Gi)
    cpu_model: str | None = None
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)  # target → {bus, size}
    nics: dict[int, dict[str, str]] = field(default_factory=dict)  # index → {mac, model}
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    affinity: dict[str, Any] | None = None
    skip: bool = False
    note: str | None = None
    warm: bool | None = None  # None: the plan's warm.default


@dataclass
class Wave:
    number: int  # 1-based, the N of --wave N
    name: str
    entries: list[VmEntry] = field(default_factory=list)


@dataclass
class PlannedVM:
    """A VM resolved against the inventory: what every later step works on."""

    vm: VM
    entry: VmEntry
    wave: int
    name: str  # Kubernetes name of the VirtualMachine
    namespace: str

    @property
    def key(self) -> str:
        return self.vm.key

    @property
    def skip(self) -> bool:
        return self.entry.skip

    @property
    def run_strategy(self) -> str | None:
        return self.entry.run_strategy


@dataclass
class Plan:
    path: Path
    inventory_path: Path
    inventory: Inventory
    workdir: Path
    namespace: str
    maps: Maps
    transfer: TransferSettings
    convert: ConvertSettings
    defaults: Defaults
    waves: list[Wave]
    vms: list[PlannedVM] = field(default_factory=list)  # every planned VM, in wave order
    workers: WorkerSettings = field(default_factory=WorkerSettings)  # transfer mode direct
    warm: WarmSettings = field(default_factory=WarmSettings)
    boot_test: BootTestSettings = field(default_factory=BootTestSettings)

    # -- lookups ----------------------------------------------------------------------------
    def wave_numbers(self) -> list[int]:
        return [w.number for w in self.waves]

    def wave(self, number: int, include_skipped: bool = False) -> list[PlannedVM]:
        """The VMs of wave ``number`` (1-based), skipped ones left out unless asked."""
        if number not in self.wave_numbers():
            raise UsageError(f"{self.path}: no wave {number} (the plan has waves "
                             f"{_ranges(self.wave_numbers()) or 'none'})")
        return [p for p in self.vms if p.wave == number and (include_skipped or not p.skip)]

    def planned(self, ref: str) -> PlannedVM | None:
        """A planned VM by source name, UUID, key or target name."""
        for p in self.vms:
            if ref in (p.vm.name, p.vm.uuid, p.vm.key, p.name):
                return p
        return None

    def names(self) -> dict[str, str]:
        """Target name of every planned VM, keyed by :attr:`VM.key`."""
        return {p.key: p.name for p in self.vms}

    def namespaces(self, wave: int | None = None) -> list[str]:
        vms = self.vms if wave is None else self.wave(wave)
        return sorted({p.namespace for p in vms if not p.skip})

    def use_namespace(self, namespace: str) -> None:
        """Put the VMs that take the plan's namespace into ``namespace`` (kubectl's ``-n``)."""
        if not is_dns1123_label(namespace):
            raise UsageError(f"-n {namespace!r} is not a DNS-1123 label")
        self.namespace = namespace
        for p in self.vms:
            if p.entry.namespace is None:
                p.namespace = namespace

    @property
    def journal_path(self) -> Path:
        return journal_path(self.workdir)

    def journal(self) -> Journal:
        """The plan's one journal (in its work folder); close it after use."""
        return Journal(self.journal_path)

    @property
    def manifests_dir(self) -> Path:
        return self.workdir / "manifests"


def _ranges(numbers: list[int]) -> str:
    if not numbers:
        return ""
    return f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0])


# -- loading and validation ----------------------------------------------------------------


class _Problems:
    """Collects every problem of a plan instead of stopping at the first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}" if where else message)

    def unknown_keys(self, data: dict[str, Any], allowed: Iterable[str], where: str) -> None:
        allowed = tuple(allowed)
        unknown = [str(k) for k in data if str(k) not in allowed]
        if unknown:
            self.add(where, f"unknown key{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(repr(u) for u in unknown)} (allowed: {', '.join(allowed)})")


def _section(data: dict[str, Any], key: str, problems: _Problems,
             allowed: Iterable[str]) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(key, f"expected a mapping, got {type(value).__name__}")
        return {}
    problems.unknown_keys(value, allowed, key)
    return value


def _typed(section: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
           problems: _Problems, default: Any = None) -> Any:
    value = section.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        problems.add(f"{where}.{key}", f"expected {name}, got {type(value).__name__} {value!r}")
        return default
    return value


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(unreadable(path, exc)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: not valid YAML{at}") from None


def is_plan_file(path: str | os.PathLike[str]) -> bool:
    """True for a vmmove plan (``kind: Plan``), so commands can take a plan or an inventory."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with open(p, encoding="utf-8") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return bool(re.search(r"^kind:\s*['\"]?Plan['\"]?\s*$", head, re.M))


def load_plan(path: str | os.PathLike[str], inventory: Inventory | None = None) -> Plan:
    """Read and check a plan; raise :class:`PlanError` listing every problem found.

    ``inventory`` replaces the file the plan names (tests, or a caller that has it loaded).
    """
    plan_path = Path(path).absolute()
    data = _read_yaml(plan_path)
    if not isinstance(data, dict):
        raise PlanError(plan_path, ["not a vmmove plan (expected a mapping with kind: Plan)"])
    if "kind" not in data and isinstance(data.get("vms"), list):
        # the most common mix-up: the scan's output where the plan goes
        raise UsageError(f"{plan_path}: this is an inventory (from vmmove scan), not a plan; "
                         f"make a plan with `vmmove plan {path} --out plan.yaml`")
    problems = _Problems()
    problems.unknown_keys(data, TOP_KEYS, "")
    if data.get("kind") != KIND:
        problems.add("kind", f"expected {KIND!r}, got {data.get('kind')!r}")
    if data.get("apiVersion", API_VERSION) != API_VERSION:
        problems.add("apiVersion", f"expected {API_VERSION!r}, got {data.get('apiVersion')!r}")
    base = plan_path.parent

    # inventory
    inv_ref = data.get("inventory")
    inv_path = base / str(inv_ref) if inv_ref else base / "inventory.yaml"
    if inventory is None:
        if not inv_ref:
            problems.add("inventory", "missing: name the inventory file vmmove scan wrote")
        else:
            try:
                inventory = load_inventory(inv_path)
            except InventoryError as exc:
                problems.add("inventory", str(exc))
    inv_path = inv_path.absolute()

    workdir_ref = data.get("workdir")
    workdir = (base / str(workdir_ref)) if workdir_ref else base / f"{plan_path.stem}.work"

    namespace = data.get("namespace", "default")
    if not isinstance(namespace, str) or not is_dns1123_label(namespace):
        problems.add("namespace", f"{namespace!r} is not a DNS-1123 label (lowercase, digits, '-')")
        namespace = "default"

    maps = Maps(_networks(data.get("networks"), problems), _storage(data.get("storage"), problems))
    transfer = _transfer(data, problems)
    convert = _convert(data, problems)
    defaults = _defaults(data, problems)
    waves = _waves(data.get("waves"), problems)
    workers = parse_workers(data.get("workers"), problems.add)

    boot_test = _boot_test(data, problems)
    plan = Plan(plan_path, inv_path, inventory or Inventory(), workdir.absolute(), namespace,
                maps, transfer, convert, defaults, waves, workers=workers,
                warm=_warm(data, base, problems), boot_test=boot_test)
    if inventory is not None:
        plan.vms = _resolve(plan, problems)
        _check_vms(plan, problems)
    if problems.items:
        raise PlanError(plan_path, problems.items)
    return plan


def _networks(data: Any, problems: _Problems) -> NetworkMap:
    """Each entry parsed on its own, so every bad entry is reported; null = not mapped yet."""
    if data is None:
        return NetworkMap()
    if not isinstance(data, dict):
        problems.add("networks", "expected a mapping of source network to 'pod' or "
                                 "'multus:NAMESPACE/NAME'")
        return NetworkMap()
    entries: dict[str, NetworkTarget] = {}
    for key, value in data.items():
        if value is None:
            continue  # left for the operator to fill: reported where a NIC needs it
        try:
            entries[str(key)] = parse_network_target(value, f"networks.{key}")
        except MappingError as exc:
            problems.add("", str(exc))
    return NetworkMap(entries)


def _storage(data: Any, problems: _Problems) -> StorageMap:
    try:
        return StorageMap.from_data(data, "storage")
    except MappingError as exc:
        problems.add("", str(exc))
        return StorageMap()


def _transfer(data: dict[str, Any], problems: _Problems) -> TransferSettings:
    sec = _section(data, "transfer", problems, TRANSFER_KEYS)
    w = "transfer"
    t = TransferSettings(
        s3=_typed(sec, "s3", str, w, problems),
        endpoint_url=_typed(sec, "endpointUrl", str, w, problems),
        profile=_typed(sec, "profile", str, w, problems),
        region=_typed(sec, "region", str, w, problems),
        secret_name=_typed(sec, "secretName", str, w, problems),
        parallel=_typed(sec, "parallel", int, w, problems, 8),
        upload_proxy=_typed(sec, "uploadProxy", str, w, problems),
        insecure=_typed(sec, "insecure", bool, w, problems, False),
        storage_class=_typed(sec, "storageClass", str, w, problems),
        force_bind=_typed(sec, "forceBind", bool, w, problems, False),
        mode=_typed(sec, "mode", str, w, problems),
    )
    if t.mode is not None and t.mode not in TRANSFER_MODES:
        problems.add(f"{w}.mode", f"{t.mode!r} is not one of {', '.join(TRANSFER_MODES)}")
    if t.mode == "direct" and (t.s3 or t.upload_proxy):
        problems.add(f"{w}.mode", "direct writes the disks from in-cluster workers: remove "
                                  "s3/uploadProxy")
    if t.s3 and t.upload_proxy:
        problems.add(w, "choose one of s3 and uploadProxy, not both")
    if not t.upload_proxy:  # never silently ignored: they mean something only for the proxy
        for key in ("insecure", "storageClass", "forceBind"):
            if sec.get(key) not in (None, False):
                problems.add(f"{w}.{key}", "goes with transfer.uploadProxy (for S3 the "
                                           "storage map names the storage class)"
                             if key == "storageClass" else "goes with transfer.uploadProxy")
    if t.s3:
        parsed = urllib.parse.urlparse(t.s3)
        if parsed.scheme != "s3" or not parsed.netloc:
            problems.add(f"{w}.s3", f"{t.s3!r} is not s3://BUCKET[/PREFIX]")
    for key, value in (("endpointUrl", t.endpoint_url), ("uploadProxy", t.upload_proxy)):
        if value:
            parsed = urllib.parse.urlparse(value)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                problems.add(f"{w}.{key}", f"{value!r} is not an http(s):// URL")
    if not 1 <= t.parallel <= 64:
        problems.add(f"{w}.parallel", f"{t.parallel} is not between 1 and 64")
    return t


def _warm(data: dict[str, Any], base: Path, problems: _Problems) -> WarmSettings:
    sec = _section(data, "warm", problems, WARM_KEYS)
    w = "warm"
    volumes = _typed(sec, "volumes", str, w, problems)
    age = _typed(sec, "maxRoundAge", (int, float), w, problems, 3600)
    if age is not None and age <= 0:
        problems.add(f"{w}.maxRoundAge", "must be a positive number of seconds")
    writer = _typed(sec, "writer", str, w, problems, "local")
    if writer not in WARM_WRITERS:
        problems.add(f"{w}.writer", f"{writer!r} is not one of {', '.join(WARM_WRITERS)}")
        writer = "local"
    return WarmSettings(default=_typed(sec, "default", bool, w, problems, False),
                        volumes=(base / volumes).absolute() if volumes else None,
                        max_round_age=float(age or 3600), writer=writer)


def _convert(data: dict[str, Any], problems: _Problems) -> ConvertSettings:
    sec = _section(data, "convert", problems, CONVERT_KEYS)
    w = "convert"
    c = ConvertSettings(
        format=_typed(sec, "format", str, w, problems, "qcow2"),
        compress=_typed(sec, "compress", bool, w, problems, False),
        verify=_typed(sec, "verify", bool, w, problems, True),
        jobs=_typed(sec, "jobs", int, w, problems),
        force_share=bool(_typed(sec, "inconsistentCopy", bool, w, problems, False)
                         or _typed(sec, "forceShare", bool, w, problems, False)),
        guest=_typed(sec, "guest", str, w, problems, "auto"),
        virtio_win=_typed(sec, "virtioWin", str, w, problems),
        preserve_static_ips=_typed(sec, "preserveStaticIPs", bool, w, problems, False),
    )
    if c.guest not in GUEST_CONVERT:
        problems.add(f"{w}.guest", f"{c.guest!r} is not one of {', '.join(GUEST_CONVERT)}")
    if c.format not in CONVERT_FORMATS:
        problems.add(f"{w}.format", f"{c.format!r} is not one of {', '.join(CONVERT_FORMATS)}")
    if c.compress and c.format != "qcow2":
        problems.add(f"{w}.compress", "needs format qcow2")
    if c.jobs is not None and c.jobs < 1:
        problems.add(f"{w}.jobs", "must be at least 1")
    return c


def _boot_test(data: dict[str, Any], problems: _Problems) -> BootTestSettings:
    sec = _section(data, "bootTest", problems, BOOT_TEST_KEYS)
    w = "bootTest"
    b = BootTestSettings(
        timeout=float(_typed(sec, "timeout", (int, float), w, problems, 300.0)),
        marker=_typed(sec, "marker", str, w, problems),
        accel=_typed(sec, "accel", str, w, problems, "auto"),
    )
    if b.timeout <= 0:
        problems.add(f"{w}.timeout", "must be more than 0 seconds")
    if b.accel not in BOOT_ACCELS:
        problems.add(f"{w}.accel", f"{b.accel!r} is not one of {', '.join(BOOT_ACCELS)}")
    return b


def _check_choice(value: str | None, where: str, problems: _Problems) -> None:
    if value is not None and not _NAME_CHOICE.match(value):
        problems.add(where, f"{value!r} is not 'auto', 'none' or a resource name")


def _check_strategy(value: str | None, where: str, problems: _Problems) -> None:
    if value is not None and value not in RUN_STRATEGIES:
        problems.add(where, f"{value!r} is not one of {', '.join(RUN_STRATEGIES)}")


def _defaults(data: dict[str, Any], problems: _Problems) -> Defaults:
    sec = _section(data, "defaults", problems, DEFAULT_KEYS)
    w = "defaults"
    d = Defaults(
        run_strategy=_typed(sec, "runStrategy", str, w, problems, "Halted"),
        preference=_typed(sec, "preference", str, w, problems, "none"),
        instancetype=_typed(sec, "instancetype", str, w, problems, "none"),
        keep_cdroms=_typed(sec, "keepCdroms", bool, w, problems, False),
        timezone=_typed(sec, "timezone", str, w, problems),
    )
    _check_strategy(d.run_strategy, f"{w}.runStrategy", problems)
    _check_choice(d.preference, f"{w}.preference", problems)
    _check_choice(d.instancetype, f"{w}.instancetype", problems)
    return d


def _waves(data: Any, problems: _Problems) -> list[Wave]:
    if data is None:
        problems.add("waves", "missing: a plan needs at least one wave")
        return []
    if not isinstance(data, list):
        problems.add("waves", f"expected a list of waves, got {type(data).__name__}")
        return []
    waves: list[Wave] = []
    for i, raw in enumerate(data):
        number = i + 1
        where = f"waves[{number}]"
        if not isinstance(raw, dict):
            problems.add(where, "expected a mapping with 'name' and 'vms'")
            continue
        problems.unknown_keys(raw, WAVE_KEYS, where)
        name = raw.get("name", f"wave-{number}")
        if not isinstance(name, (str, int)):
            problems.add(f"{where}.name", f"expected a string, got {type(name).__name__}")
            name = f"wave-{number}"
        wave = Wave(number, str(name))
        vms = raw.get("vms")
        if not isinstance(vms, list) or not vms:
            problems.add(f"{where}.vms", "expected a non-empty list of VM names or entries")
            waves.append(wave)
            continue
        for j, item in enumerate(vms):
            entry = _entry(item, f"{where}.vms[{j + 1}]", problems)
            if entry is not None:
                wave.entries.append(entry)
        waves.append(wave)
    return waves


def _entry(item: Any, where: str, problems: _Problems) -> VmEntry | None:
    if isinstance(item, (str, int)) and not isinstance(item, bool):
        return VmEntry(str(item))
    if not isinstance(item, dict):
        problems.add(where, "expected a VM name or a mapping with 'vm'")
        return None
    problems.unknown_keys(item, VM_KEYS, where)
    ref = item.get("vm")
    if ref is None or isinstance(ref, (dict, list, bool)):
        problems.add(where, "missing 'vm': the VM's name or UUID in the inventory")
        return None
    entry = VmEntry(
        ref=str(ref),
        target_name=_typed(item, "targetName", str, where, problems),
        namespace=_typed(item, "namespace", str, where, problems),
        run_strategy=_typed(item, "runStrategy", str, where, problems),
        preference=_typed(item, "preference", str, where, problems),
        instancetype=_typed(item, "instancetype", str, where, problems),
        memory=_quantity(item.get("memory"), f"{where}.memory", problems),
        cpu_model=_typed(item, "cpuModel", str, where, problems),
        disks=_disk_overrides(item.get("disks"), f"{where}.disks", problems),
        nics=_nic_overrides(item.get("nics"), f"{where}.nics", problems),
        labels=_string_map(item.get("labels"), f"{where}.labels", problems, label=True),
        annotations=_string_map(item.get("annotations"), f"{where}.annotations", problems),
        node_selector=_string_map(item.get("nodeSelector"), f"{where}.nodeSelector", problems,
                                  label=True, own=True),
        affinity=_affinity(item.get("affinity"), f"{where}.affinity", problems),
        skip=_typed(item, "skip", bool, where, problems, False),
        note=_typed(item, "note", str, where, problems),
        warm=_typed(item, "warm", bool, where, problems),
    )
    if entry.cpu_model is not None and not _CPU_MODEL.match(entry.cpu_model):
        problems.add(f"{where}.cpuModel", f"{entry.cpu_model!r} is not a CPU model name "
                                          "(e.g. host-passthrough, Skylake-Server)")
    for key, what in (("memory", "memory"), ("cpuModel", "CPU model")):
        if item.get(key) is not None and entry.instancetype not in (None, "none"):
            problems.add(f"{where}.{key}", f"an instancetype sets the {what}: drop one of them")
    if entry.target_name is not None and not is_dns1123_label(entry.target_name):
        problems.add(f"{where}.targetName", f"{entry.target_name!r} is not a DNS-1123 label")
    if entry.namespace is not None and not is_dns1123_label(entry.namespace):
        problems.add(f"{where}.namespace", f"{entry.namespace!r} is not a DNS-1123 label")
    _check_strategy(entry.run_strategy, f"{where}.runStrategy", problems)
    _check_choice(entry.preference, f"{where}.preference", problems)
    _check_choice(entry.instancetype, f"{where}.instancetype", problems)
    return entry


def _quantity(value: Any, where: str, problems: _Problems) -> int | None:
    """A Kubernetes quantity (``4Gi``, ``512Mi``, or bytes) as bytes, more than zero."""
    if value is None:
        return None
    from migrate.clients.cluster import parse_quantity

    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(parse_quantity(value))
    except (ValueError, TypeError):
        problems.add(where, f"{value!r} is not a size (examples: 4Gi, 512Mi)")
        return None
    if number <= 0:
        problems.add(where, f"{value!r} must be more than zero")
        return None
    return number


def _mapping(value: Any, where: str, problems: _Problems) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(where, f"expected a mapping, got {type(value).__name__}")
        return {}
    return value


def _string_map(value: Any, where: str, problems: _Problems, label: bool = False,
                own: bool = False) -> dict[str, str]:
    """Labels, annotations or a nodeSelector: Kubernetes keys, string values (label values
    for labels); keys under vmmove.io/ are vmmove's own (``own``: allowed, for selectors)."""
    out: dict[str, str] = {}
    for key, val in _mapping(value, where, problems).items():
        key = str(key)
        if not is_qualified_name(key):
            problems.add(where, f"{key!r} is not a valid key ([prefix/]name, name at most 63 "
                                "characters)")
            continue
        if not own and key.split("/")[0] == "vmmove.io":
            problems.add(where, f"{key!r}: vmmove.io/ keys are vmmove's own")
            continue
        if not isinstance(val, str) or (label and not is_label_value(val)):
            problems.add(f"{where}.{key}", f"{val!r} is not a valid "
                                           + ("label value (at most 63 characters)" if label
                                              else "string"))
            continue
        out[key] = val
    return out


def _affinity(value: Any, where: str, problems: _Problems) -> dict[str, Any] | None:
    data = _mapping(value, where, problems)
    problems.unknown_keys(data, AFFINITY_KEYS, where)
    for key, part in data.items():
        if not isinstance(part, dict):
            problems.add(f"{where}.{key}", "expected a mapping (Kubernetes affinity)")
    return data or None


def _disk_overrides(value: Any, where: str, problems: _Problems) -> dict[str, dict[str, Any]]:
    """Per disk target (``vda``): ``bus`` (virtio, sata, scsi, usb) and ``size`` (the PVC
    size, a quantity); that the VM has the disk is checked against the inventory."""
    out: dict[str, dict[str, Any]] = {}
    for target, over in _mapping(value, where, problems).items():
        w = f"{where}.{target}"
        over = _mapping(over, w, problems)
        problems.unknown_keys(over, DISK_KEYS, w)
        entry: dict[str, Any] = {}
        bus = over.get("bus")
        if bus is not None:
            if bus not in TARGET_BUSES:
                problems.add(f"{w}.bus", f"{bus!r} is not one of {', '.join(TARGET_BUSES)}")
            else:
                entry["bus"] = bus
        size = _quantity(over.get("size"), f"{w}.size", problems)
        if size is not None:
            entry["size"] = size
        out[str(target)] = entry
    return out


def _nic_overrides(value: Any, where: str, problems: _Problems) -> dict[int, dict[str, str]]:
    """Per NIC (``nic0`` is the VM's first): ``mac`` and ``model`` (KubeVirt's models)."""
    out: dict[int, dict[str, str]] = {}
    for name, over in _mapping(value, where, problems).items():
        w = f"{where}.{name}"
        if not _NIC_NAME.match(str(name)):
            problems.add(w, "NICs are named nic0, nic1, … in the inventory's order")
            continue
        over = _mapping(over, w, problems)
        problems.unknown_keys(over, NIC_KEYS, w)
        entry: dict[str, str] = {}
        mac = over.get("mac")
        if mac is not None:
            norm = str(mac).lower().replace("-", ":")
            if not MAC_RE.match(norm) or norm == "02:00:00:00:00:00":
                problems.add(f"{w}.mac", f"{mac!r} is not a usable MAC (aa:bb:cc:dd:ee:ff)")
            else:
                entry["mac"] = norm
        model = over.get("model")
        if model is not None:
            if model not in INTERFACE_MODELS:
                problems.add(f"{w}.model", f"{model!r} is not one of {', '.join(INTERFACE_MODELS)}")
            else:
                entry["model"] = str(model)
        out[int(str(name)[3:])] = entry
    return out


def _resolve(plan: Plan, problems: _Problems) -> list[PlannedVM]:
    inv = plan.inventory
    default_names = target_names(inv)
    planned: list[PlannedVM] = []
    seen: dict[str, str] = {}
    index: dict[str, list[VM]] = defaultdict(list)  # name and UUID → VMs (one pass, not N²)
    for vm in inv.vms:
        index[vm.name].append(vm)
        if vm.uuid and vm.uuid != vm.name:
            index[vm.uuid].append(vm)
        if vm.key not in (vm.name, vm.uuid):
            index[vm.key].append(vm)
    for wave in plan.waves:
        for entry in wave.entries:
            where = f"waves[{wave.number}] VM {entry.ref!r}"
            matches = index.get(entry.ref, [])
            if not matches:
                problems.add(where, f"not in the inventory {plan.inventory_path.name}")
                continue
            if len({vm.key for vm in matches}) > 1:
                problems.add(where, "more than one VM of the inventory has this name; "
                                    "name it by UUID, or by its key (uuid@source, from "
                                    "`vmmove assess -o json`) when they share the UUID too")
                continue
            vm = matches[0]
            if vm.key in seen:
                problems.add(where, f"already planned in {seen[vm.key]}: a VM moves once")
                continue
            seen[vm.key] = f"waves[{wave.number}]"
            name = entry.target_name or default_names[vm.key]
            planned.append(PlannedVM(vm, entry, wave.number, name,
                                     entry.namespace or plan.namespace))
    return planned


def _check_overrides(p: PlannedVM, problems: _Problems) -> None:
    """The VM's per-disk and per-NIC overrides name disks and NICs it has; a PVC size is
    not smaller than the disk."""
    where = f"VM {p.vm.name}"
    disks = {d.target: d for d in p.vm.disks if d.device in ("disk", "lun")}
    for target, over in p.entry.disks.items():
        disk = disks.get(target)
        if disk is None:
            problems.add(f"{where} disks.{target}", "the VM has no such disk (it has "
                                                    f"{', '.join(disks) or 'none'})")
        elif over.get("size") and disk.virtual_size and over["size"] < disk.virtual_size:
            problems.add(f"{where} disks.{target}.size", f"{over['size']} bytes is smaller "
                                                         f"than the disk ({disk.virtual_size})")
    for idx in p.entry.nics:
        if idx >= len(p.vm.nics):
            problems.add(f"{where} nics.nic{idx}", f"the VM has {len(p.vm.nics)} NIC(s), "
                                                   "nic0 is the first")


def _check_vms(plan: Plan, problems: _Problems) -> None:
    active = [p for p in plan.vms if not p.skip]
    # duplicate target names, per namespace
    by_name: dict[tuple[str, str], list[PlannedVM]] = defaultdict(list)
    for p in active:
        by_name[(p.namespace, p.name)].append(p)
    for (ns, name), group in by_name.items():
        if len(group) > 1:
            who = ", ".join(p.vm.name for p in group)
            problems.add(f"target name {ns}/{name}",
                         f"given to {len(group)} VMs ({who}); set targetName on all but one")
    # networks and MACs
    macs: dict[str, list[str]] = defaultdict(list)
    unmapped: dict[str, list[str]] = defaultdict(list)
    for p in active:
        _check_overrides(p, problems)
        pods = []
        for idx, nic in enumerate(p.vm.nics):
            target = plan.maps.networks.resolve(nic)
            if target is None:
                unmapped[nic.attachment].append(f"{p.vm.name} nic{idx}")
            elif target.kind == POD:
                pods.append(f"nic{idx}")
            mac = p.entry.nics.get(idx, {}).get("mac") or \
                (nic.mac or "").lower().replace("-", ":")
            if mac and MAC_RE.match(mac):
                macs[mac].append(f"{p.vm.name} nic{idx}")
        if len(pods) > 1:
            problems.add(f"VM {p.vm.name}", f"{', '.join(pods)} all map to the pod network "
                                            "(at most one per VM; map the others to multus)")
        if not p.vm.disks or not any(d.device in ("disk", "lun") for d in p.vm.disks):
            problems.add(f"VM {p.vm.name}", "has no disk to migrate; skip it or fix the inventory")
    for attachment, users in sorted(unmapped.items()):
        problems.add("networks", f"{attachment!r} is not mapped (used by {', '.join(users)}): "
                                  f"set \"{attachment}\": pod or multus:NAMESPACE/NAME")
    for mac, users in sorted(macs.items()):
        if len(users) > 1:
            problems.add(f"MAC {mac}", f"used by {' and '.join(users)}: two VMs on one cluster "
                                       "cannot share a MAC (skip one of them)")


# -- generation ------------------------------------------------------------------------------


GROUPINGS = ("host", "size", "list")  # and "label:KEY"


def source_host(vm: VM) -> str:
    """The host a VM runs on, as waves group them: the URI's host, or the descriptor folder."""
    if vm.source.kind == SourceKind.LIBVIRT:
        parts = urllib.parse.urlsplit(vm.source.location)
        if parts.hostname:
            return parts.hostname
        if parts.scheme == "test":  # libvirt's test driver: the node file is the "host"
            return f"test:{Path(parts.path).name or 'default'}"
        return "localhost"
    return str(Path(vm.source.location).parent)


def label_value(vm: VM, key: str) -> str | None:
    """A label waves group on: a metadata key, or the pseudo-labels os, state, source-kind."""
    if key == "os":
        return (vm.guest_os.family if vm.guest_os else None) or None
    if key == "state":
        return vm.power_state.value
    if key == "source-kind":
        return vm.source.kind.value
    return vm.metadata.get(key)


def _wave_name(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:40] or "wave"


def group_vms(inventory: Inventory, by: str, *, explicit: list[list[str]] | None = None,
              max_vms: int | None = None, max_bytes: int | None = None,
              ) -> list[tuple[str, list[VM]]]:
    """VMs in waves: ``host``, ``label:KEY``, ``size`` (smallest first) or ``list``.

    ``max_vms``/``max_bytes`` split big groups (for ``size``: fill each wave up to them).
    """
    vms = list(inventory.vms)
    groups: list[tuple[str, list[VM]]] = []
    if by == "list":
        if not explicit:
            raise UsageError("--by list needs one --wave VM,VM,… per wave")
        seen: set[str] = set()
        for i, names in enumerate(explicit):
            members = []
            for ref in names:
                found = inventory.find_all(ref)
                if len({vm.key for vm in found}) > 1:
                    raise UsageError(f"--wave {','.join(names)}: {len(found)} VMs answer to {ref!r}; "
                                     f"name each by its key: {', '.join(vm.key for vm in found)}")
                vm = found[0] if found else None
                if vm is None:
                    raise UsageError(f"--wave {','.join(names)}: no VM {ref!r} in the inventory")
                if vm.key in seen:
                    raise UsageError(f"--wave: VM {ref!r} is in two waves")
                seen.add(vm.key)
                members.append(vm)
            groups.append((f"wave-{i + 1}", members))
        return groups
    if by == "host":
        keyed: dict[str, list[VM]] = {}
        for vm in vms:
            keyed.setdefault(source_host(vm), []).append(vm)
        for host, members in keyed.items():
            groups += _split(f"host {host}", members, max_vms, max_bytes)
        return groups
    if by.startswith("label:") and by[6:]:
        key = by[6:]
        keyed = {}
        for vm in vms:
            keyed.setdefault(label_value(vm, key) or "", []).append(vm)
        for value in sorted(keyed, key=lambda v: (v == "", v)):
            title = f"{key} {value}" if value else f"no {key}"
            groups += _split(title, keyed[value], max_vms, max_bytes)
        return groups
    if by == "size":
        ordered = sorted(vms, key=lambda vm: (vm.data_bytes(), vm.name))
        if max_vms is None and max_bytes is None:
            max_vms = 10
        return _split("size", ordered, max_vms, max_bytes)
    raise UsageError(f"--by {by!r}: use host, size, list or label:KEY")


def _split(title: str, vms: list[VM], max_vms: int | None,
           max_bytes: int | None) -> list[tuple[str, list[VM]]]:
    chunks: list[list[VM]] = []
    current: list[VM] = []
    size = 0
    for vm in vms:
        data = vm.data_bytes()
        full = (max_vms is not None and len(current) >= max_vms) or (
            max_bytes is not None and current and size + data > max_bytes)
        if full:
            chunks.append(current)
            current, size = [], 0
        current.append(vm)
        size += data
    if current:
        chunks.append(current)
    if len(chunks) == 1:
        return [(title, chunks[0])]
    return [(f"{title} ({i + 1}/{len(chunks)})", c) for i, c in enumerate(chunks)]


def generate_plan(
    inventory: Inventory,
    inventory_path: str | os.PathLike[str],
    plan_path: str | os.PathLike[str],
    *,
    by: str = "host",
    explicit: list[list[str]] | None = None,
    max_vms: int | None = None,
    max_bytes: int | None = None,
    namespace: str = "default",
    networks: dict[str, str] | None = None,
    storage: dict[str, Any] | None = None,
    transfer: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    skip: Callable[[VM], str | None] | None = None,
    workdir: str | None = None,
    stage_running: bool = False,
) -> dict[str, Any]:
    """A plan as plain data, ready for :func:`save_plan`.

    Every network the planned VMs use is listed under ``networks``; those not given a
    target are ``null``, which :func:`load_plan` reports until the operator maps them.
    ``skip(vm)`` returns a reason to plan a VM with ``skip: true`` (e.g. critical concerns).
    ``stage_running`` writes ``convert.forceShare: true``: running VMs are staged while
    they run (read with ``qemu-img -U``), the cutover's full final sync makes them whole.
    """
    plan_dir = Path(plan_path).absolute().parent
    inv_ref = os.path.relpath(Path(inventory_path).absolute(), plan_dir)
    groups = group_vms(inventory, by, explicit=explicit, max_vms=max_vms, max_bytes=max_bytes)
    planned_vms = [vm for _, members in groups for vm in members]
    given = dict(networks or {})
    net_map = NetworkMap({k: parse_network_target(v, f"--network {k}") for k, v in given.items()})
    nets: dict[str, str | None] = {}
    for key, value in given.items():
        nets[key] = value
    for attachment in sorted({nic.attachment for vm in planned_vms for nic in vm.nics
                              if net_map.resolve(nic) is None}):
        nets[attachment] = None
    name_counts = Counter(vm.name for vm in inventory.vms)
    uuid_counts = Counter(vm.uuid for vm in inventory.vms if vm.uuid)
    waves = []
    for title, members in groups:
        entries: list[Any] = []
        for vm in members:
            # the shortest reference that names this VM alone: name, UUID, else its key
            if name_counts[vm.name] == 1:
                ref = vm.name
            elif vm.uuid and uuid_counts[vm.uuid] == 1:
                ref = vm.uuid
            else:
                ref = vm.key
            reason = skip(vm) if skip else None
            entries.append({"vm": ref, "skip": True, "note": reason} if reason else ref)
        waves.append({"name": _wave_name(title), "vms": entries})
    data: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "inventory": inv_ref}
    if workdir:
        data["workdir"] = workdir
    data["namespace"] = namespace
    data["networks"] = nets
    if storage:
        data["storage"] = storage
    if transfer:
        data["transfer"] = transfer
    data["convert"] = {"format": "qcow2", "forceShare": bool(stage_running)}
    data["defaults"] = {"runStrategy": "Halted", "preference": "none", **(defaults or {})}
    data["waves"] = waves
    return data


PLAN_HEADER = """\
# vmmove migration plan: edit, then run wave by wave.
#   vmmove plan --check {name}                   check it (every problem is listed)
#   vmmove migrate {name} --wave 1 --stage       convert, upload, manifests, apply
#   vmmove status {name}                         where each VM stands
# networks: map every source network to "pod" or "multus:NAMESPACE/NAME" (null = unmapped).
# A VM entry is a name, or {{vm: NAME, targetName, namespace, runStrategy, preference,
# instancetype, memory, cpuModel, disks: {{vda: {{bus, size}}}}, nics: {{nic0: {{mac, model}}}},
# labels, annotations, nodeSelector, affinity, skip, note}}. See docs/plan.md.
"""


def save_plan(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a plan (atomically) with a short how-to header."""
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False,
                          width=100)
    atomic_write(path, PLAN_HEADER.format(name=Path(path).name) + text)


def critical_problems(plan: Plan) -> list[str]:
    """The assessment's critical concerns of the plan's VMs that are not skipped, one
    problem each (``waves[N] VM 'x': critical ID (subject): message — remediation``):
    the cutover preflight refuses them, so ``plan --check`` reports them first.  A VM
    planned ``skip: true`` (``vmmove plan --skip-blocked`` writes that, the concern ids
    as its note) is not reported."""
    from migrate.assessment import Severity, assess

    active = [p for p in plan.vms if not p.skip]
    if not active:
        return []
    found = assess(plan.inventory, [p.vm for p in active])
    problems = []
    for p in active:
        for c in found.get(p.key, []):
            if c.severity == Severity.CRITICAL:
                subject = f" ({c.subject})" if c.subject else ""
                problems.append(f"waves[{p.wave}] VM {p.vm.name!r}: critical {c.id}{subject}: "
                                f"{c.message} — {c.remediation} Or plan it skip: true with a "
                                "note (vmmove plan --skip-blocked does).")
    return problems


def transfer_warnings(plan: Plan) -> list[str]:
    """One warning when VMs are to be migrated and the plan names no transfer target:
    ``migrate --stage`` (every VM, cold or warm) would refuse it
    (:func:`migrate.pipeline.stages.wave_to_stage`), so ``plan --check`` says so first.  A
    warning, not a problem: ``vmmove manifests --http-base URL`` or ``--blank`` use a plan
    without one (the demo without S3 does)."""
    if plan.transfer.backend is None and any(not p.skip for p in plan.vms):
        return ["transfer: no transfer target: set transfer.s3, transfer.uploadProxy or "
                "transfer.mode: direct (vmmove migrate --stage needs one; vmmove manifests "
                "--http-base/--blank does not)"]
    return []


def check_plan(path: str | os.PathLike[str]) -> Plan:
    """:func:`load_plan`, then the assessment's criticals of its VMs (``plan --check``):
    raise :class:`PlanError` listing every problem.  (The CLI adds
    :func:`transfer_warnings`.)"""
    plan = load_plan(path)
    problems = critical_problems(plan)
    if problems:
        raise PlanError(plan.path, problems)
    return plan


def check_plan_file(path: str | os.PathLike[str]) -> list[str]:
    """Every problem of a plan file (empty when it can run), criticals included."""
    try:
        check_plan(path)
    except PlanError as exc:
        return exc.problems
    return []
