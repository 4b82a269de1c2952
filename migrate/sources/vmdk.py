"""VMDK files beside a ``.vmx``: sizes, extents and snapshot parents, without a hypervisor.

A VMware disk is either a small text *descriptor* naming its extents
(``RW 4192256 SPARSE "x-s001.vmdk"``) and its parent (``parentFileNameHint``), or a
sparse file with the descriptor embedded (magic ``KDMV``), which ``qemu-img info`` reads
whole.  Scan only needs sizes and the backing chain, so descriptors are parsed here and
sparse files go through :func:`migrate.imageinfo.image_info`.  Problems with a disk never
stop a scan: they come back as :attr:`DiskFacts.error` so that the VM is still listed and
assessment can flag the disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from migrate.imageinfo import ImageError, image_info
from migrate.model import MULTI_FILE, RDM_PHYSICAL, RDM_VIRTUAL, VSAN, BackingFile

SECTOR = 512
MAX_DISK_BYTES = 64 * 1024**4  # 64 TiB: VMware's own limit is 62 TiB
MAX_DESCRIPTOR_BYTES = 1024 * 1024  # real descriptors are a few hundred bytes
MAX_CHAIN = 64  # snapshot chains beyond this are a loop or a corrupt hint
SPARSE_MAGICS = (b"KDMV", b"COWD")

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
    layout: str | None = None  # migrate.model layouts: multi-file, rdm-physical, rdm-virtual, vsan


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
            desc.extents.append(Extent(match["access"], sectors, match["type"], match["file"]))
            continue
        kv = _KEYVAL.match(line)
        if kv is None:
            raise VmdkError(f"{name}: line {number}: not a descriptor line: {line[:60]!r}")
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


def inspect(path: str) -> DiskFacts:
    """Sizes and snapshot chain of the VMDK at ``path`` (descriptor or sparse file)."""
    if not os.path.exists(path):
        return DiskFacts(error=f"{path}: disk file is missing")
    if not os.path.isfile(path):
        return DiskFacts(error=f"{path}: not a regular file")
    try:
        magic = _sniff(path)
    except OSError as exc:
        return DiskFacts(error=f"{path}: {exc.strerror or exc}")
    if magic in SPARSE_MAGICS:
        return _inspect_sparse(path)
    try:
        return _inspect_descriptor_chain(path)
    except VmdkError as exc:
        return DiskFacts(error=str(exc))
    except OSError as exc:
        return DiskFacts(error=f"{path}: {exc.strerror or exc}")


def _inspect_sparse(path: str) -> DiskFacts:
    try:
        info = image_info(path, fmt="vmdk")
    except ImageError as exc:
        return DiskFacts(error=str(exc))
    create_type = None
    top = info.raw[0] if info.raw else {}
    data = top.get("format-specific", {}).get("data", {})
    if isinstance(data, dict):
        create_type = data.get("create-type")
    return DiskFacts(
        virtual_size=info.virtual_size,
        allocated_size=os.path.getsize(path),
        backing_chain=info.backing_chain,
        create_type=create_type,
    )


def _extent_bytes(desc: Descriptor, folder: str, name: str) -> tuple[int, str | None]:
    """Sum of the sizes of the extent files present, and a message for the first missing one."""
    total, missing = 0, None
    for extent in desc.extents:
        if not extent.filename:
            continue
        extent_path = os.path.join(folder, extent.filename)
        try:
            total += os.path.getsize(extent_path)
        except OSError:
            if missing is None:
                missing = f"{name}: extent file {extent.filename!r} is missing"
    return total, missing


def _inspect_descriptor_chain(path: str) -> DiskFacts:
    desc = _read_text_descriptor(path)
    layout = layout_of(desc)
    if layout != MULTI_FILE:
        # No image data here: an RDM's stub or a vSAN object id. The size is the LUN's/object's.
        return DiskFacts(format=None, virtual_size=desc.virtual_size, allocated_size=0,
                         create_type=desc.create_type, layout=layout)
    folder = os.path.dirname(os.path.abspath(path))
    allocated, error = _extent_bytes(desc, folder, path)
    facts = DiskFacts(
        virtual_size=desc.virtual_size,
        allocated_size=allocated,
        create_type=desc.create_type,
        error=error,
        layout=layout,
    )
    seen = {os.path.realpath(path)}
    hint, here = desc.parent_hint, folder
    while hint:
        parent = hint if os.path.isabs(hint) else os.path.join(here, hint)
        parent = os.path.abspath(parent)
        facts.backing_chain.append(BackingFile(path=parent, format="vmdk"))
        if len(facts.backing_chain) > MAX_CHAIN:
            facts.error = facts.error or f"{path}: snapshot chain longer than {MAX_CHAIN} layers"
            break
        real = os.path.realpath(parent)
        if real in seen:
            facts.error = facts.error or f"{path}: snapshot chain loops back to {parent}"
            break
        seen.add(real)
        if not os.path.isfile(parent):
            facts.error = facts.error or f"{path}: parent disk {parent} is missing"
            break
        if _sniff(parent) in SPARSE_MAGICS:
            try:
                info = image_info(parent, fmt="vmdk")
            except ImageError as exc:
                facts.error = facts.error or str(exc)
                break
            facts.backing_chain.extend(info.backing_chain)
            break
        parent_desc = _read_text_descriptor(parent)
        _, missing = _extent_bytes(parent_desc, os.path.dirname(parent), parent)
        if missing and facts.error is None:
            facts.error = missing
        hint, here = parent_desc.parent_hint, os.path.dirname(parent)
    return facts
