"""Containment: every file an offline export leads to stays inside that export.

Offline descriptors (domain XML files, OVF/OVA, VMX/VMDK) and the headers of the images
they name are untrusted input: whoever made the export chose every path in them.  This
module is the one place that decides which files such input may make vmmove (and the
qemu-img it runs) open; every reader and the converter go through it.

The rules (docs/security.md, "Containment"):

* An :class:`Export` is where a source's files may be: the folder holding the descriptor
  (``Source.location``'s folder; for an OVA, the archive's members).  A live libvirt host
  is *trusted* (its configuration is the host's own): no folder limit, but the image
  headers must agree with the chain libvirt reports (:func:`check_agreement`).
* A reference — OVF ``href``, VMX ``fileName``, VMDK extent and ``parentFileNameHint``,
  qcow2/qed/vmdk backing file, qcow2 external data file — is resolved against the file
  that names it, symlinks followed (:func:`os.path.realpath`), and must land inside the
  export's folder on a regular file; for an OVA it must name another member.
* A reference with a protocol name (``json:``, ``nbd:``, ``http:``, ``file:``… qemu's own
  rule: a ``:`` before any ``/``) is refused: offline input never reaches the network or
  selects a qemu driver.
* Image headers are read one layer at a time with the format pinned and
  ``"backing": null`` (qemu-img then never opens the file a header names), and each named
  file is checked before it is opened.  qemu-img then gets the checked chain spelled out
  as a ``json:`` filename (:meth:`Chain.qemu_name`): format, file, backing and data file
  of every layer fixed by vmmove, nothing left to the headers.  VMDK extents cannot be
  given that way (qemu opens a descriptor's extents itself), so descriptors are parsed
  here first and every extent is checked; sparse extents whose header would make qemu
  read another embedded descriptor (capacity 0) are refused.

A refusal is :class:`ContainmentError`, one line naming the reference and what is wrong;
callers prefix the VM and the disk.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import struct
import subprocess
from dataclasses import dataclass, field
from typing import Any

from migrate.core.errors import VmmoveError
from migrate.clients.imageinfo import ImageError, qemu_img
from migrate.core.model import BackingFile, Disk, Source, SourceKind

#: Formats a layer may have (qemu driver names); ``vpc`` is VHD.
FORMATS = frozenset({"raw", "qcow2", "qcow", "qed", "vmdk", "vdi", "vhdx", "vpc", "parallels",
                     "bochs", "cloop", "dmg"})
#: Formats whose header may name a backing file.
BACKING_FORMATS = frozenset({"qcow2", "qcow", "qed", "vmdk"})
MAX_CHAIN = 64  # layers; deeper is a loop or a hostile header
MAX_DESCRIPTOR_BYTES = 1024 * 1024  # real VMDK descriptors are a few hundred bytes
SPARSE_MAGICS = (b"KDMV", b"COWD")  # VMDK 4 and VMDK 3 (COWD) sparse headers
_SPARSE_EXTENTS = ("SPARSE", "VMFSSPARSE", "SESPARSE")


class ContainmentError(VmmoveError):
    """A reference that leads outside its export, or that vmmove will not open."""


class MissingFile(ContainmentError):
    """A reference inside the export to a file that is not there; ``path`` names it."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def protocol_of(name: str) -> str | None:
    """The protocol prefix qemu would see in ``name`` (``nbd``, ``json``, ``http``…), or None.

    qemu's rule (block.c ``path_has_protocol``): a ``:`` before the first ``/``.
    """
    for index, char in enumerate(name):
        if char == "/":
            return None
        if char == ":":
            return name[:index] or ":"
    return None


def inside(root: str, real: str) -> bool:
    """Whether the real path ``real`` is ``root`` or below it (both already resolved)."""
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


# ------------------------------------------------------------------------------- exports


@dataclass(frozen=True)
class Member:
    """A member of an OVA archive: its normalised name and byte range in the .ova."""

    name: str
    offset: int  # where the member's data starts in the .ova
    size: int


@dataclass
class Export:
    """Where one source's files may be.

    ``root`` is the real path of the export's folder (``None``: a live libvirt host, whose
    paths are trusted); ``archive`` the real path of an OVA whose ``members`` hold the
    disks.  ``volumes`` is the folder, as the operator named it, of a Proxmox VE block
    storage (``/dev/<vg>``, ``/dev/zvol/<pool>``): its entries are links to block devices
    by design, so a name lexically inside it may lead to a block device outside ``root``.
    """

    root: str | None
    label: str
    archive: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    volumes: str | None = None

    @property
    def trusted(self) -> bool:
        return self.root is None and self.archive is None

    @classmethod
    def of(cls, source: Source, disk: Disk | None = None) -> Export:
        """The export of a VM's source (reads an OVA's tar headers to list its members).

        A Proxmox VE disk's export is the folder its storage is mapped to
        (``Source.storage[disk.pool]``, from ``--pve-storage``), not the .conf's folder.
        Every kind but a live libvirt host is untrusted; a kind not named here is confined
        to its descriptor's folder (deny by default).
        """
        if source.kind == SourceKind.LIBVIRT:
            return cls(root=None, label=source.location)
        if source.kind == SourceKind.OVA:
            return cls.of_archive(source.location)
        if source.kind == SourceKind.PVE:
            folder = (source.storage or {}).get(disk.pool or "") if disk is not None else None
            if folder is not None:
                named = os.path.normpath(folder)
                return cls(root=os.path.realpath(named), volumes=named,
                           label=f"{named} (Proxmox storage '{disk.pool}')")  # type: ignore[union-attr]
        return cls.of_descriptor(source.location)

    def _volume(self, path: str, real: str) -> bool:
        """Whether ``path`` is a block-device volume of a Proxmox block storage: named
        inside its folder, leading to a block device (see ``volumes``)."""
        if self.volumes is None or not inside(self.volumes, os.path.normpath(path)):
            return False
        try:
            return stat.S_ISBLK(os.stat(real).st_mode)
        except OSError:
            return False

    @classmethod
    def of_descriptor(cls, descriptor: str) -> Export:
        """The folder of a descriptor file (as named, before its own symlinks)."""
        folder = os.path.dirname(os.path.abspath(descriptor))
        return cls(root=os.path.realpath(folder), label=folder)

    @classmethod
    def of_archive(cls, path: str, members: dict[str, Member] | None = None) -> Export:
        """An OVA: references must name its ``members`` (read from its tar headers when not
        given; :class:`~migrate.sources.SourceError` when it is no longer a sound archive)."""
        if members is None:
            from migrate.sources.ova import scan_archive

            members = scan_archive(path).members
        return cls(root=None, label=path, archive=os.path.realpath(path), members=members)

    # -- references ----------------------------------------------------------------------

    def resolve(self, name: str, base: str, what: str) -> Layer:
        """The file a reference names, checked; ``base`` is the folder (or, in an OVA, the
        member folder) of the file that names it.  Raises :class:`ContainmentError`."""
        if not name or "\x00" in name:
            raise ContainmentError(f"{what} {name!r}: empty or invalid file name")
        proto = protocol_of(name)
        if proto is not None:
            raise ContainmentError(
                f"{what} {name!r}: a {proto}: name, not a file in the export (vmmove opens "
                "no protocol, network or json: names from offline input)")
        if self.archive is not None:
            return self._member(name, base, what)
        path = os.path.normpath(name if os.path.isabs(name) else os.path.join(base, name))
        real = os.path.realpath(path)
        if self.root is not None and not inside(self.root, real) and not self._volume(path, real):
            via = "" if real == path else f" (through a link, to {real})"
            raise ContainmentError(f"{what} {name!r}: outside the export {self.label}{via}")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise MissingFile(f"{what} {path}: no such file or device", path) from None
        except OSError as exc:
            raise ContainmentError(f"{what} {path}: {exc.strerror or exc}") from None
        if stat.S_ISREG(st.st_mode):
            driver = "file"
        elif stat.S_ISBLK(st.st_mode) and (self.trusted or self._volume(path, real)):
            driver = "host_device"
        else:
            raise ContainmentError(f"{what} {path}: not a regular file")
        return Layer(name=path, real=real, file={"driver": driver, "filename": real})

    def _member(self, name: str, base: str, what: str) -> Layer:
        if name.startswith("/") or name.startswith("\\"):
            raise ContainmentError(f"{what} {name!r}: an absolute path, not a member of the "
                                   f"archive {self.label}")
        key = posixpath.normpath(posixpath.join(base, name.replace("\\", "/")))
        member = self.members.get(key)
        if member is None or key.startswith("../"):
            raise ContainmentError(f"{what} {name!r}: not a member of the archive {self.label}")
        assert self.archive is not None
        window = {"driver": "raw", "offset": member.offset, "size": member.size,
                  "file": {"driver": "file", "filename": self.archive}}
        return Layer(name=f"{self.label}:{key}", real=None, file=window, member=member)

    def member_window(self, spec: str) -> Layer:
        """The member a vmmove-built ``json:`` window (``ova.member_json``) reads, checked
        against this archive; anything else is refused."""
        try:
            data = json.loads(spec[len("json:"):]) if spec.startswith("json:") else None
        except json.JSONDecodeError:
            data = None
        fmt = None
        if isinstance(data, dict) and data.get("driver") != "raw":
            fmt, data = data.get("driver"), data.get("file")
            if fmt not in FORMATS or set(data or {}) - {"driver", "offset", "size", "file"}:
                data = None
        ok = (isinstance(data, dict) and self.archive is not None
              and set(data) == {"driver", "offset", "size", "file"} and data["driver"] == "raw"
              and data["file"] == {"driver": "file", "filename": data["file"].get("filename")}
              and isinstance(data["file"].get("filename"), str)
              and os.path.realpath(data["file"]["filename"]) == self.archive)
        member = None
        if ok:
            member = next((m for m in self.members.values()
                           if m.offset == data["offset"] and m.size == data["size"]), None)
        if member is None:
            raise ContainmentError(f"{spec[:80]}…: not a disk of the archive {self.label} "
                                   "(vmmove opens no json: names it did not build itself)")
        layer = self._member(member.name, "", "member")
        layer.format = fmt
        return layer


# -------------------------------------------------------------------------------- chains


@dataclass
class Layer:
    """One image of a chain: its name for messages, the qemu node that reads its bytes."""

    name: str
    real: str | None  # the real path, None for an OVA member
    file: dict[str, Any]
    format: str | None = None
    data_file: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    member: Member | None = None

    def node(self, backing: dict[str, Any] | None) -> dict[str, Any]:
        node: dict[str, Any] = {"driver": self.format, "file": self.file}
        if self.format in BACKING_FORMATS:
            node["backing"] = backing
        if self.data_file is not None:
            node["data-file"] = self.data_file
        return node


@dataclass
class Chain:
    """A checked image and its whole backing chain, nearest first."""

    layers: list[Layer]

    @property
    def top(self) -> Layer:
        return self.layers[0]

    @property
    def format(self) -> str:
        assert self.top.format
        return self.top.format

    @property
    def virtual_size(self) -> int:
        return int(self.top.info.get("virtual-size", 0))

    @property
    def actual_size(self) -> int | None:
        size = self.top.info.get("actual-size")
        return int(size) if size is not None else None

    @property
    def dirty(self) -> bool:
        return bool(self.top.info.get("dirty-flag", False))

    @property
    def backing_files(self) -> list[BackingFile]:
        return [BackingFile(path=layer.name, format=layer.format) for layer in self.layers[1:]]

    def spec(self) -> dict[str, Any]:
        """The qemu block node of the whole chain: every layer fixed, nothing from headers."""
        node: dict[str, Any] | None = None
        for layer in reversed(self.layers):
            node = layer.node(node)
        assert node is not None
        return node

    def qemu_name(self) -> str:
        """The chain as a ``json:`` filename for any qemu-img command."""
        return "json:" + json.dumps(self.spec(), separators=(",", ":"))

    def real_paths(self) -> list[str]:
        """Host files the chain reads (layers, data files), for fingerprints."""
        paths = []
        for layer in self.layers:
            for node in (layer.file, layer.data_file):
                while isinstance(node, dict) and "file" in node:
                    node = node["file"]
                if isinstance(node, dict) and node.get("filename"):
                    paths.append(node["filename"])
        return list(dict.fromkeys(paths))


def _read(layer: Layer, offset: int, length: int) -> bytes:
    """Bytes of a layer (a file, or an OVA member's window)."""
    base = 0
    limit = None
    node = layer.file
    if node.get("driver") == "raw":  # an archive member window
        base, limit, node = int(node["offset"]), int(node["size"]), node["file"]
    if limit is not None:
        length = max(0, min(length, limit - offset))
    with open(node["filename"], "rb") as fh:
        fh.seek(base + offset)
        return fh.read(length)


def sniff(layer: Layer) -> str:
    """The format of a layer from its magic bytes, without qemu probing (which would open
    whatever the probed header names)."""
    head = _read(layer, 0, 512)
    if head[:4] == b"QFI\xfb":
        return "qcow" if head[4:8] == b"\x00\x00\x00\x01" else "qcow2"
    if head[:4] == b"QED\x00":
        return "qed"
    if head[:4] in SPARSE_MAGICS or head.lstrip().lower().startswith(b"# disk descriptor"):
        return "vmdk"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if head[:8] == b"conectix":
        return "vpc"
    if head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if head[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        return "parallels"
    return "raw"


def _check_sparse_header(layer: Layer, offset: int, what: str) -> None:
    """A sparse VMDK whose header has capacity 0 makes qemu parse an embedded descriptor
    (and open the extents it names): vmmove refuses it."""
    head = _read(layer, offset, 512)
    if head[:4] == b"KDMV" and len(head) >= 36:
        capacity, = struct.unpack_from("<Q", head, 12)
        desc_offset, = struct.unpack_from("<Q", head, 28)
        if capacity == 0 and desc_offset:
            raise ContainmentError(f"{what} {layer.name}: sparse VMDK with capacity 0 and an "
                                   "embedded descriptor naming other files: not supported")


def _check_vmdk(export: Export, layer: Layer) -> None:
    """Check what a VMDK makes qemu open besides itself: a text descriptor's extents (inside
    the export, and as long as the descriptor says: :func:`migrate.sources.vmdk.extent_short`)."""
    head = _read(layer, 0, 4)
    if head in SPARSE_MAGICS:
        _check_sparse_header(layer, 0, "disk")
        return
    from migrate.sources.vmdk import VmdkError, extent_short, parse_descriptor

    data = _read(layer, 0, MAX_DESCRIPTOR_BYTES + 1)
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise ContainmentError(f"{layer.name}: not a VMDK descriptor or sparse VMDK")
    data = data.split(b"\0", 1)[0]  # qemu reads the descriptor as a C string: so does this
    try:
        desc = parse_descriptor(data.decode("utf-8", errors="replace"), layer.name)
    except VmdkError as exc:
        raise ContainmentError(str(exc)) from None
    for extent in desc.extents:
        if not extent.filename:
            continue
        if export.archive is not None:
            raise ContainmentError(
                f"extent {extent.filename!r} of {layer.name}: a VMDK inside an OVA must be one "
                "file (streamOptimized or monolithicSparse), not a descriptor naming extents")
        assert layer.real is not None
        target = export.resolve(extent.filename, os.path.dirname(layer.real),
                                f"extent of {layer.name}")
        if extent.type in _SPARSE_EXTENTS:
            _check_sparse_header(target, 0, "extent")
        assert target.real is not None
        short = extent_short(extent, target.real, layer.name)
        if short:  # checked again here: the file may have changed since scan
            raise ContainmentError(short)


def _info(layer: Layer, force_share: bool) -> dict[str, Any]:
    """``qemu-img info`` of one layer alone: format pinned, ``backing: null``."""
    node = {"driver": layer.format, "file": layer.file, "backing": None}
    args = [qemu_img(), "info", "--output=json"]
    if force_share:
        args.append("-U")
    args.append("json:" + json.dumps(node, separators=(",", ":")))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1].removeprefix("qemu-img: ") if lines else "qemu-img failed"
        if msg.startswith("Could not open 'json:"):  # do not repeat vmmove's json: spec
            msg = msg.split("': ", 1)[-1]
        raise ImageError(f"{layer.name}: {msg}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ImageError(f"{layer.name}: qemu-img printed no JSON") from None
    if not isinstance(data, dict):
        raise ImageError(f"{layer.name}: qemu-img printed no image description")
    return data


def _base(export: Export, layer: Layer) -> str:
    """Where a layer's relative references start: its folder (real), or member folder."""
    if layer.member is not None:
        return posixpath.dirname(layer.member.name)
    assert layer.real is not None
    return os.path.dirname(layer.real)


def open_chain(export: Export, top: Layer, fmt: str | None, *,
               force_share: bool = False) -> Chain:
    """Walk ``top``'s chain layer by layer, checking every file a header names.

    ``fmt`` is the declared format of the top layer (``None``: sniffed from its magic,
    never probed by qemu).  Raises :class:`ContainmentError` for a reference vmmove will
    not follow, :class:`~migrate.clients.imageinfo.ImageError` when qemu-img cannot read a layer.
    """
    layers: list[Layer] = []
    seen: set[str] = set()
    layer, layer_fmt = top, fmt
    while True:
        layer.format = layer_fmt or sniff(layer)
        if layer.format not in FORMATS:
            raise ContainmentError(f"{layer.name}: image format {layer.format!r} is not one "
                                   "vmmove reads")
        if layer.format == "vmdk":
            _check_vmdk(export, layer)
        layer.info = _info(layer, force_share)
        data = layer.info.get("format-specific", {}).get("data", {})
        data_file = data.get("data-file") if isinstance(data, dict) else None
        if data_file:
            checked = export.resolve(data_file, _base(export, layer),
                                     f"external data file of {layer.name}")
            layer.data_file = checked.file
        layers.append(layer)
        key = layer.real or layer.name
        if key in seen:
            raise ContainmentError(f"{top.name}: backing chain loops back to {layer.name}")
        seen.add(key)
        backing = layer.info.get("backing-filename")
        if not backing:
            return Chain(layers)
        if len(layers) >= MAX_CHAIN:
            raise ContainmentError(f"{top.name}: backing chain longer than {MAX_CHAIN} layers")
        layer_fmt = layer.info.get("backing-filename-format")
        layer = export.resolve(backing, _base(export, layer), f"backing file of {layer.name}")


def open_path(export: Export, path: str, fmt: str | None, *,
              force_share: bool = False) -> Chain:
    """:func:`open_chain` for a disk path from a descriptor or inventory (an OVA disk's
    path is the ``json:`` window vmmove built for it)."""
    if export.archive is not None and path.startswith("json:"):
        top = export.member_window(path)
        return open_chain(export, top, top.format or fmt, force_share=force_share)
    base = export.root or os.path.dirname(os.path.abspath(path))
    top = export.resolve(path, base, "file")
    return open_chain(export, top, fmt, force_share=force_share)


def check_agreement(chain: Chain, reported: list[BackingFile], where: str) -> None:
    """A live host's chain (``reported``, from libvirt) against the image headers.

    Every layer libvirt names must be the layer the headers name at that depth (same real
    file); libvirt may list fewer layers (inactive and volume XML stop at the first).
    """
    below = chain.layers[1:]
    for depth, layer in enumerate(reported):
        if not layer.path:
            continue
        if depth >= len(below):
            raise ContainmentError(
                f"{where}: libvirt reports backing file {layer.path} but the image headers "
                f"end at {chain.layers[-1].name}")
        header = below[depth]
        if os.path.realpath(layer.path) != (header.real or header.name):
            raise ContainmentError(
                f"{where}: the image headers name backing file {header.name} where libvirt "
                f"reports {layer.path}: they disagree")


def outside(vm_source: Source, path: str) -> bool:
    """Whether a file a VM's offline source names lies outside its export (assessment)."""
    if vm_source.kind == SourceKind.LIBVIRT or not path:
        return False
    if vm_source.kind == SourceKind.OVA:
        return not (path.startswith(f"{vm_source.location}:") or path.startswith("json:"))
    if protocol_of(path) is not None:
        return True
    if vm_source.kind == SourceKind.PVE:  # inside one of the mapped storages
        return not any(inside(os.path.realpath(folder), os.path.realpath(path))
                       or inside(os.path.normpath(folder), os.path.normpath(path))
                       for folder in (vm_source.storage or {}).values())
    root = os.path.realpath(os.path.dirname(os.path.abspath(vm_source.location)))
    return not inside(root, os.path.realpath(path))
