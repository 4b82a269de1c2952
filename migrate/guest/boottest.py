"""The boot test: start the staged image the way KubeVirt would, on a throwaway overlay.

Its libvirt side is :mod:`migrate.clients.boottest` (the one that talks to libvirt).
:func:`boot_test`

1. puts a qcow2 overlay over each staged image (:func:`converters.qemuimg.create_overlay`)
   in a folder of its own, so nothing the guest writes reaches the staged copy (and the
   source is never opened at all);
2. starts a *transient* libvirt domain (``createXML``: it vanishes when destroyed) from
   :func:`migrate.guest.domain.domain_xml` — KVM when asked or when ``/dev/kvm`` is usable
   and ``accel`` is ``auto``, else TCG;
3. watches the serial console, the SeaBIOS log and the guest agent until a verdict:

   * **booted**: a login prompt (``login:``) or the plan's marker on the serial console,
     or the guest agent answering ``guest-ping``;
   * **failed**: a pattern of :data:`FAILURES` (no bootable device, kernel panic, a
     dracut/initramfs emergency shell, systemd emergency mode, a Windows stop code), or
     the domain stopping by itself;
   * **timeout**: none of these within the plan's ``bootTest.timeout``;

4. on anything but success takes a screenshot of the display (PNG/PPM) as evidence, destroys
   the domain and removes the overlays; the console and BIOS logs stay in the folder.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters import qemuimg
from migrate.clients.boottest import BOOTED, FAILED, TIMEOUT, BootTestError, run_transient
from migrate.guest.domain import OVMF, BootDisk, DomainError, DomainFiles, domain_xml, uses_efi

#: (pattern on the serial console or BIOS log, the reason recorded)
FAILURES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"No bootable device", re.I), "no bootable device"),
    (re.compile(r"Boot failed: not a bootable disk|Boot Failed\. EFI", re.I),
     "no bootable device"),
    (re.compile(r"Kernel panic - not syncing[^\n]*"), "kernel panic"),
    (re.compile(r"dracut-initqueue\[\d+\]: Warning: dracut-initqueue timeout|"
                r"dracut:/#|Entering emergency mode", re.I), "dracut emergency shell"),
    (re.compile(r"ALERT! [^\n]* does not exist\.\s+Dropping to a shell!|\(initramfs\) "),
     "initramfs shell: root device not found"),
    (re.compile(r"You are in emergency mode|Give root password for maintenance"),
     "emergency mode"),
    (re.compile(r"STOP: 0x[0-9A-Fa-f]{8}|Stop code: [A-Z_]+|INACCESSIBLE_BOOT_DEVICE"),
     "Windows stop code"),
]
_LOGIN = re.compile(r"^\S* ?login: ?$", re.M)


@dataclass
class BootResult:
    """One boot test: the verdict, why, and where the evidence is."""

    verdict: str  # booted | failed | timeout
    reason: str
    seconds: float
    accel: str  # kvm | tcg
    firmware: str  # bios | efi | efi-secure
    buses: dict[str, str] = field(default_factory=dict)  # volume -> bus
    console: str | None = None  # the serial log kept
    bios_log: str | None = None
    screenshot: str | None = None
    tail: str = ""  # the console's last lines

    @property
    def ok(self) -> bool:
        return self.verdict == BOOTED

    def to_data(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "verdict", "reason", "seconds", "accel", "firmware", "buses", "console",
            "bios_log", "screenshot", "tail")}


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def judge(console: str, bios: str, marker: str | None) -> tuple[str, str] | None:
    """(verdict, reason) from the text seen so far, or None while undecided."""
    if marker and marker in console:
        return BOOTED, f"marker {marker!r} on the serial console"
    if _LOGIN.search(console):
        return BOOTED, "login prompt on the serial console"
    for pattern, reason in FAILURES:
        found = pattern.search(console) or pattern.search(bios)
        if found:
            return FAILED, f"{reason}: {found.group(0).strip()[:120]}"
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def boot_test(name: str, vm_spec: dict[str, Any], images: dict[str, tuple[str, str]],
              folder: Path, *, timeout: float = 300.0, marker: str | None = None,
              accel: str = "auto", uri: str = "qemu:///system",
              kernel: tuple[Path, Path | None] | None = None) -> BootResult:
    """Boot ``vm_spec`` (a VirtualMachine ``spec``) with ``images`` (volume name →
    ``(staged image path, format)``) in a transient domain; evidence goes to ``folder``.
    ``kernel``: ``(kernel, initrd)`` files for a spec with ``firmware.kernelBoot``."""
    use_kvm = accel == "kvm" or (accel == "auto" and kvm_usable())
    folder.mkdir(parents=True, exist_ok=True)
    for old in ("console.log", "bios.log", "screenshot.png", "screenshot.ppm"):
        (folder / old).unlink(missing_ok=True)
    files = DomainFiles(serial=folder / "console.log", bios_log=folder / "bios.log",
                        nvram=folder / "nvram.fd", kernel=kernel[0] if kernel else None,
                        initrd=kernel[1] if kernel else None)
    overlays: list[Path] = []
    try:
        for volume, (path, fmt) in images.items():
            overlay = folder / f"{volume}.overlay.qcow2"
            overlay.unlink(missing_ok=True)
            qemuimg.create_overlay(str(Path(path).absolute()), fmt, str(overlay))
            overlays.append(overlay)
            files.disks[volume] = BootDisk(overlay)
        efi, secure = uses_efi(vm_spec)
        if efi:
            shutil.copyfile(OVMF[secure][1], files.nvram)
        domain_name = f"vmmove-boot-{name}-{uuid.uuid4().hex[:6]}"
        try:
            xml = domain_xml(domain_name, vm_spec, files, kvm=use_kvm, uid=os.getuid(),
                             gid=os.getgid())
        except DomainError as exc:
            raise BootTestError(str(exc)) from None
        buses = {d["name"]: (d.get("disk") or d.get("cdrom") or {}).get("bus", "virtio")
                 for d in vm_spec["template"]["spec"]["domain"]["devices"].get("disks") or []}
        firmware = "efi-secure" if secure else "efi" if efi else "bios"
        run = run_transient(uri, xml, folder, timeout,
                            lambda: judge(_read(files.serial), _read(files.bios_log), marker))
        console = _read(files.serial)
        tail = "\n".join(console.strip().splitlines()[-15:])
        return BootResult(run.verdict, run.reason, run.seconds, "kvm" if use_kvm else "tcg",
                          firmware, buses, console=str(files.serial),
                          bios_log=str(files.bios_log) if files.bios_log.exists() else None,
                          screenshot=run.screenshot, tail=tail)
    finally:
        for overlay in overlays:
            overlay.unlink(missing_ok=True)
        files.nvram.unlink(missing_ok=True)
