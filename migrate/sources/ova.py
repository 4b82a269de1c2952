"""OVA archives: the OVF inside a tar, read in place — nothing is ever extracted.

An OVA is a plain (uncompressed) tar whose members are the descriptor, an optional
``.mf`` manifest of digests, certificates and the disk images.  Disks stay inside the
archive: each is recorded as a qemu ``json:`` pseudo-filename that reads the member's
byte range (``{"driver": "raw", "offset": …, "size": …}`` over the ``.ova`` file), which
``qemu-img info`` and ``qemu-img convert`` open directly, so conversion needs no scratch
space and a hostile member name can never write anywhere.  Members that could escape a
folder if someone *did* extract the archive (absolute names, ``..``, links, devices,
duplicates) are refused anyway: such an archive is not an honest export.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass, field

from migrate.core.model import VM, Piece, SourceKind
from migrate.core.errors import SourceError
from migrate.sources.containment import Export, Member, open_chain, protocol_of
from migrate.sources.ovf import (MAX_FILE, MAX_OVF_BYTES, FileRef, Location, chunk_name,
                                 packed_location, parse_ovf)

MAX_MANIFEST_BYTES = 1024 * 1024
HASH_CHUNK = 1024 * 1024
DIGESTS = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512", "MD5": "md5"}
_MF_LINE = re.compile(r"^\s*(?P<algo>[A-Za-z0-9]+)\s*\((?P<name>.+)\)\s*=\s*(?P<hex>[0-9A-Fa-f]+)\s*$")


@dataclass
class Archive:
    path: str
    members: dict[str, Member] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    descriptor: tuple[str, bytes] | None = None
    manifest: tuple[str, bytes] | None = None


def _check_name(path: str, info: tarfile.TarInfo) -> str:
    name = info.name
    if not name or "\x00" in name:
        raise SourceError(f"{path}: archive member with an empty or invalid name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name) or name.startswith("\\"):
        raise SourceError(f"{path}: archive member {name!r} has an absolute path")
    parts = re.split(r"[\\/]+", name)
    if ".." in parts:
        raise SourceError(f"{path}: archive member {name!r} climbs out of the archive with '..'")
    if info.issym() or info.islnk():
        raise SourceError(f"{path}: archive member {name!r} is a "
                          f"{'symbolic' if info.issym() else 'hard'} link "
                          f"(to {info.linkname!r}); an OVA holds only plain files")
    if info.ischr() or info.isblk() or info.isfifo():
        raise SourceError(f"{path}: archive member {name!r} is a device or FIFO, not a file")
    return posixpath.normpath(name.replace("\\", "/")) or name


def _read_member(fh, member: Member, limit: int, path: str) -> bytes:
    if member.size > limit:
        raise SourceError(f"{path}: {member.name} is {member.size} bytes, too large for its kind")
    fh.seek(member.offset)
    data = fh.read(member.size)
    if len(data) != member.size:
        raise SourceError(f"{path}: truncated archive: {member.name} ends early")
    return data


def scan_archive(path: str) -> Archive:
    """Walk the tar headers once, checking every member; keep the .ovf and .mf contents."""
    archive = Archive(path)
    try:
        total = os.path.getsize(path)
        fh = open(path, "rb")
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None
    with fh:
        magic = fh.read(6)
        fh.seek(0)
        if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00":
            raise SourceError(f"{path}: compressed archive; an OVA is a plain tar "
                              "(decompress it first)")
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                for info in tar:
                    if info.isdir():
                        continue
                    name = _check_name(path, info)
                    if not info.isreg():
                        raise SourceError(f"{path}: archive member {info.name!r} is not a "
                                          "regular file")
                    if name in archive.members:
                        raise SourceError(f"{path}: archive member {name!r} appears twice")
                    if info.size < 0 or info.size > MAX_FILE:
                        raise SourceError(f"{path}: archive member {name!r} claims an absurd "
                                          f"size of {info.size} bytes")
                    if info.offset_data + info.size > total:
                        raise SourceError(
                            f"{path}: truncated archive: member {name!r} needs "
                            f"{info.offset_data + info.size} bytes, the file has {total}")
                    member = Member(name, info.offset_data, info.size)
                    archive.members[name] = member
                    archive.order.append(name)
                end = tar.offset
            # tarfile stops quietly at a cut-off header; an honest tar ends with two zero blocks.
            fh.seek(end)
            if fh.read(1024) != bytes(1024):
                last = archive.order[-1] if archive.order else "the first member"
                raise SourceError(f"{path}: truncated archive: no end-of-archive marker after "
                                  f"{last!r} (at byte {end} of {total})")
        except tarfile.ReadError as exc:
            raise SourceError(f"{path}: not a readable tar archive ({exc})") from None
        except (EOFError, tarfile.TarError) as exc:
            raise SourceError(f"{path}: truncated or damaged archive ({exc})") from None
        if not archive.members:
            raise SourceError(f"{path}: empty archive, no OVF descriptor inside")
        ovfs = [n for n in archive.order if n.lower().endswith(".ovf")]
        if not ovfs:
            raise SourceError(f"{path}: no .ovf descriptor in the archive")
        # The standard puts the descriptor first; exporters that stream disks first exist,
        # so take the first .ovf wherever it is.
        name = ovfs[0]
        archive.descriptor = (name, _read_member(fh, archive.members[name], MAX_OVF_BYTES, path))
        stem = posixpath.splitext(name)[0]
        mfs = [n for n in archive.order if n.lower().endswith(".mf")]
        if mfs:
            mf = f"{stem}.mf" if f"{stem}.mf" in archive.members else mfs[0]
            archive.manifest = (mf, _read_member(fh, archive.members[mf], MAX_MANIFEST_BYTES, path))
    return archive


@dataclass
class ManifestCheck:
    """What verifying an OVA's ``.mf`` found: digests that matched, and problems.

    ``problems`` maps a member name to one line saying what is wrong with it (digest
    mismatch, a line for it that cannot be read): that member's disk gets the line as its
    error and the VM stays.  ``general`` holds lines about no member of the archive (a
    listed file the archive lacks, a line naming nothing).
    """

    verified: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)


def parse_manifest(text: str, path: str, mf_name: str
                   ) -> tuple[list[tuple[str, str, str]], list[tuple[int, str, str]]]:
    """``SHA256(disk.vmdk)= hex`` lines (``sha1sum --tag`` spacing too) → (algo, name, hex);
    and the lines that are not that, as (line number, the name in parentheses or "", why)."""
    entries = []
    bad: list[tuple[int, str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MF_LINE.match(line)
        named = re.search(r"\((.+?)\)", line)
        name = named.group(1).strip() if named else ""
        if match is None:
            bad.append((number, name, "is not 'ALGO(file)= digest'"))
            continue
        algo = match["algo"].upper()
        if algo not in DIGESTS:
            bad.append((number, match["name"].strip(), f"unknown digest {match['algo']!r}"))
            continue
        hexdigest = match["hex"].lower()
        if len(hexdigest) != hashlib.new(DIGESTS[algo]).digest_size * 2:
            bad.append((number, match["name"].strip(), f"{algo} digest has the wrong length"))
            continue
        entries.append((algo, match["name"].strip(), hexdigest))
    return entries, bad


def _key(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/"))


def verify_manifest(archive: Archive) -> ManifestCheck:
    """Stream every member the manifest lists through its digest.

    A mismatch of the descriptor's own digest refuses the archive (nothing it says can be
    trusted); any other problem is reported per member (see :class:`ManifestCheck`).
    """
    assert archive.manifest is not None and archive.descriptor is not None
    path = archive.path
    mf_name, data = archive.manifest
    entries, bad = parse_manifest(data.decode("utf-8", errors="replace"), path, mf_name)
    check = ManifestCheck()
    for number, name, why in bad:
        line = f"{mf_name} line {number} {why}" if why.startswith("is ") else \
            f"{mf_name} line {number}: {why}"
        if name and _key(name) in archive.members:
            check.problems.setdefault(_key(name), line)
        else:
            check.general.append(line)
    with open(path, "rb") as fh:
        for algo, name, expected in entries:
            key = _key(name)
            member = archive.members.get(key)
            if member is None:
                check.general.append(f"{mf_name} lists {name!r}, which the archive lacks")
                continue
            digest = hashlib.new(DIGESTS[algo])
            fh.seek(member.offset)
            remaining = member.size
            while remaining:
                chunk = fh.read(min(HASH_CHUNK, remaining))
                if not chunk:
                    raise SourceError(f"{path}: truncated archive: {name} ends early")
                digest.update(chunk)
                remaining -= len(chunk)
            if digest.hexdigest() != expected:
                line = (f"{algo} checksum mismatch for {name} (manifest {mf_name} says "
                        f"{expected[:12]}…, archive has {digest.hexdigest()[:12]}…)")
                if key == archive.descriptor[0]:
                    raise SourceError(f"{path}: {line}")
                check.problems.setdefault(key, line)
            else:
                check.verified += 1
    return check


def member_json(ova_path: str, member: Member, fmt: str | None) -> str:
    """A qemu ``json:`` filename reading ``member`` in place inside the .ova."""
    window = {"driver": "raw", "offset": member.offset, "size": member.size,
              "file": {"driver": "file", "filename": ova_path}}
    spec = {"driver": fmt, "file": window} if fmt and fmt != "raw" else window
    return "json:" + json.dumps(spec)


def _locator(archive: Archive, ovf_dir: str, problems: dict[str, str] | None = None,
             seen: set[str] | None = None):
    """Find referenced files among the members; ``problems`` (member name → manifest
    problem) become the error of the disk stored in that member, whose name goes to
    ``seen``."""
    problems = problems if problems is not None else {}
    seen = seen if seen is not None else set()
    export = Export.of_archive(archive.path, archive.members)

    def key_of(name: str) -> str:
        return posixpath.normpath(posixpath.join(ovf_dir, name.replace("\\", "/")))

    def find(name: str) -> Piece | None:
        member = archive.members.get(key_of(name))
        return Piece(archive.path, member.offset, member.size) if member else None

    def locate(ref: FileRef) -> Location:
        key = key_of(ref.href)
        if protocol_of(ref.href):
            return Location(path=None, exists=False, size=ref.size,
                            error=f"{archive.path}: href {ref.href!r} is a protocol name, not "
                                  "a member of the archive")
        if ref.compression or ref.chunked:
            loc = packed_location(ref, find, f"{archive.path}#{key}")
            names = ([key] if not ref.chunked else
                     [key_of(chunk_name(ref.href, n)) for n in range(len(loc.pieces or []))])
            seen.update(n for n in names if n in problems)
            bad = next((problems[n] for n in names if n in problems), None)
            if bad and not loc.error:
                loc.error, loc.exists = bad, False
            return loc
        member = archive.members.get(key)
        if member is None:
            return Location(path=f"{archive.path}#{key}", exists=False, size=ref.size,
                            error=f"{archive.path}: {ref.href} is not in the archive")
        if key in problems:
            seen.add(key)
            return Location(path=f"{archive.path}#{key}", exists=False, size=member.size,
                            error=problems[key])
        if ref.size is not None and ref.size != member.size:
            return Location(path=f"{archive.path}#{key}", exists=False, size=member.size,
                            error=f"{ref.href} is {member.size} bytes in the archive but the "
                                  f"descriptor says ovf:size {ref.size} (truncated or replaced)")
        top = export.resolve(key, "", "member")
        return Location(path=None, exists=True, size=member.size,
                        fmt_path=lambda fmt: member_json(archive.path, member, fmt),
                        open=lambda fmt: open_chain(export, top, fmt))
    return locate


def read_ova(path: str, configuration: str | None = None) -> list[VM]:
    """VMs of the OVA at ``path``; manifests are verified, disks are addressed in place.

    A problem with one disk member (size, digest, its manifest line, absent) is that disk's
    ``error``; manifest problems that concern no disk are in
    ``metadata["ova.manifest.problems"]`` (one per line).  ``configuration`` picks a
    DeploymentOptionSection configuration (default: the one marked default).
    """
    path = os.path.abspath(path)
    archive = scan_archive(path)
    check = verify_manifest(archive) if archive.manifest else ManifestCheck()
    assert archive.descriptor is not None
    name, data = archive.descriptor
    seen: set[str] = set()
    vms = parse_ovf(data, path, kind_=SourceKind.OVA, member=name,
                    locate=_locator(archive, posixpath.dirname(name), check.problems, seen),
                    configuration=configuration)
    # problems of members no disk reads (a certificate, an unreferenced file)
    check.general.extend(m for k, m in check.problems.items() if k not in seen)
    for vm in vms:
        if archive.manifest:
            vm.metadata["ova.manifest"] = f"{archive.manifest[0]}: {check.verified} digests verified"
        else:
            vm.metadata["ova.manifest"] = "none"
        if check.general:
            vm.metadata["ova.manifest.problems"] = "\n".join(check.general)
    return vms
