"""Staged cutover and rollback: switch a VM from its libvirt host to KubeVirt, and back.

A cutover runs, per VM, six journalled steps (kind ``cutover``, item ``<vm key>/<step>``):

1. ``preflight``: no critical concern, the VirtualMachine applied and every disk imported,
   the source domain reachable;
2. ``stop``: libvirt ACPI shutdown, polling until it is off (``destroy`` only with
   ``force``, after the timeout); the source is never undefined, its disks never written;
3. ``sync``: the final sync (given by the caller: convert and transfer live outside
   ``migrate``), either a full copy — the staged copy read a running disk — or proof that
   the stopped source still equals the staged copy;
4. ``start``: the VirtualMachine's ``runStrategy`` set to ``Always`` (a JSON merge patch of
   that one field);
5. ``verify``: its VirtualMachineInstance reaches ``Running`` (and the guest agent connects
   when asked), then an optional user command;
6. ``done``: the downtime, from the start of ``stop`` to the end of ``verify``.

The VM itself is one more item, ``cutover``/``<vm key>`` — what ``vmmove status`` reads —
whose data say the step it is at and ``next``: what the operator does next, in words, so
that a VM stopped on the source is never shown without a way forward.  A rerun resumes at
the first step not done; steps that are done are not repeated (the stop is rechecked: a
source started again by hand before the sync is stopped again, after the sync it is an
error, since its new writes would be lost).

Several VMs of a wave run their steps 2-6 at once (:func:`run_parallel`, ``--jobs``), only
after every selected VM passed its preflight.  Each worker opens its own libvirt connection
(:class:`Source`); the Kubernetes client is shared, its resources resolved once beforehand
(:func:`prepare_kube`: the client's lazy discovery is not thread-safe, its requests are);
the journal is thread-safe.  The final sync is given by the caller, which serialises what
in it is not safe to run twice at once.

Rollback (kind ``rollback``, item ``<vm key>``) halts the target (``runStrategy: Halted``),
waits (bounded) for its VirtualMachineInstance to go, and only then starts the source
again when the cutover found it running: two copies of one VM must never run at once.
It is safe at any point and to repeat; it forgets the cutover's steps so that the next
cutover starts from the preflight.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from migrate.core.records import (
    KIND_APPLY,
    KIND_BOOT_TEST,
    KIND_CUTOVER,
    KIND_CUTOVER_PAST,
    KIND_IMPORT,
    KIND_ROLLBACK,
)
from migrate.core.errors import ConnectError, UsageError, VmmoveError
from migrate.clients import cluster
from migrate.clients.cluster import DATA_VOLUME, VIRTUAL_MACHINE, VMI, Kube, set_run_strategy
from migrate.core.model import VM
from migrate.plan import Plan, PlannedVM
from migrate.core.progress import SILENT, Reporters, Subscriber, trace_call
from migrate.core.journal import DONE, RUNNING, Journal
from migrate.core.workdir import disk_item
from migrate.pipeline.itinerary import CUTOVER, STEPS, cutover_itinerary

#: ``--jobs`` default: VMs cut over (or rolled back) at once, at most this many.  Small on
#: purpose: the operator watches every VM that is down at once, full final syncs take turns
#: anyway (they convert and upload through one work folder), and the Kubernetes client's
#: connection pool (10) stays larger than the workers.
DEFAULT_JOBS = 4
#: Test-only: pause (sleep) right after a step is journalled done (``stop``) or started
#: (``start:sync``), so a fault test can kill the process at that exact point.
PAUSE_ENV = "VMMOVE_TEST_PAUSE_AT"


class CutoverError(VmmoveError):
    """One VM's cutover cannot go on; the message says what state it is left in."""


@dataclass
class CutoverOptions:
    shutdown_timeout: float = 300.0
    force: bool = False  # destroy the source when the ACPI shutdown times out
    verify_timeout: float = 600.0
    # Require the AgentConnected condition: True/False, or None to require it exactly when
    # the source VM had a QEMU guest agent channel (see has_guest_agent).
    guest_agent: bool | None = None
    verify_command: str | None = None
    poll: float = 0.5
    # cut over a VM whose last boot test failed (docs/guest-readiness.md)
    skip_boot_test: bool = False
    # an offline (export) source: the operator confirms the VM is powered off at its
    # platform (``--source-powered-off``); vmmove cannot stop it (OfflineSource)
    source_powered_off: bool = False


@dataclass
class RollbackOptions:
    vmi_timeout: float = 300.0
    poll: float = 0.5


@dataclass(frozen=True)
class SourceStopped:
    """The stop step's fact: the source VM ``key`` is off (``how``: shutdown | already
    off | destroyed after timeout; ``at``: when the stop started, epoch seconds).  The
    final sync reads the stopped disks on this fact, not on the scan's stale power state."""

    key: str
    how: str
    at: float | None


#: The final sync: given the VM, the journal and the fact that its source is stopped, make
#: the target's disks equal the stopped source's, and return what to record (``mode``,
#: per-disk results, bytes).
SyncFn = Callable[[PlannedVM, Journal, SourceStopped], dict[str, Any]]
Log = Callable[[str], None]


def step_item(key: str, step: str) -> str:
    return f"{key}/{step}"


def default_jobs(count: int) -> int:
    """``--jobs`` when not given: ``min(DEFAULT_JOBS, VMs selected)``, at least 1."""
    return max(1, min(DEFAULT_JOBS, count))


def locked_log(log: Log) -> Log:
    """``log`` made safe for several workers: each event one whole line, never interleaved."""
    lock = threading.Lock()

    def write(message: str) -> None:
        with lock:
            log(message)

    return write


def prepare_kube(kube: Kube) -> None:
    """Resolve every resource the workers use while still on one thread: the client's
    discovery (a lazy cache it writes to a file) is not thread-safe; requests through
    resolved resources are (urllib3's pool)."""
    for api in (VIRTUAL_MACHINE, VMI, DATA_VOLUME):
        kube.resource(*api)


def _pause(point: str) -> None:
    """Test hook (see :data:`PAUSE_ENV`): announce the point on stderr, then wait to be killed."""
    if os.environ.get(PAUSE_ENV) == point:
        print(f"vmmove: test pause at {point}", file=sys.stderr, flush=True)
        time.sleep(3600)


def parse_at(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """``--at``: ISO 8601 (``2025-05-01T02:00``, with or without zone) or ``HH:MM[:SS]``
    (today, or tomorrow when that time has passed); local time unless a zone is given."""
    now = now or datetime.datetime.now().astimezone()
    value = text.strip()
    try:
        if len(value) <= 8 and ":" in value and "T" not in value and "-" not in value:
            t = datetime.time.fromisoformat(value)
            when = now.replace(hour=t.hour, minute=t.minute, second=t.second, microsecond=0)
            if when < now - datetime.timedelta(seconds=1):
                when += datetime.timedelta(days=1)
            return when
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r}: expected an ISO 8601 time (2025-05-01T02:00) or "
                         "HH:MM") from None
    if when.tzinfo is None:
        when = when.astimezone()
    return when


def wait_until(when: datetime.datetime, log: Log) -> float:
    """Sleep until ``when``, saying so; the seconds waited."""
    seconds = (when - datetime.datetime.now().astimezone()).total_seconds()
    if seconds <= 0:
        return 0.0
    log(f"waiting until {when.isoformat(timespec='seconds')} ({seconds:.0f}s) before "
        "stopping the source")
    time.sleep(seconds)
    return seconds


# -- the source: a libvirt domain -------------------------------------------------------------


class Source:
    """The source domain of one VM, through the libvirt URI it was scanned from (the
    scan's connection path: :func:`migrate.clients.libvirt.connect`, read-write)."""

    def __init__(self, p: PlannedVM) -> None:
        from migrate.clients.libvirt import Domain, LibvirtCallError

        vm = p.vm
        if vm.source.kind.value != "libvirt":
            raise CutoverError(f"{vm.name}: source {vm.source.location} is not a libvirt host; "
                               "cutover stops and starts libvirt domains only")
        self.label = f"{vm.name} on {vm.source.location}"
        try:
            self.domain = Domain(vm.source.location, vm.uuid, vm.name)
        except ConnectError as exc:
            raise CutoverError(f"{self.label}: cannot reach the source host: "
                               f"{exc.reason}") from None
        except LibvirtCallError:
            raise CutoverError(f"{self.label}: no such domain on the source host "
                               f"(uuid {vm.uuid or '-'}); was it undefined or renamed?") from None

    def close(self) -> None:
        self.domain.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state_name(self) -> str:
        return self.domain.state_name

    @property
    def running(self) -> bool:
        return self.domain.running

    def stop(self, timeout: float, force: bool, poll: float = 0.25) -> dict[str, Any]:
        """Shut the domain down (ACPI); destroy only with ``force`` once ``timeout`` passed."""
        from migrate.clients.libvirt import LibvirtCallError

        dom = self.domain
        before = self.state_name
        started = time.monotonic()
        if not self.running:
            return {"before": before, "how": "already off", "seconds": 0.0}
        paused = dom.paused
        if paused and not force:  # ACPI cannot reach a paused guest
            raise CutoverError(f"{self.label}: the domain is paused, an ACPI shutdown cannot "
                               "reach it; resume it (virsh resume) or pass --force to power it "
                               "off. Nothing was changed.")
        if not paused:
            trace_call(f"{dom.name()}.shutdown()  # ACPI, on {self.label}")
            try:
                dom.shutdown()
            except LibvirtCallError as exc:
                if self.running:
                    raise CutoverError(f"{self.label}: shutdown refused: {exc}; nothing was "
                                       "changed") from None
        if dom.wait_off(timeout - (time.monotonic() - started), poll):
            return {"before": before, "how": "shutdown", "seconds": time.monotonic() - started}
        if not force:
            raise CutoverError(
                f"{self.label}: did not shut down within {timeout:g}s of an ACPI shutdown and "
                f"is still {self.state_name}; nothing else was changed. Shut it down from "
                "inside the guest, raise --shutdown-timeout, or pass --force to power it off "
                "after the timeout")
        trace_call(f"{dom.name()}.destroy()  # power off, on {self.label}")
        try:
            dom.destroy()
        except LibvirtCallError as exc:
            if self.running:
                raise CutoverError(f"{self.label}: destroy failed: {exc}") from None
        return {"before": before, "how": "destroyed after timeout",
                "seconds": time.monotonic() - started}

    def start(self) -> str:
        """Start the domain unless it runs; what was done."""
        from migrate.clients.libvirt import LibvirtCallError

        if self.running:
            return "already running"
        trace_call(f"{self.domain.name()}.create()  # start, on {self.label}")
        try:
            self.domain.create()
        except LibvirtCallError as exc:
            raise CutoverError(f"{self.label}: cannot start the source again: {exc}") from None
        return "started"


def is_offline(vm: VM) -> bool:
    """Whether the VM's source is an export (VMX, OVF/OVA, domain XML, PVE file), not a
    libvirt domain vmmove can stop and start."""
    return vm.source.kind.value != "libvirt"


#: Names VMware gives the lock files of a running VM's folder: ``<file>.lck`` directories
#: (Workstation, VMFS) and ``.lck-<id>`` files (ESXi on an NFS datastore).
LOCK_SUFFIX, LOCK_PREFIX = ".lck", ".lck-"


class OfflineSource:
    """The source of a warm VM read from an export: nothing vmmove can stop or start.

    Same face as :class:`Source`.  ``running`` is what the export shows: True while a
    VMware lock file sits in the VMX's folder (the VM is powered on somewhere), else False.
    :meth:`stop` records the operator's confirmation (``confirmed``: the cutover's
    ``--source-powered-off``) and refuses without it; :meth:`start` says who must start
    the VM (its platform).  Raises :class:`CutoverError` when the export is gone."""

    def __init__(self, p: PlannedVM, confirmed: bool = False) -> None:
        vm = p.vm
        self.vm, self.confirmed = vm, confirmed
        self.kind = vm.source.kind.value
        self.label = f"{vm.name} (offline {self.kind} export {vm.source.location})"
        if not os.path.exists(vm.source.location):
            raise CutoverError(f"{self.label}: the export is gone (moved or deleted?); "
                               "nothing was changed")

    def close(self) -> None:
        pass

    def __enter__(self) -> OfflineSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def locks(self) -> list[str]:
        """VMware lock files in the VMX's folder (a powered-on VM holds them)."""
        if self.kind != "vmx":
            return []
        folder = os.path.dirname(os.path.abspath(self.vm.source.location))
        try:
            names = os.listdir(folder)
        except OSError:
            return []
        return sorted(n for n in names if n.endswith(LOCK_SUFFIX) or n.startswith(LOCK_PREFIX))

    @property
    def running(self) -> bool:
        return bool(self.locks())

    @property
    def state_name(self) -> str:
        locks = self.locks()
        if locks:
            return f"powered on (VMware lock file {locks[0]})"
        return "powered off (confirmed)" if self.confirmed else \
            "unknown (an offline export: its power state is at its platform)"

    def stop(self, timeout: float, force: bool, poll: float = 0.25) -> dict[str, Any]:
        """Record that the operator powered the VM off at its platform."""
        locks = self.locks()
        if locks:
            raise CutoverError(f"{self.label}: VMware lock file {locks[0]} says the VM is still "
                               "powered on; power it off at its platform (the lock files go "
                               "with it). Nothing was changed.")
        if not self.confirmed:
            raise CutoverError(f"{self.label}: vmmove cannot power off an offline source; "
                               "power the VM off at its platform, then rerun with "
                               "--source-powered-off. Nothing was changed.")
        trace_call(f"# {self.label}: powered off at its platform (--source-powered-off)")
        return {"before": "powered off at its platform",
                "how": "powered off at its platform (confirmed: --source-powered-off)",
                "confirmed_at": time.time(), "seconds": 0.0}

    def start(self) -> str:
        """Nothing vmmove can start: what the operator must do."""
        return (f"NOT started: an offline {self.kind} source; power the VM on at its "
                "platform (vmmove cannot)")


def open_source(p: PlannedVM, confirmed: bool = False) -> Source | OfflineSource:
    """The VM's source: its libvirt domain, or an :class:`OfflineSource` for an export
    (``confirmed``: the operator said it is powered off)."""
    return OfflineSource(p, confirmed) if is_offline(p.vm) else Source(p)


# -- the target: a KubeVirt VirtualMachine -------------------------------------------------------


GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


def has_guest_agent(vm: VM) -> bool:
    """Whether the source VM had a QEMU guest agent channel: then its agent is expected to
    connect on KubeVirt too, and verification waits for it."""
    return any(d.kind == "channel" and d.details.get("name") == GUEST_AGENT_CHANNEL
               for d in vm.devices)


def wait_running(kube: Kube, namespace: str, name: str, timeout: float, agent: bool,
                 poll: float) -> dict[str, Any]:
    """:func:`migrate.clients.cluster.wait_running`, a timeout as :class:`CutoverError`."""
    try:
        return cluster.wait_running(kube, namespace, name, timeout, agent, poll)
    except cluster.WaitError as exc:
        raise CutoverError(str(exc)) from None


def wait_vmi_gone(kube: Kube, namespace: str, name: str, timeout: float,
                  poll: float) -> float:
    """:func:`migrate.clients.cluster.wait_vmi_gone`, a timeout as :class:`CutoverError`."""
    try:
        return cluster.wait_vmi_gone(kube, namespace, name, timeout, poll)
    except cluster.WaitError as exc:
        raise CutoverError(str(exc)) from None


# -- cutover -----------------------------------------------------------------------------------


def commands_for(plan: Plan, p: PlannedVM) -> dict[str, str]:
    """The commands an operator runs for this VM: resume, roll back."""
    ref = p.vm.name
    return {"cutover": f"vmmove cutover {plan.path} --wave {p.wave} {ref}",
            "rollback": f"vmmove rollback {plan.path} --wave {p.wave} {ref}"}


def next_action(plan: Plan, p: PlannedVM, step: str, source_stopped: bool) -> str:
    """What to do when a cutover stopped at (or during) ``step``."""
    c = commands_for(plan, p)
    if step == "preflight":
        return f"nothing was changed yet: run `{c['cutover']}`"
    if is_offline(p.vm):  # nothing vmmove can stop or start: the operator does, at the platform
        if not source_stopped:
            return (f"power the source VM off at its platform, then run `{c['cutover']} "
                    "--source-powered-off`")
        return (f"the source is powered off at its platform (the VM is down): run "
                f"`{c['cutover']}` to finish the cutover, or `{c['rollback']}` and then power "
                "the source on at its platform")
    if step == "stop" and not source_stopped:
        return (f"the source was being SHUT DOWN (`virsh -c {p.vm.source.location} domstate "
                f"{p.vm.name}` tells): run `{c['cutover']}` to go on, or `{c['rollback']}` to "
                "start it again")
    if not source_stopped:
        return f"source still running, nothing switched: fix the cause and run `{c['cutover']}`"
    return (f"source is STOPPED (the VM is down): run `{c['cutover']}` to finish the cutover, "
            f"or `{c['rollback']}` to start the source again")


@dataclass(frozen=True)
class ProgressItem:
    """A VM as the progress protocol names it."""

    item: str
    label: str


@dataclass
class VmCutover:
    """The outcome of one VM's cutover run."""

    key: str
    vm: str
    target: str
    status: str  # done | failed | skipped (done earlier)
    steps: dict[str, str] = field(default_factory=dict)  # step -> done | skipped | failed
    downtime: float | None = None
    sync_mode: str | None = None
    error: str | None = None
    next: str | None = None
    #: warm: what a full copy of the disks took (the first round), against the downtime
    full_copy_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("done", "done before")

    def to_data(self) -> dict[str, Any]:
        return {"key": self.key, "vm": self.vm, "target": self.target, "status": self.status,
                "steps": self.steps, "downtime": self.downtime, "syncMode": self.sync_mode,
                "error": self.error, "next": self.next,
                "fullCopySeconds": self.full_copy_seconds}


def critical_concerns(plan: Plan, p: PlannedVM) -> list[str]:
    from migrate.assessment import assess
    from migrate.assessment.concern import Severity

    concerns = assess(plan.inventory, [p.vm]).get(p.key, [])
    return [f"{c.id}: {c.message}" for c in concerns if c.severity == Severity.CRITICAL]


def boot_test_problem(journal: Journal, p: PlannedVM) -> str | None:
    """Why the last boot test forbids the cutover (None: it booted, or none was run)."""
    step = journal.get(KIND_BOOT_TEST, p.key)
    if step is None or step.status == DONE:
        return None
    return (f"last boot test {step.status}: {step.error or 'not finished'} (fix the guest and "
            f"run vmmove boot-test again, or pass --skip-boot-test)")


def preflight(plan: Plan, p: PlannedVM, kube: Kube, journal: Journal,
              source: Callable[[PlannedVM], Source | OfflineSource] | None = None,
              skip: tuple[str, ...] = (), confirmed: bool = False) -> dict[str, Any]:
    """Every reason not to stop the source, all at once: the checks of the itinerary's
    preflight phase (:data:`migrate.pipeline.itinerary.CUTOVER`), in order, but those
    named in ``skip`` (``boot-test`` with ``--skip-boot-test``); a warm VM's itinerary
    (``WARM_CUTOVER``) adds ``warm``: a recent enough precopy round; one of an offline
    export (``OFFLINE_WARM_CUTOVER``) checks the ``export`` instead of a domain, and
    wants ``powered-off``: ``confirmed`` (``--source-powered-off``) or a stop journalled."""
    found: dict[str, Any] = {}
    disks = [d for d in p.vm.disks if d.device in ("disk", "lun")]

    def applied() -> list[str]:
        apply = journal.get(KIND_APPLY, p.key)
        if apply is None or apply.status != DONE or apply.result == "dry-run":
            return ["not applied yet (run vmmove migrate --stage or vmmove apply)"]
        return []

    def imported() -> list[str]:
        not_imported = [d.target for d in disks
                        if not journal.is_done(KIND_IMPORT, disk_item(p.vm, d))]
        if not_imported:
            return [f"disk(s) {', '.join(not_imported)} not imported yet (vmmove apply "
                    "watches the imports)"]
        return []

    def target() -> list[str]:
        found["obj"] = obj = kube.get(*VIRTUAL_MACHINE, p.name, p.namespace)
        if obj is None:
            return [f"VirtualMachine {p.namespace}/{p.name} is not in the cluster at "
                    f"{kube.where}"]
        return []

    def source_reachable() -> list[str]:
        if is_offline(p.vm):  # a cold VM of an export: no domain to stop (warm VMs can)
            return [f"source {p.vm.source.location} is not a libvirt host; a cold cutover "
                    "stops and starts libvirt domains only (plan the VM --warm to cut an "
                    "offline export over)"]
        try:
            with (source or Source)(p) as src:
                found["source_state"] = src.state_name
        except CutoverError as exc:
            return [str(exc)]
        return []

    def export() -> list[str]:  # an offline source: the export readable, no lock file
        from converters.convert import source_chain

        problems = []
        try:
            with OfflineSource(p, confirmed) as src:
                found["source_state"] = src.state_name
                if src.running:
                    problems.append(f"{src.label}: {src.state_name}: power it off at its "
                                    "platform")
        except CutoverError as exc:
            return [str(exc)]
        for d in disks:
            try:
                source_chain(p.vm, d)
            except VmmoveError as exc:
                problems.append(f"disk {d.target}: {exc}")
        return problems

    def powered_off() -> list[str]:  # said by the operator, or recorded by an earlier run
        if confirmed or journal.is_done(KIND_CUTOVER, step_item(p.key, "stop")):
            return []
        return [f"an offline {p.vm.source.kind.value} source: vmmove cannot power it off; "
                "power the VM off at its platform, then rerun with --source-powered-off"]

    def warm() -> list[str]:  # a recent enough precopy round (warm.maxRoundAge)
        return preflight_problems(plan, p, journal)

    checks: dict[str, Callable[[], list[str]]] = {
        "concerns": lambda: [f"critical concern {c}" for c in critical_concerns(plan, p)],
        "boot-test": lambda: [m for m in [boot_test_problem(journal, p)] if m],
        "applied": applied, "imported": imported, "warm": warm, "target": target,
        "source": source_reachable, "export": export, "powered-off": powered_off,
    }
    problems: list[str] = []
    from migrate.pipeline.warm import is_warm, preflight_problems

    for name in cutover_itinerary(is_warm(plan, p), is_offline(p.vm)).phase("preflight").checks:
        if name not in skip:
            problems += checks[name]()
    if problems:
        raise CutoverError(f"{p.vm.name}: preflight failed, nothing was changed: "
                           + "; ".join(problems))
    return {"source_state": found.get("source_state"),
            "target_run_strategy": ((found.get("obj") or {}).get("spec") or {})
            .get("runStrategy")}


class Cutover:
    """One cutover run over some VMs of a wave (the caller holds the plan lock)."""

    def __init__(self, plan: Plan, kube: Kube, journal: Journal, sync: SyncFn,
                 options: CutoverOptions, log: Log,
                 source: Callable[[PlannedVM], Source | OfflineSource] | None = None,
                 progress: Subscriber | None = None) -> None:
        self.plan, self.kube, self.journal, self.sync = plan, kube, journal, sync
        self.options, self.log = options, log
        #: Opens a VM's source (:func:`open_source`; tests give an in-memory one).
        self.source = source or (lambda p: open_source(p, options.source_powered_off))
        #: Hears each VM queued with its phases after the preflight, one unit per phase
        #: done (the phase as the note), and its result.
        self.progress = progress or Subscriber()
        #: Set on Ctrl-C while workers run: each stops before its next step (journalled).
        self.cancelled = threading.Event()

    # each step: (PlannedVM) -> data to journal
    def _step(self, p: PlannedVM, step: str, fn: Callable[[], dict[str, Any]],
              source_stopped: bool) -> dict[str, Any]:
        j, item = self.journal, step_item(p.key, step)
        j.update(KIND_CUTOVER, p.key, step=step,
                 next=next_action(self.plan, p, step, source_stopped))
        j.start(KIND_CUTOVER, item)
        _pause(f"start:{step}")
        try:
            if self.cancelled.is_set():
                raise CutoverError(f"{p.vm.name}: interrupted before the {step} step")
            data = fn()
        except CutoverError as exc:
            stopped = source_stopped or self._source_stopped(p)
            message = str(exc) if str(exc).startswith(p.vm.name) else f"{p.vm.name}: {exc}"
            hint = next_action(self.plan, p, "preflight" if step == "preflight" else "failed",
                               stopped)  # the state asked just now
            j.fail(KIND_CUTOVER, item, message)
            j.fail(KIND_CUTOVER, p.key, f"{step}: {message} — {hint}", step=step, next=hint)
            raise CutoverError(f"{message} — {hint}") from None
        except VmmoveError as exc:
            stopped = source_stopped or self._source_stopped(p)
            hint = next_action(self.plan, p, "failed", stopped)  # the state asked just now
            message = f"{p.vm.name}: {step}: {exc}"
            j.fail(KIND_CUTOVER, item, message)
            j.fail(KIND_CUTOVER, p.key, f"{message} — {hint}", step=step, next=hint)
            raise CutoverError(f"{message} — {hint}") from None
        except BaseException:
            j.fail(KIND_CUTOVER, item, "interrupted: rerun the cutover to resume")
            raise
        j.done(KIND_CUTOVER, item, **data)
        if step != "done":
            j.update(KIND_CUTOVER, p.key, next=next_action(
                self.plan, p, step, source_stopped or step == "stop"))
        self.log(f"{p.vm.name}: {step} done" + (f" ({_brief(data)})" if _brief(data) else ""))
        _pause(step)
        return data

    def _source_stopped(self, p: PlannedVM) -> bool:
        """Whether the source is off now (asked from libvirt; the journal if unreachable)."""
        try:
            with self.source(p) as src:
                return not src.running
        except CutoverError:
            stop = self.journal.get(KIND_CUTOVER, step_item(p.key, "stop"))
            return stop is not None and stop.status in (DONE, RUNNING)

    def done_before(self, p: PlannedVM) -> bool:
        return self.journal.is_done(KIND_CUTOVER, step_item(p.key, "done"))

    def preflight(self, p: PlannedVM) -> None:
        """Step 1 for one VM (skipped when done in an earlier run)."""
        j = self.journal
        if j.is_done(KIND_CUTOVER, step_item(p.key, "preflight")):
            return
        top = j.get(KIND_CUTOVER, p.key)
        if top is None or top.status != RUNNING:
            j.start(KIND_CUTOVER, p.key, wave=p.wave, name=p.name, namespace=p.namespace)
        skip = ("boot-test",) if self.options.skip_boot_test else ()
        self._step(p, "preflight", lambda: preflight(
            self.plan, p, self.kube, j, self.source, skip,
            self.options.source_powered_off), False)

    def run_selection(self, chosen: Sequence[PlannedVM], wave: int, jobs: int | None,
                      when: datetime.datetime | None) -> list[VmCutover]:
        """The whole itinerary for ``chosen``: every preflight first, and no source stopped
        unless all pass; then, after ``when``, the other phases ``jobs`` VMs at once.
        One result per VM, in the order given (``done before`` for a VM cut over by an
        earlier run, ``not started`` when another VM's preflight failed)."""
        plan, journal, log = self.plan, self.journal, self.log
        results: list[VmCutover] = []
        todo = []
        for p in chosen:
            if self.done_before(p):
                results.append(VmCutover(p.key, p.vm.name, f"{p.namespace}/{p.name}",
                                         "done before", downtime=downtime_of(journal, p)))
                continue
            try:
                self.preflight(p)
                todo.append(p)
            except CutoverError as exc:
                results.append(VmCutover(p.key, p.vm.name, f"{p.namespace}/{p.name}",
                                         "failed", error=str(exc)))
        refused = [r.vm for r in results if r.status == "failed"]
        if refused and todo:
            # No source stops unless every VM of the selection passed its preflight.
            names = " ".join(p.vm.name for p in todo)
            log(f"no source stopped: the preflight of {', '.join(refused)} failed")
            for p in todo:
                results.append(VmCutover(
                    p.key, p.vm.name, f"{p.namespace}/{p.name}", "not started",
                    steps={"preflight": "done"},
                    next=f"preflight passed, nothing was changed: fix the preflight of "
                         f"{', '.join(refused)} and rerun, or cut over only the VMs "
                         f"that passed: `vmmove cutover {plan.path} --wave {wave} "
                         f"{names}`"))
            todo = []
        if todo and when is not None:
            wait_until(when, log)
        if todo:
            n = jobs or default_jobs(len(todo))
            if n > 1 and len(todo) > 1:
                log(f"cutting over {len(todo)} VM(s), {min(n, len(todo))} at once")
            results += self.run_parallel(todo, n)
        order = {p.key: i for i, p in enumerate(chosen)}
        results.sort(key=lambda r: order[r.key])
        return results

    def run_vm(self, p: PlannedVM) -> VmCutover:
        """The phases of the VM's cutover itinerary (:data:`~migrate.pipeline.itinerary.
        CUTOVER`, or ``WARM_CUTOVER`` for a warm VM) after the preflight, for one VM whose
        preflight is done; resumes where the last run stopped (a phase
        the journal records done is skipped)."""
        j = self.journal
        result = VmCutover(p.key, p.vm.name, f"{p.namespace}/{p.name}", "done")
        top = j.get(KIND_CUTOVER, p.key)
        if top is None or top.status != RUNNING:
            j.start(KIND_CUTOVER, p.key, wave=p.wave, name=p.name, namespace=p.namespace)
        result.steps["preflight"] = "done"
        item = ProgressItem(p.key, p.vm.name)
        from migrate.pipeline.warm import is_warm

        for phase in cutover_itinerary(is_warm(self.plan, p),
                                       is_offline(p.vm)).after("preflight"):
            run = getattr(self, f"_phase_{phase.name}")
            result.steps[phase.name] = run(p, phase.source_stopped, result)
            self.progress.on_progress(item, 1, phase.name)
        self.log(f"{p.vm.name}: cut over to {p.namespace}/{p.name}; "
                 f"downtime {result.downtime:.1f}s")
        return result

    def _is_done(self, p: PlannedVM, step: str) -> bool:
        return self.journal.is_done(KIND_CUTOVER, step_item(p.key, step))

    def _phase_stop(self, p: PlannedVM, stopped: bool, result: VmCutover) -> str:
        """Rechecked when done: a source started again must not be left running."""
        j = self.journal
        with self.source(p) as src:
            if self._is_done(p, "stop") and src.running:
                if self._is_done(p, "sync"):
                    raise self._fail_top(p, "stop", CutoverError(
                        f"{p.vm.name}: the source runs again although the cutover stopped it "
                        "and synced its disks; what it wrote since would be lost. Run vmmove "
                        "rollback (or stop it) before resuming"), True)
                self.log(f"{p.vm.name}: the source runs again: stopping it again")
                j.reset(KIND_CUTOVER, step_item(p.key, "stop"))
            if self._is_done(p, "stop"):
                return "skipped"
            self._step(p, "stop", lambda: _stop_data(src, self.options), stopped)
            return "done"

    def _stopped_fact(self, p: PlannedVM) -> SourceStopped:
        stop = self.journal.get(KIND_CUTOVER, step_item(p.key, "stop"))
        assert stop is not None and stop.status == DONE
        return SourceStopped(p.key, str(stop.how), stop.started)

    def _phase_sync(self, p: PlannedVM, stopped: bool, result: VmCutover) -> str:
        if self._is_done(p, "sync"):
            return "skipped"
        fact = self._stopped_fact(p)
        self._step(p, "sync", lambda: self.sync(p, self.journal, fact), stopped)
        return "done"

    def _phase_start(self, p: PlannedVM, stopped: bool, result: VmCutover) -> str:
        if self._is_done(p, "start"):
            return "skipped"

        def start() -> dict[str, Any]:
            answer = set_run_strategy(self.kube, p.namespace, p.name, "Always")
            meta = answer.get("metadata") or {}
            return {"runStrategy": (answer.get("spec") or {}).get("runStrategy"),
                    "resourceVersion": meta.get("resourceVersion")}
        self._step(p, "start", start, stopped)
        return "done"

    def _phase_verify(self, p: PlannedVM, stopped: bool, result: VmCutover) -> str:
        if self._is_done(p, "verify"):
            return "skipped"
        self._step(p, "verify", lambda: self._verify(p), stopped)
        return "done"

    def _phase_done(self, p: PlannedVM, stopped: bool, result: VmCutover) -> str:
        """The downtime, from the start of stop to the end of verify."""
        j = self.journal
        stop = j.get(KIND_CUTOVER, step_item(p.key, "stop"))
        verify = j.get(KIND_CUTOVER, step_item(p.key, "verify"))
        sync = j.get(KIND_CUTOVER, step_item(p.key, "sync"))
        assert stop is not None and verify is not None and sync is not None
        downtime = round((verify.finished or 0) - (stop.started or 0), 3)
        was_off = stop.how == "already off"
        status = "skipped"
        if not self._is_done(p, "done"):
            self._step(p, "done", lambda: {"downtime": downtime}, stopped)
            status = "done"
        j.done(KIND_CUTOVER, p.key, step="done", next=None, downtime=downtime,
               source_was_off=was_off, sync_mode=sync.mode,
               stopped_at=stop.started, verified_at=verify.finished,
               full_copy_seconds=sync.full_copy_seconds)
        result.downtime = downtime
        result.full_copy_seconds = sync.full_copy_seconds
        result.sync_mode = sync.mode
        return status

    def run_parallel(self, todo: Sequence[PlannedVM], jobs: int) -> list[VmCutover]:
        """Steps 2-6 for each VM of ``todo`` (all past their preflight), ``jobs`` at once.

        One VM's failure is its own result and never stops the others.  ``jobs`` 1 runs
        them one after another on this thread, as before.  On Ctrl-C the running VMs stop
        before their next step (each journalled, with its next action) and the VMs not
        started yet are not started; the interrupt is raised again once all have stopped.
        """
        if jobs <= 1 or len(todo) <= 1:
            return [self._run_one(p) for p in todo]
        results: dict[str, VmCutover] = {}
        with ThreadPoolExecutor(max_workers=min(jobs, len(todo)),
                                thread_name_prefix="cutover") as pool:
            futures = {p.key: pool.submit(self._run_one, p) for p in todo}
            try:
                for key, future in futures.items():
                    results[key] = future.result()
            except BaseException:
                self.cancelled.set()
                self.log(f"interrupted: {sum(not f.done() for f in futures.values())} VM(s) "
                         "still running stop before their next step")
                for f in futures.values():
                    f.cancel()
                raise
        return [results[p.key] for p in todo]

    def _run_one(self, p: PlannedVM) -> VmCutover:
        """:meth:`run_vm` with every failure as this VM's result (and reported)."""
        item = ProgressItem(p.key, p.vm.name)
        self.progress.on_queued(item, len(CUTOVER.after("preflight")), 0)
        result = self._outcome(p)
        self.progress.on_done(item, result)
        return result

    def _outcome(self, p: PlannedVM) -> VmCutover:
        failed = VmCutover(p.key, p.vm.name, f"{p.namespace}/{p.name}", "failed")
        if self.cancelled.is_set():
            failed.error = f"{p.vm.name}: not started (interrupted); nothing was changed"
            return failed
        try:
            return self.run_vm(p)
        except CutoverError as exc:
            failed.error = str(exc)
        except VmmoveError as exc:  # outside any step (e.g. the source host unreachable)
            failed.error = str(self._fail_top(p, "stop", CutoverError(
                f"{p.vm.name}: {exc}"), self._source_stopped(p)))
        except Exception as exc:  # a bug in one worker must not take the others down
            if threading.current_thread() is threading.main_thread():
                raise
            failed.error = str(self._fail_top(p, "unexpected", CutoverError(
                f"{p.vm.name}: unexpected {type(exc).__name__}: {exc}"),
                self._source_stopped(p)))
        for step in STEPS:  # how far it got, for the table
            found = self.journal.get(KIND_CUTOVER, step_item(p.key, step))
            if found is not None:
                failed.steps[step] = found.status
        self.log(f"{p.vm.name}: not cut over (the error is repeated at the end)")
        return failed

    def _fail_top(self, p: PlannedVM, step: str, exc: CutoverError,
                  stopped: bool) -> CutoverError:
        hint = next_action(self.plan, p, "failed", stopped)  # the state asked just now
        self.journal.fail(KIND_CUTOVER, p.key, f"{exc} — {hint}", step=step, next=hint)
        return CutoverError(f"{exc} — {hint}")

    def _verify(self, p: PlannedVM) -> dict[str, Any]:
        o = self.options
        agent = has_guest_agent(p.vm) if o.guest_agent is None else o.guest_agent
        data = wait_running(self.kube, p.namespace, p.name, o.verify_timeout, agent, o.poll)
        if o.verify_command:
            env = {**os.environ, "VMMOVE_VM": p.vm.name, "VMMOVE_NAME": p.name,
                   "VMMOVE_NAMESPACE": p.namespace, "KUBECONFIG": self.kube.kubeconfig}
            started = time.monotonic()
            try:
                proc = subprocess.run(o.verify_command, shell=True, env=env, text=True,  # noqa: S602 - the operator's own command line
                                      capture_output=True, timeout=o.verify_timeout)
            except subprocess.TimeoutExpired:
                raise CutoverError(f"verify command timed out after {o.verify_timeout:g}s: "
                                   f"{o.verify_command}") from None
            data["command"] = o.verify_command
            data["command_seconds"] = round(time.monotonic() - started, 3)
            data["command_output"] = (proc.stdout + proc.stderr)[-500:]
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
                raise CutoverError(f"verify command exited {proc.returncode}: "
                                   f"{o.verify_command}: {tail[0][:200]}")
        return data


def _stop_data(src: Source | OfflineSource, o: CutoverOptions) -> dict[str, Any]:
    data = src.stop(o.shutdown_timeout, o.force)
    data["seconds"] = round(data["seconds"], 3)
    return data


def _brief(data: dict[str, Any]) -> str:
    keys = ("how", "mode", "runStrategy", "phase", "downtime")
    return ", ".join(f"{k} {data[k]}" for k in keys if data.get(k) is not None)


# -- rollback ----------------------------------------------------------------------------------


@dataclass
class VmRollback:
    key: str
    vm: str
    target: str
    target_action: str
    source_action: str
    seconds: float

    def to_data(self) -> dict[str, Any]:
        return {"key": self.key, "vm": self.vm, "target": self.target,
                "targetAction": self.target_action, "sourceAction": self.source_action,
                "seconds": self.seconds}


def rollback_vm(plan: Plan, p: PlannedVM, kube: Kube, journal: Journal,
                options: RollbackOptions, log: Log) -> VmRollback:
    """Halt the target, wait for its VMI to go, start the source if the cutover stopped it."""
    started = time.monotonic()
    journal.start(KIND_ROLLBACK, p.key, wave=p.wave, name=p.name, namespace=p.namespace)
    try:
        obj = kube.get(*VIRTUAL_MACHINE, p.name, p.namespace)
        if obj is None:
            target_action = "no VirtualMachine"
        elif (obj.get("spec") or {}).get("runStrategy") == "Halted":
            target_action = "already Halted"
        else:
            set_run_strategy(kube, p.namespace, p.name, "Halted")
            target_action = "Halted"
        waited = wait_vmi_gone(kube, p.namespace, p.name, options.vmi_timeout, options.poll)
        stop = journal.get(KIND_CUTOVER, step_item(p.key, "stop"))
        # Start the source when the cutover stopped a running one (or got that far).
        was_running = stop is not None and (
            stop.before not in ("shut off", "crashed") or stop.status != DONE)
        with open_source(p) as src:
            if was_running:
                source_action = src.start()
            else:
                source_action = f"left {src.state_name}" + (
                    " (it was off before the cutover)" if stop is not None else
                    " (the cutover never stopped it)")
    except VmmoveError as exc:
        message = str(exc) if str(exc).startswith(p.vm.name) else f"{p.vm.name}: {exc}"
        journal.fail(KIND_ROLLBACK, p.key, message)
        raise CutoverError(message) from None
    except BaseException:
        journal.fail(KIND_ROLLBACK, p.key, "interrupted: rerun vmmove rollback")
        raise
    start = journal.get(KIND_CUTOVER, step_item(p.key, "start"))
    if start is not None:  # the target may have written its volumes: no delta can follow
        from migrate.core.records import KIND_WARM

        if journal.get(KIND_WARM, p.key) is not None:
            journal.update(KIND_WARM, p.key, full_reason="rolled back after the target "
                           "started (it may have written its volumes)")
    # The next cutover starts again from the preflight; what this one measured (its
    # done steps, its downtime) is kept as kind cutover-past, the history keeps the rest.
    for step in STEPS:
        found = journal.get(KIND_CUTOVER, step_item(p.key, step))
        if found is not None and found.status == DONE:
            journal.archive(KIND_CUTOVER, step_item(p.key, step), KIND_CUTOVER_PAST)
        elif found is not None:
            journal.reset(KIND_CUTOVER, step_item(p.key, step))
    top = journal.get(KIND_CUTOVER, p.key)
    if top is not None and top.status == DONE:
        journal.archive(KIND_CUTOVER, p.key, KIND_CUTOVER_PAST)
    elif top is not None:
        journal.update(KIND_CUTOVER, p.key, next=None, step="rolled back")
    seconds = round(time.monotonic() - started, 3)
    journal.done(KIND_ROLLBACK, p.key, target=target_action, source=source_action,
                 vmi_gone_seconds=round(waited, 3), seconds=seconds)
    log(f"{p.vm.name}: rolled back (target {target_action}, source {source_action})")
    return VmRollback(p.key, p.vm.name, f"{p.namespace}/{p.name}", target_action,
                      source_action, seconds)


def has_rollback_work(plan: Plan, journal: Journal, p: PlannedVM) -> bool:
    """True when a rollback of ``p`` may have something to undo: the journal records a
    cutover of it (begun, done or rolled back before), or its VirtualMachine was applied
    with a runStrategy that starts it.  A VM never cut over (staged Halted, or never
    staged) has nothing to roll back: its source was never touched, no target started."""
    if journal.get(KIND_CUTOVER, p.key) is not None or journal.get(KIND_ROLLBACK, p.key):
        return True
    if journal.steps(KIND_CUTOVER, prefix=p.key + "/"):
        return True
    applied = journal.get(KIND_APPLY, p.key)
    strategy = p.run_strategy or plan.defaults.run_strategy
    return applied is not None and applied.status == DONE and strategy != "Halted"


def rollback_scope(plan: Plan, vms: Sequence[PlannedVM]) -> tuple[list[PlannedVM],
                                                                   list[PlannedVM]]:
    """``vms`` split into those a rollback works on and those with nothing to roll back
    (:func:`has_rollback_work`), each in the order given; reads the journal only."""
    if not plan.journal_path.is_file():
        return [], list(vms)
    with plan.journal() as journal:
        work = [p for p in vms if has_rollback_work(plan, journal, p)]
    return work, [p for p in vms if p not in work]


def rollback_many(plan: Plan, vms: Sequence[PlannedVM], kube: Kube, journal: Journal,
                  options: RollbackOptions, log: Log,
                  jobs: int) -> list[VmRollback | CutoverError]:
    """:func:`rollback_vm` for each VM, ``jobs`` at once; each VM's outcome or its error,
    in the order given (one VM's failure never stops the others)."""
    def one(p: PlannedVM) -> VmRollback | CutoverError:
        try:
            return rollback_vm(plan, p, kube, journal, options, log)
        except CutoverError as exc:
            return exc
        except Exception as exc:  # a bug in one worker must not take the others down
            if threading.current_thread() is threading.main_thread():
                raise
            return CutoverError(f"{p.vm.name}: unexpected {type(exc).__name__}: {exc}")

    if jobs <= 1 or len(vms) <= 1:
        return [one(p) for p in vms]
    with ThreadPoolExecutor(max_workers=min(jobs, len(vms)),
                            thread_name_prefix="rollback") as pool:
        return list(pool.map(one, vms))


def select_vms(plan: Plan, wave: int, refs: tuple[str, ...] | list[str]) -> list[PlannedVM]:
    """The wave's VMs (not skipped), or the named ones, which must be in that wave."""
    vms = plan.wave(wave)
    if not refs:
        if not vms:
            raise UsageError(f"{plan.path}: wave {wave} has no VM to cut over (all skipped)")
        return vms
    chosen: list[PlannedVM] = []
    for ref in refs:
        p = plan.planned(ref)
        if p is None:
            raise UsageError(f"{plan.path}: no VM {ref!r} in the plan")
        if p.wave != wave:
            raise UsageError(f"{plan.path}: VM {ref!r} is in wave {p.wave}, not wave {wave}")
        if p.skip:
            raise UsageError(f"{plan.path}: VM {ref!r} is marked skip in the plan")
        if p not in chosen:
            chosen.append(p)
    return chosen


# -- one cutover or rollback run (what `vmmove cutover` / `vmmove rollback` call) ----------------


def downtime_of(journal: Journal, p: PlannedVM) -> float | None:
    """The downtime an earlier cutover of ``p`` recorded (seconds), if any."""
    step = journal.get(KIND_CUTOVER, p.key)
    return step.downtime if step else None


def cutover_vms(plan: Plan, wave: int, chosen: list[PlannedVM], kube_args: Any,
                options: CutoverOptions, *, jobs: int | None, when: datetime.datetime | None,
                import_timeout: float, log: Log,
                reporters: Reporters = SILENT) -> list[VmCutover]:
    """Cut over ``chosen`` (VMs of ``wave``), under the plan lock; one result per VM, in
    the order given.

    The preflight of every VM runs first; no source stops unless all pass (the others
    are then ``not started`` with the command that cuts over only those that passed).
    Then, after ``when`` (if given), up to ``jobs`` VMs go through the remaining phases
    of :data:`~migrate.pipeline.itinerary.CUTOVER` at once; a VM already cut over is
    ``done before``.  Raises :class:`~migrate.core.errors.VmmoveError` when the cluster
    cannot be reached or the plan is locked.
    """
    from functools import partial

    from migrate.clients.cluster import connect
    from migrate.pipeline.sync import final_sync
    from migrate.pipeline.wave import plan_lock

    results: list[VmCutover] = []
    log = locked_log(log)
    kube = connect(kube_args.kubeconfig, kube_args.context)
    try:
        prepare_kube(kube)
        with plan_lock(plan):
            journal = plan.journal()
            try:
                sync = partial(final_sync, plan, kube, kube_args, import_timeout,
                               reporters=reporters)
                run = Cutover(plan, kube, journal, sync, options, log,
                              progress=reporters.cutover())
                results = run.run_selection(chosen, wave, jobs, when)
            finally:
                journal.close()
    finally:
        kube.close()
    return results


def rollback_vms(plan: Plan, chosen: list[PlannedVM], kube_args: Any,
                 options: RollbackOptions, jobs: int | None,
                 log: Log) -> list[VmRollback | CutoverError]:
    """Roll back ``chosen`` under the plan lock (:func:`rollback_many`)."""
    from migrate.clients.cluster import connect
    from migrate.pipeline.wave import plan_lock

    kube = connect(kube_args.kubeconfig, kube_args.context)
    try:
        prepare_kube(kube)
        with plan_lock(plan):
            with plan.journal() as journal:
                return rollback_many(plan, chosen, kube, journal, options, locked_log(log),
                                     jobs or default_jobs(len(chosen)))
    finally:
        kube.close()
