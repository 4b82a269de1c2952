"""``vmmove cutover`` and ``vmmove rollback``: switch VMs to KubeVirt, and back.

The final sync lives here (CLI-layer glue, like :mod:`migrate.cli._plan_stages`): it drives
D's converter and F's transfer backends, which :mod:`migrate.cutover` may not import.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from migrate.cli.options import kube as kube_options
from migrate.cli.options import output_format
from migrate.errors import VmmoveError
from migrate.output import emit, error_line

if TYPE_CHECKING:
    from migrate.kube import Kube
    from migrate.plan import Plan, PlannedVM
    from migrate.state import Journal

HEADERS = ["VM", "TARGET", "STATUS", "DOWNTIME", "SYNC", "STEPS", "NEXT / ERROR"]
ROLLBACK_HEADERS = ["VM", "TARGET", "STATUS", "TARGET ACTION", "SOURCE ACTION", "ERROR"]
#: The part of a final sync that sends disks again (convert, upload) runs for one VM at a
#: time: the converter takes the work folder's journal lock for its run and removes partial
#: outputs it finds there (another VM's, mid-write), and the upload sends the whole wave's
#: converted images, so it must not run while another VM's disk is being converted.
#: The comparison of unchanged disks and the re-import watch run in parallel.
SEND_LOCK = threading.Lock()
JOBS_HELP = ("How many VMs at once (default: min({n}, VMs selected)). Each keeps its own "
             "steps, journal items and downtime; one VM's failure does not stop the others.")


# -- the final sync ------------------------------------------------------------------------------


def final_sync(plan: Plan, kube: Kube, kube_args: Any, import_timeout: float,
               p: PlannedVM, journal: Journal) -> dict[str, Any]:
    """Make the target's disks equal the stopped source's disks; what to journal.

    ``full``: staging read a running disk (``qemu-img -U``), so every disk is converted
    again now that the source is stopped, uploaded again and re-imported (the DataVolume
    is deleted; KubeVirt recreates it from the VM's ``dataVolumeTemplates`` and CDI
    imports the new image).  ``verify``: staging read a shut-off disk; the stopped source
    is compared with the staged image (``qemu-img compare``) and the staged image's sha256
    with the journal's; only a disk that differs is converted and sent again.
    """
    from converters import qemuimg
    from converters.checksum import sha256_file
    from converters.convert import source_chain
    from migrate.apply import KIND_IMPORT, watch_imports
    from migrate.cli._plan_stages import ImportBars, build_manifests, data_disks, vm_objects
    from migrate.cutover import CutoverError
    from migrate.kube import DATA_VOLUME
    from migrate.progress import log
    from migrate.state import DONE
    from migrate.workdir import KIND_CONVERT, disk_item

    started = time.monotonic()
    disks = data_disks(p)
    staged = {d.target: journal.get(KIND_CONVERT, disk_item(p.vm, d)) for d in disks}
    missing = [t for t, s in staged.items() if s is None or s.status != DONE]
    if missing:
        raise CutoverError(f"{p.vm.name}: disk(s) {', '.join(missing)} were never staged "
                           "(vmmove migrate --stage first)")
    full = any(bool(s.data.get("force_share")) for s in staged.values() if s is not None)
    mode = "full" if full else "verify"
    report: dict[str, dict[str, Any]] = {}
    redo: list[str] = []
    if not full:
        for d in disks:
            step = staged[d.target]
            assert step is not None
            output = step.data.get("output") or ""
            entry: dict[str, Any] = {"staged_checksum": step.checksum}
            same_file = bool(output) and _exists(output) and sha256_file(output) == step.checksum
            compared = None
            if same_file:
                try:  # the source as convert reads it: the checked chain, never the headers
                    chain = source_chain(p.vm, d)
                except VmmoveError as exc:
                    raise CutoverError(f"{p.vm.name}/{d.target}: {exc}") from None
                compared = qemuimg.compare(chain.qemu_name(), chain.format, output,
                                           str(step.data.get("format")), label=d.path)
            if same_file and compared is not None and compared.identical:
                entry.update(status="unchanged", compare="identical", checksum=step.checksum)
            else:
                entry.update(status="changed", compare=compared.message if compared else
                             "staged image missing or altered")
                redo.append(d.target)
            report[d.target] = entry
        log(f"{p.vm.name}: final sync (verify): "
            + ", ".join(f"{t} {e['status']}" for t, e in report.items()))
    else:
        redo = [d.target for d in disks]
    converted: list[str] = []
    sent, upload_seconds, lock_wait = 0, 0.0, 0.0
    if redo:
        t_lock = time.monotonic()
        with SEND_LOCK:
            lock_wait = time.monotonic() - t_lock
            if lock_wait >= 1:
                log(f"{p.vm.name}: final sync: waited {lock_wait:.0f}s for another VM's "
                    "sync to send its disks")
            converted, sent, upload_seconds = _send_again(plan, kube_args, p, journal, redo,
                                                          report)
    reimported: list[str] = []
    if converted:
        objects = vm_objects(plan, build_manifests(plan, [p]))
        items = [i for o in objects for i in o.imports
                 if i.item.rsplit("/", 1)[-1] in converted]
        resource = kube.resource(*DATA_VOLUME)
        for i in items:
            kube.retrying(f"delete DataVolume {i.namespace}/{i.dv}", lambda i=i: _delete(
                resource, i.namespace, i.dv))
            journal.reset(KIND_IMPORT, i.item)
        states = watch_imports(kube, items, journal, timeout=import_timeout,
                               progress=ImportBars())
        bad = [s for s in states if s.outcome != "imported"]
        if bad:
            raise CutoverError(f"{p.vm.name}: final sync: re-import failed: " + " | ".join(
                f"{s.item.dv}: {s.outcome} {s.reason or ''}".strip() for s in bad))
        reimported = [s.item.dv for s in states]
        for target in converted:
            report[target]["upload_seconds"] = round(upload_seconds, 3)
    return {"mode": mode, "disks": report, "bytes": sent,
            "converted": converted, "reimported": reimported,
            "lock_wait_seconds": round(lock_wait, 3),
            "seconds": round(time.monotonic() - started, 3)}


def _send_again(plan: Plan, kube_args: Any, p: PlannedVM, journal: Journal,
                redo: list[str], report: dict[str, dict[str, Any]]
                ) -> tuple[list[str], int, float]:
    """Convert the disks ``redo`` from the stopped source and upload them (the caller holds
    :data:`SEND_LOCK`); the disks converted, bytes sent, upload seconds."""
    from converters.convert import CONVERTED, FAILED, ConvertOptions, convert_disks
    from migrate.cli._plan_stages import data_disks, upload_wave
    from migrate.cutover import CutoverError
    from migrate.model import Inventory, PowerState
    from migrate.progress import log
    from migrate.state import DONE
    from migrate.workdir import KIND_UPLOAD, disk_item

    disks = data_disks(p)
    converted: list[str] = []
    stopped_vm = dataclasses.replace(p.vm, power_state=PowerState.SHUTOFF)
    inventory = Inventory(vms=[stopped_vm if v is p.vm else v for v in plan.inventory.vms],
                          scanned_at=plan.inventory.scanned_at)
    c = plan.convert
    options = ConvertOptions(format=c.format, compress=c.compress, verify=True,
                             force_share=False, redo=True)
    if c.jobs:
        options.jobs = c.jobs
    results = convert_disks(inventory, (), plan.workdir, options,
                            disks=[(p.key, t) for t in redo])
    failed = [r for r in results if r.status == FAILED]
    if failed:
        raise CutoverError(f"{p.vm.name}: final sync: convert failed: "
                           + " | ".join(str(r.error) for r in failed))
    for r in results:
        converted.append(r.disk)
        report.setdefault(r.disk, {}).update(
            status="converted" if r.status == CONVERTED else r.status,
            checksum=r.checksum, bytes=r.allocated, convert_seconds=r.seconds,
            compare="identical" if r.verified else None)
    sent = 0
    upload_seconds = 0.0
    if converted:
        if plan.transfer.backend != "s3":
            raise CutoverError(f"{p.vm.name}: final sync needs the disks sent again, which "
                               "vmmove does through an S3 transfer target only (the plan uses "
                               f"{plan.transfer.backend or 'none'}); stage the VM shut off, "
                               "or use transfer.s3")
        t0 = time.monotonic()
        summary = upload_wave(plan, p.wave, kube_args)
        upload_seconds = time.monotonic() - t0
        log(f"{p.vm.name}: final sync: {summary}")
        for target in converted:
            up = journal.get(KIND_UPLOAD, disk_item(p.vm, next(d for d in disks
                                                                if d.target == target)))
            if up is None or up.status != DONE or up.checksum != report[target]["checksum"]:
                raise CutoverError(f"{p.vm.name}/{target}: final sync: the upload does not "
                                   "hold the new image's checksum")
            report[target]["uploaded"] = up.checksum
            report[target]["sent"] = int(up.data.get("sent") or up.bytes or 0)
            sent += report[target]["sent"]
    return converted, sent, upload_seconds


def _exists(path: str) -> bool:
    import os

    return os.path.isfile(path)


def _delete(resource: Any, namespace: str, name: str) -> None:
    from kubernetes.dynamic.exceptions import NotFoundError

    try:
        resource.delete(name=name, namespace=namespace)
    except NotFoundError:
        pass


# -- commands ------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


@click.command("cutover")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--wave", type=click.IntRange(min=1), required=True, metavar="N",
              help="The wave whose VMs are cut over (all of them unless VMs are named).")
@click.option("--at", "at", metavar="TIME",
              help="Wait until TIME (ISO 8601, or HH:MM today) before stopping any source; "
                   "the preflight runs at once.")
@click.option("--shutdown-timeout", type=click.FloatRange(min=1), default=300.0,
              show_default=True, metavar="SECONDS",
              help="How long to wait for the guest to power off after the ACPI shutdown.")
@click.option("--force", is_flag=True,
              help="Power the source off (virsh destroy) when it did not shut down in time. "
                   "Without it, the cutover stops there and the source keeps running.")
@click.option("--verify-timeout", type=click.FloatRange(min=1), default=600.0,
              show_default=True, metavar="SECONDS",
              help="How long the VirtualMachineInstance may take to reach Running.")
@click.option("--guest-agent/--no-guest-agent", default=None,
              help="Wait for the guest agent to connect (AgentConnected condition). Default: "
                   "wait exactly when the source VM had a QEMU guest agent channel.")
@click.option("--verify-command", metavar="CMD",
              help="A shell command run after the target runs (env: VMMOVE_VM, VMMOVE_NAME, "
                   "VMMOVE_NAMESPACE, KUBECONFIG); non-zero fails the verification.")
@click.option("--import-timeout", type=click.FloatRange(min=1), default=3600.0,
              show_default=True, metavar="SECONDS",
              help="How long a re-import of a synced disk may take.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="N",
              help=JOBS_HELP.format(n=4) + " Every preflight passes before any source stops;"
                   " full final syncs send their disks one VM at a time.")
@click.option("--skip-boot-test", is_flag=True,
              help="Cut over even a VM whose last `vmmove boot-test` failed.")
@click.option("--dry-run", is_flag=True,
              help="Only list the steps the cutover would run for each VM, in order, with "
                   "downtime estimates from the journal's measurements; nothing is stopped, "
                   "synced or started, and no host or cluster is contacted.")
@kube_options
@output_format()
def cutover_cmd(plan_file: str, vms: tuple[str, ...], wave: int, at: str | None,
                shutdown_timeout: float, force: bool, verify_timeout: float,
                guest_agent: bool, verify_command: str | None, import_timeout: float,
                jobs: int | None, dry_run: bool, skip_boot_test: bool,
                kubeconfig: str | None, context: str | None, namespace: str | None,
                output: str) -> None:
    """Switch VMs from their libvirt host to KubeVirt: preflight, stop the source, final
    sync, start the target, verify, done — each step journalled.

    \b
    vmmove cutover plan.yaml --wave 1
    vmmove cutover plan.yaml --wave 1 web-01 --at 02:00 --shutdown-timeout 120
    vmmove cutover plan.yaml --wave 2 --jobs 8

    The preflight of every VM runs first; no source is stopped unless all pass. Then up to
    --jobs VMs go through their steps at once, each with its own downtime. Rerun the same command after any failure or interruption: it resumes at the step where
    it stopped and repeats nothing that is done. The source is only ever shut down (never
    undefined, its disks never written); `vmmove rollback` starts it again. Downtime is
    measured from the shutdown to the verified start and recorded in the journal.
    """
    from functools import partial

    from migrate.cli._plan_stages import KubeArgs
    from migrate.cutover import (
        Cutover,
        CutoverError,
        CutoverOptions,
        VmCutover,
        default_jobs,
        locked_log,
        parse_at,
        prepare_kube,
        select_vms,
        wait_until,
    )
    from migrate.kube import connect
    from migrate.pipeline import plan_lock
    from migrate.plan import load_plan
    from migrate.progress import log

    plan = load_plan(plan_file)
    if namespace:
        plan.use_namespace(namespace)
    chosen = select_vms(plan, wave, vms)
    if dry_run:
        from migrate.dryrun import cutover_steps, cutover_window, show
        from migrate.output import duration

        n = jobs or default_jobs(len(chosen))
        window = f"the window about {duration(cutover_window(plan, chosen, n))} with --jobs {n}"
        show(cutover_steps(plan, chosen), output, f"cutover wave {wave}", window)
        return
    when = parse_at(at) if at else None
    options = CutoverOptions(shutdown_timeout=shutdown_timeout, force=force,
                             verify_timeout=verify_timeout, guest_agent=guest_agent,
                             verify_command=verify_command, skip_boot_test=skip_boot_test)
    results: list[VmCutover] = []
    log = locked_log(log)
    kube = connect(kubeconfig, context)
    try:
        prepare_kube(kube)
        with plan_lock(plan):
            journal = plan.journal()
            try:
                sync = partial(final_sync, plan, kube, KubeArgs(kubeconfig, context, namespace),
                               import_timeout)
                run = Cutover(plan, kube, journal, sync, options, log)
                todo = []
                for p in chosen:
                    if run.done_before(p):
                        results.append(VmCutover(p.key, p.vm.name, f"{p.namespace}/{p.name}",
                                                 "done before", downtime=_downtime(journal, p)))
                        continue
                    try:
                        run.preflight(p)
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
                    results += run.run_parallel(todo, n)
            finally:
                journal.close()
    finally:
        kube.close()
    order = {p.key: i for i, p in enumerate(chosen)}
    results.sort(key=lambda r: order[r.key])
    rows = [[r.vm, r.target, r.status, _seconds(r.downtime), r.sync_mode or "-",
             " ".join(f"{k}:{v}" for k, v in r.steps.items()) or "-",
             (r.error or r.next or "")[:160]] for r in results]
    emit([r.to_data() for r in results], output, HEADERS, rows)
    failed = [r for r in results if r.status == "failed"]
    waiting = [r for r in results if r.status == "not started"]
    if failed:
        for r in failed:
            click.echo(error_line(r.error), err=True)
        raise VmmoveError(
            f"cutover: {len(failed)} of {len(results)} VM(s) failed"
            + (f", {len(waiting)} not started (no source is stopped unless every preflight "
               "passes)" if waiting else "")
            + "; see the errors above (vmmove status shows what to do next)")


def _downtime(journal: Journal, p: PlannedVM) -> float | None:
    from migrate.apply import KIND_CUTOVER

    step = journal.get(KIND_CUTOVER, p.key)
    value = step.data.get("downtime") if step else None
    return float(value) if value is not None else None


@click.command("rollback")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--wave", type=click.IntRange(min=1), required=True, metavar="N",
              help="The wave whose VMs are rolled back (all of them unless VMs are named).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              metavar="SECONDS",
              help="How long to wait for the target's VirtualMachineInstance to go before "
                   "giving up (the source is then NOT started).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="N",
              help=JOBS_HELP.format(n=4))
@kube_options
@output_format()
def rollback_cmd(plan_file: str, vms: tuple[str, ...], wave: int, timeout: float,
                 jobs: int | None, kubeconfig: str | None, context: str | None,
                 namespace: str | None, output: str) -> None:
    """Halt the target VMs and start the sources again; safe at any point, and to repeat.

    \b
    vmmove rollback plan.yaml --wave 1
    vmmove rollback plan.yaml --wave 1 web-01

    The target's runStrategy becomes Halted; once its VirtualMachineInstance is gone the
    source domain is started again, if the cutover had found it running (a VM that was
    off stays off). The target's objects and disks stay in the cluster for the next try.
    """
    from migrate.cutover import (
        RollbackOptions,
        default_jobs,
        rollback_scope,
        locked_log,
        prepare_kube,
        rollback_many,
        select_vms,
    )
    from migrate.kube import connect
    from migrate.pipeline import plan_lock
    from migrate.plan import load_plan
    from migrate.progress import log

    plan = load_plan(plan_file)
    if namespace:
        plan.use_namespace(namespace)
    chosen = select_vms(plan, wave, vms)
    data, rows, errors = [], [], []
    chosen, idle = rollback_scope(plan, chosen)
    for p in idle:
        data.append({"key": p.key, "vm": p.vm.name, "target": f"{p.namespace}/{p.name}",
                     "status": "nothing to roll back"})
        rows.append([p.vm.name, f"{p.namespace}/{p.name}", "nothing to roll back", "-", "-",
                     "never cut over"])
    if not chosen:
        emit(data, output, ROLLBACK_HEADERS, rows)
        click.echo(f"wave {wave}: nothing to roll back: no VM of it was cut over (or started "
                   "by its runStrategy); the sources were never touched", err=True)
        return
    kube = connect(kubeconfig, context)
    try:
        prepare_kube(kube)
        with plan_lock(plan):
            with plan.journal() as journal:
                outcomes = rollback_many(plan, chosen, kube, journal, RollbackOptions(timeout),
                                         locked_log(log), jobs or default_jobs(len(chosen)))
    finally:
        kube.close()
    for p, r in zip(chosen, outcomes):
        if isinstance(r, Exception):
            errors.append(str(r))
            data.append({"key": p.key, "vm": p.vm.name, "status": "failed", "error": str(r)})
            rows.append([p.vm.name, f"{p.namespace}/{p.name}", "failed", "-", "-",
                         str(r)[:160]])
            continue
        data.append({**r.to_data(), "status": "rolled back"})
        rows.append([r.vm, r.target, "rolled back", r.target_action, r.source_action, ""])
    emit(data, output, ROLLBACK_HEADERS, rows)
    if errors:
        for e in errors:
            click.echo(error_line(e), err=True)
        raise VmmoveError(f"rollback: {len(errors)} of {len(chosen)} VM(s) not rolled back; "
                          "fix the cause and rerun (rollback is safe to repeat)")


commands = [cutover_cmd, rollback_cmd]
