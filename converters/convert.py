"""Convert the disks of an inventory's VMs into images CDI imports: the batch runner.

The API the CLI (and later the plan/migrate commands) call is :func:`convert_disks`:
pick disks with :func:`select_disks` (whole VMs, or an explicit list of ``(vm, disk)``
such as a plan wave), then convert them ``jobs`` at a time with qemu-img.

Rules it keeps, and why:

* sources are only ever read (qemu-img opens them read-only; ``-U`` only with
  ``force_share``), so a failed or cancelled run costs nothing but time;
* outputs are written to a hidden temporary name in the work folder, verified there, and
  renamed only when complete, so ``DIR/<name>.<fmt>`` exists only for a finished disk;
* every step is in the work folder's journal (:mod:`migrate.workdir`), so a rerun after a
  crash, SIGKILL or Ctrl-C skips disks already converted and verified and redoes the rest;
* free space is checked with ``qemu-img measure`` before any disk starts; a disk that does
  not fit fails on its own with a clear message, the others go on;
* one disk's failure never stops the others: each result carries its own error.

The checksum recorded for an output is ``sha256:<hex>`` of the output file's bytes (the
file upload sends), computed while ``qemu-img compare`` reads the same file, so the
output is read from disk once at most (usually it is still in the page cache).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from converters import qemuimg
from converters.checksum import sha256_file
from migrate.errors import UsageError, VmmoveError
from migrate.imageinfo import ImageError, image_info
from migrate.model import VM, Disk, Inventory, PowerState
from migrate.state import DONE, Journal, JournalLocked, Step
from migrate.workdir import KIND_CONVERT, disk_item, image_basename, journal_path, target_names

#: Power states in which a disk is held open by the hypervisor.
IN_USE_STATES = {PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN,
                 PowerState.SUSPENDED}

CONSISTENT_COPY_HINT = (
    "a consistent copy needs the VM shut off, or the staged cutover "
    "(pass --force-share to copy it anyway, reading with qemu-img -U)"
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
    verify: bool = True  # qemu-img compare + sha256 of the output
    force_share: bool = False  # read disks of running VMs (qemu-img -U)
    jobs: int = field(default_factory=default_jobs)
    redo: bool = False  # convert again even if the journal says done
    flags: tuple[str, ...] = qemuimg.FAST_FLAGS
    check_space: bool = True
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
    # Filled in by preparation:
    source_format: str | None = None
    virtual_size: int | None = None
    required: int | None = None  # qemu-img measure
    fingerprint: list[list[Any]] | None = None  # (path, size, mtime_ns) of every layer
    probed: bool = False

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


class Progress(Protocol):
    """Progress subscriber: the CLI draws bars; tests may record calls."""

    def started(self, job: DiskJob, total: int) -> None: ...
    def advanced(self, job: DiskJob, fraction: float) -> None: ...
    def finished(self, job: DiskJob, result: DiskResult) -> None: ...


class NoProgress:
    def started(self, job: DiskJob, total: int) -> None:
        pass

    def advanced(self, job: DiskJob, fraction: float) -> None:
        pass

    def finished(self, job: DiskJob, result: DiskResult) -> None:
        pass


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
    if vms:
        missing = [ref for ref in vms if inventory.find(ref) is None]
        if missing:
            raise UsageError(f"no such VM in the inventory: {', '.join(missing)}")
        picked = [inventory.find(ref) for ref in dict.fromkeys(vms)]
        selected = [vm for vm in picked if vm is not None]
    else:
        selected = list(inventory.vms)
    return [(vm, disk) for vm in selected for disk in vm.disks]


def output_path(workdir: Path, names: dict[str, str], vm: VM, disk: Disk, fmt: str) -> Path:
    return (workdir / f"{image_basename(names[vm.key], disk)}.{fmt}").absolute()


def _temp_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


_TEMP_RE = re.compile(r"^\..+\.(qcow2|raw)\.\d+-[0-9a-f]{8}\.part$")


def remove_stale_temps(workdir: Path) -> list[Path]:
    """Delete partial outputs left by an earlier run (the caller holds the journal lock)."""
    removed = []
    for entry in workdir.iterdir() if workdir.is_dir() else ():
        if _TEMP_RE.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# -- preparation -----------------------------------------------------------------------------


def is_pseudo(path: str) -> bool:
    """qemu ``json:{...}`` pseudo-filenames (disks inside OVA archives): not host files."""
    return path.startswith("json:")


def _json_driver(path: str) -> str | None:
    try:
        spec = json.loads(path[len("json:"):])
    except json.JSONDecodeError:
        raise DiskError(f"{path[:60]}…: not a valid qemu json: filename") from None
    driver = spec.get("driver") if isinstance(spec, dict) else None
    return driver if driver in qemuimg.SOURCE_FORMATS else None


def resolve_format(disk: Disk, force_share: bool) -> tuple[str, bool]:
    """The source format to pass with ``-f``, and whether it had to be probed."""
    path = disk.path or ""
    if is_pseudo(path):
        driver = _json_driver(path)
        if driver:
            return driver, False
    if disk.format:
        fmt = _FORMAT_ALIASES.get(disk.format.lower(), disk.format.lower())
        if fmt not in qemuimg.SOURCE_FORMATS:
            raise DiskError(f"{path}: unknown image format {disk.format!r}")
        return fmt, False
    info = image_info(path, force_share=force_share)
    fmt = info.format
    expected = _EXTENSION_FORMATS.get(Path(path).suffix.lower()) if not is_pseudo(path) else None
    if fmt == "raw" and expected:
        raise DiskError(
            f"{path}: not a valid {expected} image (no {expected} header: corrupt, truncated "
            "or not a disk image)")
    if fmt not in qemuimg.SOURCE_FORMATS:
        raise DiskError(f"{path}: unsupported image format {fmt!r}")
    return fmt, True


def _fingerprint(paths: Iterable[str]) -> list[list[Any]] | None:
    """(path, size, mtime_ns) of each file layer: a source that changes is converted again."""
    prints: list[list[Any]] = []
    for path in paths:
        if not path or is_pseudo(path):
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        prints.append([path, st.st_size, st.st_mtime_ns])
    return prints


def prepare(job: DiskJob, options: ConvertOptions) -> None:
    """Check the source and measure it; raise :class:`DiskError` naming what is wrong."""
    disk, path = job.disk, job.disk.path
    if not path:
        raise DiskError(f"{job.label}: the disk has no source file")
    if disk.source_type not in ("file", "block", "volume") and not is_pseudo(path):
        raise DiskError(f"{job.label}: {disk.source_type} disks ({disk.protocol or path}) cannot "
                        "be read from here; export the image to a file first")
    if not is_pseudo(path) and not os.path.exists(path):
        raise DiskError(f"{path}: source image not found")
    if job.vm.power_state in IN_USE_STATES and not options.force_share:
        raise DiskError(
            f"{job.label}: VM is {job.vm.power_state.value}; {options.share_hint}")
    try:
        fmt, probed = resolve_format(disk, options.force_share)
        # Three small read-only qemu-img runs, side by side: this is per-disk latency
        # a one-disk conversion pays in full.
        with ThreadPoolExecutor(max_workers=3) as pool:
            f_info = pool.submit(image_info, path, options.force_share, fmt)
            f_check = pool.submit(qemuimg.check, path, fmt, force_share=options.force_share)
            f_measure = pool.submit(qemuimg.measure, path, fmt, "qcow2",
                                    force_share=options.force_share)
            info = f_info.result()
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
    job.virtual_size = info.virtual_size
    # Raw output stays sparse, so it needs the data, like qcow2 without its small metadata:
    # the qcow2 measure is the estimate for both (qemu-img's raw estimate is the full size).
    job.required = measured.required
    job.fingerprint = _fingerprint([path, *(b.path for b in info.backing_chain)])


def prepare_error(job: DiskJob, options: ConvertOptions) -> str | None:
    """:func:`prepare`, its problem (naming the disk) as the answer instead of raised."""
    try:
        prepare(job, options)
    except VmmoveError as exc:
        return _name_disk(job, str(exc))
    return None


def _is_current(step: Step | None, job: DiskJob, options: ConvertOptions) -> bool:
    """A done step whose output is still there, in the asked format, from the same source."""
    if step is None or step.status != DONE or options.redo:
        return False
    data = step.data
    return (
        data.get("output") == str(job.output)
        and job.output.is_file()
        and data.get("format") == options.format
        and bool(data.get("compressed")) == options.compress
        and data.get("source") == job.disk.path
        and (job.fingerprint is None or data.get("fingerprint") == job.fingerprint)
    )


# -- work ------------------------------------------------------------------------------------


def allocated_bytes(path: str | os.PathLike[str]) -> int:
    return os.stat(path).st_blocks * 512


def _verify(job: DiskJob, image: Path, options: ConvertOptions,
            canceller: qemuimg.Canceller) -> tuple[str, qemuimg.CompareResult]:
    """qemu-img compare source↔output while this thread hashes the output."""
    assert job.disk.path and job.source_format
    outcome: dict[str, Any] = {}

    def run_compare() -> None:
        try:
            outcome["result"] = qemuimg.compare(
                job.disk.path, job.source_format, str(image), options.format,
                force_share=options.force_share, canceller=canceller)
        except BaseException as exc:  # carried to the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=run_compare, name=f"compare {job.item}")
    thread.start()
    try:
        checksum = sha256_file(image)
    finally:
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return checksum, outcome["result"]


class Runner:
    """One batch: a journal held exclusively, a pool of ``jobs`` threads, a canceller."""

    def __init__(self, journal: Journal, options: ConvertOptions, progress: Progress) -> None:
        self.journal = journal
        self.options = options
        self.progress = progress
        self.canceller = qemuimg.Canceller()

    def _result(self, job: DiskJob, status: str, **kw: Any) -> DiskResult:
        return DiskResult(vm=job.vm.name, disk=job.disk.target, item=job.item, status=status,
                          source=job.disk.path, format=self.options.format, **kw)

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
        opts = self.options
        assert job.disk.path and job.source_format
        step = self.journal.get(KIND_CONVERT, job.item)
        if _is_current(step, job, opts):
            assert step is not None
            if step.data.get("verified") or not opts.verify:
                skipped = self._from_step(job, SKIPPED, step, "already converted")
                self.progress.finished(job, skipped)
                return skipped
            return self._verify_existing(job, step)
        note = None
        if step is not None and step.status == DONE and not opts.redo:
            note = "source or options changed since the last conversion: converted again"
        if step is not None and step.checksum:
            # A fresh conversion must not inherit the old output's checksum.
            self.journal.reset(KIND_CONVERT, job.item)
        started = time.monotonic()
        self.journal.start(
            KIND_CONVERT, job.item, vm=job.vm.name, disk=job.disk.target, source=job.disk.path,
            source_format=job.source_format, output=str(job.output), format=opts.format,
            compressed=opts.compress, virtual_size=job.virtual_size, required=job.required,
            fingerprint=job.fingerprint, probed=job.probed, force_share=opts.force_share,
            verified=False, flags=list(opts.flags))
        temp = _temp_path(job.output)
        total = job.required or job.virtual_size or 0
        self.progress.started(job, total)
        try:
            qemuimg.convert(
                job.disk.path, job.source_format, str(temp), opts.format,
                compress=opts.compression, force_share=opts.force_share, flags=opts.flags,
                on_progress=lambda f: self.progress.advanced(job, f), canceller=self.canceller)
            checksum, verified = None, False
            if opts.verify:
                checksum, compared = _verify(job, temp, opts, self.canceller)
                if not compared.identical:
                    hint = (" (the source is in use and changed during the copy; "
                            f"{CONSISTENT_COPY_HINT.split(' (')[0]})" if opts.force_share else "")
                    raise DiskError(f"{job.label}: output differs from the source: "
                                    f"{compared.message}{hint}")
                verified = True
                # Durable before the journal says done (qemu-img's convert cache is unsafe).
                fd = os.open(temp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            allocated = allocated_bytes(temp)
            os.replace(temp, job.output)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if self.canceller.cancelled.is_set():
                self.journal.fail(KIND_CONVERT, job.item, "interrupted: rerun to convert it")
                result = self._result(job, FAILED, error=f"{job.label}: interrupted")
            elif isinstance(exc, VmmoveError):
                result = self._fail(job, _name_disk(job, str(exc)))
            elif isinstance(exc, OSError):
                result = self._fail(job, f"{job.label}: {exc.strerror or exc}")
            else:
                self.journal.fail(KIND_CONVERT, job.item, "interrupted: rerun to convert it")
                raise
            self.progress.finished(job, result)
            return result
        seconds = time.monotonic() - started
        self.journal.done(
            KIND_CONVERT, job.item, bytes=allocated, checksum=checksum, allocated=allocated,
            verified=verified, seconds=round(seconds, 3),
            compare="identical" if verified else None)
        result = self._result(
            job, CONVERTED, output=str(job.output), virtual_size=job.virtual_size,
            allocated=allocated, verified=verified, checksum=checksum, seconds=seconds,
            note=note)
        self.progress.finished(job, result)
        return result

    def _verify_existing(self, job: DiskJob, step: Step) -> DiskResult:
        """A disk converted with --no-verify earlier: verify it now instead of converting."""
        total = job.required or job.virtual_size or 0
        self.progress.started(job, total)
        try:
            checksum, compared = _verify(job, job.output, self.options, self.canceller)
        except VmmoveError as exc:
            result = self._fail(job, _name_disk(job, str(exc)))
            self.progress.finished(job, result)
            return result
        if not compared.identical:
            job.output.unlink(missing_ok=True)  # wrong output: the next run converts again
            result = self._fail(job, f"{job.label}: output differs from the source: "
                                     f"{compared.message}; removed it, rerun to convert again")
            self.progress.finished(job, result)
            return result
        self.journal.update(KIND_CONVERT, job.item, verified=True, compare="identical")
        self.journal.done(KIND_CONVERT, job.item, checksum=checksum)
        step = self.journal.get(KIND_CONVERT, job.item) or step
        result = self._from_step(job, VERIFIED, step, "converted earlier; verified now")
        self.progress.finished(job, result)
        return result


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
    progress: Progress | None = None,
    disks: Iterable[tuple[str, str]] | None = None,
) -> list[DiskResult]:
    """Convert the disks of ``vms`` (all VMs when empty), or exactly ``disks``, into ``workdir``.

    Returns one :class:`DiskResult` per selected disk, in selection order; failures are
    results (status ``failed``) so the caller decides the exit code.  Raises
    :class:`VmmoveError` only for problems with the whole run (a locked work folder).
    """
    options = options or ConvertOptions()
    progress = progress or NoProgress()
    folder = Path(workdir).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    names = target_names(inventory)
    pairs = select_disks(inventory, vms, disks)
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
               progress: Progress) -> list[DiskResult]:
    remove_stale_temps(folder)
    runner = Runner(journal, options, progress)
    results: dict[int, DiskResult] = {}
    jobs: list[tuple[int, DiskJob]] = []
    for index, (vm, disk) in enumerate(pairs):
        job = DiskJob(vm, disk, disk_item(vm, disk),
                      output_path(folder, names, vm, disk, options.format))
        if disk.device not in ("disk", "lun"):
            results[index] = runner._result(job, IGNORED, note=f"{disk.device}: nothing to convert")
        else:
            jobs.append((index, job))

    # Preparation (qemu-img info + measure) runs in the pool too: it is one small process
    # per disk, and a batch can have hundreds.
    with ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="convert") as pool:
        errors = list(pool.map(lambda job: prepare_error(job, options), [job for _, job in jobs]))
        todo: list[tuple[int, DiskJob]] = []
        for (index, job), error in zip(jobs, errors):
            if error:
                results[index] = runner._fail(job, error)
                progress.finished(job, results[index])
            else:
                todo.append((index, job))

        if options.check_space:
            todo = _fit_space(runner, folder, todo, results)

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
            from migrate.output import human_size

            results[index] = runner._fail(
                job, f"{job.label}: not enough space in {folder}: the output needs "
                     f"{human_size(need)} (qemu-img measure), {human_size(free)} is free "
                     "for it; free space or convert to another folder")
            runner.progress.finished(job, results[index])
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
    from migrate.output import human_size

    folder = Path(workdir).absolute()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = _free_bytes(probe)
    names = target_names(inventory)
    jobs = [DiskJob(vm, disk, disk_item(vm, disk),
                    output_path(folder, names, vm, disk, options.format))
            for vm, disk in select_disks(inventory, (), disks)
            if disk.device in ("disk", "lun")]
    steps: dict[str, Step | None] = {}
    if journal_path(folder).is_file():
        with Journal(journal_path(folder)) as journal:
            steps = {job.item: journal.get(KIND_CONVERT, job.item) for job in jobs}
    todo = [job for job in jobs if not _is_current(steps.get(job.item), job, options)]

    with ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="preflight") as pool:
        problems = [e for e in pool.map(lambda job: prepare_error(job, options), todo) if e]
    need = sum(job.required or 0 for job in todo)
    if need > free:
        problems.append(f"{folder}: not enough space: the {len(todo)} image(s) to convert "
                        f"need {human_size(need)} (qemu-img measure), {human_size(free)} is "
                        "free; free space or give the plan another workdir")
    return problems, need, free
