"""The boot test's plumbing on the fast busybox guest (tests/guest_support.py) under the
real libvirtd with TCG: a guest that comes up is ``booted``; a blank disk under SeaBIOS is
``failed: no bootable device`` with its evidence kept; the staged image is never written
(the guest writes to the throwaway overlay, which is removed)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from migrate.guest.boottest import BOOTED, FAILED, boot_test
from tests.guest_support import UP_MARKER, build_initramfs, guest_files
from tests.libvirtd_support import libvirt_domains  # noqa: F401

pytestmark = pytest.mark.slow


def _spec(kernel_args: str | None) -> dict[str, Any]:
    domain: dict[str, Any] = {
        "cpu": {"sockets": 1, "cores": 1, "threads": 1}, "memory": {"guest": "160Mi"},
        "devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 1}],
                    "interfaces": [{"name": "default", "model": "virtio", "masquerade": {}}]}}
    if kernel_args is not None:
        domain["firmware"] = {"kernelBoot": {"kernelArgs": kernel_args,
                                             "container": {"image": "kernel:latest"}}}
    return {"template": {"spec": {"domain": domain}}}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_busybox_guest_boots_and_a_blank_disk_has_no_bootable_device(
        libvirt_domains: Any) -> None:  # noqa: F811
    files = guest_files()
    folder = libvirt_domains.image_dir()
    kernel = folder / "vmlinuz"
    shutil.copyfile(files.kernel, kernel)
    initrd = build_initramfs(files, folder / "initrd.gz")
    staged = folder / "staged.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(staged), "16M"], check=True)
    before = _sha(staged)

    up = boot_test("busybox", _spec("console=ttyS0 quiet panic=-1 rdinit=/init "
                                    "vmmove.ignore_power"),
                   {"rootdisk": (str(staged), "qcow2")}, folder / "up", timeout=120,
                   marker=UP_MARKER, accel="tcg", kernel=(kernel, initrd))
    assert (up.verdict, up.reason, up.accel, up.firmware) == (
        BOOTED, f"marker {UP_MARKER!r} on the serial console", "tcg", "bios")
    assert up.buses == {"rootdisk": "virtio"} and up.screenshot is None
    # the guest wrote its boot marker to /dev/vda: into the overlay, not the staged image
    assert UP_MARKER in Path(up.console or "").read_text() and "boot=1" in up.tail
    assert _sha(staged) == before
    assert not list((folder / "up").glob("*.overlay.qcow2"))

    down = boot_test("blank", _spec(None), {"rootdisk": (str(staged), "qcow2")},
                     folder / "blank", timeout=60, accel="tcg")
    assert down.verdict == FAILED and down.reason.startswith("no bootable device"), down
    assert "No bootable device" in Path(down.bios_log or "").read_text()
    shot = Path(down.screenshot or "")
    assert shot.is_file() and shot.read_bytes()[:4] in (b"\x89PNG", b"P6\n")  # the display
    assert _sha(staged) == before
