"""``--dry-run`` of ``migrate`` and ``cutover``: what would run, in order, with estimates.

Nothing here changes a source, S3 or the cluster: the steps come from the plan, what is
already done from its journal (a rerun skips it, so the dry run says so), and every
estimate from the rates the journal measured (:func:`migrate.views.report.measure`), as the
runbook computes them (:mod:`migrate.views.runbook`); where nothing was measured yet, the
runbook's assumed rate and times are used and the basis says "assumed".  A VM of an offline
export gets the cutover's own preflight checks that need no cluster (its export read
read-only, VMware lock files, ``--source-powered-off``): a refusal shows as its preflight
step, state :data:`REFUSED`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from migrate.core.records import KIND_CONVERT, KIND_CUTOVER, KIND_IMPORT, KIND_UPLOAD
from migrate.plan import Plan, PlannedVM
from migrate.views.report import Rate, Throughput, measure
from migrate.views.runbook import DEFAULT_RATE, estimate, schedule, sync_mode
from migrate.core.journal import DONE, Journal
from migrate.core.workdir import disk_item

TO_DO = "to do"
DONE_BEFORE = "done before (skipped)"
REFUSED = "refused"


@dataclass
class DryStep:
    """One step a command would run: in order, for a VM (and disk), with an estimate."""

    order: int
    vm: str
    step: str  # convert, upload, manifests, apply, import | preflight, stop, sync, start, verify
    what: str  # what it does, concretely (files, target, command)
    state: str  # TO_DO or DONE_BEFORE
    seconds: float | None  # estimated duration; None when the step takes no measurable time
    basis: str  # how the estimate was made

    def to_data(self) -> dict[str, Any]:
        return {"order": self.order, "vm": self.vm, "step": self.step, "what": self.what,
                "state": self.state,
                "seconds": round(self.seconds, 3) if self.seconds is not None else None,
                "basis": self.basis}


def _timed(size: int, rate: Rate) -> tuple[float, str]:
    if rate.per_second:
        return size / rate.per_second, (f"{rate.kind} measured at "
                                        f"{rate.per_second / 2**20:.0f} MiB/s ({rate.samples})")
    return size / DEFAULT_RATE, f"nothing measured yet: {DEFAULT_RATE // 2**20} MiB/s assumed"


def _disks(p: PlannedVM) -> list[Any]:
    return [d for d in p.vm.disks if d.device in ("disk", "lun")]


def migrate_steps(plan: Plan, wave: int, redo: bool | set[str] = False) -> list[DryStep]:
    """The steps of ``vmmove migrate PLAN --wave N --stage``: per disk convert and upload,
    per VM manifests, apply and import, each marked done-before from the journal (not
    for the VMs redone: ``redo`` True for all, or their keys)."""
    vms = plan.wave(wave)
    steps: list[DryStep] = []

    def again(p: PlannedVM) -> bool:
        return redo is True or (isinstance(redo, set) and p.key in redo)

    def add(vm: str, step: str, what: str, done: bool, timed: tuple[float, str] | None) -> None:
        seconds, basis = timed if timed else (None, "")
        steps.append(DryStep(len(steps) + 1, vm, step, what,
                             DONE_BEFORE if done else TO_DO,
                             None if done else seconds, basis))

    with Journal(plan.journal_path) as journal:
        t = measure(journal)
        target = plan.transfer.s3 or plan.transfer.upload_proxy or "(no transfer target)"
        for p in vms:
            for d in _disks(p):
                item = disk_item(p.vm, d)
                size = d.allocated_size or d.virtual_size or 0
                add(p.vm.name, "convert",
                    f"{d.target}: qemu-img convert {d.path} → {plan.workdir}/ "
                    f"({plan.convert.format}{', verified' if plan.convert.verify else ''})",
                    journal.is_done(KIND_CONVERT, item) and not again(p),
                    _timed(size, t.convert))
            for d in _disks(p):
                item = disk_item(p.vm, d)
                size = d.allocated_size or d.virtual_size or 0
                add(p.vm.name, "upload", f"{d.target}: to {target}",
                    journal.is_done(KIND_UPLOAD, item) and not again(p),
                    _timed(size, t.upload))
        for p in vms:
            add(p.vm.name, "manifests", f"VirtualMachine {p.namespace}/{p.name} and its "
                f"DataVolumes → {plan.manifests_dir}", False, None)
        for p in vms:
            # applied again on every run (it changes nothing when nothing changed)
            add(p.vm.name, "apply", f"server-side apply of {p.namespace}/{p.name}", False, None)
            for d in _disks(p):
                item = disk_item(p.vm, d)
                size = d.allocated_size or d.virtual_size or 0
                add(p.vm.name, "import", f"{d.target}: CDI imports it into its DataVolume",
                    journal.is_done(KIND_IMPORT, item) and not again(p),
                    _timed(size, t.imports))
    return steps


def cutover_steps(plan: Plan, vms: list[PlannedVM],
                  source_powered_off: bool = False) -> list[DryStep]:
    """The steps of ``vmmove cutover`` for ``vms`` (in the order it takes them): preflight,
    stop, final sync (full or verify, as staging read the disks), start, verify; steps the
    journal records as done are skipped on a rerun.  ``source_powered_off``: the
    cutover's flag of that name, as given."""
    from migrate.pipeline.cutover import is_offline

    steps: list[DryStep] = []
    with Journal(plan.journal_path) as journal:
        t: Throughput = measure(journal)
        for p in vms:
            mode = sync_mode(p, journal)
            e = estimate(p, t, mode, journal)

            def add(step: str, what: str, seconds: float | None, basis: str,
                    refused: bool = False) -> None:
                done = journal.is_done(KIND_CUTOVER, f"{p.key}/{step}")
                state = DONE_BEFORE if done else REFUSED if refused else TO_DO
                steps.append(DryStep(len(steps) + 1, p.vm.name, step, what, state,
                                     None if done else seconds, basis))

            booted = (f"slowest start measured ({len(t.boot_seconds)})" if t.boot_seconds
                      else "no start measured yet: assumed")
            if is_offline(p.vm):  # an export: the operator powers it off
                refusal = _offline_refusal(plan, p, journal, source_powered_off)
                add("preflight", refusal or f"{p.namespace}/{p.name} imported; the export "
                    "readable, no VMware lock file, --source-powered-off given", None, "",
                    refused=bool(refusal))
                confirm = ("confirmed by --source-powered-off" if source_powered_off
                           else "--source-powered-off required")
                add("stop", f"nothing to stop: {p.vm.name} powered off at its platform "
                    f"({confirm})", e.stop, e.stop_basis)
            else:
                add("preflight", f"{p.namespace}/{p.name} imported; the source host answers",
                    None, "")
                add("stop", f"ACPI shutdown on {p.vm.source.location}", e.stop, e.stop_basis)
            what = ("convert, upload, re-import every disk (staged while running)"
                    if mode == "full" else "the delta since the last precopy round"
                    if mode == "warm" else "compare with the staged images; resend what differs")
            add("sync", f"{mode}: {what}", e.sync, e.sync_basis)
            add("start", f"{p.namespace}/{p.name}: runStrategy Always", None, "")
            add("verify", "the VMI runs (and its guest agent, if the source had one)",
                e.boot, booted)
    return steps


def _offline_refusal(plan: Plan, p: PlannedVM, journal: Journal, confirmed: bool) -> str:
    """What the cutover's preflight would refuse for an offline VM, from the checks that
    need no cluster (:func:`migrate.pipeline.cutover.preflight` without ``target``);
    empty when nothing."""
    from migrate.pipeline.cutover import CutoverError, preflight

    try:
        preflight(plan, p, None, journal, skip=("target",),  # type: ignore[arg-type]
                  confirmed=confirmed)
    except CutoverError as exc:
        return "would refuse: " + str(exc).split("preflight failed, nothing was changed: ",
                                                 1)[-1]
    return ""


def cutover_window(plan: Plan, vms: list[PlannedVM], jobs: int) -> float:
    """The wave's window with ``jobs`` VMs at once, as the runbook computes it
    (:func:`migrate.views.runbook.schedule`): first stop to last verified start, in seconds."""
    with Journal(plan.journal_path) as journal:
        t = measure(journal)
        estimates = [estimate(p, t, sync_mode(p, journal), journal) for p in vms]
    slots = schedule(estimates, jobs)
    return max((s.end for s in slots), default=0.0)


def total_seconds(steps: list[DryStep]) -> float:
    """The estimates added up (steps one after the other)."""
    return sum(s.seconds or 0.0 for s in steps)


HEADERS = ["#", "VM", "STEP", "STATE", "ESTIMATE", "WHAT", "BASIS"]


def show(steps: list[DryStep], fmt: str, title: str, window: str | None = None) -> None:
    """Print the steps (table, JSON or YAML) on stdout and, for the table, a summary
    line (what is left, the estimated time, and ``window`` when given) on stderr."""
    import sys

    from migrate.core.output import duration, emit

    rows = [[s.order, s.vm, s.step, s.state, duration(s.seconds), s.what, s.basis]
            for s in steps]
    emit([s.to_data() for s in steps], fmt, HEADERS, rows)
    if fmt == "table":
        left = sum(1 for s in steps if s.state == TO_DO)
        sys.stderr.write(f"{title}: dry run, nothing was done; {left} of {len(steps)} step(s) "
                         f"to do, about {duration(total_seconds(steps))} one after the "
                         f"other{'; ' + window if window else ''}\n")


def show_cutover(plan: Plan, chosen: list[PlannedVM], wave: int, jobs: int,
                 output: str, source_powered_off: bool = False) -> None:
    """``vmmove cutover --dry-run``: each VM's steps (``source_powered_off``: the flag as
    given), and the wave's window with ``jobs``."""
    from migrate.core.output import duration

    window = f"the window about {duration(cutover_window(plan, chosen, jobs))} with --jobs {jobs}"
    show(cutover_steps(plan, chosen, source_powered_off), output, f"cutover wave {wave}",
         window)
