"""``vmmove cutover`` and ``vmmove rollback``: switch VMs to KubeVirt, and back.

Option parsing and rendering only: the run is :func:`migrate.pipeline.cutover.cutover_vms`
(the cutover itinerary) and :func:`~migrate.pipeline.cutover.rollback_vms`.
"""

from __future__ import annotations

import datetime

import click

from migrate.cli.options import kube as kube_options, output_format, wave_vms
from migrate.cli.types import AT
from migrate.core.errors import VmmoveError
from migrate.core.output import emit, error_line

HEADERS = ["VM", "TARGET", "STATUS", "DOWNTIME", "SYNC", "STEPS", "NEXT / ERROR"]
ROLLBACK_HEADERS = ["VM", "TARGET", "STATUS", "TARGET ACTION", "SOURCE ACTION", "ERROR"]
JOBS_HELP = ("How many VMs at once (default: min({n}, VMs selected)). Each keeps its own "
             "steps, journal items and downtime; one VM's failure does not stop the others.")


# -- commands ------------------------------------------------------------------------------------


@click.command("cutover")
@wave_vms("The wave whose VMs are cut over (all of them unless VMs are named).")
@click.option("--at", "at", type=AT, metavar="TIME",
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
@click.option("--source-powered-off", is_flag=True,
              help="Warm VMs of an offline export (VMX, OVF/OVA, domain XML): confirm that "
                   "you powered the VM off at its platform (vmmove cannot stop it). The "
                   "confirmation is journalled; a VMware lock file in the export refuses it.")
@click.option("--dry-run", is_flag=True,
              help="Only list the steps the cutover would run for each VM, in order, with "
                   "downtime estimates from the journal's measurements; nothing is stopped, "
                   "synced or started, and no host or cluster is contacted.")
@kube_options
@output_format()
def cutover_cmd(plan_file: str, vms: tuple[str, ...], wave: int, at: datetime.datetime | None,
                shutdown_timeout: float, force: bool, verify_timeout: float,
                guest_agent: bool, verify_command: str | None, import_timeout: float,
                jobs: int | None, dry_run: bool, skip_boot_test: bool,
                source_powered_off: bool, kubeconfig: str | None, context: str | None, namespace: str | None,
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
    measured from the shutdown to the verified start and recorded in the journal
    (vmmove report shows it). A warm VM of an offline export has no domain to stop: power
    it off at its platform and pass --source-powered-off (docs/warm-migration.md).
    """
    from migrate.views.bars import reporters
    from migrate.core.progress import log
    from migrate.pipeline.cutover import (
        CutoverOptions,
        cutover_vms,
        default_jobs,
        select_vms,
    )
    from migrate.pipeline.stages import KubeArgs
    from migrate.plan import load_plan
    from migrate.views.outcome import cutover_rows

    plan = load_plan(plan_file)
    if namespace:
        plan.use_namespace(namespace)
    chosen = select_vms(plan, wave, vms)
    if dry_run:
        from migrate.views.dryrun import show_cutover

        show_cutover(plan, chosen, wave, jobs or default_jobs(len(chosen)), output,
                     source_powered_off)
        return
    options = CutoverOptions(shutdown_timeout=shutdown_timeout, force=force,
                             verify_timeout=verify_timeout, guest_agent=guest_agent,
                             verify_command=verify_command, skip_boot_test=skip_boot_test,
                             source_powered_off=source_powered_off)
    results = cutover_vms(plan, wave, chosen, KubeArgs(kubeconfig, context, namespace), options,
                          jobs=jobs, when=at,
                          import_timeout=import_timeout, log=log, reporters=reporters())
    emit([r.to_data() for r in results], output, HEADERS, cutover_rows(results))
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


@click.command("rollback")
@wave_vms("The wave whose VMs are rolled back (all of them unless VMs are named).")
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
    from migrate.core.progress import log
    from migrate.pipeline.cutover import RollbackOptions, rollback_scope, rollback_vms, select_vms
    from migrate.pipeline.stages import KubeArgs
    from migrate.plan import load_plan
    from migrate.views.outcome import rollback_rows

    plan = load_plan(plan_file)
    if namespace:
        plan.use_namespace(namespace)
    chosen = select_vms(plan, wave, vms)
    chosen, idle = rollback_scope(plan, chosen)
    if not chosen:
        data, rows, _ = rollback_rows(idle, [], [])
        emit(data, output, ROLLBACK_HEADERS, rows)
        click.echo(f"wave {wave}: nothing to roll back: no VM of it was cut over (or started "
                   "by its runStrategy); the sources were never touched", err=True)
        return
    outcomes = rollback_vms(plan, chosen, KubeArgs(kubeconfig, context, namespace),
                            RollbackOptions(timeout), jobs, log)
    data, rows, errors = rollback_rows(idle, chosen, outcomes)
    emit(data, output, ROLLBACK_HEADERS, rows)
    if errors:
        for e in errors:
            click.echo(error_line(e), err=True)
        raise VmmoveError(f"rollback: {len(errors)} of {len(chosen)} VM(s) not rolled back; "
                          "fix the cause and rerun (rollback is safe to repeat)")


commands = [cutover_cmd, rollback_cmd]
