"""Guest conversion with virt-v2v, on a copy of the staged image — never on the source.

:func:`needs_conversion` says, from an :class:`~migrate.core.model.Inspection` and the buses the
manifests give the disks, whether the guest must be converted (``convert.guest: auto``):
a Linux guest whose initramfs lacks the driver of its boot disk's bus, or a Windows guest
without ``viostor``/``vioscsi`` for a virtio/scsi disk.

:func:`convert_guest` copies the staged image to ``<stem>-guest.<fmt>.part`` (a reflink
where the file system can), runs ``virt-v2v-in-place -i disk -if FMT`` on the copy (it
installs virtio drivers — Windows ones from ``VIRTIO_WIN``, the ``--virtio-win`` ISO —
rebuilds the Linux initramfs with the virtio modules, remaps fstab/boot entries and removes
foreign tools), then, when static addresses are to be kept, pins each statically configured
interface name to its MAC (a udev rule written with ``virt-customize``, the way Forklift's
first-boot scripts do for Linux; ``--mac MAC:ip:…`` for Windows), and renames the copy into
place.  Its checksum is recorded so that upload sends (and verifies) this file.  virt-v2v's
full output is kept in ``<stem>-guest.log``; ``changes`` lists its summary lines.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate.core import digest
from migrate.core.errors import VmmoveError
from migrate.guest.fish import libguestfs_env, require
from migrate.core.model import VM, GuestNetwork, Inspection

CONVERTED, SKIPPED, FAILED = "converted", "skipped", "failed"
TIMEOUT = 3600.0
#: KubeVirt bus -> the Linux driver the guest needs for it (docs/guest-readiness.md)
LINUX_BUS_DRIVER = {"virtio": "virtio_blk", "scsi": "virtio_scsi", "sata": "ahci"}
WINDOWS_BUS_DRIVER = {"virtio": "viostor", "scsi": "vioscsi", "sata": "storahci"}
_SUMMARY = re.compile(r"^(?:\[\s*[\d.]+\]\s*)?(Converting .*|Setting up .*|"
                      r"virt-v2v(?:-in-place)?: (?:warning|This guest).*)$")


class GuestConvertError(VmmoveError):
    """virt-v2v failed or is missing; the message names the VM and the log."""


@dataclass
class GuestConversion:
    """One guest conversion, as journalled (kind ``guest``)."""

    status: str  # converted | skipped | failed
    reason: str
    output: str | None = None  # the converted image
    source: str | None = None  # the staged image it was made from (left as it was)
    source_checksum: str | None = None  # that image's checksum (a restaged disk: redo)
    format: str | None = None
    checksum: str | None = None
    seconds: float = 0.0
    changes: list[str] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)  # "eth0=52:54:00:…"
    log: str | None = None

    def to_data(self) -> dict[str, Any]:
        return dict(self.__dict__)


def driver_for_bus(inspection: Inspection, bus: str) -> str | None:
    table = WINDOWS_BUS_DRIVER if inspection.os_type == "windows" else LINUX_BUS_DRIVER
    return table.get(bus)


def needs_conversion(inspection: Inspection | None, boot_bus: str,
                     mode: str = "auto") -> tuple[bool, str]:
    """(convert?, why) for a guest whose boot disk gets ``boot_bus``."""
    if mode == "never":
        return False, "convert.guest is never"
    if mode == "always":
        return True, "convert.guest is always"
    if inspection is None or inspection.os_type is None:
        return False, "not inspected: nothing says the guest needs converting"
    driver = driver_for_bus(inspection, boot_bus)
    if driver is None:
        return False, f"no driver rule for bus {boot_bus}"
    present = inspection.has_driver(driver)
    if present is False:
        return True, f"the guest lacks {driver}, which its {boot_bus} boot disk needs"
    if present is None:
        return False, f"{driver} unknown (inspection: {inspection.error or 'not read'})"
    return False, f"the guest has {driver} for its {boot_bus} boot disk"


def pin_rules(vm: VM, networks: list[GuestNetwork]) -> list[tuple[str, str]]:
    """(interface, MAC) pairs to pin: each statically configured interface, with the MAC
    its configuration names, else — one static interface, one NIC — the VM's only MAC."""
    static = [n for n in networks if n.method == "static" and n.addresses]
    macs = [n.mac.lower() for n in vm.nics if n.mac]
    pairs: list[tuple[str, str]] = []
    for net in static:
        if net.mac:
            pairs.append((net.interface, net.mac))
        elif len(static) == 1 and len(macs) == 1:
            pairs.append((net.interface, macs[0]))
    return pairs


def _windows_mac_args(vm: VM, networks: list[GuestNetwork]) -> list[str]:
    args: list[str] = []
    macs = [n.mac.lower() for n in vm.nics if n.mac]
    static = [n for n in networks if n.method == "static" and n.addresses]
    if len(static) == 1 and len(macs) == 1:
        iface = ipaddress.ip_interface(static[0].addresses[0])
        fields = [str(iface.ip), static[0].gateway or "", str(iface.network.prefixlen),
                  *static[0].dns]
        args += ["--mac", f"{macs[0]}:ip:{','.join(fields)}"]
    return args


def convert_guest(vm: VM, staged: Path, fmt: str, inspection: Inspection | None, *,
                  virtio_win: str | None = None, preserve_static_ips: bool = False,
                  reason: str = "") -> GuestConversion:
    """Convert a copy of ``staged`` (see the module docstring); :class:`GuestConvertError`
    when virt-v2v is missing or fails (the copy is removed, the staged image untouched)."""
    exe = require("virt-v2v-in-place", "virt-v2v")
    stem = staged.name.rsplit(".", 1)[0]
    dest = staged.with_name(f"{stem}-guest.{fmt}")
    part = dest.with_name(dest.name + ".part")
    log = staged.with_name(f"{stem}-guest.log")
    env = libguestfs_env()
    if virtio_win:
        env["VIRTIO_WIN"] = virtio_win
    started = time.monotonic()
    networks = inspection.network if inspection else []
    windows = inspection is not None and inspection.os_type == "windows"
    args = [exe, "-i", "disk", "-if", fmt]
    if preserve_static_ips and windows:
        args += _windows_mac_args(vm, networks)
    try:
        subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(staged), str(part)],
                       check=True, capture_output=True)
        with open(log, "w") as out:
            proc = subprocess.run([*args, str(part)], stdout=out, stderr=subprocess.STDOUT,
                                  env=env, timeout=TIMEOUT)
        text = log.read_text(errors="replace")
        if proc.returncode != 0:
            last = [line for line in text.splitlines() if line.strip()][-1:] or ["failed"]
            raise GuestConvertError(f"{vm.name}: virt-v2v-in-place failed: {last[0].strip()} "
                                    f"(log: {log})")
        pinned: list[str] = []
        if preserve_static_ips and not windows:
            pairs = pin_rules(vm, networks)
            if pairs:
                _pin(part, fmt, pairs, env, vm)
                pinned = [f"{name}={mac}" for name, mac in pairs]
        checksum = digest.file_checksum(part)
        os.replace(part, dest)
    except subprocess.CalledProcessError as exc:
        part.unlink(missing_ok=True)
        raise GuestConvertError(f"{vm.name}: cannot copy {staged}: "
                                f"{exc.stderr.decode(errors='replace').strip()}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    changes = [m.group(1).strip() for m in map(_SUMMARY.match, text.splitlines()) if m]
    return GuestConversion(CONVERTED, reason, str(dest), str(staged), None, fmt, checksum,
                           round(time.monotonic() - started, 2), changes, pinned, str(log))


def _pin(image: Path, fmt: str, pairs: list[tuple[str, str]], env: dict[str, str],
         vm: VM) -> None:
    exe = require("virt-customize", "libguestfs-tools")
    rules = "".join(f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{mac}", '
                    f'NAME="{name}"\\n' for name, mac in pairs)
    proc = subprocess.run([exe, "-q", "--format", fmt, "-a", str(image), "--write",
                           f"/etc/udev/rules.d/70-vmmove-net.rules:{rules}"],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise GuestConvertError(f"{vm.name}: cannot pin interface names to MACs: "
                                f"{proc.stderr.strip()[-300:]}")


def available() -> str | None:
    """None when virt-v2v-in-place is installed, else what to install."""
    return None if shutil.which("virt-v2v-in-place") else \
        "virt-v2v-in-place (apt-get install virt-v2v)"
