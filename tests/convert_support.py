"""Test images for conversion, made at test time with qemu-img and qemu-io.

Every image holds the same data at known offsets (:data:`PATTERN`), so any output can be
checked by reading those offsets back and by ``qemu-img map`` (holes stay holes).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from migrate.core.model import VM, Disk, Inventory, PowerState, Source, SourceKind
from migrate.core.serialize import save_inventory
from tests.conftest import qemu_img, qemu_io

MiB = 1024 * 1024
VIRTUAL = 64 * MiB
#: (byte, offset, length): data written into every test image.
PATTERN = [(0xA1, 0, 1 * MiB), (0xB2, 8 * MiB, 2 * MiB), (0xC3, 40 * MiB, 512 * 1024)]
DATA_BYTES = sum(length for _, _, length in PATTERN)


def write_pattern(image: Path, fmt: str, pattern=PATTERN) -> None:
    for byte, offset, length in pattern:
        qemu_io(str(image), f"write -P {byte:#x} {offset} {length}", fmt)


def make_image(folder: Path, kind: str, name: str | None = None, size: int = VIRTUAL,
               pattern=PATTERN) -> tuple[Path, str]:
    """An image of ``kind`` holding ``pattern``; returns (path, qemu format).

    kinds: raw, qcow2, vmdk (monolithicSparse), vmdk-stream (streamOptimized), vhdx, vdi,
    vpc, qcow2-chain (a qcow2 overlay on a qcow2 base, data split between the two).
    """
    name = name or kind
    if kind == "vmdk-stream":
        # streamOptimized is write-once: fill a qcow2, then convert it.
        scratch, _ = make_image(folder, "qcow2", f"{name}-scratch", size, pattern)
        path = folder / f"{name}.vmdk"
        qemu_img("convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized",
                 str(scratch), str(path))
        scratch.unlink()
        return path, "vmdk"
    if kind == "qcow2-chain":
        base = folder / f"{name}-base.qcow2"
        top = folder / f"{name}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(base), str(size))
        write_pattern(base, "qcow2", pattern[:1])
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
        write_pattern(top, "qcow2", pattern[1:])
        return top, "qcow2"
    fmt, ext = {"raw": ("raw", "img"), "qcow2": ("qcow2", "qcow2"), "vmdk": ("vmdk", "vmdk"),
                "vhdx": ("vhdx", "vhdx"), "vdi": ("vdi", "vdi"), "vpc": ("vpc", "vhd")}[kind]
    path = folder / f"{name}.{ext}"
    qemu_img("create", "-q", "-f", fmt, str(path), str(size))
    write_pattern(path, fmt, pattern)
    return path, fmt


def assert_pattern(image: Path | str, fmt: str, pattern=PATTERN) -> None:
    """The data is where it was written, and reads back as zeros around it."""
    for byte, offset, length in pattern:
        qemu_io(str(image), f"read -P {byte:#x} {offset} {length}", fmt)
    qemu_io(str(image), f"read -P 0 {4 * MiB} {MiB}", fmt)


def mapped_data(image: Path | str, fmt: str) -> list[tuple[int, int]]:
    """(start, length) runs holding data, by ``qemu-img map``."""
    out = qemu_img("map", "--output=json", "-f", fmt, str(image)).stdout
    return [(e["start"], e["length"]) for e in json.loads(out) if e["data"] and not e["zero"]]


def compare(a: Path | str, fmt_a: str, b: Path | str, fmt_b: str) -> int:
    return subprocess.run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, str(a), str(b)],
                          capture_output=True).returncode


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vm(name: str, disks: list[Disk], state: PowerState = PowerState.SHUTOFF,
       uuid: str | None = None) -> VM:
    """A VM as an offline domain XML beside its first disk (its export: that folder)."""
    folder = next((Path(d.path).parent for d in disks if d.path and d.path.startswith("/")),
                  Path("/etc"))
    return VM(name=name, uuid=uuid, source=Source(SourceKind.DOMAIN_XML, f"{folder}/{name}.xml"),
              power_state=state, disks=disks)


def disk(target: str, path: Path | str | None, fmt: str | None, **kw) -> Disk:
    return Disk(target=target, path=str(path) if path else None, format=fmt,
                virtual_size=VIRTUAL, **kw)


def inventory_file(folder: Path, vms: list[VM]) -> Path:
    path = folder / "inventory.yaml"
    save_inventory(Inventory(vms=vms), path)
    return path
