"""Inspection: what is inside a VM's staged disks, read-only, with libguestfs.

:func:`inspect_disks` boots one libguestfs appliance (:class:`~migrate.guest.fish.Fish`,
``--ro``, formats pinned) over the staged copies of a VM's disks and returns an
:class:`~migrate.core.model.Inspection`:

* OS facts from libguestfs inspection (``inspect-os``, ``inspect-get-type/distro/
  major-version/minor-version/product-name/arch/hostname/mountpoints``);
* boot loader (GRUB 2/legacy, extlinux, systemd-boot, Windows boot manager) and firmware
  needs: an EFI system partition (a ``vfat`` file system mounted on ``/boot/efi``/``/efi``,
  or a GPT partition of type C12A7328-…) means the guest needs UEFI;
* drivers the KubeVirt hardware needs: Linux — the newest kernel's initramfs is downloaded
  and listed on the host (:mod:`migrate.guest.initramfs`), and ``modules.builtin`` says what
  is compiled in; Windows — the SYSTEM hive's services (:mod:`migrate.guest.windows`);
* agents (QEMU guest agent, cloud-init) and foreign tools (VMware Tools/open-vm-tools,
  Hyper-V daemons, Xen tools, VirtualBox additions), by the files they install;
* ``/etc/fstab`` entries and boot entries (``root=`` in GRUB's files) naming a device by
  path (``/dev/sda1``, ``/dev/hda2``, ``/dev/vdb``, ``/dev/xvda1``): they break when the
  bus changes;
* network configuration (:mod:`migrate.guest.netconf`; Windows: TCP/IP registry keys).

Nothing is written: the appliance opens the disks read-only.  Errors reading one fact are
kept in ``Inspection.error`` with the facts that could be read; an appliance that cannot
start raises :class:`~migrate.guest.fish.GuestfsError`.
"""

from __future__ import annotations

import datetime
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from migrate.guest import netconf
from migrate.guest.fish import Fish, GuestfsError
from migrate.guest.initramfs import InitramfsError, module_names
from migrate.core.model import Inspection

#: Linux drivers the KubeVirt devices need (disk buses virtio/scsi/sata, NIC virtio)
LINUX_DRIVERS = ("virtio_blk", "virtio_scsi", "virtio_net", "ahci")
#: (name recorded, guest files any of which shows it is installed)
AGENTS = [
    ("qemu-guest-agent", ("/usr/bin/qemu-ga", "/usr/sbin/qemu-ga")),
    ("cloud-init", ("/usr/bin/cloud-init",)),
]
FOREIGN_TOOLS = [
    ("open-vm-tools", ("/usr/bin/vmtoolsd", "/usr/sbin/vmtoolsd")),
    ("vmware-tools", ("/etc/vmware-tools", "/usr/lib/vmware-tools")),
    ("hyperv-daemons", ("/usr/sbin/hv_kvp_daemon", "/usr/sbin/hypervkvpd")),
    ("xen-tools", ("/usr/sbin/xe-daemon", "/usr/sbin/xe-linux-distribution")),
    ("virtualbox-guest-additions", ("/usr/sbin/VBoxService", "/opt/VBoxGuestAdditions")),
]
_DEVICE_PATH = re.compile(r"^/dev/(?:[shv]d[a-z]+\d*|xvd[a-z]+\d*|nvme\d+n\d+(?:p\d+)?|"
                          r"cciss/c\d+d\d+(?:p\d+)?)$")
_ROOT_ARG = re.compile(r"\broot=(/dev/\S+)")
BOOT_FILES = ("/etc/default/grub", "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg",
              "/boot/grub/menu.lst", "/etc/grub.conf", "/boot/extlinux/extlinux.conf")
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def inspect_disks(disks: Sequence[tuple[str, str]], name: str | None = None) -> Inspection:
    """Inspect the guest on ``disks`` (``(path, format)``, boot disk first)."""
    started = time.monotonic()
    with Fish(disks, name) as fish:
        result = _inspect(fish)
    result.inspected_at = now_rfc3339()
    result.seconds = round(time.monotonic() - started, 2)
    return result


def _inspect(fish: Fish) -> Inspection:
    roots = fish.lines("inspect-os")
    if not roots:
        return Inspection(error="no operating system found on the disks")
    root = roots[0]
    get = lambda what: fish.call(f"inspect-get-{what}", root).strip()  # noqa: E731
    result = Inspection(root=root, os_type=get("type"), distro=get("distro"),
                        product_name=get("product-name"), arch=get("arch"),
                        hostname=get("hostname"))
    result.version = f"{get('major-version')}.{get('minor-version')}"
    for field in ("distro", "product_name", "hostname", "arch"):
        if getattr(result, field) in ("unknown", ""):
            setattr(result, field, None)
    mounts: list[tuple[str, str]] = []
    for line in fish.lines("inspect-get-mountpoints", root):
        mountpoint, _, device = line.partition(": ")
        mounts.append((mountpoint, device))
    for mountpoint, device in sorted(mounts, key=lambda m: len(m[0])):
        fish.try_call("mount-ro", device, mountpoint)
    result.efi = _has_esp(fish, mounts)
    problems: list[str] = []
    if result.os_type == "windows":
        _windows(fish, root, result, problems)
    elif result.os_type == "linux":
        _linux(fish, result, problems)
    if problems:
        result.error = "; ".join(problems)
    return result


def _has_esp(fish: Fish, mounts: list[tuple[str, str]]) -> bool:
    for mountpoint, device in mounts:
        if mountpoint in ("/boot/efi", "/efi", "/boot") and \
                (fish.try_call("vfs-type", device) or "").strip() == "vfat":
            return True
    for device in fish.lines("list-devices"):
        if (fish.try_call("part-get-parttype", device) or "").strip() != "gpt":
            continue
        for part in fish.lines("part-list", device):
            match = re.match(r"\s*part_num:\s*(\d+)", part)
            if match and (fish.try_call("part-get-gpt-type", device, match.group(1))
                          or "").strip().upper() == ESP_GUID:
                return True
    return False


def _linux(fish: Fish, result: Inspection, problems: list[str]) -> None:
    result.bootloader = _bootloader(fish)
    for name, files in AGENTS:
        if any(fish.exists(f) for f in files):
            result.agents.append(name)
    for name, files in FOREIGN_TOOLS:
        if any(fish.exists(f) for f in files):
            result.foreign_tools.append(name)
    result.device_names = _device_names(fish)
    for pattern, kind in netconf.SOURCES:
        for path in fish.glob(pattern):
            text = fish.read(path)
            if text is not None:
                result.network += netconf.parse(kind, text, path)
    try:
        _linux_drivers(fish, result)
    except (InitramfsError, GuestfsError) as exc:
        problems.append(f"drivers unknown: {exc}")


def _bootloader(fish: Fish) -> str | None:
    if fish.exists("/boot/grub2/grub.cfg") or fish.exists("/boot/grub/grub.cfg"):
        return "grub2"
    if fish.exists("/boot/grub/menu.lst") or fish.exists("/boot/grub/grub.conf"):
        return "grub"
    if fish.exists("/boot/extlinux/extlinux.conf") or fish.exists("/extlinux.conf"):
        return "extlinux"
    if fish.exists("/boot/loader/loader.conf") or fish.exists("/efi/loader/loader.conf"):
        return "systemd-boot"
    return None


def _device_names(fish: Fish) -> list[str]:
    found: list[str] = []
    fstab = fish.read("/etc/fstab") or ""
    for line in fstab.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and _DEVICE_PATH.match(fields[0]):
            found.append(f"/etc/fstab: {fields[0]} on {fields[1]}")
    for path in BOOT_FILES:
        text = fish.read(path) or ""
        for device in sorted(set(_ROOT_ARG.findall(text))):
            if _DEVICE_PATH.match(device):
                found.append(f"{path}: root={device}")
    return found


def _kernel_key(version: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", version)]


def _linux_drivers(fish: Fish, result: Inspection) -> None:
    kernels = [p.rsplit("/vmlinuz-", 1)[1] for p in fish.glob("/boot/vmlinuz-*")]
    if not kernels:
        raise InitramfsError("no /boot/vmlinuz-* kernel")
    version = max(kernels, key=_kernel_key)
    result.kernel = version
    candidates = [f"/boot/initrd.img-{version}", f"/boot/initramfs-{version}.img",
                  f"/boot/initrd-{version}", f"/boot/initramfs-{version}"]
    initrd = next((c for c in candidates if fish.exists(c)), None)
    builtin_text = fish.read(f"/lib/modules/{version}/modules.builtin", 4 << 20) or ""
    builtin = {Path(line).name.removesuffix(".ko").replace("-", "_")
               for line in builtin_text.split()}
    if initrd is None:
        raise InitramfsError(f"no initramfs for kernel {version}")
    result.initramfs = initrd
    with tempfile.TemporaryDirectory(prefix="vmmove-initrd-") as tmp:
        local = fish.download(initrd, Path(tmp) / "initrd")
        modules = module_names(local.read_bytes(), initrd)
    for driver in LINUX_DRIVERS:
        result.drivers[driver] = driver in modules or driver in builtin


def _windows(fish: Fish, root: str, result: Inspection, problems: list[str]) -> None:
    from migrate.guest import windows

    result.bootloader = "windows"
    systemroot = fish.call("inspect-get-windows-systemroot", root).strip() or "/Windows"
    config = f"{systemroot}/System32/config"
    with tempfile.TemporaryDirectory(prefix="vmmove-hives-") as tmp:
        hives: dict[str, Path] = {}
        for hive in ("SYSTEM", "SOFTWARE"):
            path = fish.try_call("case-sensitive-path", f"{config}/{hive}")
            if path and fish.exists(path.strip()):
                hives[hive] = fish.download(path.strip(), Path(tmp) / hive)
        if "SYSTEM" not in hives:
            problems.append(f"no SYSTEM hive under {config}")
            return
        windows.apply_hives(result, hives["SYSTEM"], hives.get("SOFTWARE"))
