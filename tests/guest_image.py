"""A real small Debian disk image for the guest-readiness tests, built from Debian packages.

Built once and cached outside the checkout (``VMMOVE_GUEST_CACHE``, default
``/var/cache/vmmove-guest``, folder ``images/``); ``.ci/run`` builds it, and the
``guest_images`` session fixture builds it when it is missing (as root) or skips saying why.
``python3 -m tests.guest_image`` builds it by hand and prints the time it took.

The image (BIOS, MBR, one ext4 partition labelled ``root``, GRUB on the MBR, sysvinit, a
getty on ttyS0, a static address in ``/etc/network/interfaces``) comes in two variants that
differ only in the initramfs:

* ``virtio``: initramfs-tools' ``MODULES=most`` (virtio_blk, virtio_scsi, ahci, … all in):
  boots on a virtio disk and on a SATA disk;
* ``hostonly``: ``MODULES=list`` with only ``ahci``/``sd_mod``/``ext4`` listed, the way a
  host-only initramfs made on a SATA/SCSI hypervisor looks: it waits for its root file
  system on a virtio disk and drops to the ``(initramfs)`` shell; it boots on SATA, and on
  virtio once virt-v2v has rebuilt its initramfs (virt-v2v adds the virtio modules to
  ``/etc/initramfs-tools/modules``).

Steps: ``mmdebstrap --variant=minbase`` (kernel, GRUB, initramfs-tools, sysvinit, ifupdown;
documentation, locales and the kernel's graphics/wireless/sound/media drivers left out) to a
tarball (cached too); unpacked, each variant's initramfs is made with ``chroot
update-initramfs`` (native speed), ``mke2fs -d`` makes the root file system from the tree
(no mount), ``sfdisk`` the partition table, and one short ``guestfish`` run (TCG) installs
GRUB inside the guest (``grub-install``, ``update-grub``); ``qemu-img convert`` makes the
cached qcow2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("VMMOVE_GUEST_CACHE", "/var/cache/vmmove-guest"))
IMAGES = CACHE / "images"
VARIANTS = ("virtio", "hostonly")
STAMP_VERSION = "2"
ROOTFS_VERSION = "1"  # bump when PACKAGES/EXCLUDES/SETUP change  # bump when the recipe changes: cached images are rebuilt
HOSTNAME = "vmmove-deb"
STATIC_IP = "10.1.2.3/24"
GATEWAY = "10.1.2.1"
DNS = "10.1.2.53"
#: Kernel command line: serial console, quick root wait (a missing driver fails in ~10 s)
CMDLINE = "console=ttyS0,115200 rootdelay=8 panic=-1 quiet loglevel=3"

PACKAGES = ["linux-image-amd64", "grub-pc", "initramfs-tools", "sysvinit-core", "ifupdown",
            "kmod", "udev", "e2fsprogs"]
EXCLUDES = [
    "/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*",
    *(f"{prefix}/lib/modules/*/kernel/{sub}/*" for prefix in ("", "/usr") for sub in (
        "drivers/gpu", "drivers/net/wireless", "drivers/media", "sound", "drivers/infiniband",
        "drivers/staging", "drivers/iio", "drivers/bluetooth", "drivers/isdn", "drivers/mtd",
        "drivers/usb/serial", "drivers/net/can", "drivers/hwmon", "drivers/input/touchscreen",
        "net/wireless", "net/mac80211", "net/bluetooth", "drivers/net/ethernet/mellanox",
        "drivers/net/ethernet/broadcom", "drivers/net/ethernet/chelsio", "drivers/scsi/lpfc",
        "drivers/scsi/qla2xxx", "drivers/target", "fs/ocfs2", "fs/btrfs", "fs/xfs",
        "drivers/md")),
]

INTERFACES = f"""auto lo
iface lo inet loopback

auto eth0
iface eth0 inet static
    address {STATIC_IP}
    gateway {GATEWAY}
    dns-nameservers {DNS}
"""

GRUB_DEFAULT = f"""GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="{CMDLINE} net.ifnames=0"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
"""

SETUP = f"""set -e
root="$1"
echo {HOSTNAME} > "$root/etc/hostname"
printf '127.0.0.1 localhost\\n127.0.1.1 {HOSTNAME}\\n' > "$root/etc/hosts"
printf 'LABEL=root / ext4 errors=remount-ro 0 1\\n' > "$root/etc/fstab"
cat > "$root/etc/network/interfaces" <<'EOF'
{INTERFACES}EOF
cat > "$root/etc/default/grub" <<'EOF'
{GRUB_DEFAULT}EOF
# a getty on the serial console, so that a booted guest prints a login prompt
sed -i 's/^[1-6]:/#&/' "$root/etc/inittab"
echo 'T0:2345:respawn:/sbin/getty -L 115200 ttyS0 vt100' >> "$root/etc/inittab"
echo 'COMPRESS=gzip' > "$root/etc/initramfs-tools/conf.d/compress"
rm -f "$root"/boot/initrd.img-*
"""

HOSTONLY_MODULES = "ahci\nlibahci\nsd_mod\next4\n"
DISK_MIB = 1200


def paths(cache: Path = IMAGES) -> dict[str, Path]:
    """The cached qcow2 of each variant."""
    return {v: cache / f"debian-{v}.qcow2" for v in VARIANTS}


def is_built(cache: Path = IMAGES) -> bool:
    stamp = cache / "stamp"
    return (stamp.is_file() and stamp.read_text().strip() == STAMP_VERSION
            and all(p.is_file() for p in paths(cache).values()))


def missing_tools() -> list[str]:
    return [t for t in ("mmdebstrap", "guestfish", "qemu-img") if shutil.which(t) is None]


def _run(args: list[str], **kw: object) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-1500:]}")


def _initramfs(root: Path, variant: str, dest: Path) -> None:
    """Make the variant's initramfs in the unpacked tree (chroot, native speed)."""
    conf = root / "etc/initramfs-tools"
    (conf / "conf.d/modules").write_text("MODULES=most\n" if variant == "virtio"
                                          else "MODULES=list\n")
    (conf / "modules").write_text("" if variant == "virtio" else HOSTONLY_MODULES)
    for old in (root / "boot").glob("initrd.img-*"):
        old.unlink()
    _run(["chroot", str(root), "update-initramfs", "-c", "-k", "all"], timeout=600)
    (initrd,) = (root / "boot").glob("initrd.img-*")
    shutil.copyfile(initrd, dest)


def _disk(root: Path, raw: Path, work: Path) -> None:
    """An MBR disk with one ext4 partition made from ``root`` (mke2fs -d, no mount), then
    GRUB installed by ``guestfish`` inside the guest."""
    part = work / "part.img"
    part.unlink(missing_ok=True)
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(root), str(part),
          f"{DISK_MIB - 2}M"])
    with open(raw, "wb") as fh:
        fh.truncate(DISK_MIB << 20)
    _run(["sfdisk", "-q", str(raw)], input="label: dos\nstart=2048, type=83, bootable\n")
    _run(["dd", f"if={part}", f"of={raw}", "bs=1M", "seek=1", "conv=notrunc,sparse",
          "status=none"])
    part.unlink()
    script = """run
mount /dev/sda1 /
command "grub-install --target=i386-pc /dev/sda"
command "update-grub"
"""
    env = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg",
           **os.environ}
    _run(["guestfish", "--rw", "--format=raw", "-a", str(raw)], input=script, env=env,
         timeout=1200)


def _mmdebstrap(setup: Path, tarball: Path, work: Path) -> None:
    partial = work / "rootfs.tar.gz"
    _run(["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
          "--include=" + ",".join(PACKAGES),
          *(f"--dpkgopt=path-exclude={p}" for p in EXCLUDES),
          f"--customize-hook=sh {setup} \"$1\"",
          "bookworm", str(partial)], timeout=1800)
    os.replace(partial, tarball)


def build(cache: Path = IMAGES, log: bool = True) -> dict[str, float]:
    """Build both variants into ``cache``; the seconds each step took."""
    problems = missing_tools()
    if problems:
        raise RuntimeError("missing " + ", ".join(problems)
                           + " (apt-get install mmdebstrap libguestfs-tools qemu-utils)")
    cache.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        work = Path(tmp)
        tarball = cache / f"rootfs-{ROOTFS_VERSION}.tar.gz"  # kept: a recipe change reuses it
        setup = work / "setup.sh"
        setup.write_text(SETUP)
        started = time.monotonic()
        if not tarball.is_file():
            _mmdebstrap(setup, tarball, work)
        times["mmdebstrap"] = time.monotonic() - started
        root = work / "root"
        root.mkdir()
        _run(["tar", "-xzf", str(tarball), "-C", str(root), "--numeric-owner",
              "--xattrs", "--xattrs-include=*"])
        for variant, dest in paths(cache).items():
            started = time.monotonic()
            _initramfs(root, variant, work / f"initrd-{variant}")
            raw = work / f"{variant}.raw"
            _disk(root, raw, work)
            tmp_dest = dest.with_name(f".{dest.name}.tmp")
            _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_dest)])
            tmp_dest.chmod(0o644)
            os.replace(tmp_dest, dest)
            raw.unlink()
            times[variant] = time.monotonic() - started
            if log:
                print(f"guest image {variant}: {dest} in {times[variant]:.1f}s",
                      file=sys.stderr)
    (cache / "stamp").write_text(STAMP_VERSION + "\n")
    return times


if __name__ == "__main__":
    if is_built() and "--force" not in sys.argv:
        print(f"guest images already built in {IMAGES}", file=sys.stderr)
        sys.exit(0)
    t0 = time.monotonic()
    result = build()
    print(f"guest images built in {time.monotonic() - t0:.1f}s: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in result.items()), file=sys.stderr)
