"""Warm migration: precopy rounds while the source runs, a final delta while it is down.

A warm VM (plan ``warm: true``, ``vmmove plan --warm``) keeps its target volumes close to
the running source with ``vmmove sync`` rounds; its cutover then copies only what changed
since the last round (docs/warm-migration.md).  Each disk gets one method, said at plan
time (:func:`disk_method`):

* ``bitmap``: a qcow2 file of a VM on a libvirt host.  Round 1 is a full pull backup job
  that creates checkpoint ``vmmove-<tag>-1``; round *n* is an incremental job from the
  previous round's checkpoint creating ``vmmove-<tag>-<n>`` and copying exactly the
  extents its dirty bitmap marks; the previous checkpoint is then deleted.  The final
  delta, after the ACPI shutdown, is the last checkpoint's persistent bitmap exported by
  ``qemu-nbd -B``.
* ``hash``: every other disk (raw files, LVM, block devices, offline sources).  Each round
  reads the whole disk (a full pull job's point-in-time export when the VM runs), hashes
  it per MiB and writes only blocks whose hash changed (:mod:`converters.delta`).

Journal (kind ``warm``): item ``<vm key>`` holds the chain — ``round`` (last round done),
``checkpoint`` (its checkpoint, the base of the next round), ``sizes`` (disk → bytes at that
round), ``full_reason`` (why the next round must be full), and the last round's figures;
item ``<vm key>/round/<n>`` one round (kind of round, per-disk changed bytes, seconds).
Invariant: the journal's checkpoint is the newest round *finished*; any other vmmove
checkpoint on the host is a leftover of a killed round and is deleted before the next.

Target volumes: a PVC as the writer sees it — ``disk.img`` of a Filesystem-mode volume,
under ``warm.volumes`` (``<dir>/<namespace>/<DataVolume>/disk.img``), written in place.
Hosts: local libvirt (``qemu:///system``), remote KVM hosts (``qemu+ssh://``: the same
steps over SSH, :class:`migrate.sources.warm_host.WarmHost`), and offline sources; see the
docs for limits.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters import delta
from migrate.core import digest
from migrate.core.errors import UsageError, VmmoveError
from migrate.core.model import VM, Disk, SourceKind
from migrate.plan import Plan, PlannedVM
from migrate.core.journal import DONE, Journal
from migrate.core.records import KIND_WARM

BITMAP, HASH = "bitmap", "hash"
#: A cutover's preflight wants a round no older than this (plan ``warm.maxRoundAge``).
DEFAULT_MAX_AGE = 3600.0
#: Fixed cost of a final sync per disk (export, connect, verify) in the prediction.
OVERHEAD = 1.0


class WarmError(VmmoveError):
    """A warm round or final delta cannot go on; one line naming the VM and disk."""


def data_disks(vm: VM) -> list[Disk]:
    return [d for d in vm.disks if d.device in ("disk", "lun")]


def disk_method(vm: VM, disk: Disk) -> tuple[str, str]:
    """``(method, why)`` for one disk: ``bitmap`` for a qcow2 file of a libvirt VM (its
    image can carry a persistent dirty bitmap), else ``hash``."""
    fmt = (disk.format or "raw").lower()
    if vm.source.kind != SourceKind.LIBVIRT:
        return HASH, f"offline {vm.source.kind.value} source: re-read and hashed at cutover"
    if disk.source_type != "file":
        return HASH, f"{disk.source_type} disk cannot carry a bitmap"
    if fmt != "qcow2":
        return HASH, f"{fmt} image cannot carry a bitmap"
    return BITMAP, "qcow2 on a libvirt host: checkpoints + incremental backup"


def is_warm(plan: Plan, p: PlannedVM) -> bool:
    entry = getattr(p.entry, "warm", None)
    return bool(plan.warm.default if entry is None else entry)


def vm_item(p: PlannedVM) -> str:
    return p.key


def round_item(p: PlannedVM, n: int) -> str:
    return f"{p.key}/round/{n}"


def claim(plan: Plan, p: PlannedVM, disk: Disk) -> tuple[str, str]:
    """``(namespace, DataVolume)`` holding the disk's target volume (its PVC's name)."""
    from migrate.pipeline.stages import build_manifests, vm_objects

    try:
        objects = vm_objects(plan, build_manifests(plan, [p]))
    except VmmoveError:  # not staged yet: the DataVolume name manifests will give it
        from manifests.generate import dns1123_label
        from migrate.core.naming import assign_names
        from migrate.core.workdir import image_basename

        names = assign_names((d.target, dns1123_label(image_basename(p.name, d)))
                             for d in data_disks(p.vm))
        return p.namespace, names[disk.target]
    for obj in objects:
        for imp in obj.imports:
            if imp.item.rsplit("/", 1)[-1] == disk.target:
                return imp.namespace, imp.dv
    raise WarmError(f"{p.vm.name}/{disk.target}: no DataVolume for this disk in the manifests")


def volume_path(plan: Plan, p: PlannedVM, disk: Disk) -> Path:
    """Where vmmove writes the disk's target volume itself (``warm.volumes``)."""
    if plan.warm.volumes is None:
        raise UsageError(f"{plan.path}: warm VM {p.vm.name} needs warm.volumes (where the "
                         "target volumes are written) in the plan, or warm.writer worker")
    namespace, dv = claim(plan, p, disk)
    return plan.warm.volumes / namespace / dv / "disk.img"


@dataclass
class DiskRound:
    target: str
    method: str
    full: bool
    changed: int = 0
    read: int = 0
    extents: int = 0
    size: int = 0
    seconds: float = 0.0
    reason: str = ""
    writer: str = "local"
    checksum: str | None = None  # the volume's checksum, as a verifying worker reported it
    # hash method: the source's guest-view checksum, from the same pass (no second read)
    source_checksum: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {"method": self.method, "full": self.full, "changed": self.changed,
                "read": self.read, "extents": self.extents, "size": self.size,
                "seconds": round(self.seconds, 3), "reason": self.reason,
                "writer": self.writer, "checksum": self.checksum}


@dataclass
class RoundResult:
    vm: str
    round: int
    kind: str  # full | incremental | final
    disks: list[DiskRound] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return sum(d.changed for d in self.disks)

    def to_data(self) -> dict[str, Any]:
        return {"vm": self.vm, "round": self.round, "kind": self.kind,
                "changed": self.changed, "seconds": round(self.seconds, 3),
                "disks": {d.target: d.to_data() for d in self.disks}}


def _libvirt_domain(p: PlannedVM) -> tuple[Any, Any]:
    """A read-write connection and the domain (the backup API needs read-write)."""
    from migrate.clients import backup

    vm = p.vm
    try:
        return backup.open_domain(vm.source.location, vm.uuid, vm.name)
    except backup.NoSuchDomain:
        raise WarmError(f"{vm.name}: no such domain on {vm.source.location}") from None
    except VmmoveError as exc:
        raise WarmError(f"{vm.name}: cannot reach the source host: {exc}") from None


class Warm:
    """Warm rounds and final deltas of a plan's VMs (the caller holds the plan lock)."""

    def __init__(self, plan: Plan, journal: Journal, log: Any = None, kube: Any = None) -> None:
        from migrate.clients.checkpoint import plan_tag

        self._hosts: dict[str, Any] = {}
        self._source_sums: dict[tuple[str, str], str] = {}  # remote final: read at the delta
        self.plan, self.journal = plan, journal
        self.log = log or (lambda _m: None)
        self.kube = kube  # warm.writer worker: the cluster the worker Jobs run in
        if plan.warm.writer in ("worker", "s3") and kube is None:
            raise UsageError(f"{plan.path}: warm.writer {plan.warm.writer} runs Jobs in the "
                             "cluster: give --kubeconfig (or KUBECONFIG)")
        self.tag = plan_tag(plan.workdir)
        self._pending_checkpoint: str | None = None
        self._final = False  # the run under way is a final delta (workers then verify)
        self._volumes: dict[tuple[str, str], Path] = {}

    def host(self, p: PlannedVM) -> Any:
        """The VM's host access (:class:`migrate.sources.warm_host.WarmHost`): this
        machine for a local libvirt URI, SSH for ``qemu+ssh://``."""
        from migrate.sources.warm_host import WarmHost

        if p.key not in self._hosts:
            self._hosts[p.key] = WarmHost(p.vm, self.tag, p.key)
        return self._hosts[p.key]

    # -- state ---------------------------------------------------------------------------
    def state(self, p: PlannedVM) -> dict[str, Any]:
        step = self.journal.get(KIND_WARM, vm_item(p))
        return step.state if step is not None else {}

    def hashes(self, p: PlannedVM, disk: Disk) -> delta.BlockHashes:
        from migrate.clients.checkpoint import scratch_dir

        name = scratch_dir(self.tag, p.key).name
        return delta.BlockHashes(self.plan.workdir / "warm" / name / f"{_safe(disk.target)}.hashes")

    def require_full(self, p: PlannedVM, reason: str) -> None:
        """The next round must copy every disk in full (e.g. the target ran: rollback)."""
        if self.journal.get(KIND_WARM, vm_item(p)) is not None:
            self.journal.update(KIND_WARM, vm_item(p), full_reason=reason)

    # -- a round -------------------------------------------------------------------------
    def sync(self, p: PlannedVM, full: bool = False) -> RoundResult:
        """One precopy round for ``p`` (running or not); journalled."""
        st = self.state(p)
        n = int(st.get("round") or 0) + 1
        reason = st.get("full_reason") or ("asked (--full)" if full else "")
        if n == 1:
            reason = "first round"
        item = round_item(p, n)
        self.journal.update(KIND_WARM, vm_item(p), wave=p.wave)
        self.journal.start(KIND_WARM, item, round=n)
        started = time.monotonic()
        try:
            result = self._run(p, n, st, reason, final=False)
            self._tidy(p)
        except BaseException as exc:
            msg = str(exc) if isinstance(exc, VmmoveError) else \
                f"interrupted ({type(exc).__name__}): rerun vmmove sync"
            self.journal.fail(KIND_WARM, item, msg)
            self.journal.update(KIND_WARM, vm_item(p), last_error=msg)
            raise
        result.seconds = time.monotonic() - started
        data = result.to_data()
        data["round_kind"] = data.pop("kind")  # ``kind`` names the journal kind
        self.journal.done(KIND_WARM, item, bytes=result.changed, **data)
        self._record(p, result, st)
        return result

    def final(self, p: PlannedVM) -> dict[str, Any]:
        """The final delta of a stopped source, applied and checked; what to journal.

        Raises :class:`WarmError` when a volume's guest-visible checksum differs from the
        source's (the target must not start then)."""
        st = self.state(p)
        if not st.get("round"):
            raise WarmError(f"{p.vm.name}: no precopy round was run (vmmove sync first)")
        started = time.monotonic()
        self._final = True
        try:
            result = self._run(p, int(st["round"]), st, st.get("full_reason") or "",
                               final=True)
        finally:
            self._final = False
        result.seconds = time.monotonic() - started
        read = {d.target: d.source_checksum for d in result.disks if d.source_checksum}
        if self.plan.warm.writer == "worker":  # each worker compared export and volume
            sums = {d.target: {"volume_sha256": d.checksum, "verified_by": "worker"}
                    for d in result.disks}
        elif self.plan.warm.writer == "s3":  # each worker said what its volume holds
            sums = self.verify(p, {d.target: d.checksum for d in result.disks}, read)
        else:
            sums = self.verify(p, sources=read)
        self.journal.update(KIND_WARM, vm_item(p), final=result.to_data(), verified=sums)
        cleaned = self.cleanup(p)
        return {"mode": "warm", "bytes": result.changed, "seconds": round(result.seconds, 3),
                "disks": {d.target: {**d.to_data(), **sums[d.target]} for d in result.disks},
                "cleaned": cleaned}

    def _run(self, p: PlannedVM, n: int, st: dict[str, Any], reason: str,
             final: bool) -> RoundResult:
        from migrate.clients import backup
        from migrate.clients.checkpoint import (
            abort_stale,
            begin_round,
            checkpoint_name,
            list_checkpoints,
            ours,
            remove_checkpoints,
        )

        vm = p.vm
        disks = data_disks(vm)
        methods = {d.target: disk_method(vm, d)[0] for d in disks}
        base = st.get("checkpoint")
        result = RoundResult(vm.name, n, "final" if final else "incremental")
        self._pending_checkpoint = None
        if vm.source.kind != SourceKind.LIBVIRT:
            for d in disks:
                result.disks.append(self._stopped_disk(p, d, HASH, None, reason or ""))
            if any(r.full for r in result.disks) and not final:
                result.kind = "full"
            return result
        host = self.host(p)
        folder = Path(host.folder)  # on the domain's host (this machine, or over SSH)
        conn, dom = _libvirt_domain(p)
        try:
            abort_stale(dom, str(folder))  # a killed run's job holds the stale checkpoint
            cps = list_checkpoints(dom)
            stale = [c for c in cps if ours(c, self.tag) and c != base]
            if base and base not in cps and not reason:
                reason = f"checkpoint {base} is gone from the host (deleted behind vmmove's back)"
                self.log(f"{vm.name}: {reason}: " + ("the whole disks are copied" if final
                                                     else "a full round"))
            if reason:
                base = None
            running = backup.is_active(dom)
            images = {d.target: d.path or "" for d in disks if methods[d.target] == BITMAP}
            if final or not running:
                if running:
                    raise WarmError(f"{vm.name}: the source still runs; the final delta "
                                    "needs it stopped")
                if host.remote:
                    host.stop_exports()  # a killed final delta's qemu-nbd
                if stale:
                    remove_checkpoints(dom, stale, images, host.target)
                for d in disks:
                    bitmap = base if methods[d.target] == BITMAP and base else None
                    why = reason or ("" if bitmap or methods[d.target] == HASH else
                                     "no checkpoint to start from")
                    result.disks.append(self._stopped_disk(p, d, methods[d.target], bitmap,
                                                           why))
                if not final and any(r.full for r in result.disks):
                    result.kind = "full"
                self._pending_checkpoint = base  # a stopped domain's bitmap keeps recording
                return result
            if stale:  # a killed round's checkpoint: never the base
                remove_checkpoints(dom, stale, images, host.target)
            host.make_scratch(dom)
            bitmap_disks = [d.target for d in disks if methods[d.target] == BITMAP]
            plain = [d.target for d in disks if methods[d.target] != BITMAP]
            new_cp = checkpoint_name(self.tag, n) if bitmap_disks else None
            incr = {d.target: bool(base) and methods[d.target] == BITMAP for d in disks}
            try:
                job = begin_round(dom, incr, folder, base, new_cp, bitmap_disks, plain)
            except backup.BackupError as exc:
                if base and "bitmap" in str(exc).lower() or base and "checkpoint" in str(exc).lower():
                    reason = f"the host lost checkpoint {base}'s bitmap ({exc})"
                    self.log(f"{vm.name}: {reason}: a full round")
                    if new_cp in list_checkpoints(dom):
                        remove_checkpoints(dom, [new_cp], images, host.target)
                    base = None
                    incr = {t: False for t in incr}
                    job = begin_round(dom, incr, folder, None, new_cp, bitmap_disks, plain)
                else:
                    raise WarmError(f"{vm.name}: {exc}") from None
            try:
                with host.reach(job.socket) as local:  # forwarded here from a remote host
                    _pause("warm:round")
                    for d in disks:
                        export = next(e for e in job.exports if e.disk == d.target)
                        result.disks.append(self._live_disk(
                            p, d, methods[d.target], job.socket, export, incr[d.target],
                            reason, local=local))
            finally:
                job.abort()
            if any(d.full for d in result.disks):
                result.kind = "full"
            if base and base != new_cp:
                remove_checkpoints(dom, [base], images, host.target)
            self._pending_checkpoint = new_cp
            return result
        except Exception as exc:
            what = "the final delta" if final else f"round {n}"
            rerun = f"rerun vmmove {'cutover' if final else 'sync'}"
            if host.remote and (host.lost() or backup.connection_lost(exc)):
                raise WarmError(
                    f"{vm.name}: the SSH connection to {host.label} was lost during {what}; "
                    f"{rerun} (it resumes "
                    + (f"from checkpoint {base})" if base else "with a full round)")) from None
            if isinstance(exc, OSError):  # an NBD socket or the volume: one line, never
                # a traceback (or click's silent exit 1 on EPIPE)
                raise WarmError(f"{vm.name}: {what} failed: {exc}; {rerun}") from None
            raise
        finally:
            host.close()
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a connection the network cut closes anyway
                pass

    def _record(self, p: PlannedVM, result: RoundResult, before: dict[str, Any]) -> None:
        rounds = list(before.get("history") or [])[-9:]
        rounds.append({"round": result.round, "at": time.time(), "changed": result.changed,
                       "seconds": round(result.seconds, 3), "kind": result.kind,
                       "read": sum(d.read for d in result.disks)})
        checkpoint, self._pending_checkpoint = self._pending_checkpoint, None
        self.journal.update(KIND_WARM, vm_item(p), round=result.round, checkpoint=checkpoint,
                            sizes={d.target: d.size for d in result.disks}, full_reason=None,
                            last_error=None, history=rounds, last_at=time.time(),
                            last_changed=result.changed, last_seconds=round(result.seconds, 3))
        self.log(f"{p.vm.name}: round {result.round} ({result.kind}): "
                 f"{result.changed} bytes changed in {result.seconds:.1f}s")

    # -- per disk ------------------------------------------------------------------------
    def _check_size(self, p: PlannedVM, disk: Disk, size: int) -> None:
        sizes = self.state(p).get("sizes") or {}
        old = sizes.get(disk.target)
        if old and int(old) != size:
            raise WarmError(
                f"{p.vm.name}/{disk.target}: the source disk was resized from {old} to {size} "
                "bytes since the last round; a warm copy cannot follow a resize. Remedy: "
                "re-scan and re-plan the VM, stage it again (its volume then has the new "
                f"size), then run `vmmove sync {self.plan.path} --wave {p.wave} {p.vm.name} "
                "--full`")

    def volume(self, p: PlannedVM, disk: Disk) -> Path:
        key = (p.key, disk.target)
        if key not in self._volumes:
            self._volumes[key] = volume_path(self.plan, p, disk)
        return self._volumes[key]

    def _target(self, p: PlannedVM, disk: Disk, size: int, full: bool) -> int:
        path = self.volume(p, disk)
        path.parent.mkdir(parents=True, exist_ok=True)
        return delta.open_target(path, size, fresh=full)

    def _live_disk(self, p: PlannedVM, disk: Disk, method: str, socket: str, export: Any,
                   incremental: bool, reason: str, local: str | None = None) -> DiskRound:
        """One disk of a round's pull job: ``socket`` is the job's socket on the host,
        ``local`` where it is reached here (forwarded from a remote host)."""
        from migrate.clients.nbdwire import (BASE_ALLOCATION, NbdClient, NbdWireError,
                                             dirty_context)

        t0 = time.monotonic()
        contexts: tuple[str, ...] = (BASE_ALLOCATION,)
        if incremental and export.bitmap:
            contexts += (dirty_context(export.bitmap),)
        out = DiskRound(disk.target, method, full=not incremental and method == BITMAP,
                        reason=reason)
        try:
            with NbdClient(local or socket, export.export, contexts) as src:
                out.size = src.size
                self._check_size(p, disk, src.size)
                out.changed, out.read, out.extents, full = self._copy(
                    p, disk, src, method, dirty_context(export.bitmap) if len(contexts) > 1
                    else None, origin=("nbd", socket, export.export), out=out)
                out.full = full
        except NbdWireError as exc:
            raise self._nbd_failed(p, disk, exc) from None
        out.seconds = time.monotonic() - t0
        return out

    def _stopped_disk(self, p: PlannedVM, disk: Disk, method: str, bitmap: str | None,
                      reason: str) -> DiskRound:
        from converters.convert import source_chain
        from migrate.clients.checkpoint import CheckpointError, scratch_dir, serve_stopped
        from migrate.clients.nbd import NbdError

        t0 = time.monotonic()
        name = _safe(disk.target)
        out = DiskRound(disk.target, method, full=False, reason=reason)
        host = self.host(p)
        if host.remote:  # the host's chain, checked there, exported there, forwarded here

            def serve(bm: str | None) -> Any:
                return host.stopped(disk, name, bm)

            return self._stopped_copy(p, disk, method, serve, bitmap, out, t0,
                                      lost=NbdError, errors=VmmoveError)
        try:
            chain = source_chain(p.vm, disk)
        except VmmoveError as exc:
            raise WarmError(f"{p.vm.name}/{disk.target}: {exc}") from None
        folder = scratch_dir(self.tag, p.key)
        plain = plain_raw(chain) or (flat_extent(p.vm, disk, chain) if method == HASH else None)
        if method == HASH and plain:  # a raw file or device here: read it directly
            with delta.FileReader(plain) as src:
                _pause("warm:final")
                out.size = src.size
                self._check_size(p, disk, src.size)
                out.changed, out.read, out.extents, out.full = self._copy(
                    p, disk, src, method, None, holes=src.holes(),
                    origin=("file", plain, "raw"), out=out)
            out.seconds = time.monotonic() - t0
            return out

        def serve_here(bm: str | None) -> Any:
            return serve_stopped(chain.qemu_name(), chain.format, folder, name, bm)

        return self._stopped_copy(p, disk, method, serve_here, bitmap, out, t0,
                                  lost=CheckpointError, errors=CheckpointError)

    def _stopped_copy(self, p: PlannedVM, disk: Disk, method: str, serve: Any,
                      bitmap: str | None, out: DiskRound, t0: float, *,
                      lost: type[Exception], errors: type[Exception]) -> DiskRound:
        """Export a stopped disk with ``serve(bitmap)`` (a context manager; when the bitmap
        cannot be exported, ``lost`` raised, the whole disk), copy its delta, then end the
        export, told of a failure (a remote host's forwarding then says whether SSH
        broke).  ``errors`` raised while exporting become one :class:`WarmError` line."""
        from contextlib import ExitStack

        from migrate.clients.nbdwire import NbdWireError

        try:
            with ExitStack() as stack:
                try:
                    try:
                        served = stack.enter_context(serve(bitmap))
                    except lost as exc:
                        if not bitmap:
                            raise
                        out.reason = f"bitmap {bitmap} lost ({exc}): the whole disk is copied"
                        self.log(f"{p.vm.name}/{disk.target}: {out.reason}")
                        served = stack.enter_context(serve(None))
                except errors as exc:
                    raise WarmError(f"{p.vm.name}/{disk.target}: {exc}") from None
                self._read_stopped(p, disk, method, served, out)
        except NbdWireError as exc:  # (the export ended, told of the failure)
            raise self._nbd_failed(p, disk, exc) from None
        out.seconds = time.monotonic() - t0
        return out

    def _read_stopped(self, p: PlannedVM, disk: Disk, method: str, served: Any,
                      out: DiskRound) -> None:
        """Copy a stopped disk's delta from its export ``served`` (``socket`` read here,
        ``host_socket`` where a worker's re-export reads it) into ``out``."""
        from migrate.clients.nbdwire import BASE_ALLOCATION, NbdClient, dirty_context

        bitmap = served.bitmap
        contexts: tuple[str, ...] = (BASE_ALLOCATION,)
        if bitmap:
            contexts += (dirty_context(bitmap),)
        with NbdClient(served.socket, served.export, contexts) as src:
            _pause("warm:final")
            out.size = src.size
            self._check_size(p, disk, src.size)
            out.changed, out.read, out.extents, out.full = self._copy(
                p, disk, src, method, dirty_context(bitmap) if bitmap else None,
                origin=("nbd", getattr(served, "host_socket", served.socket),
                        served.export), out=out)
        if self._final and self.host(p).remote and self.plan.warm.writer != "worker" \
                and not out.source_checksum:  # (a hash disk's pass gave it already)
            # the stopped source's checksum from this export (verify compares it): no
            # second export on the host inside the downtime
            from migrate.clients.nbd import guest_checksum, unix_url

            self._source_sums[(p.key, disk.target)] = guest_checksum(
                unix_url(served.socket, served.export), f"{p.vm.name}/{disk.target}")[0]

    def _nbd_failed(self, p: PlannedVM, disk: Disk, exc: Exception) -> WarmError:
        """One line for an NBD connection that broke while a disk was copied (the client
        says which: closed, reset, timed out)."""
        what, rerun = ("the final delta", "cutover") if self._final else ("the round", "sync")
        return WarmError(f"{p.vm.name}/{disk.target}: {what} failed: {exc}; rerun vmmove {rerun}")

    def _copy(self, p: PlannedVM, disk: Disk, src: Any, method: str, dirty: str | None,
              holes: list[tuple[int, int]] | None = None, *, origin: tuple[str, str, str],
              out: DiskRound) -> tuple[int, int, int, bool]:
        """Write the round's delta of one disk; (changed, read, extents, was_full).
        ``holes``: given for a local file (else asked with NBD block status).  ``origin``:
        where a worker reads the source (``("nbd", socket, export)`` or ``("file", path,
        format)``); ``out``: the disk's round, told what a verifying worker found."""
        from migrate.clients.nbdwire import BASE_ALLOCATION, STATE_DIRTY, STATE_ZERO

        size = src.size
        alloc = src.block_status(BASE_ALLOCATION) if holes is None else []
        if holes is None:
            holes = [(e.offset, e.length) for e in alloc if e.flags & STATE_ZERO]
        if self.plan.warm.writer == "s3":
            return self._s3_delta(p, disk, src, method, dirty, alloc, holes, out)
        if self.plan.warm.writer == "worker":
            if method == HASH:
                extents = None  # the worker compares the export with the volume
                full = self.state(p).get("full_reason") is not None or \
                    not self.state(p).get("round")
            elif dirty is None:  # every extent, zeros too: the volume may hold anything
                extents = {"data": [[e.offset, e.length] for e in alloc
                                    if not e.flags & STATE_ZERO], "zero": [list(h) for h in holes]}
                full = True
            else:
                marked = [(e.offset, e.length) for e in src.block_status(dirty)
                          if e.flags & STATE_DIRTY]
                data, zero = _split(marked, holes)
                extents = {"data": [list(e) for e in delta.merge_extents(data, gap=1 << 20)],
                           "zero": [list(e) for e in zero]}
                full = False
            got = self._worker(p, disk, origin, size, extents, final=self._final)
            out.writer, out.checksum = "worker", got.get("checksum")
            runs = len(extents["data"]) + len(extents["zero"]) if extents else 0
            return int(got.get("changed") or 0), 0, runs, full
        if method == HASH:
            store = self.hashes(p, disk)
            old = store.load(size)
            if old is not None and self.state(p).get("full_reason"):
                old = None
            fd = self._target(p, disk, size, full=old is None)
            zeroed = old is None and stat.S_ISREG(os.fstat(fd).st_mode)  # fresh file
            try:
                digests, stats = delta.hash_sync(src, size, old, fd, holes, zeroed)
                if stats.changed:
                    os.fsync(fd)
            finally:
                os.close(fd)
            store.save(digests)
            out.source_checksum = stats.checksum
            return stats.changed, stats.read, stats.extents, old is None
        if dirty is None:  # full copy: data extents; the fresh target reads zeros elsewhere
            data = [(e.offset, e.length) for e in alloc if not e.flags & STATE_ZERO]
            fd = self._target(p, disk, size, full=True)
            zero: list[tuple[int, int]] = []
        else:
            marked = [(e.offset, e.length) for e in src.block_status(dirty)
                      if e.flags & STATE_DIRTY]
            data, zero = _split(marked, holes)
            fd = self._target(p, disk, size, full=False)
        try:
            stats = delta.copy_extents(src, data, fd, zero)
            os.fsync(fd)
        finally:
            os.close(fd)
        return stats.changed, stats.read, stats.extents, dirty is None

    # -- in-cluster workers (warm.writer worker) ------------------------------------------
    def _worker(self, p: PlannedVM, disk: Disk, origin: tuple[str, str, str], size: int,
                extents: dict[str, Any] | None, final: bool) -> dict[str, Any]:
        """Run one worker Job writing this round's delta of ``disk`` into its PVC, from a
        TLS export of ``origin`` on this host; the worker's result."""
        import base64
        import json as _json
        from contextlib import ExitStack

        from converters.transfer.direct import DirectDisk, DirectTransfer
        from manifests.workers import TLS_MOUNT, psk_secret, worker_job
        from migrate.clients.checkpoint import free_port, scratch_dir, serve_tls
        from migrate.clients.nbd import PSK_USER, nbd_image_opts
        from migrate.core.naming import dns1123_label

        self._require_halted(p)
        _ns, pvc = claim(self.plan, p, disk)
        w = self.plan.workers
        host = self.host(p)
        bind = w.source_address or "127.0.0.1"
        name = _safe(disk.target)
        folder = scratch_dir(self.tag, p.key)
        kind, where, what = origin
        if host.remote:  # the host re-exports its own UNIX export: bytes go host → cluster
            bind = "0.0.0.0"
        else:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

        def serve(port: int) -> Any:
            if host.remote:
                return host.serve_tls(name, where, what, port)
            return (serve_tls(folder, name, bind, port, path=where, fmt=what) if kind == "file"
                    else serve_tls(folder, name, bind, port,
                                   image_opts=nbd_image_opts(where, what)))
        d = DirectDisk(p.vm, disk, p.name, p.namespace)
        dt = DirectTransfer(self.kube, self.journal, self.plan.maps.storage, w)
        job_name = dns1123_label(f"vmmove-warm-{pvc}")
        secret_name = dns1123_label(f"vmmove-warm-{pvc}")
        block = self.plan.maps.storage.resolve(disk).volume_mode == "Block"
        args: list[str] = (["--extents", f"{TLS_MOUNT}/extents.json"] if extents is not None
                           else ["--compare"]) + (["--verify"] if final else [])
        address = w.source_address or (host.target.host if host.remote else bind)
        with ExitStack() as stack:
            for attempt in range(5):  # another program may take a port we found free
                port = free_port(bind, *w.port_range)
                try:
                    psk = stack.enter_context(serve(port))
                    break
                except VmmoveError as exc:
                    if "in use" not in str(exc) or attempt == 4:
                        raise WarmError(f"{p.vm.name}/{disk.target}: {exc}") from None
            secret = psk_secret(secret_name, p.namespace, psk, d.item)
            keys: tuple[str, ...] = ()
            if extents is not None:
                secret["data"]["extents.json"] = base64.b64encode(
                    _json.dumps(extents).encode()).decode()
                keys = ("extents.json",)
            dt._delete("batch/v1", "Job", job_name, p.namespace)  # an earlier run's
            self.kube.apply(secret)
            try:
                self.kube.apply(worker_job(
                    job_name, p.namespace, claim=pvc, secret=secret_name,
                    source_url=f"nbds://{PSK_USER}@{address}:{port}/{name}", size=size,
                    block=block, settings=w, item=d.item, extra_args=tuple(args),
                    extra_keys=keys))
                return self._wait_worker(dt, d, job_name)
            finally:
                dt._delete("batch/v1", "Job", job_name, p.namespace)
                dt._delete("v1", "Secret", secret_name, p.namespace)

    def _s3_delta(self, p: PlannedVM, disk: Disk, src: Any, method: str, dirty: str | None,
                  alloc: list[Any], holes: list[tuple[int, int]],
                  out: DiskRound) -> tuple[int, int, int, bool]:
        """S3 mode: the round's changes as a qcow2 holding only the changed clusters (zero
        ranges as zero clusters), sent to S3, merged into the PVC by a worker Job."""
        from migrate.pipeline.stages import backend_for
        from migrate.clients.checkpoint import scratch_dir, writable_qcow2
        from migrate.clients.nbdwire import STATE_DIRTY, STATE_ZERO, NbdClient

        if not self.plan.transfer.s3:
            raise UsageError(f"{self.plan.path}: warm.writer s3 needs transfer.s3")
        size = src.size
        folder = self.plan.workdir / "warm" / scratch_dir(self.tag, p.key).name
        path = folder / f"{_safe(disk.target)}.delta.qcow2"
        path.unlink(missing_ok=True)
        store = self.hashes(p, disk)
        old = None
        full = dirty is None
        digests: list[bytes] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        with writable_qcow2(path, size) as socket, \
                NbdClient(socket, "", ()) as target:
            if method == HASH:
                old = None if self.state(p).get("full_reason") else store.load(size)
                full = old is None
                digests, stats = delta.hash_sync(src, size, old, target, holes)
            elif dirty is None:  # every extent, zeros too: the volume may hold anything
                stats = delta.copy_extents(src, [(e.offset, e.length) for e in alloc
                                                 if not e.flags & STATE_ZERO], target, holes)
            else:
                marked = [(e.offset, e.length) for e in src.block_status(dirty)
                          if e.flags & STATE_DIRTY]
                data, zero = _split(marked, holes)
                stats = delta.copy_extents(src, data, target, zero)
            target.flush()
        backend = backend_for(self.plan)
        s3 = backend.client  # type: ignore[attr-defined]
        bucket, prefix = backend.bucket, backend.prefix  # type: ignore[attr-defined]
        _ns, pvc = claim(self.plan, p, disk)
        key = (f"{prefix}/" if prefix else "") + f"warm/{pvc}/{int(time.time() * 1000)}.qcow2"
        try:
            s3.upload_file(str(path), bucket, key)
            url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                            ExpiresIn=6 * 3600)
            got = self._merge_job(p, disk, url, size, final=self._final)
        finally:
            try:
                s3.delete_object(Bucket=bucket, Key=key)
            except Exception:  # noqa: BLE001 - best effort; the object is vmmove's own
                self.log(f"{p.vm.name}/{disk.target}: could not delete s3://{bucket}/{key}")
            path.unlink(missing_ok=True)
        if method == HASH:
            store.save(digests)  # only once the volume holds what they describe
            out.source_checksum = stats.checksum
        out.writer, out.checksum = "s3", got.get("checksum")
        return stats.changed, stats.read, stats.extents, full

    def _merge_job(self, p: PlannedVM, disk: Disk, url: str, size: int,
                   final: bool) -> dict[str, Any]:
        """A worker Job merging the delta at ``url`` into the disk's PVC."""
        import base64

        from converters.transfer.direct import DirectDisk, DirectTransfer
        from manifests.workers import DEVICE_PATH, DISK_FILE, RESULT_PATH, TLS_MOUNT, worker_job
        from migrate.core.naming import dns1123_label

        self._require_halted(p)
        _ns, pvc = claim(self.plan, p, disk)
        d = DirectDisk(p.vm, disk, p.name, p.namespace)
        dt = DirectTransfer(self.kube, self.journal, self.plan.maps.storage, self.plan.workers)
        name = dns1123_label(f"vmmove-merge-{pvc}")
        block = self.plan.maps.storage.resolve(disk).volume_mode == "Block"
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": name, "namespace": p.namespace,
                               "labels": {"app.kubernetes.io/managed-by": "vmmove"},
                               "annotations": {"vmmove.io/source": d.item}},
                  "data": {"delta.url": base64.b64encode(url.encode()).decode()}}
        args = ["--merge-url-file", f"{TLS_MOUNT}/delta.url", "--dest",
                DEVICE_PATH if block else DISK_FILE, "--size", str(size), "--result",
                RESULT_PATH] + (["--verify"] if final else [])
        dt._delete("batch/v1", "Job", name, p.namespace)  # an earlier run's
        self.kube.apply(secret)
        try:
            self.kube.apply(worker_job(name, p.namespace, claim=pvc, secret=name,
                                       source_url="", size=size, block=block,
                                       settings=self.plan.workers, item=d.item, args=args,
                                       extra_keys=("delta.url",)))
            return self._wait_worker(dt, d, name)
        finally:
            dt._delete("batch/v1", "Job", name, p.namespace)
            dt._delete("v1", "Secret", name, p.namespace)

    def _require_halted(self, p: PlannedVM) -> None:
        """No worker writes a volume the target VM may be using."""
        from migrate.clients.cluster import get_vmi
        from migrate.clients.cluster import VIRTUAL_MACHINE

        vm = self.kube.get(*VIRTUAL_MACHINE, p.name, p.namespace)
        strategy = ((vm or {}).get("spec") or {}).get("runStrategy")
        if vm is not None and strategy != "Halted" or get_vmi(self.kube, p.namespace, p.name):
            raise WarmError(f"{p.vm.name}: the target VirtualMachine {p.namespace}/{p.name} is "
                            f"not Halted (runStrategy {strategy}); no worker writes its "
                            "volumes while it may run: vmmove rollback first")

    def _wait_worker(self, dt: Any, d: Any, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + 6 * 3600
        while True:
            try:
                state = dt.job_state(d, name)
            except VmmoveError as exc:
                raise WarmError(str(exc)) from None
            if state.complete:
                if "changed" not in state.result:
                    raise WarmError(f"{d.label}: worker Job {name} succeeded without a result")
                return state.result
            if state.failed:
                raise WarmError(f"{d.label}: worker Job {d.namespace}/{name} failed: "
                                f"{state.failed}")
            if state.stuck or time.monotonic() > deadline:
                raise WarmError(f"{d.label}: worker Job {d.namespace}/{name}: "
                                f"{state.stuck or 'still running after 6 h'}")
            time.sleep(0.25)

    def _tidy(self, p: PlannedVM) -> None:
        """Between rounds nothing of vmmove stays on the host but its checkpoint: the
        round's scratch folder goes once its job and exports ended (empty by then)."""
        self.host(p).tidy()  # absent, or something still in it: then clean removes it

    # -- checks and cleanup --------------------------------------------------------------
    def verify(self, p: PlannedVM, volumes: dict[str, str | None] | None = None,
               sources: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """Guest-visible checksums of each stopped source disk and its volume (read here, or
        as ``volumes`` gives them: what the workers reported; ``sources``: the source's
        checksum from the final delta's own read, the hash method's); raise
        :class:`WarmError` when one differs.  Both sides are in one form: a worker's
        (:func:`migrate.core.digest.form_of`: an older worker image reports ``sha256-1m``),
        else :data:`migrate.core.digest.DEFAULT`; a source checksum of another form is
        read again in that one."""
        from converters.convert import source_chain
        from migrate.clients.nbd import file_guest_checksum, guest_checksum, unix_url

        out: dict[str, dict[str, Any]] = {}
        host = self.host(p)
        for d in data_disks(p.vm):
            target = volumes.get(d.target) if volumes is not None else None
            try:
                form = digest.form_of(target)
            except digest.UnknownForm as exc:
                raise WarmError(f"{p.vm.name}/{d.target}: the worker reported the checksum "
                                f"{target!r}: {exc}") from None
            cached = self._source_sums.pop((p.key, d.target), None)
            if sources and d.target in sources:  # the hash method's own pass said it
                cached = sources[d.target]
            if cached and digest.form_of(cached) == form:
                source = cached
            elif host.remote:  # read on the host, as the checked chain, through SSH
                try:
                    with host.stopped(d, _safe(d.target), None) as served:
                        source, _n = guest_checksum(unix_url(served.socket, served.export),
                                                    f"{p.vm.name}/{d.target}", form)
                except VmmoveError as exc:
                    raise WarmError(f"{p.vm.name}/{d.target}: cannot read the source to "
                                    f"verify: {exc}") from None
                finally:
                    host.close()
            else:
                chain = source_chain(p.vm, d)
                source, _n = file_guest_checksum(d.path or "", chain.format, form=form) \
                    if not chain.qemu_name().startswith("json:") \
                    or chain.format in ("raw", "qcow2") else _chain_checksum(chain, form)
            if volumes is None:
                target = _volume_checksum(self.volume(p, d))
            out[d.target] = {"source_sha256": source, "volume_sha256": target}
            if source != target:
                raise WarmError(
                    f"{p.vm.name}/{d.target}: the volume's guest-visible checksum {target} "
                    f"differs from the source's {source} after the final delta; the target "
                    "was NOT started. Run vmmove rollback, then vmmove sync --full and cut "
                    "over again")
        return out

    def cleanup(self, p: PlannedVM) -> list[str]:
        """Remove what vmmove left on the host for ``p``: this plan's checkpoints (and
        their bitmaps), its scratch folder; never the domain's own checkpoints."""
        from migrate.clients.checkpoint import (
            abort_stale,
            list_checkpoints,
            ours,
            remove_checkpoints,
            remove_scratch,
            scratch_dir,
        )

        removed: list[str] = []
        folder = scratch_dir(self.tag, p.key)
        host = self.host(p)
        if p.vm.source.kind == SourceKind.LIBVIRT:
            conn, dom = _libvirt_domain(p)
            try:
                if abort_stale(dom, host.folder):
                    removed.append("backup job")
                mine = [c for c in list_checkpoints(dom) if ours(c, self.tag)]
                images = {d.target: d.path or "" for d in data_disks(p.vm)
                          if disk_method(p.vm, d)[0] == BITMAP}
                if not dom.isActive():  # bitmaps without metadata (a killed delete)
                    from migrate.clients.checkpoint import image_bitmaps

                    if host.remote:  # a killed final delta's qemu-nbd holds the image
                        host.stop_exports()
                    for path in images.values():
                        mine += [b for b in image_bitmaps(path, host.target)
                                 if ours(b, self.tag) and b not in mine]
                removed += [f"checkpoint {c}" for c in
                            remove_checkpoints(dom, mine, images, host.target)]
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - a connection the network cut
                    pass
        if host.remote:
            if host.remove_scratch():
                removed.append(f"folder {host.label}:{host.folder}")
        elif remove_scratch(folder):
            removed.append(f"folder {folder}")
        if self.journal.get(KIND_WARM, vm_item(p)) is not None:
            self.journal.update(KIND_WARM, vm_item(p), checkpoint=None,
                                full_reason="the checkpoints were removed (cleanup)")
        return removed

    # -- status --------------------------------------------------------------------------
    def outlook(self, p: PlannedVM, now: float | None = None) -> dict[str, Any]:
        """The last round's age and delta, and the predicted final-sync seconds."""
        return outlook(self.state(p), [disk_method(p.vm, d)[0] for d in data_disks(p.vm)],
                       now)


def round_speed(last: dict[str, Any]) -> float:
    """Bytes/s a precopy round moved (a ``history`` entry of the warm state): the larger of
    what it wrote (``changed``) and read (``read``: a hash disk is read whole) over its
    ``seconds``; at least 1 B/s."""
    seconds = max(1e-3, float(last["seconds"]))
    return max(1.0, max(int(last["changed"]), int(last.get("read") or 0)) / seconds)


def outlook(st: dict[str, Any], methods: list[str], now: float | None = None) -> dict[str, Any]:
    """From a VM's warm state: ``age`` (s), ``delta`` (bytes of the last round),
    ``predicted`` (s) of the final sync: the change rate between the last two rounds times
    the time since the last one, at the last round's write speed; a hash disk is read
    whole, at the speed its last round read."""
    now = now or time.time()
    hist = st.get("history") or []
    if not hist:
        return {"rounds": 0, "age": None, "delta": None, "predicted": None}
    last = hist[-1]
    age = max(0.0, now - float(last["at"]))
    size = sum(int(v) for v in (st.get("sizes") or {}).values())
    rate = 0.0
    if len(hist) >= 2:
        interval = max(1e-3, float(last["at"]) - float(hist[-2]["at"]))
        rate = int(last["changed"]) / interval
    expected = min(size, rate * age) if size else rate * age
    speed = round_speed(last)
    predicted = OVERHEAD * len(methods) + expected / speed
    if HASH in methods:
        predicted += size / speed
    return {"rounds": int(st.get("round") or 0), "age": round(age, 1),
            "delta": int(last["changed"]), "expected": int(expected),
            "predicted": round(predicted, 1)}


def _split(marked: list[tuple[int, int]],
           holes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Dirty extents cut into those to read and those the source reads as zeros."""
    data: list[tuple[int, int]] = []
    zero: list[tuple[int, int]] = []
    hs = delta.merge_extents(holes)
    for off, length in delta.merge_extents(marked):
        pos, end = off, off + length
        for h_off, h_len in hs:
            h_end = h_off + h_len
            if h_end <= pos or h_off >= end:
                continue
            if h_off > pos:
                data.append((pos, h_off - pos))
            zero.append((max(pos, h_off), min(end, h_end) - max(pos, h_off)))
            pos = min(end, h_end)
            if pos >= end:
                break
        if pos < end:
            data.append((pos, end - pos))
    return data, zero


def _volume_checksum(path: Path) -> str | None:
    """A local volume's guest-view checksum (``xxh3-1m``, the default form), read once
    with its holes skipped (:func:`converters.delta.hash_sync` without a target)."""
    with delta.FileReader(path) as vol:
        return delta.hash_sync(vol, vol.size, None, None, vol.holes())[1].checksum


def _chain_checksum(chain: Any, form: str) -> tuple[str, int]:
    """The guest-view checksum (tree form ``form``) of a checked chain, through a captive
    ``qemu-nbd``."""
    import subprocess

    from migrate.clients.nbd import hash_stream

    proc = subprocess.Popen(["nbdcopy", "--", "[", "qemu-nbd", "--read-only",
                             chain.qemu_name(), "]", "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    return hash_stream(proc, "source chain", form=form)


def plain_raw(chain: Any) -> str | None:
    """The path of a checked chain that is one raw file or device of this machine (read
    directly, faster than through an NBD export), else None."""
    if len(chain.layers) != 1:
        return None
    top = chain.top
    f = top.file or {}
    if top.format != "raw" or top.member is not None or top.data_file is not None or \
            f.get("driver") not in ("file", "host_device") or \
            set(f) - {"driver", "filename"} or not top.real or f.get("filename") != top.real:
        return None
    return str(top.real)


def flat_extent(vm: VM, disk: Disk, chain: Any) -> str | None:
    """The flat file holding a checked chain's data when it is a VMware descriptor with
    one flat extent (``FLAT``, or ``VMFS`` as ESXi writes it) at offset 0 whose file is
    exactly the disk's size — a VMX export's usual ``-flat.vmdk``: read directly, as a raw
    file (faster than through an NBD export), else None.  The extent is resolved inside
    the export again (:meth:`migrate.sources.containment.Export.resolve`)."""
    from migrate.sources.containment import SPARSE_MAGICS, ContainmentError, Export
    from migrate.sources.vmdk import VmdkError, parse_descriptor

    top = chain.top
    if len(chain.layers) != 1 or top.format != "vmdk" or top.member is not None or \
            top.data_file is not None or not top.real or \
            (top.file or {}).get("driver") != "file":
        return None
    try:
        with open(top.real, "rb") as fh:
            head = fh.read(64 << 10)
        if head[:4] in SPARSE_MAGICS or len(head) >= 64 << 10:
            return None
        desc = parse_descriptor(head.decode("utf-8", errors="replace"), str(top.name))
        if len(desc.extents) != 1:
            return None
        (ext,) = desc.extents
        size = ext.sectors * 512
        if ext.type not in ("FLAT", "VMFS") or not ext.filename or \
                ext.offset not in (None, "0") or size != chain.virtual_size:
            return None
        layer = Export.of(vm.source, disk).resolve(
            ext.filename, os.path.dirname(top.real), f"extent of {top.name}")
        if not layer.real or not stat.S_ISREG(os.stat(layer.real).st_mode) or \
                os.stat(layer.real).st_size != size:
            return None
        return str(layer.real)
    except (OSError, VmdkError, ContainmentError):
        return None  # read through qemu then, which says what is wrong


#: Test hook beside the cutover's ``PAUSE_ENV``: a file path; the run paused at the point
#: goes on once that file exists (instead of waiting to be killed), so a test can break
#: something under a round (the SSH connection) and watch what the round does.
RESUME_ENV = "VMMOVE_TEST_RESUME"


def _pause(point: str) -> None:
    from migrate.pipeline.cutover import PAUSE_ENV
    from migrate.pipeline.cutover import _pause as pause  # the cutover's test hook (PAUSE_ENV)

    resume = os.environ.get(RESUME_ENV)
    if resume and os.environ.get(PAUSE_ENV) == point:
        import sys

        print(f"vmmove: test pause at {point}", file=sys.stderr, flush=True)
        while not os.path.exists(resume):
            time.sleep(0.05)
        return
    pause(point)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text) or "disk"


def preflight_problems(plan: Plan, p: PlannedVM, journal: Journal,
                       now: float | None = None) -> list[str]:
    """Why a warm VM's cutover must not stop its source: no round, or the last one too old."""
    step = journal.get(KIND_WARM, vm_item(p))
    st = step.state if step else {}
    hint = f"run `vmmove sync {plan.path} --wave {p.wave} {p.vm.name}`"
    if not st.get("round"):
        return [f"warm VM without a precopy round: {hint}"]
    if st.get("full_reason"):
        return [f"warm VM needs a full round ({st['full_reason']}): {hint}"]
    age = (now or time.time()) - float(st.get("last_at") or 0)
    if age > plan.warm.max_round_age:
        return [f"last precopy round is {age:.0f}s old (warm.maxRoundAge "
                f"{plan.warm.max_round_age:g}s): {hint}"]
    return []


def done_rounds(journal: Journal, p: PlannedVM) -> list[Any]:
    return [s for s in journal.steps(KIND_WARM, prefix=f"{p.key}/round/") if s.status == DONE]


# -- vmmove sync --------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """``--every``: ``90s``, ``30m``, ``2h``, ``1d`` or plain seconds."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--every {text!r}: expected a duration such as 30m, 2h or 90s")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def run_rounds(plan_file: str, vms: tuple[str, ...], wave: int, full: bool,
               every: str | None, until: str | None,
               kube_args: tuple[str | None, str | None, str | None]
               ) -> tuple[list[dict[str, Any]], list[list[str]], list[str]]:
    """``vmmove sync``: a round for each warm VM of the wave (or those named), repeated
    ``every`` until ``until``; (data, table rows, error lines)."""
    from migrate.core.output import human_size
    from migrate.core.progress import log
    from migrate.pipeline.cutover import parse_at, select_vms
    from migrate.pipeline.wave import plan_lock
    from migrate.plan import load_plan

    kubeconfig, context, namespace = kube_args

    plan = load_plan(plan_file)
    if namespace:
        plan.use_namespace(namespace)
    chosen = select_vms(plan, wave, vms)
    cold = [p.vm.name for p in chosen if not is_warm(plan, p)]
    if vms and cold:
        raise UsageError(f"{plan.path}: {', '.join(cold)} not warm (plan --warm, or "
                         "warm: true in its entry)")
    chosen = [p for p in chosen if is_warm(plan, p)]
    if not chosen:
        raise UsageError(f"{plan.path}: wave {wave} has no warm VM (plan --warm)")
    interval = parse_every(every) if every else None
    if until and interval is None:
        raise UsageError("--until goes with --every")
    deadline = parse_at(until).timestamp() if until else None
    kube = None
    if plan.warm.writer in ("worker", "s3"):
        from migrate.clients.cluster import connect

        kube = connect(kubeconfig, context)
    data, rows, errors = [], [], []
    try:
        first = True
        while True:
            started = time.time()
            with plan_lock(plan):
                with plan.journal() as journal:
                    warm = Warm(plan, journal, log, kube)
                    for p in chosen:
                        try:
                            r = warm.sync(p, full=full and first)
                        except VmmoveError as exc:
                            msg = str(exc) if str(exc).startswith(p.vm.name) else \
                                f"{p.vm.name}: {exc}"
                            errors.append(msg)
                            data.append({"vm": p.vm.name, "error": msg})
                            rows.append([p.vm.name, "-", "failed", "-", "-", "-", msg])
                            continue
                        data.append(r.to_data())
                        rows.append([r.vm, str(r.round), r.kind, human_size(r.changed),
                                     f"{r.seconds:.1f}",
                                     " ".join(f"{d.target}:{d.method}" for d in r.disks), ""])
            first = False
            if interval is None:
                break
            wake = started + interval
            if deadline is not None and wake > deadline:
                break
            log(f"next round at {time.strftime('%H:%M:%S', time.localtime(wake))}")
            time.sleep(max(0.0, wake - time.time()))
    finally:
        if kube is not None:
            kube.close()
    return data, rows, errors
