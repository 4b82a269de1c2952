"""``vmmove sync``: precopy rounds of warm VMs while their sources run."""

from __future__ import annotations

import click

from migrate.cli.options import kube as kube_options
from migrate.cli.options import output_format
from migrate.core.errors import VmmoveError
from migrate.core.output import emit, error_line

HEADERS = ["VM", "ROUND", "KIND", "CHANGED", "SECONDS", "DISKS", "ERROR"]


@click.command("sync")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--wave", type=click.IntRange(min=1), required=True, metavar="N",
              help="The wave whose warm VMs get a round (all of them unless VMs are named).")
@click.option("--full", is_flag=True, help="Copy every disk in full this round.")
@click.option("--every", metavar="DURATION",
              help="Repeat rounds (30m, 2h, 90s) until --until or Ctrl-C.")
@click.option("--until", "until", metavar="TIME",
              help="With --every: start no round after TIME (ISO 8601, or HH:MM).")
@kube_options
@output_format()
def sync_cmd(plan_file: str, vms: tuple[str, ...], wave: int, full: bool, every: str | None,
             until: str | None, kubeconfig: str | None, context: str | None,
             namespace: str | None, output: str) -> None:
    """Run a precopy round for the warm VMs of a wave while their sources keep running.

    \b
    vmmove sync plan.yaml --wave 1
    vmmove sync plan.yaml --wave 1 web-01 --every 30m --until 02:00

    The first round copies each disk in full into its target volume; later rounds copy
    only what changed since the previous one (bitmap disks: the host's dirty bitmap;
    hash disks: blocks whose hash changed). Each round is journalled with its changed
    bytes and duration; `vmmove status` shows the last round's age and delta and the
    predicted final-sync time. With warm.writer worker the deltas are written by worker
    Jobs in the cluster (--kubeconfig).
    """
    from migrate.pipeline.warm import run_rounds

    data, rows, errors = run_rounds(plan_file, vms, wave, full, every, until,
                                    (kubeconfig, context, namespace))
    emit(data, output, HEADERS, rows)
    for e in errors:  # in its row too; on stderr once, seen when the table goes to a file
        click.echo(error_line(e), err=True)
    if errors:
        raise VmmoveError(f"sync: {len(errors)} round(s) failed; fix the cause and rerun "
                          "(a rerun resumes from the last finished round)")


commands = [sync_cmd]
