"""``vmmove status PLAN``: where every VM of a plan stands, from its journal's records."""

from __future__ import annotations

import click

from migrate.cli.options import output_format
from migrate.core.output import duration, emit, human_size

HEADERS = ["WAVE", "VM", "TARGET", "PHASE", "STATE", "CONVERT", "UPLOAD", "IMPORT", "MOVED",
           "TIME", "LAST ERROR"]


def _count(step: object) -> str:
    done, total = getattr(step, "done"), getattr(step, "total")
    return f"{done}/{total}" if total else "-"


def _warm(w: dict | None) -> str:
    if not w or not w.get("rounds"):
        return "-" if not w else "no round yet"
    return (f"round {w['rounds']}, {duration(w['age'])} ago, delta {human_size(w['delta'])}, "
            f"final sync ~{duration(w['predicted'])}")


@click.command("status")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--wave", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the VMs of wave N.")
@output_format()
def status_cmd(plan_file: str, wave: int | None, output: str) -> None:
    """Show each VM's phase: scanned, converted, uploaded, precopy (warm rounds done),
    applied, imported, cut over, rolled back (or skipped), with its state now
    (running/failed), per-step counts, bytes moved (uploads and precopy rounds), time
    spent, the last error, else the command to run next ("next": also in -o json).

    \b
    vmmove status plan.yaml
    vmmove status plan.yaml --wave 2 -o json

    Reads only the plan's journal: no cluster or S3 access, safe while a run is going.
    """
    from migrate.plan import load_plan
    from migrate.views.status import plan_status, summary

    plan = load_plan(plan_file)
    statuses = plan_status(plan, wave)
    rows = []
    for s in statuses:
        error = (s.error or (f"next: {s.next}" if s.next else "")).replace("\n", " ")
        if not s.next:  # an unfinished cutover's way forward is never cut short
            error = error[:80] + ("…" if len(error) > 80 else "")
        rows.append([s.wave, s.vm, f"{s.namespace}/{s.name}", s.phase, s.state,
                     _count(s.steps["convert"]), _count(s.steps["upload"]),
                     _count(s.steps["import"]), human_size(s.bytes_moved),
                     duration(s.seconds), error])
    if any(s.warm for s in statuses):  # warm VMs: their precopy outlook
        headers = [*HEADERS, "WARM (last round age, delta, predicted final sync)"]
        rows = [[*row, _warm(s.warm)] for row, s in zip(rows, statuses)]
    else:
        headers = HEADERS
    emit({"plan": str(plan.path), "journal": str(plan.journal_path),
          "vms": [s.to_data() for s in statuses]}, output, headers, rows)
    if output == "table":
        for number, counts in sorted(summary(statuses).items()):
            parts = ", ".join(f"{n} {phase}" for phase, n in counts.items())
            click.echo(f"wave {number}: {parts}", err=True)


commands = [status_cmd]
