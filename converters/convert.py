"""Convert the disks of an inventory's VMs into images CDI imports: the batch runner.

The API the CLI (and later the plan/migrate commands) call is :func:`convert_disks`:
pick disks with :func:`select_disks` (whole VMs, or an explicit list of ``(vm, disk)``
such as a plan wave), then convert them ``jobs`` at a time with qemu-img.

Rules it keeps, and why:

* sources are only ever read (qemu-img opens them read-only; ``-U`` only with
  ``force_share``), so a failed or cancelled run costs nothing but time;
* sources are never replaced: a work folder that equals or contains a source disk's
  folder is refused, and an output only ever replaces a file the journal says vmmove
  created there (same inode), never a symlink, never a source (docs/security.md);
* outputs are named ``<vm>-<disk>.<fmt>``; a name the journal already gives another VM
  (two inventories sharing a work folder) gets a suffix from the VM's identity (UUID and
  source), so one VM's output never replaces another's;
* outputs are written to a hidden temporary name in the work folder, verified there, and
  renamed only when complete, so ``DIR/<name>.<fmt>`` exists only for a finished disk;
* every step is in the work folder's journal (:mod:`migrate.core.workdir`), so a rerun after a
  crash, SIGKILL or Ctrl-C skips disks already converted and verified and redoes the rest;
* free space is checked with ``qemu-img measure`` before any disk starts; a disk that does
  not fit fails on its own with a clear message, the others go on;
* one disk's failure never stops the others: each result carries its own error.

The checksum recorded for an output is ``xxh3-1m:<hex>`` of the output file's bytes (the
file upload sends; :mod:`migrate.core.digest`, whose forms also name the ``sha256:`` of
journals written before issue 17: a check computes the recorded checksum's form), taken
as the stream conversion writes the file, or computed while ``qemu-img compare`` reads the
same file, so the output is read from disk once at most.

Disks of remote libvirt hosts (``qemu+ssh://``) are read as NBD exports over SSH
(:mod:`migrate.sources.remote_disks`: a backup job's point-in-time export for a running
VM, ``qemu-nbd --read-only`` for a shut-off one) and verified by the checksum of the guest
view on both ends (``guest_checksum`` in the journal) instead of ``qemu-img compare``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters import qemuimg
from converters.watermark import Watermark, journal_listener
from migrate.clients.nbd import file_guest_checksum, guest_checksum
from migrate.core import digest
from migrate.core.errors import UsageError, VmmoveError
from migrate.core.files import new_private_file, private_dir, write_failure
from migrate.clients.imageinfo import ImageError
from migrate.core.model import HOST_CDROM, RDM_PHYSICAL, RDM_VIRTUAL, VM, VSAN, Disk, Inventory, PowerState
from migrate.sources.remote_disks import RemoteReads, is_remote, reads_via_nbd
from migrate.sources.containment import (
    Chain,
    ContainmentError,
    Export,
    MissingFile,
    check_agreement,
    open_path,
    size_changed,
)
from migrate.core.journal import DONE, Journal, JournalLocked, Step
from migrate.core.progress import Fractions, Subscriber
from migrate.core.workdir import disk_item, image_basename, journal_path, target_names, vm_identity
from migrate.core.records import KIND_CONVERT

#: Power states in which a disk is held open by the hypervisor.
IN_USE_STATES = {PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN,
                 PowerState.SUSPENDED}

CONSISTENT_COPY_HINT = (
    "a consistent copy needs the VM shut off, or the staged cutover "
    "(pass --inconsistent-copy to copy it anyway while it writes, reading with qemu-img -U)"
)


def plan_share_hint(plan_name: str) -> str:
    """The remedy for a running VM when a plan drives the conversion: the plan setting
    (``convert.forceShare``), which ``vmmove plan --stage-running`` writes."""
    return ("a consistent copy needs the VM shut off, or the staged cutover (set "
            f"convert.forceShare: true in {plan_name}, or make the plan with vmmove plan "
            "--stage-running, to copy it while it runs, reading with qemu-img -U)")

#: Extensions that promise a container format: a file with one of these that qemu-img
#: reads as raw is corrupt or not an image, and converting it "as raw" would be wrong.
_EXTENSION_FORMATS = {".vmdk": "vmdk", ".qcow2": "qcow2", ".qcow": "qcow", ".vdi": "vdi",
                      ".vhdx": "vhdx", ".vhd": "vpc", ".qed": "qed"}
_FORMAT_ALIASES = {"vhd": "vpc", "iso": "raw", "img": "raw", "aio": "raw"}

# Statuses of a result.
CONVERTED = "converted"  # converted (and verified if asked) in this run
SKIPPED = "skipped"  # already done in an earlier run
VERIFIED = "verified"  # converted earlier, verified in this run
FAILED = "failed"
IGNORED = "ignored"  # not a disk (cdrom, floppy): nothing to convert


def default_jobs() -> int:
    """Disks in flight by default: one per core, at most 4 (qemu-img is I/O-bound beyond)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class ConvertOptions:
    format: str = "qcow2"  # qcow2 | raw
    compress: bool = False  # zstd-compressed qcow2 clusters
    verify: bool = True  # checksums in the copy stream (converters.stream), see verify_full
    #: ``--verify=full``: also ``qemu-img compare`` the output with the source (reads the
    #: source a second time); without it the copy's in-stream checksums are the verification.
    verify_full: bool = False
    force_share: bool = False  # --inconsistent-copy: read disks of running VMs (qemu-img -U)
    jobs: int = field(default_factory=default_jobs)
    redo: bool = False  # convert again even if the journal says done
    flags: tuple[str, ...] = qemuimg.FAST_FLAGS
    check_space: bool = True
    #: Keys of VMs the caller knows to be stopped now (the cutover's stop step): their
    #: scanned power state is stale, and it is their stopped disks that are read.
    source_stopped: frozenset[str] = frozenset()
    #: The remedy named when a disk is in use: the flag of the command that runs.
    share_hint: str = CONSISTENT_COPY_HINT

    def __post_init__(self) -> None:
        if self.format not in qemuimg.OUTPUT_FORMATS:
            raise UsageError(f"output format {self.format!r}: use qcow2 or raw")
        if self.compress and self.format != "qcow2":
            raise UsageError("--compress needs --format qcow2 (raw images cannot be compressed)")
        if self.jobs < 1:
            raise UsageError("--jobs must be at least 1")

    @property
    def compression(self) -> str | None:
        return "zstd" if self.compress else None


@dataclass
class DiskJob:
    """One disk to convert, and where its output goes."""

    vm: VM
    disk: Disk
    item: str  # journal item, <vm key>/<disk target>
    output: Path
    identity: str = ""  # the source VM's identity (migrate.core.workdir.vm_identity)
    # Filled in by preparation:
    source_format: str | None = None
    virtual_size: int | None = None
    required: int | None = None  # qemu-img measure
    fingerprint: list[list[Any]] | None = None  # (path, size, mtime_ns) of every layer
    probed: bool = False
    source_name: str | None = None  # the checked chain as qemu opens it (json:, by vmmove)
    remote: bool = False  # on a remote libvirt host: read through an NBD lease
    scratch: Path | None = None  # a packed OVF file rebuilt in the work folder (removed after)
    #: What its verification does, as progress logs say it.
    verifying: str = "qemu-img compare with the source, checksum of the output"

    def discard_scratch(self) -> None:
        """Remove the rebuilt copy of a packed file (and its private folder), if any."""
        if self.scratch is not None:
            self.scratch.unlink(missing_ok=True)
            try:
                self.scratch.parent.rmdir()
            except OSError:
                pass
            self.scratch = None

    @property
    def label(self) -> str:
        return f"{self.vm.name}/{self.disk.target}"


@dataclass
class DiskResult:
    """What happened to one disk; ``error`` is one line naming the disk and the problem."""

    vm: str
    disk: str
    item: str
    status: str
    source: str | None = None
    output: str | None = None
    format: str | None = None
    virtual_size: int | None = None
    allocated: int | None = None
    verified: bool | None = None
    checksum: str | None = None
    seconds: float | None = None
    error: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != FAILED


# Conversion reports to the one progress protocol (migrate.core.progress.Subscriber):
# each disk job is queued with the bytes to write, makes progress in bytes as qemu-img
# reports its fraction, then (when verifying) enters the ``verify`` phase, whose amounts
# are the compare's and the checksum's mean fraction of the output's size; then done.


class DiskError(VmmoveError):
    """A problem with one disk; it fails that disk only."""


# -- selection -------------------------------------------------------------------------------


def select_disks(
    inventory: Inventory,
    vms: Sequence[str] = (),
    disks: Iterable[tuple[str, str]] | None = None,
) -> list[tuple[VM, Disk]]:
    """The (VM, disk) pairs to work on.

    ``vms`` names VMs (name or UUID; empty: every VM); ``disks`` instead lists exact
    ``(vm name/uuid/key, disk target)`` pairs, as a plan wave does.  Unknown names are a
    usage error naming them.
    """
    if disks is not None:
        chosen: list[tuple[VM, Disk]] = []
        for vm_ref, target in disks:
            vm = inventory.find(vm_ref) or next(
                (v for v in inventory.vms if v.key == vm_ref), None)
            if vm is None:
                raise UsageError(f"{vm_ref}: no such VM in the inventory")
            disk = next((d for d in vm.disks if d.target == target), None)
            if disk is None:
                raise UsageError(f"{vm.name}: no disk {target!r}")
            chosen.append((vm, disk))
        return chosen
    selected = inventory.select(vms)
    return [(vm, disk) for vm in selected for disk in vm.disks]


def output_path(workdir: Path, names: dict[str, str], vm: VM, disk: Disk, fmt: str) -> Path:
    return (workdir / f"{image_basename(names[vm.key], disk)}.{fmt}").absolute()


def _claimed_outputs(journal: Journal) -> dict[str, tuple[str, str | None]]:
    """Output path → (journal item, VM identity) of every convert step that names one."""
    return {str(st.output): (st.item, st.identity)
            for st in journal.steps(KIND_CONVERT) if st.output}


def unique_output(path: Path, item: str, identity: str,
                  claimed: dict[str, tuple[str, str | None]]) -> Path:
    """``path``, or ``<stem>-<6 hex of the identity>.<fmt>`` when the journal gives
    ``path`` to another disk or VM (two inventories with a VM of the same name)."""
    owner = claimed.get(str(path))
    if owner is None or (owner[0] == item and owner[1] in (None, identity)):
        return path
    tag = hashlib.sha256(f"{identity}\0{item}".encode()).hexdigest()
    for size in (6, 12, 64):
        candidate = path.with_name(f"{path.stem}-{tag[:size]}{path.suffix}")
        owner = claimed.get(str(candidate))
        if owner is None or (owner[0] == item and owner[1] in (None, identity)):
            return candidate
    raise VmmoveError(f"{path}: no free output name (journal corrupt?)")


def is_pseudo(path: str) -> bool:
    """qemu ``json:{...}`` pseudo-filenames (disks inside OVA archives): not host files."""
    return path.startswith("json:")


def check_workdir(folder: Path, pairs: Iterable[tuple[VM, Disk]]) -> None:
    """Refuse a work folder that equals or contains the folder of a source disk.

    Converting into the sources' folder is how an output named ``<vm>-<disk>.<fmt>`` could
    replace another VM's source; one line names the folder and the first source in it.
    Raises :class:`UsageError`.
    """
    work = folder.resolve()
    for vm, disk in pairs:
        if disk.device not in ("disk", "lun") or not disk.path or is_pseudo(disk.path):
            continue
        where = Path(disk.path).resolve().parent
        if where == work or work in where.parents:
            raise UsageError(
                f"{folder}: the work folder {'is' if where == work else 'contains'} the folder "
                f"of {vm.name}/{disk.target}'s source disk {disk.path}; convert into a folder "
                "of its own, outside the sources' folders")


def _inode(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output(job: DiskJob, step: Step | None) -> None:
    """Refuse to replace ``job.output`` unless vmmove created it; raise :class:`DiskError`.

    ``step`` is the disk's convert step (:func:`unique_output` already steered clear of
    outputs other disks' steps name).  Refused: a symbolic link, wherever it points; a
    file that is one of the source's layers (a hard link); a file the step does not name,
    or whose inode differs from the one recorded when vmmove renamed it into place (a
    step written before inodes were recorded counts when it is done).
    """
    out = job.output
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise DiskError(f"{job.label}: {out} is a symbolic link vmmove did not create; "
                        "move it away or convert to another folder")
    layers = [job.disk.path or "", *(p[0] for p in job.fingerprint or [])]
    if any(_inode(layer) == (st.st_dev, st.st_ino) for layer in layers if layer):
        raise DiskError(f"{job.label}: {out} is the source disk itself (same file); "
                        "convert to another folder")
    data = step.data if step is not None else {}
    recorded = data.get("inode")
    if recorded:
        ours = list(recorded) == [st.st_dev, st.st_ino]
    else:  # a journal from before inodes were recorded
        ours = step is not None and step.status == DONE and "size" not in data
    if not (ours and data.get("output") == str(out) and stat.S_ISREG(st.st_mode)):
        raise DiskError(f"{job.label}: {out} exists and vmmove did not create it (the work "
                        "folder's journal does not name it); move it away or convert to "
                        "another folder")


def _temp_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


_TEMP_RE = re.compile(r"^\..+\.(qcow2|raw)\.\d+-[0-9a-f]{8}\.part$")
_SCRATCH_RE = re.compile(r"^\.unpack-\d+-[0-9a-f]{8}$")  # folders of rebuilt packed files


def remove_stale_temps(workdir: Path) -> list[Path]:
    """Delete partial outputs and rebuilt packed files left by an earlier run (the caller
    holds the journal lock)."""
    removed = []
    for entry in workdir.iterdir() if workdir.is_dir() else ():
        if _TEMP_RE.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif _SCRATCH_RE.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            for inner in entry.iterdir():
                if inner.is_file() and not inner.is_symlink():
                    inner.unlink(missing_ok=True)
            try:
                entry.rmdir()
            except OSError:
                continue
            removed.append(entry)
    return removed


# -- preparation -----------------------------------------------------------------------------


def declared_format(disk: Disk) -> str | None:
    """The disk's declared format as a qemu driver name (None: undeclared, sniffed)."""
    if not disk.format:
        return None
    fmt = _FORMAT_ALIASES.get(disk.format.lower(), disk.format.lower())
    if fmt not in qemuimg.SOURCE_FORMATS:
        raise DiskError(f"{disk.path}: unknown image format {disk.format!r}")
    return fmt


def source_chain(vm: VM, disk: Disk, force_share: bool = False) -> Chain:
    """The disk's image and backing chain, checked (:mod:`migrate.sources.containment`).

    An offline source's files must all lie inside its export (an OVA disk is the ``json:``
    window vmmove built over one member); a live libvirt host's image headers must agree
    with the chain the inventory recorded from libvirt.  The result's
    :meth:`~migrate.sources.containment.Chain.qemu_name` is what every qemu-img run opens.
    Raises :class:`DiskError` (refusal) or :class:`ImageError` (unreadable layer).
    """
    path = disk.path or ""
    fmt = declared_format(disk)
    try:
        export = Export.of(vm.source, disk)
        chain = open_path(export, path, fmt, force_share=force_share)
        changed = size_changed(chain, disk.stored_size)
        if changed:
            raise DiskError(changed)
        if export.trusted:
            check_agreement(chain, disk.backing_chain, path)
    except MissingFile as exc:
        if exc.path == os.path.normpath(path):
            raise DiskError(f"{path}: source image not found") from None
        raise DiskError(str(exc)) from None
    except ContainmentError as exc:
        raise DiskError(str(exc)) from None
    except ImageError:
        raise
    except VmmoveError as exc:  # an OVA that no longer reads as one
        raise DiskError(str(exc)) from None
    return chain


def _prepare_remote(job: DiskJob) -> None:
    """A disk on a remote host: nothing to open here; sizes are what libvirt reported
    (the export is the raw guest view, its size is checked when it is read)."""
    declared_format(job.disk)  # an unknown declared format fails now, not on the host
    job.remote = True
    job.source_format = "raw"
    job.virtual_size = job.disk.virtual_size
    job.required = job.disk.allocated_size or job.disk.virtual_size


def _check_format(path: str, chain: Chain, probed: bool) -> None:
    expected = _EXTENSION_FORMATS.get(Path(path).suffix.lower()) if probed else None
    if chain.format == "raw" and expected and not path.startswith("json:"):
        raise DiskError(
            f"{path}: not a valid {expected} image (no {expected} header: corrupt, truncated "
            "or not a disk image)")
    if chain.format not in qemuimg.SOURCE_FORMATS:
        raise DiskError(f"{path}: unsupported image format {chain.format!r}")


def _fingerprint(paths: Iterable[str]) -> list[list[Any]] | None:
    """(path, size, mtime_ns) of each file layer: a source that changes is converted again."""
    prints: list[list[Any]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        prints.append([path, st.st_size, st.st_mtime_ns])
    return prints or None


def refusal(disk: Disk) -> str | None:
    """Why the scan's record says this disk's data cannot be converted, or None.

    Convert honours what scan recorded: a disk with a scan ``error`` is never handed to
    qemu-img (its reason is the reason), nor is a raw device map, a vSAN object or a host
    CD-ROM, which hold no image at all.
    """
    if disk.error:
        return f"{disk.error} (as the scan recorded; not handed to qemu-img)"
    if disk.layout in (RDM_PHYSICAL, RDM_VIRTUAL):
        return (f"{disk.path or 'it'} is a VMware raw device map: its data is on a SAN LUN, not in "
                "a file; have the storage team copy the LUN (or present it to the cluster), or "
                "leave the disk out")
    if disk.layout == VSAN:
        return (f"{disk.path or 'it'} names a vSAN object: there is no local data to read; export "
                "the VM through vCenter (OVF export or VDDK) instead of copying the folder")
    if disk.layout == HOST_CDROM:
        return "a host CD-ROM drive passed through: there is no image to convert"
    return None


def _unpack(job: DiskJob, workdir: Path) -> Chain:
    """Rebuild a packed (compressed/chunked) OVF file in a private folder of the work folder
    and open it as an export of its own: the rebuilt image may name no other file."""
    from converters.unpack import UnpackError, unpack

    packing = job.disk.packing
    assert packing is not None
    capacity = job.disk.virtual_size or 0
    # A converted image is at most its capacity plus format metadata; gzip beyond that is a bomb.
    limit = capacity + capacity // 8 + 64 * 1024**2 if capacity else (packing.size or 0) * 1024
    folder = workdir / f".unpack-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir(mode=0o700)
    try:
        job.scratch = unpack(packing, folder, Path(packing.href).name or "disk", limit)
    except UnpackError as exc:
        folder.rmdir()
        raise DiskError(str(exc)) from None
    export = Export.of_descriptor(str(job.scratch))
    return open_path(export, str(job.scratch), declared_format(job.disk))


def prepare(job: DiskJob, options: ConvertOptions, done: Step | None = None) -> None:
    """Check the source and measure it; raise :class:`DiskError` naming what is wrong.

    ``done`` is the journal's step for the disk: a packed file whose finished, verified
    image is recorded from the same pieces is not rebuilt just to be skipped.
    """
    disk, path = job.disk, job.disk.path
    reason = refusal(disk)
    if reason:
        raise DiskError(f"{job.label}: {reason}")
    if disk.packing is not None:
        _prepare_packed(job, options, done)
        return
    if not path:
        raise DiskError(f"{job.label}: the disk has no source file")
    if disk.source_type not in ("file", "block", "volume"):
        raise DiskError(f"{job.label}: {disk.source_type} disks ({disk.protocol or path}) cannot "
                        "be read from here; export the image to a file first")
    if is_remote(job.vm) or (reads_via_nbd(job.vm)
                             and job.vm.key not in options.source_stopped):
        _prepare_remote(job)  # the lease reads the VM's live state on its host
        return
    if job.vm.power_state in IN_USE_STATES and not options.force_share \
            and job.vm.key not in options.source_stopped:
        raise DiskError(
            f"{job.label}: VM is {job.vm.power_state.value}; {options.share_hint}")
    try:
        probed = declared_format(disk) is None
        chain = source_chain(job.vm, disk, options.force_share)
        _check_format(path, chain, probed)
        fmt, name = chain.format, chain.qemu_name()
        # Two small read-only qemu-img runs, side by side: this is per-disk latency
        # a one-disk conversion pays in full.
        with ThreadPoolExecutor(max_workers=2) as pool:
            f_check = pool.submit(qemuimg.check, name, fmt, force_share=options.force_share,
                                  label=path)
            f_measure = pool.submit(qemuimg.measure, name, fmt, "qcow2",
                                    force_share=options.force_share, label=path)
            problem = f_check.result()
            if problem:
                raise DiskError(f"{path}: {problem}")
            measured = f_measure.result()
    except qemuimg.ImageInUse as exc:
        raise DiskError(f"{exc}; the image is in use: {options.share_hint}") from None
    except (ImageError, qemuimg.QemuImgError) as exc:
        if any(h in str(exc) for h in ("lock", "another process")):
            raise DiskError(f"{exc}; the image is in use: {options.share_hint}") from None
        raise DiskError(str(exc)) from None
    job.source_format, job.probed = fmt, probed
    job.source_name = name
    job.virtual_size = chain.virtual_size
    # Raw output stays sparse, so it needs the data, like qcow2 without its small metadata:
    # the qcow2 measure is the estimate for both (qemu-img's raw estimate is the full size).
    job.required = measured.required
    layers = chain.real_paths()
    job.fingerprint = _fingerprint(layers)
    work = job.output.parent.resolve()
    for layer in layers[1:]:
        where = Path(layer).resolve().parent
        if where == work or work in where.parents:
            raise DiskError(f"{job.label}: backing file {layer} is in the work folder "
                            f"{job.output.parent}; convert into a folder of its own")


def _prepare_packed(job: DiskJob, options: ConvertOptions, done: Step | None) -> None:
    """:func:`prepare` for a gzip/chunked OVF file: rebuild it, then measure the copy."""
    packing = job.disk.packing
    assert packing is not None
    job.fingerprint = _fingerprint(dict.fromkeys(p.path for p in packing.pieces))
    if (done is not None and _is_current(done, job, options)
            and (done.verified or not options.verify)):
        job.source_format = done.source_format
        job.source_name = job.disk.path  # never opened: the step is skipped
        job.virtual_size = done.virtual_size
        return
    try:
        chain = _unpack(job, job.output.parent)
        fmt, name = chain.format, chain.qemu_name()
        problem = qemuimg.check(name, fmt, label=packing.href)
        if problem:
            raise DiskError(f"{packing.href}: {problem}")
        measured = qemuimg.measure(name, fmt, "qcow2", label=packing.href)
    except ContainmentError as exc:
        raise DiskError(str(exc)) from None
    except (ImageError, qemuimg.QemuImgError) as exc:
        raise DiskError(str(exc)) from None
    job.source_format, job.probed, job.source_name = fmt, False, name
    job.virtual_size, job.required = chain.virtual_size, measured.required


def prepare_error(job: DiskJob, options: ConvertOptions,
                  done: Step | None = None) -> str | None:
    """:func:`prepare`, its problem (naming the disk) as the answer instead of raised; a
    failed preparation leaves no rebuilt copy of a packed file behind."""
    try:
        prepare(job, options, done)
    except VmmoveError as exc:
        job.discard_scratch()
        return _name_disk(job, str(exc))
    except BaseException:
        job.discard_scratch()
        raise
    return None


def _is_current(step: Step | None, job: DiskJob, options: ConvertOptions) -> bool:
    """A done step whose output is still there, in the asked format, from the same source."""
    if step is None or step.status != DONE or options.redo:
        return False
    data = step.data
    try:
        size = os.lstat(job.output).st_size if job.output.is_file() else None
    except OSError:
        size = None
    return (
        data.get("output") == str(job.output)
        and size is not None
        and data.get("size") in (None, size)  # journals before "size" was recorded
        and data.get("identity") in (None, job.identity)
        and data.get("format") == options.format
        and bool(data.get("compressed")) == options.compress
        and data.get("source") == job.disk.path
        and (job.fingerprint is None or data.get("fingerprint") == job.fingerprint)
    )


# -- work ------------------------------------------------------------------------------------


def allocated_bytes(path: str | os.PathLike[str]) -> int:
    return os.stat(path).st_blocks * 512


def streams(job: DiskJob, options: ConvertOptions) -> bool:
    """Whether ``job`` is converted by :mod:`converters.stream` (read once, verified in the
    stream): a verified qcow2, of a disk read here or of a remote host's export forwarded
    here (``nbd+unix://``; ``--verify=full`` keeps reading that one twice, the host's
    export against the output).  ``--compress``, raw output, ``--no-verify`` and a local
    ``--inconsistent-copy`` (qemu-nbd 7.2 has no ``--force-share``) keep ``qemu-img
    convert``."""
    if not options.verify or options.format != "qcow2" or options.compress:
        return False
    if job.remote:
        return not options.verify_full and (job.source_name or "").startswith("nbd+unix:")
    return not options.force_share


def _verify(job: DiskJob, image: Path, options: ConvertOptions,
            canceller: qemuimg.Canceller,
            progress: Subscriber | None = None) -> tuple[str, qemuimg.CompareResult]:
    """qemu-img compare source↔output while this thread hashes the output.

    ``progress`` enters the ``verify`` phase and gets the verification's progress: the
    mean of the compare's own progress and the share of the output hashed.
    """
    assert job.disk.path and job.source_format and job.source_name
    outcome: dict[str, Any] = {}
    parts = [0.0, 0.0]  # compare, hash
    size = max(image.stat().st_size, 1)
    lock = threading.Lock()

    verified = None
    if progress is not None:
        total = (job.output.stat().st_size if job.output.exists() else 0) \
            or job.required or job.virtual_size or 0
        progress.on_phase(job, "verify", total)
        verified = Fractions(progress, job, total)

    def report(index: int, fraction: float) -> None:
        if verified is None:
            return
        with lock:
            parts[index] = fraction
            value = (parts[0] + parts[1]) / 2
        verified(value)

    def run_compare() -> None:
        try:
            outcome["result"] = qemuimg.compare(
                job.source_name, job.source_format, str(image), options.format,
                force_share=options.force_share, canceller=canceller, label=job.disk.path,
                on_progress=lambda f: report(0, f))
        except BaseException as exc:  # carried to the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=run_compare, name=f"compare {job.item}")
    thread.start()
    try:
        checksum = digest.file_checksum(image, on_bytes=lambda n: report(1, min(n / size, 1.0)))
    finally:
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return checksum, outcome["result"]


class Runner:
    """One batch: a journal held exclusively, a pool of ``jobs`` threads, a canceller."""

    def __init__(self, journal: Journal, options: ConvertOptions, progress: Subscriber) -> None:
        self.journal = journal
        #: output path → (item, identity) as the journal records them (see unique_output)
        self.claimed = _claimed_outputs(journal)
        self.options = options
        self.progress = progress
        self.canceller = qemuimg.Canceller()
        self.remote: RemoteReads | None = None  # set by _run_batch when a disk is remote

    def _result(self, job: DiskJob, status: str, **kw: Any) -> DiskResult:
        return DiskResult(vm=job.vm.name, disk=job.disk.target, item=job.item, status=status,
                          source=job.disk.path, format=self.options.format, **kw)

    def _refuse(self, job: DiskJob, error: str) -> DiskResult:
        """Fail a disk without touching its journal step (it may be another VM's)."""
        result = self._result(job, FAILED, error=error)
        self.progress.on_done(job, result)
        return result

    def _fail(self, job: DiskJob, error: str) -> DiskResult:
        self.journal.fail(KIND_CONVERT, job.item, error, vm=job.vm.name, disk=job.disk.target,
                          source=job.disk.path)
        return self._result(job, FAILED, error=error)

    def _from_step(self, job: DiskJob, status: str, step: Step, note: str | None) -> DiskResult:
        d = step.data
        return self._result(
            job, status, output=d.get("output"), virtual_size=d.get("virtual_size"),
            allocated=d.get("allocated"), verified=d.get("verified"), checksum=step.checksum,
            seconds=step.duration, note=note)

    def run_one(self, job: DiskJob) -> DiskResult:
        """Convert (or verify, or skip) one prepared disk; never raises for disk problems."""
        try:
            return self._run_one(job)
        finally:
            job.discard_scratch()

    def _run_one(self, job: DiskJob) -> DiskResult:
        """Convert (or verify, or skip) one prepared disk; never raises for disk problems."""
        opts = self.options
        assert job.disk.path and job.source_format and (job.source_name or job.remote)
        step = self.journal.get(KIND_CONVERT, job.item)
        note = None
        if step is not None and not opts.redo \
                and step.identity not in (None, job.identity):
            return self._refuse(job, (
                f"{job.label}: the work folder's journal holds another VM under this key "
                f"({step.item}, from {_source_of(step.identity)}); convert it into "
                "a work folder of its own, or pass --redo to replace that VM's output"))
        if _is_current(step, job, opts):
            assert step is not None
            if step.verified or not opts.verify:
                # A skip vouches for the file as it is now: its size was checked, its checksum
                # is checked here (a file replaced or changed since is converted again).
                if step.checksum is None or digest.matches(job.output, step.checksum):
                    skipped = self._from_step(job, SKIPPED, step, "already converted")
                    self.progress.on_done(job, skipped)
                    return skipped
                note = "the output changed since it was converted (checksum): converted again"
            else:
                return self._verify_existing(job, step)
        elif step is not None and step.status == DONE and not opts.redo:
            note = ("the output is missing or changed, or the source or options changed, since "
                    "the last conversion: converted again")
        try:
            check_output(job, step)
        except DiskError as exc:
            return self._refuse(job, str(exc))
        if step is not None and step.checksum:
            # A fresh conversion must not inherit the old output's checksum.
            self.journal.reset(KIND_CONVERT, job.item)
        started = time.monotonic()
        self.journal.start(
            KIND_CONVERT, job.item, vm=job.vm.name, disk=job.disk.target, source=job.disk.path,
            source_format=job.source_format, output=str(job.output), format=opts.format,
            compressed=opts.compress, virtual_size=job.virtual_size, required=job.required,
            fingerprint=job.fingerprint, probed=job.probed, force_share=opts.force_share,
            verified=False, flags=list(opts.flags), identity=job.identity,
            inode=list(_inode(job.output) or ()) or None,  # checked ours above: replaceable
            growing=None)  # set once the stream's layout is known (converters.watermark)
        self.claimed[str(job.output)] = (job.item, job.identity)
        temp = _temp_path(job.output)
        total = job.required or job.virtual_size or 0
        self.progress.on_queued(job, total, 0)
        guest: dict[str, Any] = {}
        watermark = Watermark(str(temp), journal_listener(
            lambda growing: self.journal.update(KIND_CONVERT, job.item, growing=growing)),
            publish=True)
        try:
            new_private_file(temp)  # qemu-img truncates it and keeps its mode: 0600
            with self._source(job, guest):
                streamed = streams(job, opts)
                if streamed:
                    guest.update(self._stream(job, temp, total, watermark))
                else:
                    qemuimg.convert(
                        job.source_name or "", job.source_format, str(temp), opts.format,
                        compress=opts.compression,
                        force_share=opts.force_share and not job.remote, flags=opts.flags,
                        on_progress=Fractions(self.progress, job, total),
                        canceller=self.canceller, label=job.disk.path)
                if opts.verify and job.remote and not streamed:
                    guest.update(_verify_remote(job, temp, opts.format))
            checksum, verified = guest.get("checksum"), "guest_checksum" in guest
            if opts.verify and not job.remote and (opts.verify_full or not streamed):
                checksum, compared = _verify(job, temp, opts, self.canceller, self.progress)
                if not compared.identical:
                    hint = (" (the source is in use and changed during the copy; "
                            f"{CONSISTENT_COPY_HINT.split(' (')[0]})" if opts.force_share else "")
                    raise DiskError(f"{job.label}: output differs from the source: "
                                    f"{compared.message}{hint}")
                if guest.get("checksum") not in (None, checksum):  # pragma: no cover - sanity
                    raise DiskError(f"{job.label}: the output changed while it was verified")
                guest["compare"] = "identical"
                verified = True
            if verified:
                # Durable before the journal says done (qemu-img's convert cache is unsafe).
                fd = os.open(temp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            allocated = allocated_bytes(temp)
            size = os.stat(temp).st_size
            check_output(job, self.journal.get(KIND_CONVERT, job.item))
            os.replace(temp, job.output)
            inode = list(_inode(job.output) or ())
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            watermark.fail(f"{job.label}: conversion failed")
            if self.canceller.cancelled.is_set():
                self.journal.fail(KIND_CONVERT, job.item, "interrupted: rerun to convert it")
                result = self._result(job, FAILED, error=f"{job.label}: interrupted")
            elif isinstance(exc, qemuimg.QemuImgError) and _full(str(exc)):
                result = self._fail(job, f"{job.label}: {write_failure(job.output, _ENOSPC)}")
            elif isinstance(exc, VmmoveError):
                result = self._fail(job, _name_disk(job, str(exc)))
            elif isinstance(exc, OSError):
                result = self._fail(job, f"{job.label}: {write_failure(job.output, exc)}")
            else:
                self.journal.fail(KIND_CONVERT, job.item, "interrupted: rerun to convert it")
                raise
            self.progress.on_done(job, result)
            return result
        seconds = time.monotonic() - started
        self.journal.done(
            KIND_CONVERT, job.item, bytes=allocated, checksum=checksum, allocated=allocated,
            verified=verified, seconds=round(seconds, 3),
            compare=guest.pop("compare", "identical" if verified and "verify" not in guest
                              else None), size=size, inode=inode,
            **{k: v for k, v in guest.items() if k != "checksum"})
        watermark.finish(str(job.output), size, checksum or "")
        result = self._result(
            job, CONVERTED, output=str(job.output), virtual_size=job.virtual_size,
            allocated=allocated, verified=verified, checksum=checksum, seconds=seconds,
            note=note)
        self.progress.on_done(job, result)
        return result

    def _stream(self, job: DiskJob, temp: Path, total: int,
                watermark: Watermark | None = None) -> dict[str, Any]:
        """Convert ``job`` through :func:`converters.stream.convert_stream` (the source
        read once; the file's and the guest view's xxh3-1m computed as they pass);
        the journal fields it adds: ``checksum``, ``guest_checksum``, ``guest_bytes``,
        ``source_read`` (bytes asked of the source), ``source_read_server`` (bytes qemu-nbd
        read, /proc/PID/io), ``verify: stream``."""
        import urllib.parse

        from converters.stream import StreamError, convert_stream, stream_export
        from migrate.clients.nbdwire import NbdWireError

        hashed: list[Fractions] = []
        job.verifying = "checksums as written; the source was read once" + (
            ", then qemu-img compare with the source" if self.options.verify_full else "")

        def on_checksum(done: int, size: int) -> None:
            if not hashed:  # the file's metadata blocks hashed at the end: the verify phase
                self.progress.on_phase(job, "verify", size)
                hashed.append(Fractions(self.progress, job, size))
            hashed[0](done / max(size, 1))

        try:
            if job.remote:  # the lease's export, forwarded here: read it once, directly
                url = urllib.parse.urlsplit(job.source_name or "")
                socket = urllib.parse.parse_qs(url.query)["socket"][0]
                result = stream_export(
                    socket, urllib.parse.unquote(url.path.lstrip("/")), str(temp),
                    label=job.label, on_progress=Fractions(self.progress, job, total),
                    on_checksum=on_checksum, canceller=self.canceller, watermark=watermark)
            else:
                result = convert_stream(
                    job.source_name or "", job.source_format or "raw", str(temp),
                    label=job.disk.path or job.label,
                    on_progress=Fractions(self.progress, job, total), on_checksum=on_checksum,
                    canceller=self.canceller, watermark=watermark)
        except (StreamError, NbdWireError) as exc:
            raise DiskError(str(exc)) from None
        if job.virtual_size and result.guest_bytes != job.virtual_size:
            raise DiskError(f"{job.label}: the source reads as {result.guest_bytes} bytes, "
                            f"{'libvirt reported' if job.remote else 'the image says'} "
                            f"{job.virtual_size}")
        return {"checksum": result.checksum, "guest_checksum": result.guest_checksum,
                "guest_bytes": result.guest_bytes, "source_read": result.source_read,
                "source_read_server": result.server_read, "verify": "stream"}

    @contextmanager
    def _source(self, job: DiskJob, guest: dict[str, Any]) -> Iterator[None]:
        """Hold a remote disk's NBD lease around the copy (local disks: nothing to hold);
        a failed read is explained by the lease (SSH lost, VM shut down, job ended)."""
        if not job.remote:
            yield
            return
        assert self.remote is not None
        with self.remote.lease(job.vm, job.disk) as lease:
            job.source_name = lease.url
            guest.update(copy=lease.kind, copy_note=lease.note)
            try:
                yield
            except (qemuimg.QemuImgError, VmmoveError) as exc:
                if self.canceller.cancelled.is_set():
                    raise
                raise DiskError(lease.failure(str(exc))) from None

    def _verify_existing(self, job: DiskJob, step: Step) -> DiskResult:
        """A disk converted with --no-verify earlier: verify it now instead of converting."""
        total = job.required or job.virtual_size or 0
        self.progress.on_queued(job, total, 0)
        try:
            checksum, compared = _verify(job, job.output, self.options, self.canceller,
                                         self.progress)
        except VmmoveError as exc:
            result = self._fail(job, _name_disk(job, str(exc)))
            self.progress.on_done(job, result)
            return result
        if not compared.identical:
            job.output.unlink(missing_ok=True)  # wrong output: the next run converts again
            result = self._fail(job, f"{job.label}: output differs from the source: "
                                     f"{compared.message}; removed it, rerun to convert again")
            self.progress.on_done(job, result)
            return result
        self.journal.update(KIND_CONVERT, job.item, verified=True, compare="identical")
        self.journal.done(KIND_CONVERT, job.item, checksum=checksum)
        step = self.journal.get(KIND_CONVERT, job.item) or step
        result = self._from_step(job, VERIFIED, step, "converted earlier; verified now")
        self.progress.on_done(job, result)
        return result


_ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full(message: str) -> bool:
    """qemu-img's message for a full disk or quota (it names the source, not the output)."""
    return "No space left on device" in message or "Disk quota exceeded" in message


def _source_of(identity: str | None) -> str:
    return (identity or "?").split("|", 2)[-1] or "?"


def _name_disk(job: DiskJob, message: str) -> str:
    """Make sure an error line names the disk (VM/target), not just its file."""
    return message if message.startswith(job.label) else f"{job.label}: {message}"


def _free_bytes(workdir: Path) -> int:
    st = os.statvfs(workdir)
    return st.f_bavail * st.f_frsize


def convert_disks(
    inventory: Inventory,
    vms: Sequence[str],
    workdir: str | os.PathLike[str],
    options: ConvertOptions | None = None,
    progress: Subscriber | None = None,
    disks: Iterable[tuple[str, str]] | None = None,
) -> list[DiskResult]:
    """Convert the disks of ``vms`` (all VMs when empty), or exactly ``disks``, into ``workdir``.

    Returns one :class:`DiskResult` per selected disk, in selection order; failures are
    results (status ``failed``) so the caller decides the exit code.  Raises
    :class:`VmmoveError` only for problems with the whole run (a locked work folder).
    """
    options = options or ConvertOptions()
    progress = progress or Subscriber()
    folder = Path(workdir).absolute()
    names = target_names(inventory)
    pairs = select_disks(inventory, vms, disks)
    check_workdir(folder, pairs)
    private_dir(folder)
    journal = Journal(journal_path(folder))
    try:
        with journal.exclusive():
            return _run_batch(journal, folder, names, pairs, options, progress)
    except JournalLocked:
        raise VmmoveError(
            f"{folder}: another vmmove convert is working in this folder; wait for it to "
            "finish (or stop it) and rerun") from None
    finally:
        journal.close()


def _run_batch(journal: Journal, folder: Path, names: dict[str, str],
               pairs: list[tuple[VM, Disk]], options: ConvertOptions,
               progress: Subscriber) -> list[DiskResult]:
    remove_stale_temps(folder)
    runner = Runner(journal, options, progress)
    if any(reads_via_nbd(vm) for vm, _ in pairs):
        runner.remote = RemoteReads(pairs, inconsistent=options.force_share)
        try:
            return _run_jobs(runner, folder, names, pairs, options, progress)
        finally:
            runner.remote.close()
    return _run_jobs(runner, folder, names, pairs, options, progress)


def _run_jobs(runner: Runner, folder: Path, names: dict[str, str],
              pairs: list[tuple[VM, Disk]], options: ConvertOptions,
              progress: Progress) -> list[DiskResult]:
    results: dict[int, DiskResult] = {}
    jobs: list[tuple[int, DiskJob]] = []
    for index, (vm, disk) in enumerate(pairs):
        item, identity = disk_item(vm, disk), vm_identity(vm)
        path = unique_output(output_path(folder, names, vm, disk, options.format), item,
                             identity, runner.claimed)
        job = DiskJob(vm, disk, item, path, identity)
        if disk.device not in ("disk", "lun"):
            results[index] = runner._result(job, IGNORED, note=f"{disk.device}: nothing to convert")
        elif disk.layout == HOST_CDROM:
            results[index] = runner._result(
                job, IGNORED, note="host CD-ROM passthrough: nothing to convert (dropped)")
        else:
            jobs.append((index, job))

    # Preparation (qemu-img info + measure) runs in the pool too: it is one small process
    # per disk, and a batch can have hundreds.
    with ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="convert") as pool:
        errors = list(pool.map(
            lambda job: prepare_error(job, options, runner.journal.get(KIND_CONVERT, job.item)),
            [job for _, job in jobs]))
        todo: list[tuple[int, DiskJob]] = []
        for (index, job), error in zip(jobs, errors):
            if error:
                results[index] = runner._fail(job, error)
                progress.on_done(job, results[index])
            else:
                todo.append((index, job))

        if options.check_space:
            todo = _fit_space(runner, folder, todo, results)
        kept = {id(job) for _, job in todo}
        for _, job in jobs:
            if id(job) not in kept:
                job.discard_scratch()

        futures: dict[Future[DiskResult], int] = {
            pool.submit(runner.run_one, job): index for index, job in todo}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[futures[fut]] = fut.result()
        except BaseException:
            runner.canceller.cancel()
            for fut in futures:
                fut.cancel()
            raise
    return [results[i] for i in sorted(results)]


def _verify_remote(job: DiskJob, image: Path, fmt: str) -> dict[str, Any]:
    """Guest-view checksums of the remote export and of the output, read side by side, and
    the output file's checksum (what upload sends), all in :data:`migrate.core.digest.DEFAULT`
    form; :class:`DiskError` when the guest views differ."""
    assert job.source_name
    with ThreadPoolExecutor(max_workers=3) as pool:
        f_source = pool.submit(guest_checksum, job.source_name, job.label)
        f_output = pool.submit(file_guest_checksum, image, fmt)
        f_file = pool.submit(digest.file_checksum, image)
        (source, size), (output, _) = f_source.result(), f_output.result()
        checksum = f_file.result()
    if source != output:
        raise DiskError(f"{job.label}: the copy differs from the host's export (guest data "
                        f"{output} here, {source} on the host)")
    if job.virtual_size and size != job.virtual_size:
        raise DiskError(f"{job.label}: the host exported {size} bytes, libvirt reported "
                        f"{job.virtual_size}")
    return {"checksum": checksum, "guest_checksum": source, "guest_bytes": size}


def _fit_space(runner: Runner, folder: Path, todo: list[tuple[int, DiskJob]],
               results: dict[int, DiskResult]) -> list[tuple[int, DiskJob]]:
    """Fail (before anything is written) each disk that does not fit in what is left."""
    free = _free_bytes(folder)
    fitting = []
    for index, job in todo:
        if _is_current(runner.journal.get(KIND_CONVERT, job.item), job, runner.options):
            fitting.append((index, job))  # done already: needs no space
            continue
        need = job.required or 0
        if need > free:
            from migrate.core.output import human_size

            results[index] = runner._fail(
                job, f"{job.label}: not enough space in {folder}: the output needs "
                     f"{human_size(need)} (qemu-img measure), {human_size(free)} is free "
                     "for it; free space or convert to another folder")
            runner.progress.on_done(job, results[index])
            continue
        free -= need
        fitting.append((index, job))
    return fitting


def convert_status(workdir: str | os.PathLike[str],
                   prefixes: Sequence[str] | None = None) -> list[Step]:
    """The convert steps recorded in a work folder (optionally for some VM keys only)."""
    path = journal_path(workdir)
    if not path.is_file():
        raise VmmoveError(f"{workdir}: no vmmove journal here (nothing converted yet)")
    with Journal(path) as journal:
        steps = journal.steps(KIND_CONVERT)
    if prefixes:
        steps = [s for s in steps if any(s.item.startswith(f"{p}/") for p in prefixes)]
    return steps


def preflight_disks(inventory: Inventory, workdir: str | os.PathLike[str],
                    options: ConvertOptions,
                    disks: Iterable[tuple[str, str]]) -> tuple[list[str], int, int]:
    """Before converting anything: every disk of ``disks`` (``(vm key, target)``) checked
    as the conversion will check it (source there, readable, not in use unless
    ``force_share``; ``qemu-img info``/``check``/``measure``), and the space the outputs
    not converted yet need (``qemu-img measure``'s ``required``) against the space free in
    ``workdir``.  Returns ``(problems, bytes needed, bytes free)``; nothing is written
    (the journal is only read)."""
    from migrate.core.output import human_size

    folder = Path(workdir).absolute()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = _free_bytes(probe)
    names = target_names(inventory)
    pairs = [(vm, disk) for vm, disk in select_disks(inventory, (), disks)
             if disk.device in ("disk", "lun") and disk.layout != HOST_CDROM]
    steps: dict[str, Step | None] = {}
    claimed: dict[str, tuple[str, str | None]] = {}
    if journal_path(folder).is_file():
        with Journal(journal_path(folder)) as journal:
            claimed = _claimed_outputs(journal)
            steps = {disk_item(vm, d): journal.get(KIND_CONVERT, disk_item(vm, d))
                     for vm, d in pairs}
    jobs = []
    for vm, disk in pairs:
        item, identity = disk_item(vm, disk), vm_identity(vm)
        path = unique_output(output_path(folder, names, vm, disk, options.format), item,
                             identity, claimed)
        jobs.append(DiskJob(vm, disk, item, path, identity))
    todo = [job for job in jobs if not _is_current(steps.get(job.item), job, options)]
    # A packed OVF file would have to be rebuilt (written) to be measured: its capacity
    # is the estimate, and the conversion checks it.
    packed = [job for job in todo if job.disk.packing is not None]
    with ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="preflight") as pool:
        problems = [e for e in pool.map(lambda job: prepare_error(job, options),
                                        [j for j in todo if j not in packed]) if e]
    need = sum(job.required or 0 for job in todo) + sum(
        job.disk.virtual_size or 0 for job in packed)
    if need > free:
        problems.append(f"{folder}: not enough space: the {len(todo)} image(s) to convert "
                        f"need {human_size(need)} (qemu-img measure), {human_size(free)} is "
                        "free; free space or give the plan another workdir")
    return problems, need, free
