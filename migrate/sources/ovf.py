"""OVF descriptors (0.9, 1.x and 2.x, with VMware and VirtualBox extensions): one VM per VirtualSystem.

The descriptor is parsed with defusedxml, so entity expansion and external entities are
refused.  Elements are matched by local name because the same section appears under three
namespaces (DMTF OVF 1 and 2, VMware's pre-standard 0.9 ``Section xsi:type=…``) and
exporters spell ``InstanceID`` both ways.  A descriptor that contradicts itself (a disk
pointing at a file the References do not list, duplicate ids, absurd sizes) is refused
with one :class:`SourceError` line naming the file; a disk file that is merely absent is
not an error — its sizes come from the DiskSection.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from xml.etree.ElementTree import Element, ParseError

import defusedxml
from defusedxml import ElementTree as DET

from migrate.core.errors import VmmoveError
from migrate.core.model import (
    normalize_mac,
    VM,
    BackingFile,
    CpuTopology,
    Device,
    MULTI_FILE,
    Disk,
    GuestOS,
    Nic,
    Packing,
    Piece,
    PowerState,
    Source,
    SourceKind,
)
from migrate.core.errors import SourceError
from migrate.sources import read_bounded
from migrate.sources.containment import (
    FORMATS as QEMU_FORMATS,
    Chain,
    ContainmentError,
    Export,
    MissingFile,
    open_chain,
)
from migrate.sources.vmware_os import from_vmware, guest_from_ovf, is_64bit
from migrate.sources.vmx import disk_target, unique_target

MAX_OVF_BYTES = 32 * 1024 * 1024  # the largest real appliance descriptors are ~5 MiB
MAX_DISK = 64 * 1024**4
MAX_MEMORY = 24 * 1024**4
MAX_FILE = 64 * 1024**4
MAX_VCPUS = 4096

ENVELOPE_NAMESPACES = {
    "http://schemas.dmtf.org/ovf/envelope/1": "1.x",
    "http://schemas.dmtf.org/ovf/envelope/1/": "ovirt",  # oVirt/RHV and virt-v2v -o rhv
    "http://schemas.dmtf.org/ovf/envelope/2": "2.x",
    "http://www.vmware.com/schema/ovf/1/envelope": "0.9",
    "": "unqualified",
}
XSI = "http://www.w3.org/2001/XMLSchema-instance"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HOST_RESOURCE = re.compile(r"^(?:ovf:)?/+(disk|file)/(.+)$")

FORMATS = [  # substring of the ovf:format URI -> qemu format name
    ("vmdk", "vmdk"),
    ("qcow", "qcow2"),
    ("vhdx", "vhdx"),
    ("vhd", "vpc"),
    ("vdi", "vdi"),
    ("iso", "raw"),
    ("raw", "raw"),
]
EXTENSIONS = {".vmdk": "vmdk", ".qcow2": "qcow2", ".img": "raw", ".raw": "raw", ".iso": "raw",
              ".vhd": "vpc", ".vhdx": "vhdx", ".vdi": "vdi"}
NIC_MODELS = {"e1000": "e1000", "e1000e": "e1000e", "vmxnet": "vmxnet", "vmxnet2": "vmxnet2",
              "vmxnet3": "vmxnet3", "pcnet32": "pcnet", "virtio": "virtio", "vlance": "vlance",
              "sriovethernetcard": "sriov", "virtualvmxnet3": "vmxnet3", "virtuale1000": "e1000",
              "virtuale1000e": "e1000e", "rtl8139": "rtl8139"}
#: oVirt ``ovf:volume-format`` -> qemu format; ``ovf:disk-interface`` -> (bus, controller model);
#: NIC ``ResourceSubType`` numbers (ovirt-engine VmInterfaceType) -> model.
OVIRT_VOLUME_FORMATS = {"COW": "qcow2", "RAW": "raw"}
OVIRT_INTERFACES = {"virtio": ("virtio", None), "virtio_scsi": ("scsi", "virtio-scsi"),
                    "ide": ("ide", None), "sata": ("sata", "ahci"),
                    "spapr_vscsi": ("scsi", None)}
OVIRT_NIC_MODELS = {"0": "rtl8139", "1": "rtl8139", "2": "e1000", "3": "virtio"}
#: VirtualBox ``Adapter@type`` (its NetworkAdapterType) -> NIC model.
VBOX_NIC_TYPES = {"am79c970a": "pcnet", "am79c973": "pcnet", "am79c960": "pcnet",
                  "82540em": "e1000", "82543gc": "e1000", "82545em": "e1000", "virtio": "virtio",
                  "virtio_1.0": "virtio"}
#: VirtualBox attachment elements of an Adapter, with the network name when they have none.
VBOX_ATTACHMENTS = {"NAT": "NAT", "BridgedInterface": "Bridged", "InternalNetwork": "intnet",
                    "HostOnlyInterface": "HostOnly", "NATNetwork": "NatNetwork",
                    "GenericInterface": "Generic", "HostOnlyNetwork": "HostOnly"}
#: VirtualBox ``StorageController@type`` (its StorageControllerType) -> (bus, controller model).
VBOX_CONTROLLERS = {"ahci": ("sata", "ahci"), "piix3": ("ide", None), "piix4": ("ide", None),
                    "ich6": ("ide", None), "lsilogic": ("scsi", "lsilogic"),
                    "lsilogicsas": ("scsi", "lsisas1068"), "buslogic": ("scsi", "buslogic"),
                    "nvme": ("nvme", None), "virtioscsi": ("scsi", "virtio-scsi"),
                    "usb": ("usb", None)}
SCSI_MODELS = {"lsilogic": "lsilogic", "lsilogicsas": "lsisas1068", "virtualscsi": "pvscsi",
               "buslogic": "buslogic", "pvscsi": "pvscsi", "virtio-scsi": "virtio-scsi"}


# ---------------------------------------------------------------------------- XML helpers

def local(tag: object) -> str:
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def namespace(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def kind(el: Element) -> str:
    """Logical section name: ``DiskSection`` whether written so or as OVF 0.9 ``Section xsi:type``."""
    name = local(el.tag)
    if name in ("Section", "Content"):
        xtype = el.get(f"{{{XSI}}}type")
        if xtype:
            return xtype.split(":")[-1].removesuffix("_Type")
    return name


def attr(el: Element, name: str) -> str | None:
    """An attribute by local name, whatever its namespace prefix (``ovf:href`` or ``href``)."""
    value = el.get(name)
    if value is not None:
        return value
    for key, val in el.attrib.items():
        if local(key) == name:
            return val
    return None


def children(el: Element, name: str) -> list[Element]:
    return [c for c in el if kind(c) == name]


def child_text(el: Element, name: str) -> str | None:
    low = name.lower()
    for c in el:
        if local(c.tag).lower() == low:
            return (c.text or "").strip()
    return None


# ---------------------------------------------------------------------------- units

def unit_multiplier(units: str | None, default: int) -> int:
    """Bytes per unit of a DMTF programmatic unit: ``byte * 2^20``, ``MegaBytes``, ``GB``…"""
    if units is None or not units.strip():
        return default
    text = units.strip().lower().replace(" ", "")
    named = {"byte": 1, "bytes": 1, "b": 1, "kilobytes": 1024, "kb": 1024, "kib": 1024,
             "megabytes": 1024**2, "mb": 1024**2, "mib": 1024**2, "gigabytes": 1024**3,
             "gb": 1024**3, "gib": 1024**3, "terabytes": 1024**4, "tb": 1024**4, "tib": 1024**4}
    if text in named:
        return named[text]
    match = re.fullmatch(r"(?:byte)?((?:\*\d+(?:\^\d+)?)*)", text)
    if not match or not text.startswith("byte"):
        raise ValueError(units)
    value = 1
    for base, exp in re.findall(r"\*(\d+)(?:\^(\d+))?", match.group(1)):
        if exp and int(exp) > 64:
            raise ValueError(units)
        value *= int(base) ** int(exp or 1)
    return value


# ---------------------------------------------------------------------------- model

@dataclass
class FileRef:
    id: str
    href: str
    size: int | None = None
    compression: str | None = None
    chunk_size: int | None = None

    @property
    def chunked(self) -> bool:
        return self.chunk_size is not None


@dataclass
class DiskDef:
    id: str
    capacity: int
    populated: int | None
    format: str | None
    file: FileRef | None
    parent: str | None = None
    bus: str | None = None  # oVirt ovf:disk-interface
    controller_model: str | None = None


@dataclass
class Location:
    """Where the bytes of a referenced file are, as a path qemu-img can open."""

    path: str | None
    exists: bool
    size: int | None = None  # bytes of the file (or archive member)
    fmt_path: Callable[[str | None], str] | None = None  # path for a given qemu format
    error: str | None = None
    #: opens the file's checked chain for a given qemu format (containment.open_chain)
    open: Callable[[str | None], Chain] | None = None
    pieces: list[Piece] | None = None  # the stored pieces of a compressed or chunked file


Locator = Callable[[FileRef], Location]

MAX_CHUNKS = 1_000_000  # 64 TiB in 64 MiB chunks; ovftool's default chunk is 2 GiB
GZIP_MAGIC = b"\x1f\x8b"


def chunk_name(href: str, index: int) -> str:
    """DSP0243 §5.3: chunk ``index`` of ``href`` is ``href.NNNNNNNNN`` (nine digits, from 0)."""
    return f"{href}.{index:09d}"


def packed_location(ref: FileRef, find: Callable[[str], Piece | None],
                    display: str | None) -> Location:
    """Where the pieces of a compressed and/or chunked file are, checked against ``ref``.

    ``find(name)`` gives the piece stored under a file name, or None.  Problems (a missing
    chunk, chunk sizes that contradict ``ovf:chunkSize``, a total that differs from
    ``ovf:size``, a "gzip" file without the gzip magic) come back as the location's error:
    they are that disk's problem, never the whole descriptor's.
    """
    if ref.compression and ref.compression.lower() != "gzip":
        return Location(path=display, exists=False, size=ref.size,
                        error=f"{ref.href}: ovf:compression {ref.compression!r} is not one "
                              "DSP0243 defines (only gzip)")
    pieces: list[Piece] = []
    if ref.chunk_size is not None:
        if ref.chunk_size <= 0:
            return Location(path=display, exists=False, size=ref.size,
                            error=f"{ref.href}: ovf:chunkSize {ref.chunk_size} is not positive")
        expected = -(-ref.size // ref.chunk_size) if ref.size is not None else None
        if expected is not None and expected > MAX_CHUNKS:
            return Location(path=display, exists=False, size=ref.size,
                            error=f"{ref.href}: {expected} chunks is absurd")
        index = 0
        while expected is None or index < expected:
            piece = find(chunk_name(ref.href, index))
            if piece is None:
                break
            pieces.append(piece)
            index += 1
            if index > MAX_CHUNKS:
                break
        if not pieces or (expected is not None and len(pieces) < expected):
            return Location(path=display, exists=False, size=ref.size,
                            error=f"{ref.href}: chunk {chunk_name(ref.href, len(pieces))} "
                                  "is missing from the package")
        for n, piece in enumerate(pieces[:-1]):
            if piece.size != ref.chunk_size:
                return Location(path=display, exists=False, size=ref.size,
                                error=f"{ref.href}: chunk {chunk_name(ref.href, n)} is "
                                      f"{piece.size} bytes, not the ovf:chunkSize {ref.chunk_size}")
        if pieces[-1].size > ref.chunk_size or pieces[-1].size == 0:
            return Location(path=display, exists=False, size=ref.size,
                            error=f"{ref.href}: last chunk is {pieces[-1].size} bytes "
                                  f"(ovf:chunkSize {ref.chunk_size})")
    else:
        piece = find(ref.href)
        if piece is None:
            return Location(path=display, exists=False, size=ref.size,
                            error=f"{ref.href}: not in the package")
        pieces.append(piece)
    total = sum(p.size for p in pieces)
    if ref.size is not None and total != ref.size:
        return Location(path=display, exists=False, size=total,
                        error=f"{ref.href}: the package holds {total} bytes of it but the "
                              f"descriptor says ovf:size {ref.size}")
    if ref.compression:
        try:
            with open(pieces[0].path, "rb") as fh:
                fh.seek(pieces[0].offset)
                magic = fh.read(2)
        except OSError as exc:
            return Location(path=display, exists=False, size=total,
                            error=f"{ref.href}: {exc.strerror or exc}")
        if magic != GZIP_MAGIC:
            return Location(path=display, exists=False, size=total,
                            error=f"{ref.href}: declared gzip-compressed but is not a gzip stream")
    return Location(path=display, exists=True, size=total, pieces=pieces)


@dataclass
class Item:
    instance: str
    rtype: int | None
    subtype: str
    fields: dict[str, str]
    host_resources: list[str]
    config: dict[str, str] = field(default_factory=dict)
    cores_per_socket: int | None = None
    element: Element | None = None


def _int(text: str | None, what: str, path: str, lo: int = 0, hi: int | None = None) -> int:
    if text is None or not text.strip():
        raise SourceError(f"{path}: {what} is missing")
    try:
        value = int(text.strip())
    except ValueError:
        raise SourceError(f"{path}: {what} {text!r} is not a number") from None
    if value < lo:
        raise SourceError(f"{path}: {what} {value} is negative" if value < 0
                          else f"{path}: {what} {value} is out of range")
    if hi is not None and value > hi:
        raise SourceError(f"{path}: {what} {value} is absurdly large")
    return value


def _format_of(uri: str | None, href: str | None) -> str | None:
    low = (uri or "").lower()
    for needle, fmt in FORMATS:
        if needle in low:
            return fmt
    if href:
        return EXTENSIONS.get(os.path.splitext(href.lower())[1])
    return None


def default_locator(ovf_path: str) -> Locator:
    """Files of a plain OVF: inside the descriptor's folder (the export), after symlinks.

    ``http(s):``/``ftp:`` hrefs stay network disks, ``file:`` URLs and other protocol names
    are refused, and so is any href that resolves outside the folder
    (:mod:`migrate.sources.containment`): such a disk gets an error, never opened.
    """
    export = Export.of_descriptor(ovf_path)
    folder = os.path.dirname(os.path.abspath(ovf_path))

    def names_of(href: str) -> list[str]:
        decoded = urllib.parse.unquote(href)
        return [href] if decoded == href else [href, decoded]

    def find(name: str) -> Piece | None:
        """A chunk or compressed file inside the export (containment applies), or None."""
        for candidate in names_of(name):
            try:
                layer = export.resolve(candidate, folder, "href")
            except ContainmentError:
                continue
            assert layer.real is not None
            return Piece(layer.real, 0, os.path.getsize(layer.real))
        return None

    def locate(ref: FileRef) -> Location:
        href = ref.href
        parsed = urllib.parse.urlsplit(href)
        if parsed.scheme in ("http", "https", "ftp"):
            return Location(path=href, exists=False, size=ref.size,
                            error=f"href {href!r} is a URL: vmmove reads only files inside the "
                                  "export; download it beside the descriptor")
        if ref.compression or ref.chunked:
            return packed_location(ref, find,
                                   os.path.normpath(os.path.join(folder, href)))
        problem = None
        for name in names_of(href):
            try:
                layer = export.resolve(name, folder, "href")
            except MissingFile:
                continue
            except ContainmentError as exc:
                problem = problem or str(exc)
                continue
            assert layer.real is not None
            size = os.path.getsize(layer.real)
            if ref.size is not None and ref.size != size:
                return Location(path=layer.name, exists=True, size=size,
                                error=f"{href} is {size} bytes but the descriptor says "
                                      f"ovf:size {ref.size} (truncated or replaced)")
            return Location(path=layer.name, exists=True, size=size,
                            open=lambda fmt, top=layer: open_chain(export, top, fmt))
        if problem:
            return Location(path=None, exists=False, size=ref.size, error=problem)
        return Location(path=os.path.normpath(os.path.join(folder, href)), exists=False,
                        size=ref.size)

    return locate


# ---------------------------------------------------------------------------- parsing

def parse_xml(data: str | bytes, path: str) -> Element:
    """The root element, or a one-line SourceError for malformed or hostile XML."""
    try:
        return DET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except defusedxml.EntitiesForbidden:
        raise SourceError(f"{path}: XML entity declarations are refused "
                          "(entity expansion or external entity attack)") from None
    except (defusedxml.ExternalReferenceForbidden, defusedxml.DTDForbidden):
        raise SourceError(f"{path}: external XML references are refused") from None
    except defusedxml.DefusedXmlException as exc:
        raise SourceError(f"{path}: unsafe XML refused: {exc}") from None
    except ParseError as exc:
        raise SourceError(f"{path}: malformed XML: {exc}") from None
    except (ValueError, UnicodeError) as exc:
        raise SourceError(f"{path}: malformed XML: {exc}") from None


def _references(env: Element, path: str) -> dict[str, FileRef]:
    files: dict[str, FileRef] = {}
    for refs in children(env, "References"):
        for f in refs:
            if local(f.tag) != "File":
                continue
            fid, href = attr(f, "id"), attr(f, "href")
            if not fid:
                raise SourceError(f"{path}: References/File without ovf:id")
            if not href:
                raise SourceError(f"{path}: References/File {fid!r} has no ovf:href")
            if fid in files:
                raise SourceError(f"{path}: References/File id {fid!r} appears twice")
            size_text = attr(f, "size")
            size = None
            if size_text is not None and size_text.strip() != "":
                size = _int(size_text, f"size of file {href!r}", path, 0, MAX_FILE)
            compression = attr(f, "compression")
            chunk_text = attr(f, "chunkSize")
            chunk = (_int(chunk_text, f"chunkSize of file {href!r}", path, 0, MAX_FILE)
                     if chunk_text is not None and chunk_text.strip() else None)
            files[fid] = FileRef(fid, href, size,
                                 compression if compression not in (None, "", "identity") else None,
                                 chunk)
    return files


def _properties(env: Element) -> dict[str, str]:
    """Default values of ProductSection properties, for ``${key}`` disk capacities."""
    props: dict[str, str] = {}
    for el in env.iter():
        if local(el.tag) == "Property":
            key, value = attr(el, "key"), attr(el, "value")
            if key and value is not None:
                props.setdefault(key, value)
    return props


def _disks(env: Element, files: dict[str, FileRef], path: str,
           dialect: str | None = None) -> dict[str, DiskDef]:
    props = _properties(env)
    disks: dict[str, DiskDef] = {}
    sections = [s for s in env if kind(s) == "DiskSection"]
    for section in sections:
        for d in section:
            if local(d.tag) != "Disk":
                continue
            did = attr(d, "diskId")
            if not did:
                raise SourceError(f"{path}: DiskSection/Disk without ovf:diskId")
            if did in disks:
                raise SourceError(f"{path}: disk id {did!r} appears twice in the DiskSection")
            cap_text = attr(d, "capacity")
            ovirt_gib = dialect == "ovirt" and (cap_text is None or not cap_text.strip())
            if ovirt_gib:
                cap_text = attr(d, "size")  # oVirt: ovf:size is the capacity in GiB
            if cap_text is None or cap_text.strip() == "":
                raise SourceError(f"{path}: disk {did!r} has no ovf:capacity")
            ref = re.fullmatch(r"\$\{(.+)\}", cap_text.strip())
            if ref:
                if ref.group(1) not in props:
                    raise SourceError(f"{path}: disk {did!r} capacity refers to unknown property "
                                      f"{ref.group(1)!r}")
                cap_text = props[ref.group(1)]
            try:
                mult = 1024**3 if ovirt_gib else unit_multiplier(attr(d, "capacityAllocationUnits"), 1)
            except ValueError:
                raise SourceError(f"{path}: disk {did!r} has unknown capacityAllocationUnits "
                                  f"{attr(d, 'capacityAllocationUnits')!r}") from None
            count = _int(cap_text, f"capacity of disk {did!r}", path, 0)
            capacity = count * mult
            if capacity == 0:
                raise SourceError(f"{path}: disk {did!r} has zero capacity")
            if capacity > MAX_DISK:
                raise SourceError(f"{path}: disk {did!r} capacity {capacity} bytes is absurd "
                                  "(more than 64 TiB)")
            populated = None
            pop_text = attr(d, "populatedSize")
            if pop_text not in (None, ""):
                populated = _int(pop_text, f"populatedSize of disk {did!r}", path, 0, MAX_DISK)
                if populated > capacity:
                    raise SourceError(f"{path}: disk {did!r} populatedSize {populated} exceeds "
                                      f"its capacity {capacity}")
            file_id = attr(d, "fileRef")
            file_ref = None
            if file_id and file_id not in files and dialect == "ovirt":
                # oVirt's fileRef is the File's href (<image group>/<volume>), not its id
                file_id = next((f.id for f in files.values() if f.href == file_id), file_id)
            if file_id:
                if file_id not in files:
                    raise SourceError(f"{path}: disk {did!r} refers to file {file_id!r}, "
                                      "which References does not list")
                file_ref = files[file_id]
            fmt = _format_of(attr(d, "format"), file_ref.href if file_ref else None)
            bus = model = None
            if dialect == "ovirt":
                fmt = OVIRT_VOLUME_FORMATS.get((attr(d, "volume-format") or "").upper(), fmt)
                bus, model = OVIRT_INTERFACES.get((attr(d, "disk-interface") or "").lower(),
                                                  (None, None))
            disks[did] = DiskDef(did, capacity, populated, fmt, file_ref,
                                 attr(d, "parentRef") or None, bus, model)
    for disk in disks.values():
        if disk.parent is not None and disk.parent not in disks:
            raise SourceError(f"{path}: disk {disk.id!r} has parentRef {disk.parent!r}, "
                              "which the DiskSection does not list")
    return disks


def _config(parent: Element) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in parent:
        if local(c.tag) in ("Config", "ExtraConfig"):
            key, value = attr(c, "key"), attr(c, "value")
            if key is not None and value is not None:
                out[key] = value
    return out


def _items(vhs: Element, configuration: str | None, path: str) -> list[Item]:
    """The Items that apply to ``configuration`` (DSP0243 §9.8).

    An Item whose ``ovf:configuration`` does not list the configuration is skipped; one
    without the attribute applies to every configuration.  Configurations may share an
    InstanceID (each names its own alternative); when a configuration-specific Item and a
    general one share it, the configuration-specific one wins.
    """
    items: list[Item] = []
    seen: dict[str, bool] = {}  # InstanceID -> whether the kept item names the configuration
    for el in vhs:
        if local(el.tag) not in ("Item", "EthernetPortItem", "StorageItem"):
            continue
        bound = (attr(el, "bound") or "normal").lower()
        if bound != "normal":
            continue  # min/max range markers; the normal item carries the value
        configs = attr(el, "configuration")
        if configs and configuration and configuration not in configs.split():
            continue
        fields: dict[str, str] = {}
        hosts: list[str] = []
        cores = None
        for c in el:
            name = local(c.tag)
            text = (c.text or "").strip()
            if name == "HostResource":
                hosts.append(text)
            elif name == "CoresPerSocket":
                cores = _int(text, "CoresPerSocket", path, 1, MAX_VCPUS)
            elif name not in ("Config", "ExtraConfig"):
                fields.setdefault(name.lower(), text)
        instance = fields.get("instanceid")
        if not instance:
            raise SourceError(f"{path}: VirtualHardwareSection Item without InstanceID")
        specific = bool(configs and configuration)
        if instance in seen:
            if specific and not seen[instance]:
                items = [i for i in items if i.instance != instance]  # the override wins
            elif seen[instance] and not specific:
                continue
            else:
                raise SourceError(f"{path}: VirtualHardwareSection InstanceID {instance!r} "
                                  "appears twice")
        seen[instance] = specific
        rtype_text = fields.get("resourcetype")
        if rtype_text is None or rtype_text == "":
            raise SourceError(f"{path}: Item {instance!r} has no ResourceType")
        rtype = _int(rtype_text, f"ResourceType of item {instance!r}", path, 0, 65535)
        items.append(Item(instance, rtype, fields.get("resourcesubtype", ""), fields, hosts,
                          _config(el), cores, el))
    return items


def _pick_configuration(env: Element, wanted: str | None, path: str) -> str | None:
    """The DeploymentOptionSection configuration to read (DSP0243 §9.8).

    ``wanted`` (``vmmove scan --ovf-configuration``) when the descriptor offers it, else the
    configuration marked ``ovf:default="true"``, else the first listed.  A descriptor without
    the section has no configurations: ``wanted`` is then ignored.
    """
    for section in env:
        if kind(section) == "DeploymentOptionSection":
            configs = [c for c in section if local(c.tag) == "Configuration"]
            ids = [attr(c, "id") for c in configs if attr(c, "id")]
            if wanted is not None:
                if wanted not in ids:
                    raise SourceError(f"{path}: no deployment configuration {wanted!r} "
                                      f"(the descriptor offers {', '.join(ids) or 'none'})")
                return wanted
            for c in configs:
                if (attr(c, "default") or "").lower() == "true":
                    return attr(c, "id")
            if configs:
                return attr(configs[0], "id")
    return None


@dataclass
class _Controller:
    bus: str
    index: int
    model: str | None


def prefer(alternatives: list[str], order: tuple[str, ...]) -> str | None:
    """The first of ``order`` among ``alternatives``, else the first alternative.

    DSP0243 lets ``ResourceSubType`` list several alternatives the appliance supports
    (``"vmxnet3 e1000"``); the preference orders below say which vmmove keeps.
    """
    for wanted in order:
        if wanted in alternatives:
            return wanted
    return alternatives[0] if alternatives else None


#: NIC model preference among alternatives: the models KubeVirt emulates first (the guest has
#: the driver and the manifest keeps the model), paravirtual VMware models last.
NIC_PREFERENCE = ("virtio", "e1000e", "e1000", "rtl8139", "pcnet", "vmxnet3", "vmxnet2", "vmxnet",
                  "vlance")
#: SCSI controller preference among alternatives: virtio-scsi (KubeVirt's own), then the
#: controllers whose drivers guests most often carry.
SCSI_PREFERENCE = ("virtio-scsi", "lsilogic", "lsisas1068", "pvscsi", "buslogic")


def ovirt_guest(description: str | None) -> GuestOS | None:
    """An oVirt os id (osinfo-defaults: ``rhel_8x64``, ``windows_2019x64``, ``other_linux``)."""
    if not description or not re.fullmatch(r"[A-Za-z]+(_[A-Za-z0-9]+)*", description.strip()):
        return None
    text = description.strip()
    if text.lower() in ("other_linux", "other_linux_kernel_4"):
        return GuestOS(id=f"ovirt:{text}", name="Other Linux", family="linux", distro="linux")
    guest = from_vmware(text)
    if guest is None or guest.family == "other":
        return None
    guest.id = f"ovirt:{text}"
    match = re.match(r"^[A-Za-z]+_?(\d+)(?:_(\d+))?", text)
    if match and not guest.version:
        guest.version = match[1] + (f".{match[2]}" if match[2] else "")
        stem = (guest.name or "").replace(" (64-bit)", "")
        guest.name = f"{stem} {guest.version}" + (" (64-bit)" if "64" in text[match.end():] else "")
    return guest


def best_guest(hints: list[GuestOS]) -> GuestOS:
    """The most specific of several OperatingSystemSection hints.

    Preference: a known distribution, then a known family other than "other", then a
    version; ties go to the first in document order (DSP0243 allows more than one section;
    generic ids such as CIM 1 "Other" or 36 "LINUX" lose to a specific one).
    """
    def score(g: GuestOS) -> tuple[int, int, int]:
        family = (g.family or "other").lower()
        return (1 if g.distro and g.distro not in ("linux",) else 0,
                1 if family != "other" else 0, 1 if g.version else 0)
    return max(hints, key=score)  # max keeps the first of equal scores


def _controllers(items: list[Item]) -> dict[str, _Controller]:
    """Storage controllers by InstanceID, with their bus and index among their kind."""
    out: dict[str, _Controller] = {}
    counters: dict[str, int] = {}
    for item in items:
        sub = item.subtype.lower()
        bus = None
        model = None
        if item.rtype == 5:
            bus = "ide"
        elif item.rtype == 6:
            bus = "scsi"
            model = prefer([SCSI_MODELS[t] for t in re.split(r"[\s,]+", sub) if t in SCSI_MODELS],
                           SCSI_PREFERENCE)
        elif item.rtype == 20 or (item.rtype == 1 and "nvme" in sub):
            if "nvme" in sub:
                bus = "nvme"
            else:
                bus, model = "sata", "ahci"
        if bus is None:
            continue
        address = item.fields.get("address") or item.fields.get("busnumber")
        index = int(address) if address and address.isdigit() else counters.get(bus, 0)
        counters[bus] = max(counters.get(bus, 0), index + 1)
        out[item.instance] = _Controller(bus, index, model)
    return out


class _VMBuilder:
    """Turns one VirtualSystem into a VM."""

    def __init__(self, env: Element, vs: Element, path: str, files: dict[str, FileRef],
                 disks: dict[str, DiskDef], locate: Locator, source: Source,
                 configuration: str | None, inspect: bool, dialect: str | None = None) -> None:
        self.env, self.vs, self.path = env, vs, path
        self.files, self.disk_defs, self.locate = files, disks, locate
        self.source, self.configuration, self.inspect = source, configuration, inspect
        self.dialect = dialect  # "ovirt", or None for DMTF/VMware/VirtualBox OVF
        self.used_targets: set[str] = set()
        self.units: dict[str, set[int]] = {}
        self.disk_of: dict[str, Disk] = {}  # DiskSection diskId -> the VM's disk

    def build(self) -> VM:
        vs, path = self.vs, self.path
        vs_id = attr(vs, "id")
        name = child_text(vs, "Name")
        hw_sections = [s for s in vs if kind(s) == "VirtualHardwareSection"]
        if not hw_sections:
            raise SourceError(f"{path}: VirtualSystem {vs_id or '?'!r} has no VirtualHardwareSection")
        vhs = self._pick_hardware(hw_sections)
        system = next((c for c in vhs if local(c.tag) == "System"), None)
        identifier = child_text(system, "VirtualSystemIdentifier") if system is not None else None
        vtype = child_text(system, "VirtualSystemType") if system is not None else None
        machine = None
        if vtype:
            tokens = vtype.split()
            machine = next((t for t in tokens if t.startswith("vmx-")), tokens[0] if tokens else None)

        vm = VM(name=name or vs_id or identifier or _stem(path), source=self.source,
                power_state=PowerState.SHUTOFF, os_type="hvm", machine=machine)
        if vtype and "vmx" in vtype:
            vm.hypervisor = "vmware"
        elif vtype and "virtualbox" in vtype.lower():
            vm.hypervisor = "virtualbox"
        if identifier:
            vm.metadata["ovf.VirtualSystemIdentifier"] = identifier
        if vs_id:
            vm.metadata["ovf.id"] = vs_id
        if vtype:
            vm.metadata["ovf.VirtualSystemType"] = vtype
        if self.configuration:
            vm.metadata["ovf.configuration"] = self.configuration
        self._sections(vm)

        items = _items(vhs, self.configuration, path)
        if self.dialect == "ovirt":
            self._ovirt(vm, items)
        controllers = _controllers(items)
        config = _config(vhs)
        self._apply_config(vm, config)
        known = {i.instance for i in items}
        for item in items:
            parent = item.fields.get("parent")
            if self.dialect == "ovirt" and parent and not parent.strip("0-"):
                item.fields.pop("parent")  # oVirt writes the nil UUID for "no parent"
                parent = None
            if parent and parent not in known:
                raise SourceError(f"{path}: item {item.instance!r} has Parent {parent!r}, "
                                  "which no item of the VirtualHardwareSection has")
            self._item(vm, item, controllers)
        machine_el = next((c for c in self.vs if local(c.tag) == "Machine"), None)
        if machine_el is not None:
            self._virtualbox(vm, machine_el)
        if vm.memory == 0:
            vm.metadata["ovf.memory"] = "not declared"  # assessment flags a VM without memory
        if vm.guest_os is not None:
            bits = is_64bit(vm.guest_os)
            vm.arch = "x86_64" if bits else ("i686" if bits is False else None)
        return vm

    def _pick_hardware(self, sections: list[Element]) -> Element:
        """Several sections may describe the VM for different hypervisors; prefer VMware's."""
        for s in sections:
            system = next((c for c in s if local(c.tag) == "System"), None)
            vtype = child_text(system, "VirtualSystemType") if system is not None else ""
            if vtype and "vmx" in vtype:
                return s
        return sections[0]

    def _sections(self, vm: VM) -> None:
        hints: list[GuestOS] = []
        for section in self.vs:
            k = kind(section)
            if k == "AnnotationSection":
                text = child_text(section, "Annotation")
                if text:
                    vm.description = text
            elif k == "OperatingSystemSection":
                description = child_text(section, "Description")
                hint = (ovirt_guest(description) if self.dialect == "ovirt" else None) or \
                    guest_from_ovf(attr(section, "id"), attr(section, "osType"), description,
                                   attr(section, "version"))
                if hint is not None:
                    hints.append(hint)
            elif k == "ProductSection":
                for field_name in ("Product", "Vendor", "Version", "FullVersion"):
                    value = child_text(section, field_name)
                    if value:
                        vm.metadata.setdefault(f"ovf.product.{field_name}", value)
        if hints:
            vm.guest_os = best_guest(hints)
            if len(hints) > 1:
                vm.metadata["ovf.os.hints"] = "; ".join(h.id or h.name or "?" for h in hints)

    def _ovirt(self, vm: VM, items: list[Item]) -> None:
        """What the oVirt/RHV dialect says outside DMTF's fields.

        ovirt-engine's OvfWriter and virt-v2v's create_ovf.ml: the VM's ``BiosType``
        (ovirt-engine BiosType: 1 i440fx SeaBIOS, 2 q35 SeaBIOS, 3 q35 OVMF, 4 q35 OVMF with
        Secure Boot), CPU counts as ``rasd:num_of_sockets`` × ``cpu_per_socket`` ×
        ``threads_per_cpu`` (no VirtualQuantity), and numeric NIC ``ResourceSubType``.
        The guest ran on KVM already, so its hypervisor is ``kvm``.
        """
        vm.hypervisor = "kvm"
        bios = child_text(self.vs, "BiosType")
        if bios in ("3", "4"):
            vm.firmware.type = "efi"
            vm.firmware.secure_boot = bios == "4"
        vm.machine = {"1": "pc", "2": "q35", "3": "q35", "4": "q35"}.get(bios or "")
        if bios:
            vm.metadata["ovirt.BiosType"] = bios
        for section in self.vs:  # the OperatingSystemSection's ovf:id is the VM's id
            if kind(section) == "OperatingSystemSection" and _UUID.match(attr(section, "id") or ""):
                vm.uuid = (attr(section, "id") or "").lower()
        origin = child_text(self.vs, "Origin")
        if origin:
            vm.metadata["ovirt.Origin"] = origin
        for item in items:
            if item.rtype == 3 and not item.fields.get("virtualquantity"):
                counts = [item.fields.get(k) or "1" for k in
                          ("num_of_sockets", "cpu_per_socket", "threads_per_cpu")]
                if all(c.isdigit() and int(c) > 0 for c in counts):
                    sockets, cores, threads = (int(c) for c in counts)
                    item.fields["virtualquantity"] = str(sockets * cores * threads)
                    vm.topology = CpuTopology(sockets=sockets, cores=cores, threads=threads)
            kind_ = (item.fields.get("type") or "").lower()
            if item.rtype == 20 and kind_ in ("video", "graphics"):
                item.rtype = 24  # oVirt's "Graphical Controller" is a video card, not SATA
                item.subtype = item.fields.get("device") or "qxl"

    def _virtualbox(self, vm: VM, machine: Element) -> None:
        """Settings VirtualBox keeps only in its ``vbox:Machine`` element.

        VirtualBox's OVF export (VirtualBox manual, "Importing and Exporting Virtual
        Machines"; the element is its ``.vbox`` settings format) writes no MAC address, no
        firmware and only coarse controller types in the VirtualHardwareSection.  From
        ``vbox:Machine``: ``Hardware/Firmware@type`` (``EFI``, ``EFI32``, ``EFI64``,
        ``EFIDUAL``), ``Hardware/Network/Adapter`` (enabled ones in slot order, matched to the
        NIC items in order: ``MACAddress`` as 12 hex digits, ``type`` → model), and
        ``StorageControllers`` (each hard disk's controller type and port, matched to
        DiskSection disks through ``vbox:uuid``), and memory/CPUs when the items lack them.
        """
        hardware = next((c for c in machine if local(c.tag) == "Hardware"), None)
        if hardware is not None:
            for el in hardware:
                name = local(el.tag)
                if name == "Firmware" and (attr(el, "type") or "").upper().startswith("EFI"):
                    vm.firmware.type = "efi"
                elif name == "Memory" and vm.memory == 0 and (attr(el, "RAMSize") or "").isdigit():
                    vm.memory = int(attr(el, "RAMSize") or 0) * 1024**2
                elif name == "Network":
                    self._vbox_adapters(vm, el)
        controllers = next((c for c in machine if local(c.tag) == "StorageControllers"), None)
        if controllers is None and hardware is not None:
            controllers = next((c for c in hardware if local(c.tag) == "StorageControllers"), None)
        if controllers is not None:
            self._vbox_storage(controllers)

    def _vbox_adapters(self, vm: VM, network: Element) -> None:
        adapters = [a for a in network if local(a.tag) == "Adapter"
                    and (attr(a, "enabled") or "true").lower() == "true"]
        adapters.sort(key=lambda a: int(attr(a, "slot") or 0) if (attr(a, "slot") or "0").isdigit() else 0)
        for nic, adapter in zip(vm.nics, adapters):
            raw = (attr(adapter, "MACAddress") or "").strip()
            mac = normalize_mac(raw, bare=True)
            if mac:
                nic.mac = mac
            model = VBOX_NIC_TYPES.get((attr(adapter, "type") or "").lower())
            if model:
                nic.model = model
            if not nic.network:
                for mode in adapter:
                    if local(mode.tag) in VBOX_ATTACHMENTS:
                        nic.network = attr(mode, "name") or VBOX_ATTACHMENTS[local(mode.tag)]
                        break

    def _vbox_storage(self, controllers: Element) -> None:
        by_uuid = {}
        for section in self.env:
            if kind(section) == "DiskSection":
                for d in section:
                    uid = attr(d, "uuid")
                    if local(d.tag) == "Disk" and uid and attr(d, "diskId") in self.disk_of:
                        by_uuid[uid.strip("{}").lower()] = self.disk_of[attr(d, "diskId") or ""]
        counters: dict[str, int] = {}
        for ctrl in controllers:
            if local(ctrl.tag) != "StorageController":
                continue
            bus, model = VBOX_CONTROLLERS.get((attr(ctrl, "type") or "").lower(), (None, None))
            if bus is None:
                continue
            index = counters.get(bus, 0)
            counters[bus] = index + 1
            for dev in ctrl:
                if local(dev.tag) != "AttachedDevice" or (attr(dev, "type") or "") != "HardDisk":
                    continue
                image = next((i for i in dev if local(i.tag) == "Image"), None)
                disk = by_uuid.get((attr(image, "uuid") or "").strip("{}").lower()) \
                    if image is not None else None
                port, device = attr(dev, "port") or "0", attr(dev, "device") or "0"
                if disk is None or not port.isdigit() or not device.isdigit():
                    continue
                unit = int(port) * 2 + int(device) if bus == "ide" else int(port)
                target = disk_target(bus, index, unit)
                if disk.bus != bus or disk.target != target:
                    self.used_targets.discard(disk.target)
                    disk.target = unique_target(target, self.used_targets)
                disk.bus, disk.controller_model = bus, model

    def _apply_config(self, vm: VM, config: dict[str, str]) -> None:
        def truthy(key: str) -> bool:
            return config.get(key, "").strip().lower() == "true"

        fw = config.get("firmware", "").strip().lower()
        if fw == "efi":
            vm.firmware.type = "efi"
        if truthy("bootOptions.efiSecureBootEnabled") or truthy("uefi.secureBoot.enabled"):
            vm.firmware.secure_boot = True
        if truthy("nestedHVEnabled") or truthy("vhv.enable"):
            vm.features.append("nested-virt")
        if "virtualHW.version" in config:
            vm.metadata["vmx.virtualHW.version"] = config["virtualHW.version"]

    def _item(self, vm: VM, item: Item, controllers: dict[str, _Controller]) -> None:
        path, rt, sub = self.path, item.rtype, item.subtype.lower()
        if rt == 3:
            vm.vcpus = _int(item.fields.get("virtualquantity"), "CPU VirtualQuantity", path, 1,
                            MAX_VCPUS)
            if item.cores_per_socket and vm.vcpus % item.cores_per_socket == 0:
                vm.topology = CpuTopology(sockets=vm.vcpus // item.cores_per_socket,
                                          cores=item.cores_per_socket)
        elif rt == 4:
            quantity = _int(item.fields.get("virtualquantity"), "memory VirtualQuantity", path, 1)
            try:
                mult = unit_multiplier(item.fields.get("allocationunits"), 1024**2)
            except ValueError:
                raise SourceError(f"{path}: memory AllocationUnits "
                                  f"{item.fields.get('allocationunits')!r} is not a unit") from None
            memory = quantity * mult
            if memory > MAX_MEMORY:
                raise SourceError(f"{path}: memory of {memory} bytes is absurd (more than 24 TiB)")
            vm.memory = memory
        elif rt == 10:
            self._nic(vm, item)
        elif rt == 17:
            self._disk(vm, item, controllers, "disk")
        elif rt in (14, 15, 16):
            self._disk(vm, item, controllers, "floppy" if rt == 14 else "cdrom")
        elif item.instance in controllers:
            ctrl = controllers[item.instance]
            vm.devices.append(Device("controller", model=ctrl.model or ctrl.bus,
                                     details={"bus": ctrl.bus, "index": str(ctrl.index)}))
        elif "vtpm" in sub:
            vm.firmware.tpm_version = "2.0"
        elif "pci.passthrough" in sub or rt == 1 and "passthrough" in sub:
            details = {k.removeprefix("backing."): v for k, v in item.config.items()
                       if k.startswith("backing.") or k.startswith("vgpu")}
            vm.devices.append(Device("pci-passthrough", model=item.subtype or None, details=details))
        elif rt == 23:
            vm.devices.append(Device("controller", model=f"usb:{item.subtype}" if item.subtype
                                     else "usb"))
        elif rt == 24:
            vm.devices.append(Device("video", model=item.subtype or "vmvga"))
        elif rt == 35:
            vm.devices.append(Device("sound", model=item.subtype.removeprefix("vmware.soundcard.")
                                     or None))
        elif "serialport" in sub or rt == 21 and "serial" in sub:
            vm.devices.append(Device("serial", model=item.subtype or None))
        elif "vmci" in sub:
            vm.devices.append(Device("other", model="vmci"))
        elif "nvdimm" in sub:
            vm.devices.append(Device("other", model="nvdimm"))
        else:
            vm.devices.append(Device("other", model=item.subtype or None,
                                     details={"resource_type": str(rt),
                                              "name": item.fields.get("elementname")
                                              or item.fields.get("caption") or ""}))

    def _nic(self, vm: VM, item: Item) -> None:
        address = item.fields.get("address") or item.fields.get("macaddress")
        mac = normalize_mac(address)
        sub = item.subtype.strip().lower()
        if self.dialect == "ovirt":
            model = OVIRT_NIC_MODELS.get(sub, sub or None)
        else:
            model = prefer([NIC_MODELS.get(t, t) for t in sub.split()], NIC_PREFERENCE)
        network = item.fields.get("connection") or None
        vm.nics.append(Nic(mac=mac, model=model, type="network", network=network))

    def _unit(self, ctrl_id: str, wanted: str | None) -> int:
        used = self.units.setdefault(ctrl_id, set())
        if wanted is not None and wanted.isdigit():
            unit = int(wanted)
        else:
            unit = 0
            while unit in used:
                unit += 1
        used.add(unit)
        return unit

    def _disk(self, vm: VM, item: Item, controllers: dict[str, _Controller], device: str) -> None:
        path = self.path
        parent = item.fields.get("parent")
        ctrl = controllers.get(parent) if parent else None
        if ctrl is None and device != "floppy":
            storage = list(controllers.items())
            if parent is None and storage:
                parent, ctrl = storage[0]
        if device == "floppy":
            bus, index = "fdc", 0
        elif ctrl is not None:
            bus, index = ctrl.bus, ctrl.index
        else:
            bus, index = "scsi" if device == "disk" else "ide", 0
        unit = self._unit(parent or f"_{bus}", item.fields.get("addressonparent"))
        target = unique_target(disk_target(bus, index, unit), self.used_targets)
        disk = Disk(target=target, device=device, bus=bus,
                    controller_model=ctrl.model if ctrl else None,
                    readonly=device == "cdrom")
        host = item.host_resources[0] if item.host_resources else ""
        if not host:
            if device == "disk":
                raise SourceError(f"{path}: disk item {item.instance!r} has no HostResource")
            disk.source_type = "none"
            vm.disks.append(disk)
            return
        match = _HOST_RESOURCE.match(host)
        if match is None and self.dialect == "ovirt":
            ddef = self._ovirt_disk(host)
            if ddef is not None:
                if ddef.bus:
                    disk.bus, disk.controller_model = ddef.bus, ddef.controller_model
                    self.used_targets.discard(disk.target)
                    unit = self._unit(f"_ovirt_{ddef.bus}", None)
                    disk.target = unique_target(disk_target(ddef.bus, 0, unit), self.used_targets)
                self._fill_disk(disk, ddef)
                self.disk_of[ddef.id] = disk
                vm.disks.append(disk)
                return
        if match is None:
            if device == "disk":
                raise SourceError(f"{path}: disk item {item.instance!r} HostResource {host!r} "
                                  "is not ovf:/disk/ID or ovf:/file/ID")
            disk.source_type = "none"
            vm.disks.append(disk)
            return
        what, ref = match.group(1), match.group(2)
        if what == "disk":
            if ref not in self.disk_defs:
                raise SourceError(f"{path}: item {item.instance!r} refers to disk {ref!r}, "
                                  "which the DiskSection does not list")
            self._fill_disk(disk, self.disk_defs[ref])
            self.disk_of[ref] = disk
        else:
            if ref not in self.files:
                raise SourceError(f"{path}: item {item.instance!r} refers to file {ref!r}, "
                                  "which References does not list")
            file_ref = self.files[ref]
            self._fill_file(disk, file_ref, _format_of(None, file_ref.href) or "raw", None)
        vm.disks.append(disk)

    def _ovirt_disk(self, host: str) -> DiskDef | None:
        """oVirt names a disk ``<image group>/<volume>``: the Disk with that fileRef or id."""
        for ddef in self.disk_defs.values():
            if (ddef.file and ddef.file.href == host) or ddef.id == host or \
                    ddef.id == host.rsplit("/", 1)[-1]:
                return ddef
        return None

    def _fill_disk(self, disk: Disk, ddef: DiskDef) -> None:
        disk.virtual_size = ddef.capacity
        disk.format = ddef.format
        if ddef.parent:
            chain = []
            seen = {ddef.id}
            parent = ddef.parent
            while parent and parent not in seen:
                seen.add(parent)
                pdef = self.disk_defs[parent]
                loc = self.locate(pdef.file) if pdef.file else None
                chain.append(BackingFile(path=(loc.path if loc and loc.path else parent),
                                         format=pdef.format))
                parent = pdef.parent
            disk.backing_chain = chain
        if ddef.file is None:
            disk.source_type = "none"  # an empty disk the deployment creates
            disk.allocated_size = 0
            return
        self._fill_file(disk, ddef.file, ddef.format, ddef.populated)

    def _fill_file(self, disk: Disk, ref: FileRef, fmt: str | None, populated: int | None) -> None:
        loc = self.locate(ref)
        if self.dialect == "ovirt" and not loc.exists:
            # oVirt OVAs keep volumes under images/ beside the descriptor
            for alt in (f"images/{ref.href}",):
                other = self.locate(replace(ref, href=alt))
                if other.exists:
                    loc = other
                    break
        disk.format = disk.format or fmt
        disk.path = loc.fmt_path(fmt) if loc.fmt_path else loc.path
        if disk.path and urllib.parse.urlsplit(disk.path).scheme in ("http", "https", "ftp"):
            parsed = urllib.parse.urlsplit(disk.path)
            disk.source_type, disk.protocol, disk.hosts = "network", parsed.scheme, [parsed.netloc]
        disk.allocated_size = loc.size if loc.size is not None else (ref.size or populated)
        if loc.error:
            disk.error = loc.error
            return
        if loc.pieces is not None:
            # Compressed or chunked (DSP0243 §5.3): qemu-img cannot read it in place; convert
            # joins/decompresses it into its work folder.  Sizes come from the DiskSection.
            disk.packing = Packing(href=ref.href, pieces=loc.pieces,
                                   compression=ref.compression.lower() if ref.compression else None,
                                   chunk_size=ref.chunk_size, size=ref.size)
            return
        if loc.exists and ref.size is not None and loc.size == ref.size and \
                disk.source_type == "file":
            disk.stored_size = ref.size  # checked again when convert or sync reads it
        if loc.exists and self.inspect and disk.device == "disk" and loc.open:
            try:
                chain = loc.open(fmt if fmt in QEMU_FORMATS else None)
            except VmmoveError as exc:  # unreadable, or a reference outside the export
                disk.error = str(exc)
                return
            disk.virtual_size = chain.virtual_size
            if chain.backing_files:
                disk.backing_chain = chain.backing_files
            if chain.format == "vmdk" and not (disk.path or "").startswith("json:"):
                from migrate.sources.vmdk import text_descriptor

                if disk.path and text_descriptor(disk.path):
                    disk.layout = MULTI_FILE  # its data is in extent files beside it


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _virtual_systems(el: Element, out: list[Element]) -> None:
    """VirtualSystems in document order, however deep the collections nest (no recursion)."""
    stack = [iter(el)]
    while stack:
        c = next(stack[-1], None)
        if c is None:
            stack.pop()
            continue
        k = kind(c)
        if k == "VirtualSystem":
            out.append(c)
        elif k == "VirtualSystemCollection":
            stack.append(iter(c))


def parse_ovf(data: str | bytes, path: str, *, kind_: SourceKind = SourceKind.OVF,
              member: str | None = None, locate: Locator | None = None,
              inspect: bool = True, configuration: str | None = None) -> list[VM]:
    """VMs of an OVF descriptor's text; ``locate`` finds referenced files (OVA members…).

    ``path`` names the descriptor (or the archive holding it) in messages and in
    :attr:`Source.location`; ``inspect`` runs ``qemu-img info`` on disk files present;
    ``configuration`` names the DeploymentOptionSection configuration to read (default:
    the one marked ``ovf:default="true"``, else the first; DSP0243 §9.8).
    """
    label = f"{path}: {member}" if member else path
    root = parse_xml(data, label)
    ns = namespace(root.tag) if isinstance(root.tag, str) else ""
    if local(root.tag) != "Envelope" or ns not in ENVELOPE_NAMESPACES:
        raise SourceError(f"{label}: not an OVF descriptor (root element {root.tag!r})")
    files = _references(root, label)
    dialect = "ovirt" if ENVELOPE_NAMESPACES[ns] == "ovirt" else None
    disks = _disks(root, files, label, dialect)
    configuration = _pick_configuration(root, configuration, label)
    systems: list[Element] = []
    _virtual_systems(root, systems)
    if not systems:
        raise SourceError(f"{label}: no VirtualSystem in the OVF descriptor")
    locate = locate or default_locator(path)
    vms = []
    for vs in systems:
        source = Source(kind_, path, member if len(systems) == 1 else
                        "/".join(p for p in (member, attr(vs, "id")) if p) or None)
        vms.append(_VMBuilder(root, vs, label, files, disks, locate, source, configuration,
                              inspect, dialect).build())
    return vms


def read_ovf(path: str, configuration: str | None = None) -> list[VM]:
    """VMs of the OVF descriptor at ``path``: one per VirtualSystem, vApps included."""
    path, data = read_bounded(path, MAX_OVF_BYTES, "an OVF descriptor")
    if not data.strip():
        raise SourceError(f"{path}: empty file, not an OVF descriptor")
    return parse_ovf(data, path, configuration=configuration)
