"""``vmmove assess``: readiness concerns of each VM of an inventory, with remediations."""

from __future__ import annotations


import click

from migrate.cli.options import output_format
from migrate.core.output import emit, table

EXIT_CONCERNS = 3
FAIL_ON = {"critical": "critical", "warning": "warning", "never": None}


def _list_rules(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--list-rules``: print the rule table and stop, no inventory needed."""
    if not value or ctx.resilient_parsing:
        return
    from migrate.assessment import RULES

    rows = [(r.id, r.severity.value, r.why) for r in RULES.values()]
    click.echo(table(("ID", "SEVERITY", "WHY"), rows), nl=False)
    ctx.exit(0)


@click.command("assess")
@click.argument("inventory", metavar="INVENTORY")
@click.argument("vm_refs", nargs=-1, metavar="[VM]...")
@output_format()
@click.option(
    "--fail-on",
    type=click.Choice(list(FAIL_ON)),
    default="critical",
    show_default=True,
    help=f"Exit {EXIT_CONCERNS} when a concern at or above this severity is found; 'never' always exits 0.",
)
@click.option("--wide", is_flag=True, help="Add the REMEDIATION column to the table.")
@click.option(
    "--list-rules",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_list_rules,
    help="List every concern id with its severity and why KubeVirt needs it, then exit.",
)
def assess_cmd(inventory: str, vm_refs: tuple[str, ...], output: str, fail_on: str, wide: bool) -> None:
    """Readiness concerns of the VMs in INVENTORY (a file written by `vmmove scan`).

    Each concern has a stable id, a severity (critical: cannot move as is; warning: act or
    check before cutover; info: changes on the way), a message and a remediation; see
    docs/assess.md. Name VMs (by name or UUID) to assess only those; rules across VMs
    (duplicate MACs, name collisions) still look at the whole inventory.

    \b
    Exit codes:
      0  no concern at or above --fail-on
      1  error, e.g. an unreadable inventory
      2  usage error, e.g. an unknown VM name
      3  a concern at or above --fail-on (default: critical) was found
    """
    from migrate.assessment import Severity, summary, worst
    from migrate.views.assessment import assessment_view

    view = assessment_view(inventory, vm_refs)
    results, ctx, label = view.results, view.context, view.label
    if view.unread:
        click.echo(
            f"vmmove: note: {inventory} records {view.unread} source(s) the scan could not "
            "read; they are not assessed",
            err=True,
        )

    if output == "table" and not results:
        click.echo(f"No VMs in {inventory}.", err=True)
    elif output == "table":
        headers = ["VM", "SEVERITY", "ID", "MESSAGE"] + (["REMEDIATION"] if wide else [])
        rows = [
            [label(vm), c.severity.value, c.id, c.message] + ([c.remediation] if wide else [])
            for vm, concerns in results
            for c in concerns
        ]
        if rows:
            emit(None, "table", headers, rows)
            click.echo()
        emit(
            None,
            "table",
            ["VM", "TARGET", "SUMMARY"],
            [[label(vm), ctx.target(vm), summary(cs)] for vm, cs in results],
        )
    else:
        data = {
            label(vm): {
                "target": ctx.target(vm),
                "key": vm.key,
                "uuid": vm.uuid,
                "source": vm.source.location,
                "summary": summary(concerns),
                "concerns": [c.to_data() for c in concerns],
            }
            for vm, concerns in results
        }
        emit(data, output)

    threshold = FAIL_ON[fail_on]
    found_worst = worst([c for _, cs in results for c in cs])
    if threshold and found_worst and found_worst >= Severity(threshold):
        click.get_current_context().exit(EXIT_CONCERNS)


commands = [assess_cmd]
