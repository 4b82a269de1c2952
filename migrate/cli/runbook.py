"""``vmmove runbook`` and ``vmmove report``: the operator's pages and the measured record."""

from __future__ import annotations

import click

from migrate.cli.options import output_format
from migrate.core.output import emit

@click.command("runbook")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder for the runbooks: one wave-<N>.md per wave.")
@click.option("--wave", type=click.IntRange(min=1), multiple=True, metavar="N",
              help="Only wave N (repeatable; default: every wave).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="N",
              help="The `vmmove cutover --jobs` the runbook plans for: how many VMs are cut "
                   "over at once, which sets the wave's window (default: as cutover, "
                   "min(4, VMs in the wave)).")
def runbook_cmd(plan_file: str, out: str, wave: tuple[int, ...], jobs: int | None) -> None:
    """Write one Markdown runbook per wave: scope, prerequisites checklist, every step with
    its vmmove, kubectl and virsh commands, expected downtime per VM, verification,
    rollback and sign-off.

    \b
    vmmove runbook plan.yaml --out runbooks/
    vmmove runbook plan.yaml --out runbooks/ --wave 2 --jobs 8

    Downtime estimates use the throughput the plan's journal measured in earlier
    conversions, uploads, imports and cutovers (regenerate after a rehearsal); the
    runbook says how each number was computed.
    """
    from pathlib import Path

    from migrate.plan import load_plan
    from migrate.views.runbook import write_runbooks

    plan = load_plan(plan_file)
    for n in wave:
        plan.wave(n)  # unknown wave: one error line before anything is written
    for path in write_runbooks(plan, Path(out), list(wave) or None, jobs):
        click.echo(str(path))


@click.command("report")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--wave", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the VMs of wave N.")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.svg|FILE.png",
              help="Also draw measured throughput and downtime per VM into this SVG or PNG "
                   "(matplotlib: pip install 'vmmove[report]').")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), metavar="FILE.html",
              help="Also write one self-contained HTML page with the plot and the per-VM "
                   "table, the form to share.")
@output_format()
def report_cmd(plan_file: str, wave: int | None, plot: str | None, html_file: str | None,
               output: str) -> None:
    """Per VM: sizes, step durations, cutover downtime and checksums, from the journal's
    records.

    \b
    vmmove report plan.yaml
    vmmove report plan.yaml --wave 1 --plot wave-1.svg -o json
    vmmove report plan.yaml --html report.html

    Reads only the plan's journal; safe while a run is going. Rates come from work
    actually done (a step skipped as done before measures nothing).
    """
    from migrate.plan import load_plan
    from migrate.views.report import (
        HEADERS,
        check_plot_name,
        plan_report,
        table_rows,
        write_extras,
    )

    check_plot_name(plot)
    plan = load_plan(plan_file)
    reports, throughput = plan_report(plan, wave)
    rows = table_rows(reports)
    emit({"plan": str(plan.path), "vms": [r.to_data() for r in reports],
          "throughput": throughput.to_data()}, output, HEADERS, rows)
    title = f"vmmove: {plan.path.name}" + (f", wave {wave}" if wave else "")
    for line in write_extras(reports, throughput, title, rows, plot, html_file):
        click.echo(line, err=True)

commands = [runbook_cmd, report_cmd]
