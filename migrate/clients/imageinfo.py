"""What ``qemu-img info`` says about a disk image: format, sizes, backing chain.

Scanning and conversion both need it; it lives here, before both in the pipeline.
qemu-img runs as a subprocess with an argument list, never through a shell.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field

from migrate.core.errors import VmmoveError
from migrate.core.progress import trace_command
from migrate.core.model import BackingFile


class ImageError(VmmoveError):
    """qemu-img could not read an image; the message names the file."""


@dataclass
class ImageInfo:
    path: str
    format: str
    virtual_size: int
    actual_size: int | None  # bytes allocated on the host filesystem
    backing_chain: list[BackingFile] = field(default_factory=list)
    dirty: bool = False
    raw: list[dict] = field(default_factory=list)  # qemu-img's own JSON, nearest layer first


def qemu_img() -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise VmmoveError("qemu-img not found: install qemu-utils (Debian/Ubuntu) or qemu-img")
    return exe


def image_info(path: str, force_share: bool = False, fmt: str | None = None) -> ImageInfo:
    """Read an image and its whole backing chain; ``force_share`` reads a disk in use (-U).

    qemu-img follows the chain the headers name (and probes the format when ``fmt`` is
    None): use this only for images vmmove wrote itself.  Source images (any descriptor's,
    any export's) are read through :func:`migrate.sources.containment.open_path`.
    """
    args = [qemu_img(), "info", "--output=json", "--backing-chain"]
    if force_share:
        args.append("-U")
    if fmt:
        args += ["-f", fmt]
    args.append(path)
    trace_command(args)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "qemu-img failed"
        msg = msg.removeprefix("qemu-img: ")
        raise ImageError(f"{path}: {msg}")
    try:
        layers = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ImageError(f"{path}: qemu-img printed no JSON") from None
    if isinstance(layers, dict):
        layers = [layers]
    top = layers[0]
    chain = [
        BackingFile(path=layer.get("filename", ""), format=layer.get("format"))
        for layer in layers[1:]
    ]
    return ImageInfo(
        path=path,
        format=top.get("format", "raw"),
        virtual_size=int(top.get("virtual-size", 0)),
        actual_size=top.get("actual-size"),
        backing_chain=chain,
        dirty=bool(top.get("dirty-flag", False)),
        raw=layers,
    )
