"""Runbooks: one Markdown page per wave that an operator follows during the cutover window.

Why generated: the commands in a runbook must be the exact ones for this plan (plan file,
wave, VM names, source URIs, target namespaces), and its downtime estimates must come from
what this migration measured so far (the journal), not from a guess.  Each page has the
scope, a prerequisites checklist, every step with its vmmove, kubectl and virsh commands,
the expected downtime per VM and how it was computed, verification, rollback and sign-off.
"""

from __future__ import annotations

import datetime
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.core.files import make_dirs
from migrate.core.output import human_size
from migrate.plan import Plan, PlannedVM
from migrate.views.report import MIB, Throughput, measure
from migrate.core.serialize import atomic_write
from migrate.core.journal import Journal
from migrate.core.records import KIND_BOOT_TEST, KIND_CONVERT, Status
from migrate.pipeline.itinerary import CUTOVER, OFFLINE_WARM_CUTOVER, WARM_CUTOVER

#: Used when the journal has measured nothing yet (said so in the runbook).
DEFAULT_RATE = 100 * MIB
DEFAULT_STOP = 60.0
DEFAULT_BOOT = 120.0


@dataclass
class Estimate:
    """Expected downtime of one VM: stop + final sync + start/verify, in seconds."""

    stop: float
    sync: float
    boot: float
    mode: str  # full | verify | warm
    rate: float  # bytes/s used for the sync
    stop_basis: str = ""  # where ``stop`` comes from (:func:`stop_estimate`)
    sync_basis: str = ""  # where ``sync`` comes from: the data (or delta) and the rate

    @property
    def total(self) -> float:
        return self.stop + self.sync + self.boot


def _rate(t: Throughput, mode: str) -> tuple[float, str]:
    """The bytes/s a final sync moves at, and where that number comes from."""
    if mode == "full":
        if t.sync.per_second:
            return t.sync.per_second, f"final syncs measured ({t.sync.samples})"
        parts = [(r.per_second, r.kind) for r in (t.convert, t.upload, t.imports)
                 if r.per_second]
        if parts:
            # convert, upload and import run one after the other: their times add up
            per_byte = sum(1 / rate for rate, _ in parts)
            return 1 / per_byte, " + ".join(k for _, k in parts) + " measured"
        return DEFAULT_RATE, "nothing measured yet: assumed"
    if t.convert.per_second:  # verify: qemu-img compare reads like a conversion
        return t.convert.per_second, "convert measured (compare reads alike)"
    return DEFAULT_RATE, "nothing measured yet: assumed"


def sync_mode(p: PlannedVM, journal: Journal) -> str:
    """``warm`` for a VM with precopy rounds (its final delta), ``full`` when the staged
    copy read a running disk, else ``verify``."""
    from migrate.core.records import KIND_WARM

    if journal.get(KIND_WARM, p.key) is not None:
        return "warm"
    for d in p.vm.disks:
        if d.device not in ("disk", "lun"):
            continue
        step = journal.get(KIND_CONVERT, f"{p.key}/{d.target}")
        if step is None or step.force_share:
            return "full"
    return "verify"


#: The stop of a VM read from an offline export: the operator powers it off at its platform
#: before ``vmmove cutover --source-powered-off``, which only records it.
OFFLINE_STOP = "nothing vmmove stops: powered off at its platform before the cutover"


def stop_estimate(p: PlannedVM, t: Throughput) -> tuple[float, str]:
    """Seconds of a VM's stop phase and their basis — the one model of the runbook and of
    ``cutover --dry-run``: 0 for an offline export (:data:`OFFLINE_STOP`; the power-off at
    its platform happens before the cutover, untimed by vmmove), else the longest ACPI
    shutdown the journal measured, else :data:`DEFAULT_STOP` assumed."""
    from migrate.pipeline.cutover import is_offline

    if is_offline(p.vm):
        return 0.0, OFFLINE_STOP
    if t.stop_seconds:
        return max(t.stop_seconds), f"slowest shutdown measured ({len(t.stop_seconds)})"
    return DEFAULT_STOP, f"no shutdown measured yet: {DEFAULT_STOP:.0f} s assumed"


def estimate(p: PlannedVM, t: Throughput, mode: str,
             journal: Journal | None = None) -> Estimate:
    """``warm`` (with ``journal``): the final sync its rounds predict
    (:func:`migrate.pipeline.warm.outlook`) at the last round's rate
    (:func:`migrate.pipeline.warm.round_speed`); else the VM's data at the mode's rate.
    The stop is :func:`stop_estimate`'s; each part says its basis."""
    rate, source = _rate(t, mode)
    stop, stop_basis = stop_estimate(p, t)
    boot = max(t.boot_seconds) if t.boot_seconds else DEFAULT_BOOT
    if mode == "warm" and journal is not None:
        from migrate.core.records import KIND_WARM
        from migrate.pipeline.warm import HASH, data_disks, disk_method, round_speed

        w = warm_outlook(p, journal)
        step = journal.get(KIND_WARM, p.key)
        hist = (step.state.get("history") or []) if step else []
        if w.get("predicted") is not None and hist:
            speed = round_speed(hist[-1])
            whole = any(disk_method(p.vm, d)[0] == HASH for d in data_disks(p.vm))
            basis = (f"{human_size(w.get('expected') or 0)} expected to change"
                     + (", every disk read whole (hash)" if whole else "")
                     + f", at {human_size(int(speed))}/s (the last round's rate)")
            return Estimate(stop, float(w["predicted"]), boot, mode, speed, stop_basis, basis)
        source = f"rate not measured yet: {source}" if "assumed" in source else source
    return Estimate(stop, p.vm.data_bytes() / rate, boot, mode, rate, stop_basis,
                    f"{human_size(p.vm.data_bytes())} at {human_size(int(rate))}/s ({source})")


def warm_outlook(p: PlannedVM, journal: Journal) -> dict[str, Any]:
    from migrate.core.records import KIND_WARM
    from migrate.pipeline.warm import data_disks, disk_method, outlook

    step = journal.get(KIND_WARM, p.key)
    return outlook(step.state if step else {}, [disk_method(p.vm, d)[0] for d in data_disks(p.vm)])


@dataclass
class Slot:
    """Where one VM falls in the wave's window when ``jobs`` VMs are cut over at once."""

    start: float  # its source stops this long after the first stop
    end: float  # its target is verified
    wait: float  # spent waiting for another VM's full final sync to send its disks

    @property
    def downtime(self) -> float:
        return self.end - self.start


def schedule(estimates: list[Estimate], jobs: int) -> list[Slot]:
    """Each VM's place in the window, as ``vmmove cutover --jobs`` runs them: in plan order,
    a VM starts when one of ``jobs`` workers is free (the first ``jobs`` at once); a
    ``full`` final sync sends its disks one VM at a time, so it may wait for another's.
    Since every VM's stop is estimated alike, the syncs queue in start order."""
    free = [0.0] * max(1, jobs)
    send_free = 0.0
    slots = []
    for e in estimates:
        worker = min(range(len(free)), key=free.__getitem__)
        start = free[worker]
        ready = start + e.stop
        wait = 0.0
        if e.mode == "full":
            wait = max(0.0, send_free - ready)
            send_free = ready + wait + e.sync
        end = ready + wait + e.sync + e.boot
        free[worker] = end
        slots.append(Slot(start, end, wait))
    return slots


#: What each source kind is, said to an operator (``migrate.core.model.SourceKind``).
PLATFORMS = {"libvirt": "libvirt", "domain-xml": "a libvirt domain XML export",
             "ovf": "an OVF export", "ova": "an OVA export", "vmx": "a VMware (VMX) export",
             "pve": "a Proxmox VE export"}


def _platforms(vms: list[PlannedVM]) -> str:
    """Where the wave's VMs come from: ``libvirt``, ``a VMware (VMX) export``, or several
    joined with "and"."""
    kinds = sorted({p.vm.source.kind.value for p in vms})
    return " and ".join(PLATFORMS.get(k, k) for k in kinds) or "libvirt"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def _q(text: str) -> str:
    return shlex.quote(str(text))


def boot_test_lines(plan: Plan, vms: list[PlannedVM], journal: Journal) -> list[str]:
    """One checklist line per VM from its last boot test (docs/guest-readiness.md)."""
    lines = []
    for p in vms:
        step = journal.get(KIND_BOOT_TEST, p.key)
        if step is None:
            lines.append(f"- [ ] {p.vm.name}: not boot-tested yet: `vmmove boot-test "
                         f"{_q(str(plan.path))} --wave {p.wave} {_q(p.vm.name)}`.")
        elif step.status == Status.DONE:
            lines.append(f"- [x] {p.vm.name}: boot test passed "
                         f"({step.reason or 'booted'}).")
        else:
            lines.append(f"- [ ] **{p.vm.name}: last boot test {step.status}**: {step.error} "
                         f"(console: {step.console}); cutover refuses it unless "
                         "--skip-boot-test.")
    return lines


def wave_runbook(plan: Plan, wave: int, journal: Journal,
                 now: datetime.datetime | None = None, jobs: int | None = None) -> str:
    """The Markdown runbook of one wave, for ``vmmove cutover --jobs jobs`` (default: the
    cutover's own default for this wave's size)."""
    from migrate.pipeline.cutover import default_jobs

    from migrate.assessment import assess
    from migrate.assessment.concern import Severity

    vms = plan.wave(wave)
    skipped = [p for p in plan.wave(wave, include_skipped=True) if p.skip]
    name = next(w.name for w in plan.waves if w.number == wave)
    t = measure(journal)
    modes = {p.key: sync_mode(p, journal) for p in vms}
    estimates = {p.key: estimate(p, t, modes[p.key], journal) for p in vms}
    concerns = assess(plan.inventory, [p.vm for p in vms])
    plan_ref = _q(str(plan.path))
    cut = f"vmmove cutover {plan_ref} --wave {wave}"
    back = f"vmmove rollback {plan_ref} --wave {wave}"
    when = (now or datetime.datetime.now().astimezone()).isoformat(timespec="minutes")
    total = sum(e.total for e in estimates.values())
    jobs = jobs or default_jobs(len(vms))
    slots = dict(zip(estimates, schedule(list(estimates.values()), jobs)))
    window = max((s.end for s in slots.values()), default=0.0)
    jobs_flag = f" --jobs {jobs}"
    lines: list[str] = []
    add = lines.append

    add(f"# Runbook: wave {wave} ({name})")
    add("")
    add(f"Plan `{plan.path}` · journal `{plan.journal_path}` · generated {when} by "
        "`vmmove runbook`. Regenerate it after every rehearsal: the estimates use what "
        "the journal measured.")
    add("")
    add("## Scope")
    add("")
    add(f"{len(vms)} VM(s) move from {_platforms(vms)} to KubeVirt in this wave"
        + (f"; {len(skipped)} skipped: " + ", ".join(
            f"{p.vm.name} ({p.entry.note or 'skip'})" for p in skipped) if skipped else "")
        + f". Expected window with `--jobs {jobs}` ({min(jobs, len(vms))} VM(s) at once): "
        f"**{_duration(window)}** from the first source stopped to the last target verified"
        + (f" (one after another: {_duration(total)})" if min(jobs, len(vms)) > 1 else "")
        + ".")
    add("")
    add("| VM | source | target | disks | data | final sync | expected downtime |")
    add("|---|---|---|---|---|---|---|")
    for p in vms:
        e = estimates[p.key]
        disks = [d for d in p.vm.disks if d.device in ("disk", "lun")]
        add(f"| {p.vm.name} | `{p.vm.source.location}` | `{p.namespace}/{p.name}` | "
            f"{len(disks)} | {human_size(p.vm.data_bytes())} | {e.mode} | "
            f"{_duration(slots[p.key].downtime)} |")
    add("")
    add("## Prerequisites")
    add("")
    add(f"- [ ] Maintenance window agreed; users of {', '.join(p.vm.name for p in vms)} told "
        "of the downtime above.")
    add(f"- [ ] `vmmove plan --check {plan_ref}` reports no problem.")
    add(f"- [ ] `vmmove status {plan_ref} --wave {wave}` shows every VM `imported` "
        "(else: `vmmove migrate " f"{plan_ref} --wave {wave} --stage`).")
    for ns in plan.namespaces(wave):
        add(f"- [ ] `kubectl -n {ns} get vm,dv` lists the wave's VirtualMachines (Halted) and "
            "DataVolumes (Succeeded).")
    from migrate.pipeline.cutover import is_offline

    for uri in sorted({p.vm.source.location for p in vms if not is_offline(p.vm)}):
        add(f"- [ ] `virsh -c {_q(uri)} list --all` answers (the source host is reachable).")
    for where in sorted({p.vm.source.location for p in vms if is_offline(p.vm)}):
        add(f"- [ ] `ls -l {_q(where)}` answers (the offline export is readable here).")
    blocking = {p.vm.name: [c for c in concerns.get(p.key, [])
                            if c.severity == Severity.CRITICAL] for p in vms}
    if any(blocking.values()):
        for vm_name, found in blocking.items():
            for c in found:
                add(f"- [ ] **{vm_name}: critical concern `{c.id}`**: {c.message} — "
                    f"{c.remediation}")
    else:
        add("- [x] No critical assessment concern (the preflight checks again).")
    add("- [ ] A backup of each source disk exists (vmmove never writes them, but the guest "
        "does until it is stopped).")
    for line in boot_test_lines(plan, vms, journal):
        add(line)
    add("")
    add("## Steps")
    add("")
    add("One command runs steps 1–6 for every VM of the wave, journalling each; rerun it "
        "after any failure or interruption and it resumes where it stopped:")
    add("")
    from migrate.pipeline.warm import is_warm

    offline = [p.vm.name for p in vms if is_warm(plan, p) and is_offline(p.vm)]
    add("```sh")
    if offline and len(offline) == len(vms):
        add("# power every VM off at its platform (vSphere, Workstation, ...), then:")
        add(f"{cut}{jobs_flag} --source-powered-off")
    elif offline:
        add(f"# power {', '.join(offline)} off at its platform first (an offline export), then:")
        add(f"{cut}{jobs_flag} --at HH:MM --source-powered-off   # preflight now, stop the "
            "libvirt sources at HH:MM")
    else:
        add(f"{cut}{jobs_flag} --at HH:MM   # preflight now, stop the sources at HH:MM")
    add("```")
    add("")
    add(f"Every VM's preflight passes before any source is stopped; then {jobs} VM(s) go "
        "through steps 2–6 at once, the next starting when one finishes; each keeps its own "
        "downtime, and one VM's failure does not stop the others. Or one VM at a time: "
        "append its name. What each step does, and how to check it by hand:")
    add("")
    warm = [p.vm.name for p in vms if is_warm(plan, p)]
    # an offline-only wave: its own itinerary (no domain, no ACPI shutdown); else the cold
    # one, and where the warm (and offline) VMs' differ after it
    base = OFFLINE_WARM_CUTOVER if offline and len(offline) == len(vms) else CUTOVER
    for number, phase in enumerate(base.phases, 1):
        add(f"{number}. **{phase.title}** — " + phase.text.replace("{plan_ref}", plan_ref))
    add("")
    if base is CUTOVER and warm:
        add(f"Warm VMs ({', '.join(warm)}) go through the same steps; where the warm "
            "itinerary differs:")
        add("")
        for number, (cold, phase) in enumerate(zip(CUTOVER.phases, WARM_CUTOVER.phases), 1):
            if phase.text != cold.text:
                add(f"{number}. **{phase.title}** (warm) — "
                    + phase.text.replace("{plan_ref}", plan_ref))
        add("")
    if offline and base is not OFFLINE_WARM_CUTOVER:
        add(f"Warm VMs of an offline export ({', '.join(offline)}) have no domain vmmove can "
            "stop or start; where their itinerary differs further:")
        add("")
        for number, (warm_phase, phase) in enumerate(zip(WARM_CUTOVER.phases,
                                                         OFFLINE_WARM_CUTOVER.phases), 1):
            if phase.text != warm_phase.text:
                add(f"{number}. **{phase.title}** (offline) — "
                    + phase.text.replace("{plan_ref}", plan_ref))
        add("")
    for p in vms:
        uri, dom = _q(p.vm.source.location), _q(p.vm.name)
        ns, vm = p.namespace, p.name
        add(f"### {p.vm.name} → `{ns}/{vm}`")
        add("")
        add("```sh")
        if p.vm.name in offline:
            folder = _q(str(Path(p.vm.source.location).parent))
            add("# power the VM off at its platform (vSphere, Workstation, ...), then:")
            add(f"ls -a {folder} | grep lck                 # nothing once it is powered off")
            add(f"{cut} {dom} --source-powered-off")
            add(f"{back} {dom}   # if needed; then power it on at its platform")
        else:
            add(f"{cut} {dom}")
            add(f"virsh -c {uri} domstate {dom}                 # before: running; after step 2: shut off")
            add(f"virsh -c {uri} shutdown {dom}                 # what step 2 does")
        add(f"kubectl -n {ns} get vm {vm} -o jsonpath='{{.spec.runStrategy}}'   # after step 4: Always")
        add(f"kubectl -n {ns} patch vm {vm} --type merge -p '{{\"spec\":{{\"runStrategy\":\"Always\"}}}}'"
            "   # what step 4 does")
        add(f"kubectl -n {ns} get vmi {vm}                  # step 5: PHASE Running")
        add(f"kubectl -n {ns} wait vmi/{vm} --for=jsonpath='{{.status.phase}}'=Running --timeout=10m")
        add("```")
        add("")
    add("## Expected downtime")
    add("")
    rate, source = _rate(t, "full")
    vrate, vsource = _rate(t, "verify")
    add("Per VM: **stop** (the longest ACPI shutdown measured, else "
        f"{DEFAULT_STOP:.0f} s"
        + ("; 0 s for a VM of an offline export: " + OFFLINE_STOP if offline else "")
        + ") + **final sync** (the VM's data ÷ the sync rate; a warm VM's expected delta at "
        "its last round's rate) + **start and verify** (the longest start-to-Running "
        f"measured, else {DEFAULT_BOOT:.0f} s).")
    add("")
    add(f"- full sync rate: {rate / MIB:.1f} MiB/s ({source}: convert, upload and import "
        "run one after another, so their times per byte add up)")
    add(f"- verify rate: {vrate / MIB:.1f} MiB/s ({vsource})")
    measured = [(r.kind, r) for r in (t.convert, t.upload, t.imports, t.sync) if r.per_second]
    for kind, r in measured:
        add(f"- measured {kind}: {human_size(r.bytes)} in {r.seconds:.1f} s over {r.samples} "
            f"step(s) = {r.per_second / MIB:.1f} MiB/s")  # type: ignore[operator]
    if t.stop_seconds:
        add(f"- measured shutdowns: {len(t.stop_seconds)}, longest {max(t.stop_seconds):.1f} s")
    if t.boot_seconds:
        add(f"- measured start→Running: {len(t.boot_seconds)}, longest "
            f"{max(t.boot_seconds):.1f} s")
    add("")
    add("| VM | data | sync | stop | sync time | start+verify | expected downtime | "
        "stops at | verified at |")
    add("|---|---|---|---|---|---|---|---|---|")
    for p in vms:
        e, slot = estimates[p.key], slots[p.key]
        wait = f" (+{_duration(slot.wait)} waiting to send)" if slot.wait >= 1 else ""
        add(f"| {p.vm.name} | {human_size(p.vm.data_bytes())} | {e.mode} | "
            f"{_duration(e.stop)} | {_duration(e.sync)} | {_duration(e.boot)} | "
            f"**{_duration(slot.downtime)}**{wait} | +{_duration(slot.start)} | "
            f"+{_duration(slot.end)} |")
    add("")
    parallel = min(jobs, len(vms)) > 1
    add(f"**Wave window with `--jobs {jobs}`: {_duration(window)}**"
        + (f" (one after another: {_duration(total)})" if parallel else "")
        + f". How: the VMs start in the order above on {jobs} worker(s), the first "
        f"{min(jobs, len(vms))} at once and each next one when a worker is free; a `full` "
        "final sync sends its disks (convert, upload) one VM at a time, so a VM may wait for "
        "another's, and that wait is downtime (shown beside it). `stops at`/`verified at` "
        "count from the first source stopped. With equal VMs this is the longest VM of each "
        f"batch of {jobs}, batch after batch. Another `--jobs` (or `vmmove runbook --jobs`) "
        "changes it.")
    add("")
    warm = [p for p in vms if modes[p.key] == "warm"]
    if warm:
        _warm_timeline(plan_ref, wave, warm, journal, estimates, add)
    add("## Verification")
    add("")
    add(f"- [ ] `vmmove status {plan_ref} --wave {wave}` shows every VM `cut over`.")
    for p in vms:
        add(f"- [ ] `kubectl -n {p.namespace} get vmi {p.name}` is Running; the application "
            f"on {p.vm.name} answers (`virtctl console {p.name} -n {p.namespace}`).")
    add(f"- [ ] `vmmove report {plan_ref} --wave {wave} --plot wave-{wave}.svg`: downtime "
        "and checksums recorded.")
    add("")
    add("## Rollback")
    add("")
    add("Safe at any point, also halfway through a cutover, and safe to repeat: the target "
        "is halted first, the source is started only once the target's "
        "VirtualMachineInstance is gone (two copies never run at once), and only if the "
        "cutover found it running.")
    add("")
    add("```sh")
    add(f"{back}            # every VM of the wave; or append VM names")
    for p in vms:
        uri, dom = _q(p.vm.source.location), _q(p.vm.name)
        add(f"# by hand, {p.vm.name}:")
        add(f"kubectl -n {p.namespace} patch vm {p.name} --type merge -p "
            "'{\"spec\":{\"runStrategy\":\"Halted\"}}'")
        add(f"kubectl -n {p.namespace} wait vmi/{p.name} --for=delete --timeout=5m")
        if is_offline(p.vm):  # an export: nothing vmmove (or virsh) can start
            add(f"# then power {dom} on at its platform (an offline export: nothing to start "
                "here)")
        else:
            add(f"virsh -c {uri} start {dom}")
    add("```")
    add("")
    add("Data written on the target after the cutover is not copied back to the source.")
    add("")
    add("## Sign-off")
    add("")
    add("| role | name | date | result |")
    add("|---|---|---|---|")
    for role in ("operator", "application owner", "change approver"):
        add(f"| {role} | | | |")
    add("")
    return "\n".join(lines)


def _warm_timeline(plan_ref: str, wave: int, vms: list[PlannedVM], journal: Journal,
                   estimates: dict[str, Estimate], add: Any) -> None:
    """The warm VMs' precopy rounds, the final delta their change rate predicts, and the
    downtime window it leaves (docs/warm-migration.md)."""
    from migrate.core.records import KIND_WARM
    from migrate.pipeline.warm import data_disks, disk_method

    add("## Warm timeline")
    add("")
    add(f"Precopy rounds run while the sources keep running (`vmmove sync {plan_ref} --wave "
        f"{wave} --every 30m --until <cutover time>`); the cutover then stops each source "
        "and copies only what changed since the last round. The cutover refuses a VM whose "
        "last round is older than `warm.maxRoundAge`: run one last round shortly before.")
    add("")
    add("| VM | disks (method) | rounds | last round | last delta | change rate | "
        "expected final delta | final sync | downtime window |")
    add("|---|---|---|---|---|---|---|---|---|")
    for p in vms:
        step = journal.get(KIND_WARM, p.key)
        st = step.state if step else {}
        hist = st.get("history") or []
        w = warm_outlook(p, journal)
        methods = ", ".join(f"{d.target} ({disk_method(p.vm, d)[0]})" for d in data_disks(p.vm))
        rate = "-"
        if len(hist) >= 2:
            interval = max(1e-3, float(hist[-1]["at"]) - float(hist[-2]["at"]))
            rate = f"{human_size(int(hist[-1]['changed'] / interval * 3600))}/h"
        last = (f"round {hist[-1]['round']} ({hist[-1]['kind']}, "
                f"{float(hist[-1]['seconds']):.1f} s)") if hist else "none yet"
        e = estimates[p.key]
        add(f"| {p.vm.name} | {methods} | {len(hist)} | {last} | "
            f"{human_size(w.get('delta')) if hist else '-'} | {rate} | "
            f"{human_size(w.get('expected')) if hist else '-'} | "
            f"{_duration(e.sync) if hist else '-'} | **{_duration(e.total)}** |")
    add("")
    add("The downtime window is stop + final sync + start and verify. RAM state is not "
        "carried: the source is shut down, as in a cold cutover (a VM of an offline export: "
        "powered off at its platform).")
    add("")


def write_runbooks(plan: Plan, out: Path, waves: list[int] | None = None,
                   jobs: int | None = None) -> list[Path]:
    """One ``wave-<N>.md`` per wave (with VMs to move) in ``out``; the files written."""
    make_dirs(out)
    written = []
    numbers = waves or plan.wave_numbers()
    journal = plan.journal() if plan.journal_path.is_file() else Journal(":memory:")
    with journal:
        for n in numbers:
            if not plan.wave(n):
                continue
            path = out / f"wave-{n}.md"
            atomic_write(path, wave_runbook(plan, n, journal, jobs=jobs))
            written.append(path)
    return written
