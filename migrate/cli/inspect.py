"""``vmmove inspect PLAN --wave N [VM…]``: what is inside each staged guest (libguestfs)."""

from __future__ import annotations

import click

from migrate.cli.options import output_format, wave_vms
from migrate.core.output import emit


@click.command("inspect")
@wave_vms("The wave whose staged guests are inspected (all unless VMs are named).")
@click.option("--redo", is_flag=True, help="Inspect again guests inspected before.")
@output_format()
def inspect_cmd(plan_file: str, vms: tuple[str, ...], wave: int, redo: bool, output: str) -> None:
    """Read each staged guest read-only with libguestfs and record what it holds — OS,
    boot loader and EFI needs, drivers for virtio/SATA/virtio-net, agents, foreign tools,
    device names in fstab, network configuration — in the journal and the inventory.

    \b
    vmmove inspect plan.yaml --wave 1
    vmmove inspect plan.yaml --wave 1 web-01 -o json

    Runs on the images `vmmove migrate --stage` (or `vmmove convert`) staged, never on the
    sources. Assess, the manifests (disk bus, NIC model) and guest conversion use the facts.
    """
    from migrate.pipeline.guest import inspect_selection
    from migrate.plan import load_plan
    from migrate.views.guest import INSPECT_HEADERS, inspect_table

    data, rows = inspect_table(inspect_selection(load_plan(plan_file), wave, vms, redo=redo))
    emit(data, output, INSPECT_HEADERS, rows)


commands = [inspect_cmd]
