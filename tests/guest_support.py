"""A tiny real guest for the cutover tests: Debian's kernel, a busybox initramfs, TCG.

Why a real guest: cutover stops the source with an ACPI shutdown and rollback starts it
again; only a guest that boots and answers the power button proves that path.  The guest
is made at test time from two Debian packages, unpacked (never installed) into a cache
folder (``VMMOVE_GUEST_CACHE``, default ``/var/cache/vmmove-guest``; ``.ci/run`` fills it):

* ``linux-image-<version>-amd64`` (the kernel and the modules it needs: virtio_blk for the
  disk, ``button`` + ``evdev`` for the ACPI power button);
* ``busybox-static`` (the whole userland, one static binary).

The initramfs's ``/init`` mounts proc/sys/devtmpfs, loads those modules, writes a boot
marker to the first sector of ``/dev/vda`` (so the source disk changes while it runs, as
a real VM's does), prints ``VMMOVE-GUEST-UP`` on ttyS0, then blocks on the power button's
input device; on a press it writes a shutdown marker at 1 MiB of ``/dev/vda``, syncs,
prints ``VMMOVE-GUEST-DOWN`` and powers off.  :func:`guest_domain_xml` boots it under TCG
(``<domain type='qemu'>``) with direct kernel boot, ACPI, no NIC (libvirt's ``default``
network is never needed) and the serial console in a file the test reads.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest
import yaml

from tests.kube_support import Reconciler

CACHE = Path(os.environ.get("VMMOVE_GUEST_CACHE", "/var/cache/vmmove-guest"))
UP_MARKER = "VMMOVE-GUEST-UP"
DOWN_MARKER = "VMMOVE-GUEST-DOWN"
BOOT_TAG = b"VMMOVE-BOOT"  # sector 0 of /dev/vda, written at each boot
SHUTDOWN_TAG = b"VMMOVE-SHUTDOWN"  # at 1 MiB of /dev/vda, written at each power-off
SHUTDOWN_OFFSET = 1 << 20
TICK_TAG = b"VMMOVE-TICK"  # ticker guests: tick i at TICK_OFFSET + (i % TICK_SLOTS) MiB
TICK_OFFSET = 2 << 20
TICK_SLOTS = 16
#: Modules in load order (dependencies first); Debian builds these as modules.
MODULES = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/acpi/button.ko",
    "kernel/drivers/input/evdev.ko",
]

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do insmod /lib/modules/$m 2>/dev/ttyS0; done
echo "vmmove-guest: modules loaded at $(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
boots=$(dd if=/dev/vda bs=64 count=1 2>/dev/null | tr -d '\000' | sed -n 's/^VMMOVE-BOOT \([0-9]*\).*/\1/p')
boots=$(( ${boots:-0} + 1 ))
printf 'VMMOVE-BOOT %s\n' "$boots" | dd of=/dev/vda bs=64 count=1 conv=notrunc,fsync 2>/dev/null
ev=""
n=0
while [ -z "$ev" ] && [ $n -lt 50 ]; do
  for d in /sys/class/input/event*; do
    if grep -q "Power Button" "$d/device/name" 2>/dev/null; then ev=/dev/input/$(basename $d); fi
  done
  [ -z "$ev" ] && sleep 0.1
  n=$((n+1))
done
echo "VMMOVE-GUEST-UP boot=$boots power=${ev:-none} disk=$(ls /dev/vda 2>&1) uptime=$(cut -d" " -f1 /proc/uptime)" > /dev/ttyS0
if grep -q vmmove.ticker /proc/cmdline; then
  # a disk that changes all the time: tick i goes to slot i%16 (2 MiB + slot MiB), in order
  ( i=0; while :; do i=$((i+1)); printf 'VMMOVE-TICK %08d\n' $i | dd of=/dev/vda bs=1M seek=$((2 + i % 16)) count=1 conv=notrunc,fsync 2>/dev/null; echo "VMMOVE-TICK $i" > /dev/ttyS0; done ) &
fi
if grep -q vmmove.ignore_power /proc/cmdline; then
  while :; do sleep 3600; done  # a guest that ignores the power button
fi
if [ -n "$ev" ]; then
  dd if=$ev bs=24 count=1 of=/dev/null 2>/dev/null
fi
printf 'VMMOVE-SHUTDOWN %s\n' "$boots" | dd of=/dev/vda bs=64 seek=16384 count=1 conv=notrunc,fsync 2>/dev/null
sync
echo "VMMOVE-GUEST-DOWN" > /dev/ttyS0
poweroff -f
"""


def _download(cache: Path) -> str | None:
    """Fetch and unpack the kernel and busybox packages; the reason when impossible."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "apt-get/dpkg-deb not available to fetch linux-image-amd64 and busybox-static"
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deps = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True,
                          text=True)
    kernel = next((line.split()[-1] for line in deps.stdout.splitlines()
                   if "Depends:" in line and "linux-image-" in line), None)
    if kernel is None:
        return "apt-cache knows no linux-image-amd64 (run apt-get update)"
    got = subprocess.run(["apt-get", "download", "-q", kernel, "busybox-static"], cwd=debs,
                         capture_output=True, text=True, timeout=600)
    if got.returncode != 0:
        return f"apt-get download failed: {got.stderr.strip()[-300:]}"
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "root")], check=True)
    return None


@dataclass
class GuestFiles:
    kernel: Path
    modules: Path  # /lib/modules/<version>
    busybox: Path


def guest_files(fetch: bool = True) -> GuestFiles:
    """The unpacked kernel, modules and busybox; skip the test (saying why) when absent."""
    root = CACHE / "root"

    def find() -> GuestFiles | None:
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        busybox = root / "bin" / "busybox"
        if not kernels or not busybox.is_file():
            return None
        version = kernels[-1].name.removeprefix("vmlinuz-")
        return GuestFiles(kernels[-1], root / "lib" / "modules" / version, busybox)

    found = find()
    if found is None and fetch and os.geteuid() == 0:
        reason = _download(CACHE)
        if reason:
            pytest.skip(f"no test guest: {reason}")
        found = find()
    if found is None:
        pytest.skip(f"no test guest: Debian's kernel and busybox-static are not unpacked in "
                    f"{CACHE} (see .ci/run)")
    missing = [m for m in MODULES if not (found.modules / m).is_file()]
    if missing:
        pytest.skip(f"no test guest: kernel modules missing: {', '.join(missing)}")
    return found


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of ``(path, mode, data)``; directories have no data."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0))
        out.write(header.encode() + encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def build_initramfs(files: GuestFiles, dest: Path) -> Path:
    """Write the gzip'd initramfs to ``dest``."""
    d, f, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    entries: list[tuple[str, int, bytes]] = [(p, d, b"") for p in (
        "bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules", "lib/modules/kernel")]
    made: set[str] = set()
    for m in MODULES:
        parts = Path(m).parent.parts
        for i in range(1, len(parts) + 1):
            folder = "lib/modules/" + "/".join(parts[:i])
            if folder not in made and folder != "lib/modules/kernel":
                made.add(folder)
                entries.append((folder, d, b""))
        entries.append((f"lib/modules/{m}", f, (files.modules / m).read_bytes()))
    entries.append(("bin/busybox", x, files.busybox.read_bytes()))
    init = INIT.replace("MODULES", " ".join(MODULES))
    entries.append(("init", x, init.encode()))
    dest.write_bytes(gzip.compress(_cpio(entries), compresslevel=1))
    return dest


def guest_domain_xml(name: str, kernel: Path, initrd: Path, disk: Path, serial: Path,
                     memory_mib: int = 160, disk_format: str = "qcow2",
                     cmdline: str = "") -> str:
    """A TCG domain booting ``kernel``/``initrd`` with one virtio disk and no NIC."""
    return (
        "<domain type='qemu'>"
        f"<name>{escape(name)}</name>"
        f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type>"
        f"<kernel>{escape(str(kernel))}</kernel><initrd>{escape(str(initrd))}</initrd>"
        f"<cmdline>console=ttyS0 quiet panic=-1 rdinit=/init {escape(cmdline)}</cmdline></os>"
        "<features><acpi/></features>"
        "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
        "<on_crash>destroy</on_crash>"
        "<devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type={quoteattr(disk_format)}/>"
        f"<source file={quoteattr(str(disk))}/><target dev='vda' bus='virtio'/></disk>"
        f"<serial type='file'><source path={quoteattr(str(serial))} append='on'/>"
        "<target port='0'/></serial>"
        "<memballoon model='none'/>"
        "</devices></domain>"
    )


def wait_for_text(path: Path, text: str, timeout: float, count: int = 1) -> float:
    """Wait until ``text`` appears ``count`` times in ``path``; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if path.read_text(errors="replace").count(text) >= count:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    content = path.read_text(errors="replace")[-2000:] if path.exists() else "(no file)"
    raise AssertionError(f"{text!r} x{count} not in {path} after {timeout:.0f}s:\n{content}")


def read_image_bytes(path: Path, fmt: str, offset: int, length: int) -> bytes:
    """Bytes of an image's guest view (the small image converted to a temporary raw file)."""
    out = path.parent / f".peek-{os.getpid()}-{time.monotonic_ns()}.raw"
    try:
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path),
                        str(out)], check=True, capture_output=True)
        with open(out, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)
    finally:
        out.unlink(missing_ok=True)


@dataclass
class Guest:
    """One booted test guest: its libvirt domain, disk image and serial log."""

    name: str
    dom: Any
    disk: Path
    serial: Path
    boot_seconds: float = 0.0

    def wait_up(self, count: int = 1, timeout: float = 240.0) -> float:
        return wait_for_text(self.serial, UP_MARKER, timeout, count)

    def state(self) -> int:
        return int(self.dom.state()[0])


def boot_guest(factory: Any, base: str, *, ignore_power: bool = False,
               disk_mib: int = 16, ticker: bool = False, data_mib: int = 1) -> Guest:
    """Define and start a guest through ``factory`` (a libvirtd_support DomainFactory),
    wait for its serial marker; every file lives in a folder the factory removes.

    ``ticker``: the guest writes ``VMMOVE-TICK <i>`` (8 digits) for i = 1, 2, … without
    pause, tick i at ``TICK_OFFSET + (i % 16) MiB`` of its disk, fsync'd, then echoes it on
    the serial console (needs ``disk_mib`` ≥ 18).  ``data_mib``: MiB of 0x5a data at 4 MiB.
    """
    files = guest_files()
    folder = factory.image_dir()
    kernel = folder / "vmlinuz"
    shutil.copyfile(files.kernel, kernel)
    initrd = build_initramfs(files, folder / "initrd.gz")
    disk = folder / f"{base}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{disk_mib}M"],
                   check=True)
    # some data beyond the markers, so the copy has something to carry
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 4M {data_mib}M", str(disk)],
                   check=True, capture_output=True)
    for path in (kernel, initrd, disk):
        path.chmod(0o644)
    serial = folder / "serial.log"
    name = factory.name(base)
    dom = factory.define(guest_domain_xml(
        name, kernel, initrd, disk, serial,
        cmdline=" ".join(flag for flag, on in (("vmmove.ignore_power", ignore_power),
                                                ("vmmove.ticker", ticker)) if on)))
    started = time.monotonic()
    dom.create()
    guest = Guest(name, dom, disk, serial)
    guest.wait_up()
    guest.boot_seconds = time.monotonic() - started
    return guest


# -- KubeVirt, played on the test API ---------------------------------------------------------


class KubeVirt(Reconciler):
    """virt-controller's part of a cutover, on a :class:`tests.plan_support.Cluster`.

    When a VirtualMachine's ``runStrategy`` is ``Always`` it creates its
    VirtualMachineInstance (phase ``Scheduling``, then ``Running`` a moment later, with an
    ``AgentConnected`` condition when ``agent``); when it is ``Halted`` it deletes the VMI.
    VMs named in ``hold`` never get past ``Scheduling`` (a target that never runs).
    """

    def __init__(self, cluster: Any, interval: float = 0.1, agent: bool = True) -> None:
        import kmock

        self.cluster = cluster
        self.vmi = kmock.resource("kubevirt.io", "v1", "virtualmachineinstances")
        self.vm = kmock.resource("kubevirt.io", "v1", "virtualmachines")
        cluster.declare(self.vmi, "VirtualMachineInstance")
        self.interval = interval
        self.agent = agent
        self.hold: set[str] = set()
        self.events: list[tuple[str, str]] = []  # (action, name)
        self.start("kubevirt")

    def _reconcile(self) -> None:
        vmis = self.cluster.objects(self.vmi)
        for (ns, name), vm in self.cluster.objects(self.vm).items():
            strategy = (vm.get("spec") or {}).get("runStrategy")
            vmi = vmis.get((ns, name))
            if strategy == "Always" and vmi is None:
                self.cluster.create(self.vmi, ns, {
                    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                    "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4())},
                    "status": {"phase": "Scheduling"}})
                self.events.append(("created", name))
            elif strategy == "Always" and vmi is not None and name not in self.hold and \
                    (vmi.get("status") or {}).get("phase") != "Running":
                conditions = [{"type": "Ready", "status": "True"}]
                if self.agent:
                    conditions.append({"type": "AgentConnected", "status": "True"})
                self.cluster.status_patch(self.vmi, ns, name, {"status": {
                    "phase": "Running", "nodeName": "node-1", "conditions": conditions}})
                self.events.append(("running", name))
            elif strategy != "Always" and vmi is not None:
                emulator = self.cluster.emulator
                self.cluster.call(lambda: emulator.objects[self.vmi, ns, name].delete())
                self.events.append(("deleted", name))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def kubevirt(cluster: Any) -> Iterator[KubeVirt]:
    player = KubeVirt(cluster)
    try:
        yield player
    finally:
        player.stop()


def stage_guest(cli: Any, tmp: Path, guest: Guest, s3: Any, bucket: str,
                cluster: Any) -> Path:
    """scan → plan (the guest alone, read while running) → migrate --stage."""
    inventory = tmp / "inventory.yaml"
    # other sessions' domains may be on the daemon too: only ours has to scan cleanly
    cli("scan", "-c", "qemu:///system", "--output-file", str(inventory), "-o", "json")
    names = [vm["name"] for vm in yaml.safe_load(inventory.read_text())["vms"]]
    assert guest.name in names
    plan_file = tmp / "plan.yaml"
    cli("plan", str(inventory), "--out", str(plan_file), "-n", "vms", "--s3",
        f"s3://{bucket}/cut", "--endpoint-url", s3.endpoint, "--by", "list", "--wave",
        guest.name, ok=True)
    data = yaml.safe_load(plan_file.read_text())
    data["convert"]["forceShare"] = True  # the guest runs while it is staged
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli("migrate", str(plan_file), "--wave", "1", "--stage", "--kubeconfig",
                 str(cluster.kubeconfig), "-o", "json")
    assert result.exit_code == 0, result.stderr
    return plan_file
