"""A guest's own network configuration, parsed from the files that hold it.

Each parser takes a file's text and its guest path and returns
:class:`~migrate.core.model.GuestNetwork` records (one per interface or connection).  Formats,
with the documents their keys come from:

* Debian ``/etc/network/interfaces`` (+ ``interfaces.d/*``): interfaces(5) — ``iface NAME
  inet static|dhcp|manual``, ``address`` (CIDR or with ``netmask``), ``gateway``,
  ``dns-nameservers`` (resolvconf), ``hwaddress``;
* RHEL-family ``/etc/sysconfig/network-scripts/ifcfg-*``: nm-settings-ifcfg-rh(5) —
  ``DEVICE``, ``BOOTPROTO``, ``IPADDR[n]``, ``PREFIX[n]``/``NETMASK[n]``, ``GATEWAY``,
  ``DNS1..``, ``HWADDR``;
* NetworkManager keyfiles ``*.nmconnection``: nm-settings-keyfile(5) — ``[connection]
  interface-name``, ``[ipv4] method``, ``address1=10.1.2.3/24,10.1.2.1``, ``gateway``,
  ``dns``, ``[ethernet] mac-address``;
* netplan ``/etc/netplan/*.yaml``: ``network.ethernets.NAME.{dhcp4,addresses,gateway4,
  routes[to=default],nameservers.addresses,match.macaddress}``;
* systemd-networkd ``*.network``: systemd.network(5) — ``[Match] Name/MACAddress``,
  ``[Network] DHCP, Address, Gateway, DNS``, ``[Address] Address``.

Only IPv4 matters for the decisions vmmove makes (a pod network assigns addresses; a
static address on a Multus bridge is kept by pinning the name to the MAC); IPv6 addresses
are recorded as found.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from typing import Any

import yaml

from migrate.core.model import GuestNetwork

#: glob -> parser name, in the order they are read
SOURCES = [
    ("/etc/network/interfaces", "interfaces"),
    ("/etc/network/interfaces.d/*", "interfaces"),
    ("/etc/sysconfig/network-scripts/ifcfg-*", "ifcfg"),
    ("/etc/NetworkManager/system-connections/*", "keyfile"),
    ("/etc/netplan/*.yaml", "netplan"),
    ("/etc/systemd/network/*.network", "networkd"),
]


def _cidr(address: str, mask: str | None = None) -> str:
    """``10.1.2.3/24`` from an address with a prefix, a netmask, or neither (as given)."""
    try:
        if mask and "/" not in address:
            return str(ipaddress.ip_interface(f"{address}/{mask}"))
        return str(ipaddress.ip_interface(address))
    except ValueError:
        return address


def parse(kind: str, text: str, path: str) -> list[GuestNetwork]:
    """Dispatch to the parser named by :data:`SOURCES`."""
    return {"interfaces": parse_interfaces, "ifcfg": parse_ifcfg, "keyfile": parse_keyfile,
            "netplan": parse_netplan, "networkd": parse_networkd}[kind](text, path)


def parse_interfaces(text: str, path: str) -> list[GuestNetwork]:
    out: list[GuestNetwork] = []
    current: GuestNetwork | None = None
    mask: str | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] == "iface" and len(words) >= 4:
            if current is not None:
                current.addresses = [_cidr(a, mask) for a in current.addresses]
            if words[1] == "lo" or words[3] == "loopback":
                current = None
                continue
            method = words[3] if words[3] in ("static", "dhcp", "manual") else "unknown"
            current = GuestNetwork(words[1], method, source=path)
            mask = None
            out.append(current)
        elif words[0] in ("auto", "allow-hotplug", "mapping", "source", "source-directory"):
            continue
        elif current is not None and len(words) >= 2:
            key, values = words[0], words[1:]
            if key == "address":
                current.addresses.append(values[0])
            elif key == "netmask":
                mask = values[0]
            elif key == "gateway":
                current.gateway = values[0]
            elif key == "dns-nameservers":
                current.dns += values
            elif key == "hwaddress":
                current.mac = values[-1].lower()
    if current is not None:
        current.addresses = [_cidr(a, mask) for a in current.addresses]
    return out


def _shell_vars(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        match = re.match(r"\s*([A-Za-z0-9_]+)=(.*)$", raw)
        if match:
            values[match.group(1)] = match.group(2).strip().strip("'\"")
    return values


def parse_ifcfg(text: str, path: str) -> list[GuestNetwork]:
    v = _shell_vars(text)
    name = v.get("DEVICE") or v.get("NAME") or path.rsplit("ifcfg-", 1)[-1]
    if name == "lo":
        return []
    proto = v.get("BOOTPROTO", "none").lower()
    method = "dhcp" if proto in ("dhcp", "bootp") else "static" if proto in ("none", "static") \
        else "unknown"
    net = GuestNetwork(name, method, source=path, gateway=v.get("GATEWAY"),
                       mac=(v.get("HWADDR") or "").lower() or None)
    for suffix in ["", *map(str, range(10))]:
        address = v.get(f"IPADDR{suffix}")
        if address:
            mask = v.get(f"PREFIX{suffix}") or v.get(f"NETMASK{suffix}")
            net.addresses.append(_cidr(address, mask))
    if method == "static" and not net.addresses:
        net.method = "manual"
    net.dns = [v[k] for k in sorted(v) if re.fullmatch(r"DNS\d+", k)]
    return [net]


def _ini(text: str) -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None, strict=False)
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read_string(text)
    return ini


def parse_keyfile(text: str, path: str) -> list[GuestNetwork]:
    try:
        ini = _ini(text)
    except configparser.Error:
        return []
    conn = dict(ini["connection"]) if ini.has_section("connection") else {}
    if conn.get("type") not in (None, "ethernet", "802-3-ethernet"):
        return []
    ipv4 = dict(ini["ipv4"]) if ini.has_section("ipv4") else {}
    method = {"auto": "dhcp", "manual": "static", "disabled": "manual"}.get(
        ipv4.get("method", "auto"), "unknown")
    name = conn.get("interface-name") or conn.get("id") or path.rsplit("/", 1)[-1]
    mac = (dict(ini["ethernet"]).get("mac-address") if ini.has_section("ethernet") else None)
    net = GuestNetwork(name, method, source=path, mac=mac.lower() if mac else None)
    for key in sorted(k for k in ipv4 if re.fullmatch(r"address(es)?\d*", k)):
        for item in ipv4[key].split(";"):
            parts = [p.strip() for p in item.split(",") if p.strip()]
            if parts:
                net.addresses.append(_cidr(parts[0]))
                if len(parts) > 1 and not net.gateway:
                    net.gateway = parts[1]
    net.gateway = ipv4.get("gateway") or net.gateway
    net.dns = [d for d in ipv4.get("dns", "").split(";") if d]
    return [net]


def parse_netplan(text: str, path: str) -> list[GuestNetwork]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return []
    ethernets = ((data.get("network") or {}).get("ethernets") or {}) \
        if isinstance(data, dict) else {}
    out: list[GuestNetwork] = []
    for name, conf in ethernets.items():
        conf = conf if isinstance(conf, dict) else {}
        dhcp = conf.get("dhcp4") in (True, "true", "yes")
        addresses = [_cidr(str(a)) for a in conf.get("addresses") or []]
        method = "dhcp" if dhcp else "static" if addresses else "manual"
        gateway = conf.get("gateway4")
        for route in conf.get("routes") or []:
            if isinstance(route, dict) and route.get("to") in ("default", "0.0.0.0/0"):
                gateway = gateway or route.get("via")
        match: dict[str, Any] = conf.get("match") or {}
        ns: dict[str, Any] = conf.get("nameservers") or {}
        out.append(GuestNetwork(
            str(conf.get("set-name") or name), method, addresses,
            str(gateway) if gateway else None, [str(d) for d in ns.get("addresses") or []],
            str(match["macaddress"]).lower() if match.get("macaddress") else None, path))
    return out


def parse_networkd(text: str, path: str) -> list[GuestNetwork]:
    net = GuestNetwork(path.rsplit("/", 1)[-1].removesuffix(".network"), "manual",
                       source=path)
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = (p.strip() for p in line.partition("="))
        if section == "Match" and key == "Name":
            net.interface = value.split()[0]
        elif section == "Match" and key == "MACAddress":
            net.mac = value.split()[0].lower()
        elif section == "Network" and key == "DHCP" and value in ("yes", "ipv4", "true"):
            net.method = "dhcp"
        elif key == "Address" and section in ("Network", "Address"):
            net.addresses.append(_cidr(value))
        elif section == "Network" and key == "Gateway":
            net.gateway = value
        elif section == "Network" and key == "DNS":
            net.dns += value.split()
    if net.method != "dhcp" and net.addresses:
        net.method = "static"
    return [net]


def static_addresses(networks: list[GuestNetwork]) -> list[GuestNetwork]:
    """The interfaces configured with a static address."""
    return [n for n in networks if n.method == "static" and n.addresses]
