"""Instancetypes and preferences: the guest OS → preference rule and the cluster catalogs.

KubeVirt clusters ship the *common-instancetypes* bundle: cluster preferences named after
guest operating systems (``rhel.9``, ``ubuntu``, ``windows.2k22``…) and cluster
instancetypes (``u1.medium``…).  vmmove embeds only the rule that names a preference from
the guest OS a scan found; the specs themselves are read from a bundle file the operator
exports from the target cluster (``kubectl get virtualmachineclusterpreferences -o yaml``),
so that what vmmove checks is what the cluster will enforce.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from migrate.core.errors import UsageError
from migrate.core.model import GuestOS

PREFERENCE_KIND = "VirtualMachineClusterPreference"
INSTANCETYPE_KIND = "VirtualMachineClusterInstancetype"

# (pattern over the lowercased "id name distro version" text, preference); first match wins.
# Windows servers before desktops: VMware calls Server 2008 R2 "windows7srv" and Server 2016
# "windows9srv"; "windows9" alone is Windows 10, "windows2019srvNext" is Server 2022 and
# "windows2022srvNext" Server 2025.
_WINDOWS_RULES: list[tuple[str, str]] = [
    (r"2k25|2025|windows2022srvnext", "windows.2k25"),
    (r"2k22|2022|windows2019srvnext", "windows.2k22"),
    (r"2k19|2019", "windows.2k19"),
    (r"2k16|2016|windows9srv|windows9server", "windows.2k16"),
    (r"2k12|2012|windows8srv|windows8server", "windows.2k12"),
    (r"2k8|2008|windows7srv|windows7server|longhorn", "windows.2k8"),
    (r"2k3|2003|winnet", "windows.2k3"),
    (r"win/11|windows ?11|windows11|win11", "windows.11"),
    (r"win/10|windows ?10|windows9(?!srv|server)|win10", "windows.10"),
    (r"win/7|windows ?7|windows7|win7", "windows.7"),
    (r"win/xp|windows ?xp|winxp", "windows.xp"),
]
_LINUX_RULES: list[tuple[str, str]] = [
    (r"centos[- ]?stream[- /]?10|centos-stream10", "centos.stream10"),
    (r"centos[- ]?stream[- /]?9|centos-stream9", "centos.stream9"),
    (r"(rhel|red ?hat|centos|almalinux|rocky)[^0-9]{0,20}10(?![0-9])", "rhel.10"),
    (r"(rhel|red ?hat|centos|almalinux|rocky)[^0-9]{0,20}9(?![0-9])", "rhel.9"),
    (r"(rhel|red ?hat|centos|almalinux|rocky)[^0-9]{0,20}8(?![0-9])", "rhel.8"),
    (r"(rhel|red ?hat|centos)[^0-9]{0,20}7(?![0-9])", "rhel.7"),
    (r"oracle|oraclelinux", "oraclelinux"),
    (r"fedora", "fedora"),
    (r"ubuntu", "ubuntu"),
    (r"debian", "debian"),
    (r"opensuse[- ]?tumbleweed", "opensuse.tumbleweed"),
    (r"opensuse", "opensuse.leap"),
    (r"sles|suse", "sles"),
    (r"alpine", "alpine"),
    (r"cirros", "cirros"),
]
_COMPILED = [(re.compile(p), n) for p, n in _WINDOWS_RULES + _LINUX_RULES]
_LINUX_HINT = re.compile(r"linux|rhel|centos|ubuntu|debian|fedora|suse|sles|alpine|cirros|oracle")

PREFERENCE_NAMES: frozenset[str] = frozenset(n for _, n in _WINDOWS_RULES + _LINUX_RULES) | {"linux"}


def is_windows(guest: GuestOS | None) -> bool:
    if guest is None:
        return False
    if guest.family:
        return guest.family.lower() == "windows"
    text = " ".join(filter(None, (guest.id, guest.name, guest.distro))).lower()
    return "win" in text and "darwin" not in text


def auto_preference(guest: GuestOS | None) -> str | None:
    """The common-instancetypes preference for a guest OS, or None when it is unknown."""
    if guest is None:
        return None
    text = " ".join(filter(None, (guest.id, guest.name, guest.distro, guest.version))).lower()
    windows = is_windows(guest)
    family = (guest.family or "").lower()
    rules = _COMPILED[: len(_WINDOWS_RULES)] if windows else _COMPILED[len(_WINDOWS_RULES) :]
    for pattern, name in rules:
        if pattern.search(text):
            return name
    if not windows and (family == "linux" or _LINUX_HINT.search(text)):
        return "linux"
    return None


# -- catalogs -------------------------------------------------------------------------------


class CatalogError(UsageError):
    """A bundle file that cannot be used."""


def _documents(path: Path, kind: str) -> list[dict[str, Any]]:
    try:
        docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader))
    except OSError as exc:
        raise CatalogError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError:
        raise CatalogError(f"{path}: not valid YAML") from None
    items: list[dict[str, Any]] = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "List" or doc.get("kind", "").endswith("List"):
            items += [d for d in doc.get("items") or [] if isinstance(d, dict)]
        else:
            items.append(doc)
    found = [d for d in items if d.get("kind") == kind]
    if not found:
        raise CatalogError(f"{path}: no {kind} objects (expected the output of kubectl get … -o yaml)")
    return found


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes quantity (``1.5Gi``, ``512Mi``, ``2``) as a number."""
    from migrate.clients.cluster import parse_quantity as parse  # heavy import, only here

    return Decimal(parse(value))


@dataclass
class Catalog:
    """Cluster preferences and instancetypes by name (either may be empty)."""

    preferences: dict[str, dict[str, Any]] = field(default_factory=dict)
    instancetypes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, preferences: str | Path | None = None, instancetypes: str | Path | None = None) -> Catalog:
        cat = cls()
        if preferences:
            cat.preferences = {
                d["metadata"]["name"]: d.get("spec") or {} for d in _documents(Path(preferences), PREFERENCE_KIND)
            }
        if instancetypes:
            cat.instancetypes = {
                d["metadata"]["name"]: d.get("spec") or {}
                for d in _documents(Path(instancetypes), INSTANCETYPE_KIND)
            }
        return cat

    def exact_instancetypes(self, vcpus: int, memory: int) -> list[str]:
        """Instancetypes whose guest CPU count and guest memory equal the VM's exactly."""
        return sorted(
            name
            for name, spec in self.instancetypes.items()
            if int((spec.get("cpu") or {}).get("guest", -1)) == vcpus
            and parse_quantity((spec.get("memory") or {}).get("guest", "-1")) == memory
        )

    def plain_instancetypes(self, names: list[str]) -> list[str]:
        """Those of ``names`` that change nothing but size: no dedicated CPUs, hugepages,
        NUMA, realtime, overcommit or devices (what ``--instancetype auto`` may pick)."""
        special_cpu = {"dedicatedCPUPlacement", "isolateEmulatorThread", "numa", "realtime", "model"}
        out = []
        for name in names:
            spec = self.instancetypes[name]
            cpu, mem = spec.get("cpu") or {}, spec.get("memory") or {}
            if special_cpu & set(cpu) or set(mem) - {"guest"}:
                continue
            if set(spec) - {"cpu", "memory", "annotations", "ioThreadsPolicy"}:
                continue
            out.append(name)
        return out


def topology_dimension(preference: dict[str, Any]) -> str:
    """Which CPU dimension KubeVirt compares with a preference's CPU requirement."""
    topo = ((preference.get("cpu") or {}).get("preferredCPUTopology") or "sockets").lower()
    return {"prefersockets": "sockets", "prefercores": "cores", "preferthreads": "threads",
            "preferspread": "spread", "preferany": "any"}.get(topo, topo)


def requirement_errors(
    preference: dict[str, Any],
    cpu: dict[str, Any] | None,
    memory_guest: Any,
    architecture: str | None,
    instancetype: dict[str, Any] | None = None,
) -> list[str]:
    """What KubeVirt's preference requirement check would refuse (pkg/instancetype/…/requirements)."""
    req = preference.get("requirements") or {}
    errors: list[str] = []
    need_cpu = (req.get("cpu") or {}).get("guest")
    if need_cpu is not None:
        if instancetype is not None:
            have = int((instancetype.get("cpu") or {}).get("guest", 0))
            dim = "instancetype vCPUs"
        else:
            cpu = cpu or {}
            sockets, cores, threads = (int(cpu.get(k, 1)) for k in ("sockets", "cores", "threads"))
            dim = topology_dimension(preference)
            have = {"sockets": sockets, "cores": cores, "threads": threads}.get(
                dim, sockets * cores * threads
            )
        if have < int(need_cpu):
            errors.append(f"preference requires {need_cpu} vCPU as {dim}, the VM has {have}")
    need_mem = (req.get("memory") or {}).get("guest")
    if need_mem is not None:
        have_mem = memory_guest
        if have_mem is None and instancetype is not None:
            have_mem = (instancetype.get("memory") or {}).get("guest")
        if have_mem is None or parse_quantity(have_mem) < parse_quantity(need_mem):
            errors.append(f"preference requires {need_mem} of memory, the VM has {have_mem}")
    need_arch = req.get("architecture")
    if need_arch is not None and need_arch != architecture:
        errors.append(f"preference requires architecture {need_arch}, the VM has {architecture}")
    return errors
