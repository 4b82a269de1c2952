"""VMDK files beside a ``.vmx``: sizes, extents and snapshot parents, without a hypervisor.

A VMware disk is either a small text *descriptor* naming its extents
(``RW 4192256 SPARSE "x-s001.vmdk"``) and its parent (``parentFileNameHint``), or a
sparse file with the descriptor embedded (magic ``KDMV``), which ``qemu-img info`` reads
whole.  Scan only needs sizes and the backing chain, so descriptors are parsed here and
sparse files go through :func:`migrate.sources.containment.open_chain` (qemu-img, one
layer at a time).  Every extent and parent a descriptor names is resolved by
:meth:`migrate.sources.containment.Export.resolve`: inside the export's folder after
symlinks, no protocol names.  Problems with a disk never stop a scan: they come back as
:attr:`DiskFacts.error` so that the VM is still listed and assessment can flag the disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from migrate.core.errors import VmmoveError
from migrate.core.model import MULTI_FILE, RDM_PHYSICAL, RDM_VIRTUAL, VSAN, BackingFile
from migrate.sources.containment import (
    MAX_CHAIN,
    MAX_DESCRIPTOR_BYTES,
    SPARSE_MAGICS,
    ContainmentError,
    Export,
    Layer,
    MissingFile,
    open_chain,
)

SECTOR = 512
MAX_DISK_BYTES = 64 * 1024**4  # 64 TiB: VMware's own limit is 62 TiB

_EXTENT = re.compile(
    r'^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\S+)\s+(?P<type>[A-Z]+)'
    r'(?:\s+"(?P<file>[^"]*)"(?:\s+(?P<offset>\S+))?)?\s*$'
)
_KEYVAL = re.compile(r'^(?P<key>[A-Za-z0-9_.]+)\s*=\s*(?P<value>.*)$')


class VmdkError(ValueError):
    """A descriptor that cannot be understood; the message names the file."""


@dataclass
class Extent:
    access: str
    sectors: int
    type: str  # FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE, …
    filename: str | None = None
    offset: str | None = None  # a flat extent's start in its file (sectors), as written


@dataclass
class Descriptor:
    create_type: str | None = None
    extents: list[Extent] = field(default_factory=list)
    parent_hint: str | None = None
    adapter_type: str | None = None

    @property
    def virtual_size(self) -> int:
        return sum(e.sectors for e in self.extents) * SECTOR


@dataclass
class DiskFacts:
    """What scan records about one VMDK: sizes, chain, and why it is unusable if it is."""

    format: str | None = "vmdk"
    virtual_size: int | None = None
    allocated_size: int | None = None
    backing_chain: list[BackingFile] = field(default_factory=list)
    create_type: str | None = None
    error: str | None = None
    layout: str | None = None  # migrate.core.model layouts: multi-file, rdm-physical, rdm-virtual, vsan


def layout_of(desc: Descriptor) -> str:
    """What a text descriptor's data is (VMware Virtual Disk Format 1.1, createType/extents).

    ``vmfsPassthroughRawDeviceMap`` (extent ``VMFSRDM``) is a physical-mode raw device map,
    ``vmfsRawDeviceMap`` (extent ``VMFSRAW``) a virtual-mode one: the data is on a SAN LUN
    and the ``-rdmp``/``-rdm`` file is only a mapping stub.  An extent naming a
    ``vsan://`` object is a vSAN disk with no local data.  Any other descriptor keeps its
    data in extent files beside it (several files, not one image).
    """
    create = (desc.create_type or "").lower()
    types = {e.type.upper() for e in desc.extents}
    if create == "vmfspassthroughrawdevicemap" or "VMFSRDM" in types:
        return RDM_PHYSICAL
    if create == "vmfsrawdevicemap" or "VMFSRAW" in types:
        return RDM_VIRTUAL
    if any((e.filename or "").lower().startswith("vsan://") for e in desc.extents):
        return VSAN
    return MULTI_FILE


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_descriptor(text: str, name: str) -> Descriptor:
    """Parse a VMDK text descriptor; raise :class:`VmdkError` naming ``name`` when malformed.

    A descriptor may be followed by NUL padding: ``qemu-img create -o subformat=
    twoGbMaxExtentSparse`` (or ``monolithicFlat``) pads it to a whole sector, and qemu's
    vmdk driver reads the text up to the first NUL.  NULs followed by anything else are
    binary data, not a descriptor.
    """
    text, nul, rest = text.partition("\x00")
    if nul and rest.strip("\x00"):
        raise VmdkError(f"{name}: not a VMDK descriptor (binary data)")
    desc = Descriptor()
    seen_marker = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            seen_marker = seen_marker or "descriptorfile" in line.lower().replace(" ", "")
            continue
        match = _EXTENT.match(line)
        if match:
            try:
                sectors = int(match["sectors"])
            except ValueError:
                raise VmdkError(
                    f"{name}: line {number}: extent size {match['sectors']!r} is not a number"
                ) from None
            if sectors < 0:
                raise VmdkError(f"{name}: line {number}: negative extent size {sectors}")
            desc.extents.append(Extent(match["access"], sectors, match["type"], match["file"],
                                       match["offset"]))
            continue
        kv = _KEYVAL.match(line)
        if kv is None:  # the line's text is not quoted: the file may be anyone's
            raise VmdkError(f"{name}: line {number}: not a descriptor line")
        key, value = kv["key"].lower(), _unquote(kv["value"])
        if key == "createtype":
            desc.create_type = value
        elif key == "parentfilenamehint":
            desc.parent_hint = value or None
        elif key == "ddb.adaptertype":
            desc.adapter_type = value
    if desc.create_type is None and not desc.extents and not seen_marker:
        raise VmdkError(f"{name}: not a VMDK descriptor (no createType and no extents)")
    if desc.virtual_size > MAX_DISK_BYTES:
        raise VmdkError(
            f"{name}: extents add up to {desc.virtual_size} bytes, beyond the 64 TiB a disk can be"
        )
    return desc


def _sniff(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def text_descriptor(path: str) -> bool:
    """True when ``path`` is a VMDK text descriptor (its data in other files), not a sparse
    VMDK that holds its own data."""
    try:
        return _sniff(path) not in SPARSE_MAGICS
    except OSError:
        return False


def _read_text_descriptor(path: str) -> Descriptor:
    size = os.path.getsize(path)
    if size > MAX_DESCRIPTOR_BYTES:
        raise VmdkError(f"{path}: not a VMDK descriptor or sparse VMDK ({size} bytes of unknown data)")
    with open(path, "rb") as fh:
        data = fh.read(MAX_DESCRIPTOR_BYTES)
    return parse_descriptor(data.decode("utf-8", errors="replace"), path)


def inspect(path: str, export: Export | None = None) -> DiskFacts:
    """Sizes and snapshot chain of the VMDK at ``path`` (descriptor or sparse file).

    ``export`` is where the files may be (default: the VMDK's own folder); a disk, extent
    or parent outside it is an error, never opened.
    """
    export = export or Export.of_descriptor(path)
    try:
        top = export.resolve(path, os.path.dirname(os.path.abspath(path)), "file")
    except MissingFile:
        return DiskFacts(error=f"{path}: disk file is missing")
    except ContainmentError as exc:
        return DiskFacts(error=str(exc))
    assert top.real is not None
    try:
        magic = _sniff(top.real)
    except OSError as exc:
        return DiskFacts(error=f"{path}: {exc.strerror or exc}")
    if magic in SPARSE_MAGICS:
        return _inspect_sparse(export, top)
    try:
        return _inspect_descriptor_chain(export, path)
    except VmdkError as exc:
        return DiskFacts(error=str(exc))
    except OSError as exc:
        return DiskFacts(error=f"{path}: {exc.strerror or exc}")


def _inspect_sparse(export: Export, top: Layer) -> DiskFacts:
    try:
        chain = open_chain(export, top, "vmdk")
    except VmmoveError as exc:
        return DiskFacts(error=str(exc))
    data = chain.top.info.get("format-specific", {}).get("data", {})
    create_type = data.get("create-type") if isinstance(data, dict) else None
    assert top.real is not None
    return DiskFacts(
        virtual_size=chain.virtual_size,
        allocated_size=os.path.getsize(top.real),
        backing_chain=chain.backing_files,
        create_type=create_type,
    )


FLAT_EXTENTS = ("FLAT", "VMFS")
SPARSE_EXTENTS = ("SPARSE", "VMFSSPARSE")


def extent_short(extent: Extent, real: str, name: str) -> str | None:
    """Why the extent file at ``real`` cannot hold what descriptor ``name`` declares for it,
    or None when it can (or the extent type has no size to check here).

    A ``FLAT``/``VMFS`` extent's data is ``sectors`` × 512 bytes from ``offset`` sectors
    into its file (VMware Virtual Disk Format 1.1, "Extent Descriptions"), so the file
    must be at least ``(offset + sectors) × 512`` bytes: qemu reads past the end of a
    shorter file as zeros, which would copy a truncated disk as if it were whole.  A
    ``SPARSE``/``VMFSSPARSE`` extent is a sparse VMDK whose header (``KDMV``, capacity in
    sectors at byte 12) must cover the declared sectors.  Raises :class:`OSError` when
    the file cannot be read.
    """
    size = os.path.getsize(real)
    where = f"{name}: extent file {extent.filename!r}"
    if extent.type in FLAT_EXTENTS:
        try:
            offset = int(extent.offset or 0)
        except ValueError:
            return f"{where}: offset {extent.offset!r} is not a number"
        need = (offset + extent.sectors) * SECTOR
        if size < need:
            return (f"{where} is {size} bytes, the descriptor declares {need} bytes "
                    f"({extent.sectors} sectors at offset {offset}): truncated")
    elif extent.type in SPARSE_EXTENTS:
        with open(real, "rb") as fh:
            head = fh.read(20)
        if head[:4] == b"KDMV" and len(head) == 20:
            capacity = int.from_bytes(head[12:20], "little")
            if capacity < extent.sectors:
                return (f"{where} holds {capacity * SECTOR} bytes (sparse header), the "
                        f"descriptor declares {extent.sectors * SECTOR} bytes")
        elif head[:4] not in SPARSE_MAGICS:
            return f"{where} is {size} bytes with no sparse VMDK header: truncated or not a VMDK"
    return None


def _extent_bytes(export: Export, desc: Descriptor, folder: str, name: str) -> tuple[int, str | None]:
    """Sum of the sizes of the extent files present, and a message for the first problem
    (missing, refused: outside the export, a protocol name; or shorter than declared,
    :func:`extent_short`)."""
    total, problem = 0, None
    for extent in desc.extents:
        if not extent.filename:
            continue
        try:
            layer = export.resolve(extent.filename, folder, f"extent of {name}")
        except MissingFile:
            problem = problem or f"{name}: extent file {extent.filename!r} is missing"
            continue
        except ContainmentError as exc:
            problem = problem or str(exc)
            continue
        assert layer.real is not None
        total += os.path.getsize(layer.real)
        problem = problem or extent_short(extent, layer.real, name)
    return total, problem


def _inspect_descriptor_chain(export: Export, path: str) -> DiskFacts:
    desc = _read_text_descriptor(path)
    layout = layout_of(desc)
    if layout != MULTI_FILE:
        # No image data here: an RDM's stub or a vSAN object id. The size is the LUN's/object's.
        return DiskFacts(format=None, virtual_size=desc.virtual_size, allocated_size=0,
                         create_type=desc.create_type, layout=layout)
    folder = os.path.dirname(os.path.abspath(path))
    allocated, error = _extent_bytes(export, desc, folder, path)
    facts = DiskFacts(
        virtual_size=desc.virtual_size,
        allocated_size=allocated,
        create_type=desc.create_type,
        error=error,
        layout=layout,
    )
    seen = {os.path.realpath(path)}
    hint, here, child = desc.parent_hint, folder, path
    while hint:
        try:
            layer = export.resolve(hint, here, f"parent of {child}")
        except MissingFile as exc:
            facts.backing_chain.append(BackingFile(path=exc.path, format="vmdk"))
            facts.error = facts.error or f"{path}: parent disk {exc.path} is missing"
            break
        except ContainmentError as exc:
            facts.error = facts.error or str(exc)
            break
        assert layer.real is not None
        parent = layer.name
        facts.backing_chain.append(BackingFile(path=parent, format="vmdk"))
        if len(facts.backing_chain) > MAX_CHAIN:
            facts.error = facts.error or f"{path}: snapshot chain longer than {MAX_CHAIN} layers"
            break
        if layer.real in seen:
            facts.error = facts.error or f"{path}: snapshot chain loops back to {parent}"
            break
        seen.add(layer.real)
        if _sniff(layer.real) in SPARSE_MAGICS:
            try:
                chain = open_chain(export, layer, "vmdk")
            except VmmoveError as exc:
                facts.error = facts.error or str(exc)
                break
            facts.backing_chain.extend(chain.backing_files)
            break
        parent_desc = _read_text_descriptor(layer.real)
        _, missing = _extent_bytes(export, parent_desc, os.path.dirname(parent), parent)
        if missing and facts.error is None:
            facts.error = missing
        hint, here, child = parent_desc.parent_hint, os.path.dirname(parent), parent
    return facts
