"""Where each VM of a plan stands, read from the plan's journal alone.

The phases, in order: ``scanned`` (in the plan, nothing done yet), ``converted`` (every
disk converted), ``uploaded`` (every disk at the transfer target), ``precopy`` (a warm
VM with at least one precopy round done by ``vmmove sync``, not applied yet), ``applied`` (the
VirtualMachine is in the cluster), ``imported`` (every DataVolume succeeded), ``cut over``
and ``rolled back`` (journal kinds ``cutover``/``rollback``, item ``<vm key>``, written by
the cutover commands).  A VM's phase is the furthest one it completed; a step running or
failed now is reported beside it (``state``, ``error``), with timings and bytes moved
(uploads and precopy rounds), and ``next``: the command the operator runs next
(:func:`next_action`; None once cut over or skipped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from migrate.core.records import (
    KIND_APPLY,
    KIND_CONVERT,
    KIND_CUTOVER,
    KIND_CUTOVER_PAST,
    KIND_IMPORT,
    KIND_MANIFESTS,
    KIND_ROLLBACK,
    KIND_UPLOAD,
)
from migrate.core.output import rfc3339
from migrate.plan import Plan, PlannedVM
from migrate.core.journal import DONE, FAILED, RUNNING, Journal, Step
from migrate.core.workdir import disk_item
from migrate.core.records import KIND_WARM
from migrate.pipeline.warm import disk_method, outlook

SCANNED = "scanned"
CONVERTED = "converted"
UPLOADED = "uploaded"
PRECOPY = "precopy"
APPLIED = "applied"
IMPORTED = "imported"
CUT_OVER = "cut over"
ROLLED_BACK = "rolled back"
SKIPPED = "skipped"
PHASES = (SCANNED, CONVERTED, UPLOADED, PRECOPY, APPLIED, IMPORTED, CUT_OVER, ROLLED_BACK)


@dataclass
class StepTiming:
    """One kind of work for one VM: how many items done, when, how long, how many bytes."""

    kind: str
    done: int = 0
    total: int = 0
    started: float | None = None
    finished: float | None = None
    seconds: float = 0.0  # sum of the items' durations
    bytes: int = 0

    def to_data(self) -> dict[str, Any]:
        return {"kind": self.kind, "done": self.done, "total": self.total,
                "started": rfc3339(self.started), "finished": rfc3339(self.finished),
                "seconds": round(self.seconds, 3), "bytes": self.bytes}


@dataclass
class VmStatus:
    wave: int
    vm: str  # source name
    key: str
    name: str  # target name
    namespace: str
    phase: str
    state: str  # idle | running | failed | skipped
    error: str | None = None
    bytes_moved: int = 0  # bytes at the transfer target for this VM's disks
    bytes_sent: int = 0  # bytes sent over the network (resumed transfers send less)
    seconds: float | None = None  # first start to last finish
    steps: dict[str, StepTiming] = field(default_factory=dict)
    next: str | None = None  # an unfinished cutover: what the operator does next
    warm: dict[str, Any] | None = None  # a warm VM's rounds: age, delta, predicted final sync

    def to_data(self) -> dict[str, Any]:
        return {"wave": self.wave, "vm": self.vm, "key": self.key, "name": self.name,
                "namespace": self.namespace, "phase": self.phase, "state": self.state,
                "error": self.error, "bytesMoved": self.bytes_moved,
                "bytesSent": self.bytes_sent,
                "seconds": round(self.seconds, 3) if self.seconds is not None else None,
                "steps": {k: s.to_data() for k, s in self.steps.items()}, "next": self.next,
                "warm": self.warm}


def _timing(kind: str, steps: list[Step | None]) -> StepTiming:
    t = StepTiming(kind, total=len(steps))
    for s in steps:
        if s is None:
            continue
        if s.status == DONE:
            t.done += 1
            t.bytes += s.bytes or 0
        if s.started is not None:
            t.started = s.started if t.started is None else min(t.started, s.started)
        if s.finished is not None:
            t.finished = s.finished if t.finished is None else max(t.finished, s.finished)
        if s.duration is not None:
            t.seconds += s.duration
    return t


def next_action(plan: Plan, p: PlannedVM, phase: str, rounds: int,
                full_pending: bool = False) -> str | None:
    """The command the operator runs next for ``p`` in ``phase``, following the pipeline:
    stage (``vmmove migrate --stage``: convert, upload, manifests, apply, imports) → sync
    (warm VMs: a precopy round, again when a full round is pending) → cutover (with
    ``--source-powered-off`` for a warm VM of an offline export, docs/warm-migration.md).
    None once cut over (or skipped).  An unfinished cutover's own ``next`` comes first
    (:func:`vm_status`)."""
    from migrate.pipeline.cutover import is_offline
    from migrate.pipeline.warm import is_warm

    if phase in (SKIPPED, CUT_OVER):
        return None
    ref = f"{plan.path} --wave {p.wave} {p.vm.name}"
    if phase not in (APPLIED, IMPORTED, ROLLED_BACK):
        return f"vmmove migrate {ref} --stage"
    warm = is_warm(plan, p)
    if warm and (not rounds or full_pending):
        return f"vmmove sync {ref}" + (" --full" if full_pending and rounds else "")
    offline = " --source-powered-off" if warm and is_offline(p.vm) else ""
    return f"vmmove cutover {ref}{offline}"


def vm_status(p: PlannedVM, journal: Journal, plan: Plan | None = None) -> VmStatus:
    """The status of one planned VM from the journal (``plan``: to say what comes next)."""
    vm = p.vm
    disks = [d for d in vm.disks if d.device in ("disk", "lun")]
    items = [disk_item(vm, d) for d in disks]
    per_kind: dict[str, list[Step | None]] = {
        KIND_CONVERT: [journal.get(KIND_CONVERT, i) for i in items],
        KIND_UPLOAD: [journal.get(KIND_UPLOAD, i) for i in items],
        KIND_MANIFESTS: [journal.get(KIND_MANIFESTS, p.key)],
        KIND_APPLY: [journal.get(KIND_APPLY, p.key)],
        KIND_IMPORT: [journal.get(KIND_IMPORT, i) for i in items],
        # a cutover rolled back is kept as cutover-past: its times stay in the status
        KIND_CUTOVER: [journal.get(KIND_CUTOVER, p.key)
                       or journal.get(KIND_CUTOVER_PAST, p.key)],
        KIND_ROLLBACK: [journal.get(KIND_ROLLBACK, p.key)],
    }
    timings = {k: _timing(k, v) for k, v in per_kind.items()}

    def all_done(kind: str) -> bool:
        steps = per_kind[kind]
        return bool(steps) and all(s is not None and s.status == DONE for s in steps)

    # Uploaded disks count as converted (a disk sent as is has no convert step).
    converted = bool(items) and all(
        (c is not None and c.status == DONE) or (u is not None and u.status == DONE)
        for c, u in zip(per_kind[KIND_CONVERT], per_kind[KIND_UPLOAD]))
    phase = SCANNED
    if converted:
        phase = CONVERTED
    if items and all_done(KIND_UPLOAD):
        phase = UPLOADED
    if all_done(KIND_APPLY) and (per_kind[KIND_APPLY][0].result  # type: ignore
                                 != "dry-run"):
        phase = APPLIED
    if phase == APPLIED and items and all_done(KIND_IMPORT):
        phase = IMPORTED
    cut = per_kind[KIND_CUTOVER][0]
    back = per_kind[KIND_ROLLBACK][0]
    if cut is not None and cut.status == DONE:
        phase = CUT_OVER
    if back is not None and back.status == DONE and (
            cut is None or cut.status != DONE or (back.finished or 0) >= (cut.finished or 0)):
        phase = ROLLED_BACK

    present = [s for steps in per_kind.values() for s in steps if s is not None]
    running = [s for s in present if s.status == RUNNING]
    failed = sorted((s for s in present if s.status == FAILED), key=lambda s: s.updated)
    state = "failed" if failed else "running" if running else "idle"
    if p.skip:
        phase, state = SKIPPED, "skipped"
    uploads = [s for s in per_kind[KIND_UPLOAD] if s is not None and s.status == DONE]
    warm = None
    round_bytes = done_rounds = 0
    full_pending = False
    chain = journal.get(KIND_WARM, p.key)
    if chain is not None:
        rounds = sorted(journal.steps(KIND_WARM, prefix=f"{p.key}/round/"),
                        key=lambda s: s.updated)
        warm = outlook(chain.state, [disk_method(vm, d)[0] for d in disks])
        full_pending = bool(chain.state.get("full_reason"))
        finished = [r for r in rounds if r.status == DONE]
        done_rounds, round_bytes = len(finished), sum(r.bytes or 0 for r in finished)
        present += finished  # the rounds' times count in the VM's time
        if finished and phase in (SCANNED, CONVERTED, UPLOADED):
            phase = PRECOPY
        if rounds and rounds[-1].status == FAILED:  # the last round failed
            failed.append(rounds[-1])
            state = "failed"
    starts = [s.started for s in present if s.started is not None]
    ends = [s.finished for s in present if s.finished is not None]
    if cut is not None and cut.status != DONE and phase != ROLLED_BACK:
        after = cut.next
    else:
        after = next_action(plan, p, phase, done_rounds, full_pending) if plan else None
    return VmStatus(
        wave=p.wave, vm=vm.name, key=p.key, name=p.name, namespace=p.namespace,
        phase=phase, state=state, error=failed[-1].error if failed else None,
        bytes_moved=sum(s.moved for s in uploads) + round_bytes,
        bytes_sent=sum(s.sent for s in uploads),
        seconds=(max(ends) - min(starts)) if starts and ends else None,
        steps=timings,
        next=after,
        warm=warm,
    )


def plan_status(plan: Plan, wave: int | None = None) -> list[VmStatus]:
    """Status of every VM of the plan (or of one wave), in wave order."""
    vms = plan.vms if wave is None else plan.wave(wave, include_skipped=True)
    if not plan.journal_path.is_file():
        with Journal(":memory:") as empty:
            return [vm_status(p, empty, plan) for p in vms]
    with plan.journal() as journal:
        return [vm_status(p, journal, plan) for p in vms]


def summary(statuses: list[VmStatus]) -> dict[int, dict[str, int]]:
    """Per wave: how many VMs are in each phase."""
    out: dict[int, dict[str, int]] = {}
    for s in statuses:
        counts = out.setdefault(s.wave, {})
        counts[s.phase] = counts.get(s.phase, 0) + 1
    return out
