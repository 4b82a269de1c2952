"""Windows facts from registry hives, read with ``hivexregedit --export`` (hivex).

:func:`read_hive` exports a hive file to regedit text and parses it into ``{key path:
{value name: value}}`` (REG_SZ/EXPAND_SZ as ``str``, MULTI_SZ as ``list[str]``, DWORD as
``int``, anything else as ``bytes``).  :func:`apply_hives` fills an
:class:`~migrate.core.model.Inspection` from the SYSTEM (and SOFTWARE) hive:

* the current control set (``Select\\Current``, Microsoft "CurrentControlSet" docs);
* drivers: ``Services\\viostor``, ``Services\\vioscsi``, ``Services\\netkvm`` present (the
  virtio-win drivers install these services; ``storahci`` is Windows' own AHCI driver);
* agents and foreign tools by service name (``QEMU-GA``, ``cloudbase-init``; ``VMTools``,
  ``vm3dservice``, ``vmicheartbeat``, ``xenvbd``/``XenSvc``, ``VBoxService``);
* network: ``Services\\Tcpip\\Parameters`` (``Hostname``) and each
  ``Tcpip\\Parameters\\Interfaces\\{GUID}`` (``EnableDHCP``, ``IPAddress``,
  ``SubnetMask``, ``DefaultGateway``, ``NameServer``), Microsoft's TCP/IP registry
  documentation;
* product name: SOFTWARE ``Microsoft\\Windows NT\\CurrentVersion\\ProductName``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from migrate.guest.fish import GuestfsError, require
from migrate.guest.netconf import _cidr
from migrate.core.model import GuestNetwork, Inspection

DRIVERS = ("viostor", "vioscsi", "netkvm", "storahci")
AGENTS = {"qemu-ga": "qemu-guest-agent", "cloudbase-init": "cloudbase-init"}
FOREIGN = {"vmtools": "vmware-tools", "vm3dservice": "vmware-tools",
           "vmicheartbeat": "hyperv-integration", "vmickvpexchange": "hyperv-integration",
           "xenvbd": "xen-tools", "xensvc": "xen-tools", "vboxservice": "virtualbox-additions"}

_KEY = re.compile(r"^\[(.*)\]$")
_VALUE = re.compile(r'^"((?:[^"\\]|\\.)*)"=(.*)$|^@=(.*)$')

Hive = dict[str, dict[str, Any]]


def read_hive(path: Path) -> Hive:
    """Every key of a hive file with its values; key paths start at the hive root (``\\``
    separated, no leading prefix)."""
    exe = require("hivexregedit", "libwin-hivex-perl")
    proc = subprocess.run([exe, "--export", "--prefix", "HIVE", str(path), "\\"],
                          capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise GuestfsError(f"{path}: hivexregedit cannot read the hive: "
                           f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    return parse_reg(proc.stdout.decode("utf-8", errors="replace"))


def parse_reg(text: str) -> Hive:
    keys: Hive = {}
    current: dict[str, Any] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\") and not _KEY.match(line):
            pending = line[:-1]
            continue
        pending = ""
        match = _KEY.match(line)
        if match:
            path = match.group(1).removeprefix("HIVE").strip("\\")
            current = keys.setdefault(path, {})
            continue
        value = _VALUE.match(line)
        if value and current is not None:
            name = value.group(1) if value.group(3) is None else ""
            data = value.group(2) if value.group(3) is None else value.group(3)
            current[(name or "").replace('\\"', '"').replace("\\\\", "\\")] = _value(data)
    return keys


def _value(data: str) -> Any:
    if data.startswith('"'):
        return data[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if data.startswith("dword:"):
        return int(data[6:], 16)
    kind = re.match(r"hex(?:\(([0-9a-f]+)\))?:(.*)$", data)
    if not kind:
        return data
    raw = bytes(int(b, 16) for b in kind.group(2).split(",") if b)
    code = int(kind.group(1) or "3", 16)
    if code in (1, 2):
        return raw.decode("utf-16-le", errors="replace").rstrip("\0")
    if code == 7:
        return [s for s in raw.decode("utf-16-le", errors="replace").split("\0") if s]
    if code == 4 and len(raw) == 4:
        return int.from_bytes(raw, "little")
    return raw


def _list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [v for v in value if v]
    if isinstance(value, str):
        return [v for v in re.split(r"[ ,]", value) if v]
    return []


def control_set(system: Hive) -> str:
    current = system.get("Select", {}).get("Current", 1)
    return f"ControlSet{int(current):03d}"


def apply_hives(result: Inspection, system_hive: Path, software_hive: Path | None) -> None:
    """Fill ``result`` from the hive files (see the module docstring)."""
    apply_facts(result, read_hive(system_hive),
                read_hive(software_hive) if software_hive else None)


def apply_facts(result: Inspection, system: Hive, software: Hive | None) -> None:
    services_key = f"{control_set(system)}\\Services"
    services = {k[len(services_key) + 1:].split("\\", 1)[0].lower()
                for k in system if k.lower().startswith(services_key.lower() + "\\")}
    for driver in DRIVERS:
        result.drivers[driver] = driver in services
    result.agents = sorted({name for svc, name in AGENTS.items() if svc in services})
    result.foreign_tools = sorted({name for svc, name in FOREIGN.items() if svc in services})
    params = system.get(f"{services_key}\\Tcpip\\Parameters", {})
    result.hostname = params.get("Hostname") or params.get("NV Hostname") or result.hostname
    prefix = f"{services_key}\\Tcpip\\Parameters\\Interfaces\\"
    result.network = []
    for key in sorted(k for k in system if k.startswith(prefix) and "\\" not in k[len(prefix):]):
        values = system[key]
        addresses = [a for a in _list(values.get("IPAddress")) if a != "0.0.0.0"]
        masks = _list(values.get("SubnetMask"))
        if values.get("EnableDHCP") == 1:
            method = "dhcp"
        elif addresses:
            method = "static"
        else:
            continue  # an unconfigured adapter
        gateway = next(iter(_list(values.get("DefaultGateway"))), None)
        result.network.append(GuestNetwork(
            key[len(prefix):], method,
            [_cidr(a, masks[i] if i < len(masks) else None) for i, a in enumerate(addresses)],
            gateway, _list(values.get("NameServer")), source=f"HKLM\\SYSTEM\\{key}"))
    if software:
        cv = software.get("Microsoft\\Windows NT\\CurrentVersion", {})
        result.product_name = cv.get("ProductName") or result.product_name
